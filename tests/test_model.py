"""The tiny language model of lesson 05: dense and MoE variants, losses, routing, validation."""

import pytest
import torch

from moe_lab import average_over_layers, load_balancing_loss, router_z_loss
from moe_lab.lm.model import IGNORE_INDEX, LMOutput, ModelConfig, TinyLM, route_model_text

SMALL = dict(d_model=32, n_layers=2, n_heads=4, max_seq_len=16, d_ff=16, num_experts=4, top_k=2)


def make_model(ffn: str, **overrides) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(ModelConfig(**{**SMALL, "ffn": ffn, **overrides}))


def random_batch(batch: int = 3, seq: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, seq + 1), generator=generator)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_shapes_and_outputs(ffn):
    model = make_model(ffn)
    input_ids, targets = random_batch()
    out = model(input_ids, targets)
    assert isinstance(out, LMOutput)
    assert out.logits.shape == (3, 16, 256)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    if ffn == "dense":
        assert out.routing == () and out.aux_loss is None and out.z_loss is None
        assert torch.equal(out.loss, out.lm_loss)
    else:
        assert len(out.routing) == 2
        for routing in out.routing:
            assert routing.topk_idx.shape == (48, 2) and routing.topk_weights.shape == (48, 2)
            assert routing.dropped.shape == (48, 2)
        expected = (out.lm_loss + model.config.aux_loss_coef * out.aux_loss
                    + model.config.z_loss_coef * out.z_loss)
        torch.testing.assert_close(out.loss, expected)


def test_no_targets_gives_no_loss():
    out = make_model("moe")(random_batch()[0])
    assert out.loss is None and out.lm_loss is None and out.aux_loss is not None


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_loss_falls_on_a_small_batch(ffn):
    model = make_model(ffn)
    input_ids, targets = random_batch(batch=2, seq=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        out = model(input_ids, targets)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.lm_loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


def test_aux_losses_are_per_layer_averages_with_the_padding_mask():
    model = make_model("moe")
    input_ids, targets = random_batch()
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[1, 10:] = False
    mask[2, 4:] = False
    out = model(input_ids, targets, attention_mask=mask)
    flat = mask.reshape(-1)
    expected_aux = average_over_layers(
        [load_balancing_loss(r.router.probs, r.topk_idx, flat) for r in out.routing])
    expected_z = average_over_layers([router_z_loss(r.router.logits, flat) for r in out.routing])
    torch.testing.assert_close(out.aux_loss, expected_aux)
    torch.testing.assert_close(out.z_loss, expected_z)
    unmasked = model(input_ids, targets)
    assert not torch.allclose(out.aux_loss, unmasked.aux_loss)


def test_padding_is_ignored_by_the_lm_loss_and_invisible_to_real_tokens():
    model = make_model("moe").eval()
    input_ids, targets = random_batch(batch=1)
    mask = torch.arange(16).unsqueeze(0) < 9  # (1, T): 9 real tokens, then padding
    other = input_ids.clone()
    other[:, 9:] = 0  # different padding content
    a = model(input_ids, targets, attention_mask=mask)
    b = model(other, targets, attention_mask=mask)
    torch.testing.assert_close(a.logits[:, :9], b.logits[:, :9])
    torch.testing.assert_close(a.lm_loss, b.lm_loss)
    manual = torch.nn.functional.cross_entropy(a.logits[0, :9], targets[0, :9])
    torch.testing.assert_close(a.lm_loss, manual)
    # IGNORE_INDEX targets are skipped too
    ignored = targets.clone()
    ignored[:, 9:] = IGNORE_INDEX
    torch.testing.assert_close(model(input_ids, ignored).lm_loss, manual)


def test_parameter_counts():
    dense, moe = make_model("dense", d_ff=32), make_model("moe")  # dense d_ff = K * F
    cfg = moe.config
    per_expert = 3 * cfg.d_model * cfg.d_ff
    assert dense.num_active_parameters() == dense.num_parameters()
    assert moe.num_parameters() - moe.num_active_parameters() == \
        cfg.n_layers * (cfg.num_experts - cfg.top_k) * per_expert
    router_params = cfg.n_layers * cfg.num_experts * cfg.d_model
    assert moe.num_active_parameters() == dense.num_parameters() + router_params


def test_capacity_drops_are_reported():
    model = make_model("moe", capacity_factor=0.5)
    out = model(random_batch()[0])
    assert 0.4 <= out.drop_rate < 1.0
    assert make_model("moe")(random_batch()[0]).drop_rate == 0.0


def test_set_capacity_factor():
    model = make_model("moe")
    ids = random_batch()[0]
    model.set_capacity_factor(0.5)
    assert model.config.capacity_factor == 0.5 and model(ids).drop_rate >= 0.4
    model.set_capacity_factor(None)
    assert model(ids).drop_rate == 0.0
    with pytest.raises(ValueError, match="capacity_factor"):
        model.set_capacity_factor(-1.0)
    with pytest.raises(ValueError, match="moe"):
        make_model("dense").set_capacity_factor(1.0)


@pytest.mark.parametrize("kwargs, error", [
    (dict(ffn="sparse"), ValueError),
    (dict(d_model=30), ValueError),  # not divisible by n_heads
    (dict(top_k=5), ValueError),
    (dict(capacity_factor=0.0), ValueError),
    (dict(d_ff=0), ValueError),
    (dict(n_layers=1.5), TypeError),
    (dict(aux_loss_coef=-1.0), ValueError),
])
def test_bad_config(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs)).split("_")[0]):
        ModelConfig(**{**SMALL, **kwargs})


def test_bad_inputs():
    model = make_model("moe")
    with pytest.raises(TypeError, match="input_ids"):
        model(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 4), 256))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="config"):
        TinyLM({"ffn": "moe"})


def test_route_text():
    model = make_model("moe").train()
    routing = route_model_text(model, "안녕 hi!")
    assert len(routing.labels) == routing.num_tokens == len("안녕 hi!".encode()) == 10
    assert routing.topk_idx.shape == (2, 10, 2) and routing.router_probs.shape == (2, 10, 4)
    torch.testing.assert_close(routing.topk_weights.sum(-1), torch.ones(2, 10))
    assert model.training  # the mode is restored
    with torch.no_grad():  # the routing is the eval-mode forward pass's, layer by layer
        expected = model.eval()(torch.tensor([list("안녕 hi!".encode())])).routing
    model.train()
    for layer, out in enumerate(expected):
        assert torch.equal(routing.topk_idx[layer], out.topk_idx)
        torch.testing.assert_close(routing.router_probs[layer], out.router.probs)
    empty = route_model_text(model, "")
    assert empty.labels == [] and empty.topk_idx.shape == (2, 0, 2)
    long = route_model_text(model, "ab" * 20)
    assert long.topk_idx.shape == (2, 16, 2) and long.labels == ["a", "b"] * 8
    assert (long.num_tokens, long.total_tokens, long.truncated) == (16, 40, True)
    assert empty.total_tokens == 0 and not empty.truncated
    with pytest.raises(ValueError, match="moe"):
        route_model_text(make_model("dense"), "hi")
    with pytest.raises(TypeError, match="text"):
        route_model_text(model, None)


def test_route_text_restores_the_training_mode_when_routing_fails():
    model = make_model("moe").train()

    def fail(module, args):
        assert not module.training  # routed in eval mode
        raise RuntimeError("boom inside the forward pass")

    hook = model.blocks[1].register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        route_model_text(model, "hi")
    hook.remove()
    assert model.training and all(m.training for m in model.modules())
