"""moe_lab.interop.from_transformers: each family's converted layer equals the transformers block
(outputs, chosen experts, gradients with respect to x) in fp32 to 1e-5, at several small
configurations, and picks the block's experts in bfloat16; it holds the block's own parameters
(no copies) in their dtypes; anything else is refused with an error naming what it got."""

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from moe_lab import SparseMoE  # noqa: E402
from moe_lab.dispatch import DISPATCH_STRATEGIES  # noqa: E402
from moe_lab.interop import (  # noqa: E402
    FAMILIES,
    block_output,
    block_topk_idx,
    conventions,
    family_of,
    from_transformers,
    tiny_block,
)


def assert_bf16_close(actual, expected):
    """The same sums added in another order: at most 4 bf16 rounding steps (2^-8 each) of the
    largest output apart."""
    gap = (actual.float() - expected.float()).abs().max()
    assert gap <= 4 * 2 ** -8 * expected.float().abs().max(), gap


CONFIGS = [
    ("Mixtral", dict()),
    ("Mixtral", dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size=8)),
    ("Mixtral", dict(num_local_experts=6, num_experts_per_tok=6, experts_implementation="batched_mm")),
    ("Mixtral", dict(experts_implementation="grouped_mm")),
    ("Qwen2-MoE", dict()),
    ("Qwen2-MoE", dict(norm_topk_prob=True, shared_expert_intermediate_size=24, num_experts=16,
                       num_experts_per_tok=4)),
    ("Qwen3-MoE", dict()),
    ("Qwen3-MoE", dict(norm_topk_prob=False, num_experts=16, num_experts_per_tok=8)),
    ("OLMoE", dict()),
    ("OLMoE", dict(norm_topk_prob=True, num_experts=4, num_experts_per_tok=3)),
    ("DeepSeek-V3", dict()),
    ("DeepSeek-V3", dict(n_routed_experts=16, n_group=4, topk_group=1, num_experts_per_tok=2,
                         n_shared_experts=1, routed_scaling_factor=1.0)),
    ("DeepSeek-V3", dict(n_routed_experts=12, n_group=3, topk_group=2, num_experts_per_tok=5,
                         norm_topk_prob=False, n_shared_experts=3)),
    ("DeepSeek-V3", dict(n_group=1, topk_group=1, num_experts_per_tok=3)),
    ("gpt-oss", dict()),
    ("gpt-oss", dict(num_experts_per_tok=1, swiglu_limit=1.0)),
    ("gpt-oss", dict(num_local_experts=4, num_experts_per_tok=4, intermediate_size=8)),
    ("Llama 4", dict()),
    ("Llama 4", dict(num_experts_per_tok=2, num_local_experts=4, intermediate_size=12)),
]


def _ids(case):
    family, config = case
    return family + ("[" + ",".join(f"{k}={v}" for k, v in config.items()) + "]" if config else "")


@pytest.mark.parametrize("case", CONFIGS, ids=[_ids(c) for c in CONFIGS])
@pytest.mark.parametrize("seed", [0, 1])
def test_converted_layer_equals_the_block(case, seed):
    family, config = case
    block = tiny_block(family, seed=seed, **config)
    layer = from_transformers(block)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(seed + 10), requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()

    expected = block_output(block, x_ref)
    out = layer(x)
    torch.testing.assert_close(out.y, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.router.topk_idx.sort(dim=-1).values, block_topk_idx(block, x))

    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed))
    expected.backward(grad)
    out.y.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dispatch", DISPATCH_STRATEGIES)
@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_every_dispatch_matches_the_block(family, dispatch):
    block = tiny_block(family, seed=3)
    layer = from_transformers(block)
    layer.dispatch = dispatch
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(layer(x).y, block_output(block, x), atol=1e-5, rtol=1e-5)


def test_the_tests_exercise_each_convention():
    """The parity above would be weak if a convention never changed anything at these sizes."""
    x = torch.randn(40, 16)
    # gpt-oss: the clamp bites (some gate pre-activations exceed the limit)
    block = tiny_block("gpt-oss", swiglu_limit=1.0)
    pre = x @ block.experts.gate_up_proj[0] + block.experts.gate_up_proj_bias[0]
    assert (pre[:, ::2] > 1.0).any() and (pre[:, 1::2].abs() > 1.0).any()
    # DeepSeek-V3: the group limit and the selection bias each change some token's choice
    block = tiny_block("DeepSeek-V3")
    layer = from_transformers(block)
    chosen = layer.router(x).topk_idx.sort(-1).values
    ungrouped = from_transformers(tiny_block("DeepSeek-V3", n_group=1, topk_group=1))
    assert not torch.equal(ungrouped.router(x).topk_idx.sort(-1).values, chosen)
    with torch.no_grad():
        layer.router.score_correction_bias.zero_()
    assert not torch.equal(layer.router(x).topk_idx.sort(-1).values, chosen)
    # Llama 4: weighting the input is not weighting the output
    layer = from_transformers(tiny_block("Llama 4"))
    y = layer(x).y
    layer.weight_inputs = False
    assert (layer(x).y - y).abs().max() > 1e-2


def test_layer_follows_the_blocks_dtype_and_mode():
    block = tiny_block("Mixtral").double().train()
    layer = from_transformers(block)
    assert layer.router.weight.dtype == torch.float64 and layer.training
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    # both take the softmax in float32 (ours: router_dtype; Mixtral: router_logits.float())
    torch.testing.assert_close(layer(x).y, block_output(block, x), atol=1e-6, rtol=1e-6)


def test_conventions_table_rows():
    rows = {f.name: conventions(tiny_block(f.name)) for f in FAMILIES}
    assert rows["DeepSeek-V3"].scoring == "sigmoid" and rows["DeepSeek-V3"].scaling == "x 2.5"
    assert rows["DeepSeek-V3"].group_limit == "best 2 of 4 groups"
    assert rows["DeepSeek-V3"].bias == "selection bias"
    assert rows["gpt-oss"].bias == "logit bias" and rows["gpt-oss"].activation.startswith("clamped")
    assert rows["Llama 4"].weights_on == "expert input" and rows["Llama 4"].normalisation == "none"
    assert rows["Qwen2-MoE"].shared_expert == "1 x F=40, sigmoid gate"
    assert rows["Mixtral"].shared_expert == "-" and rows["Mixtral"].normalisation == "top-k sum to 1"


def test_mixtral_decoder_layer_and_lookalikes_are_refused_by_name():
    import transformers
    from transformers.models.mixtral.modeling_mixtral import MixtralDecoderLayer

    decoder_layer = MixtralDecoderLayer(transformers.MixtralConfig(
        hidden_size=16, intermediate_size=24, num_local_experts=4, num_attention_heads=2,
        num_key_value_heads=1), layer_idx=0)

    class MixtralSparseMoeBlock(nn.Module):  # same name, not transformers' class
        pass

    cases = [(decoder_layer, "MixtralDecoderLayer"), (nn.Linear(4, 4), "torch.nn.modules.linear.Linear"),
             (SparseMoE(8, 16, 4, 2), "moe_lab.layer.SparseMoE"), ("Mixtral", "builtins.str"),
             (None, "NoneType"), (MixtralSparseMoeBlock(), "test_interop")]
    for thing, name in cases:
        with pytest.raises(TypeError, match=name):
            from_transformers(thing)
    with pytest.raises(TypeError, match="MixtralSparseMoeBlock"):  # lists what it takes
        family_of(3)


@pytest.mark.parametrize("family", ["Mixtral", "Qwen2-MoE", "DeepSeek-V3", "Llama 4"])
def test_gelu_experts_are_geglu(family):
    """hidden_act="gelu" (transformers' tester default) gives GeGLU experts, shared ones too."""
    block = tiny_block(family, hidden_act="gelu")
    layer = from_transformers(block)
    assert layer.experts.activation == "geglu"
    if layer.shared_experts is not None:
        assert layer.shared_experts.activation == "geglu"
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(layer(x).y, block_output(block, x), atol=1e-5, rtol=1e-5)


def test_other_activations_are_refused_by_name():
    with pytest.raises(ValueError, match="SiLU.*GELU.*Tanh"):
        from_transformers(tiny_block("Mixtral", hidden_act="tanh"))


def test_module_lists_and_quantised_experts_are_refused_by_name():
    block = tiny_block("Mixtral")
    block.experts = nn.ModuleList([nn.Linear(16, 16) for _ in range(8)])
    with pytest.raises(TypeError, match="ModuleList of 8 per-expert MLPs.*4.x"):
        from_transformers(block)

    class Mxfp4GptOssExperts(nn.Module):  # what transformers loads for an MXFP4 checkpoint
        def __init__(self):
            super().__init__()
            self.gate_up_proj_blocks = nn.Parameter(torch.zeros(8, 48, 1, 16, dtype=torch.uint8),
                                                    requires_grad=False)
            self.gate_up_proj_scales = nn.Parameter(torch.zeros(8, 48, 1, dtype=torch.uint8),
                                                    requires_grad=False)

    block = tiny_block("gpt-oss")
    block.experts = Mxfp4GptOssExperts()
    with pytest.raises(TypeError, match="Mxfp4GptOssExperts.*gate_up_proj_blocks.*quantised"):
        from_transformers(block)


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_the_layer_holds_the_blocks_own_parameters(family):
    """No copies: the same Parameter objects under the block's names, so an edit of the block is
    seen, gradients reach the block, frozen parameters stay frozen."""
    block = tiny_block(family)
    layer = from_transformers(block)
    assert list(layer.state_dict()) == list(block.state_dict())
    params = dict(block.named_parameters())
    assert all(p is params[name] for name, p in layer.named_parameters())
    x = torch.randn(2, 5, 16)
    before = layer(x).y
    with torch.no_grad():
        next(iter(block.experts.parameters())).mul_(2)
    assert not torch.equal(layer(x).y, before)
    block.requires_grad_(False)
    first = next(iter(params))
    params[first].requires_grad_(True)
    layer(x).y.sum().backward()
    assert params[first].grad is not None
    assert all(p.grad is None for name, p in params.items() if name != first)


def test_llama4_large_router_logits_pick_the_blocks_expert():
    """Llama 4 takes the top-k of its logits, then the sigmoid: with logits of 20-30 every
    score rounds to 1.0, and only ranking the logits picks the block's expert."""
    block = tiny_block("Llama 4", num_local_experts=3, num_experts_per_tok=1)
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.weight[:, 0] = torch.tensor([20.0, 30.0, 25.0])
    x = torch.full((1, 1, block.router.weight.shape[1]), 0.3)
    x[..., 0] = 1.0
    layer = from_transformers(block)
    assert torch.equal(layer(x).router.topk_idx, block_topk_idx(block, x))
    torch.testing.assert_close(layer(x).y, block_output(block, x), atol=1e-6, rtol=1e-5)


def test_deepseek_without_shared_experts_keeps_the_blocks_names():
    """n_shared_experts = 0: transformers still holds a shared MLP of width 0; the layer keeps it
    under its name (it adds nothing), so the state dict is the block's."""
    block = tiny_block("DeepSeek-V3", n_shared_experts=0)
    layer = from_transformers(block)
    assert list(layer.state_dict()) == list(block.state_dict())
    x = torch.randn(2, 5, block.gate.weight.shape[1])
    torch.testing.assert_close(layer(x).y, block_output(block, x), atol=1e-6, rtol=1e-5)


def test_deepseek_in_bfloat16_keeps_its_float32_router():
    """from_pretrained(dtype=bfloat16) keeps DeepSeek-V3's gate.weight and selection bias in
    float32; the layer computes with them as they are (once it rounded them to bf16 and 106 of
    8192 tokens went elsewhere)."""
    block = tiny_block("DeepSeek-V3", n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                       topk_group=2).to(torch.bfloat16)
    block.gate.float()  # as _keep_in_fp32_modules_strict leaves them
    layer = from_transformers(block)
    assert layer.router.weight.dtype == layer.router.score_correction_bias.dtype == torch.float32
    assert layer.experts.w_up.dtype == torch.bfloat16
    x = torch.randn(64, 1, 16).to(torch.bfloat16)
    assert torch.equal(layer(x).router.topk_idx.sort(dim=-1).values, block_topk_idx(block, x))
    assert_bf16_close(layer(x).y, block_output(block, x))


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_bfloat16_blocks_pick_the_same_experts(family):
    """In bfloat16 the layer routes as the family (logits in bf16 where the family computes them
    so): every token picks the block's experts; outputs agree to bf16 rounding."""
    block = tiny_block(family, n_routed_experts=16, n_group=4, topk_group=2) if family == "DeepSeek-V3" \
        else tiny_block(family)
    block = block.to(torch.bfloat16)
    layer = from_transformers(block)
    x = torch.randn(4, 64, 16, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    assert torch.equal(layer(x).router.topk_idx.sort(dim=-1).values, block_topk_idx(block, x))
    assert_bf16_close(layer(x).y, block_output(block, x))


def test_tiny_block_checks_the_family():
    with pytest.raises(ValueError, match="family"):
        tiny_block("Switch")


def test_an_unsupported_transformers_is_named(monkeypatch):
    import transformers

    block = tiny_block("OLMoE")
    monkeypatch.setattr(transformers, "__version__", "4.57.1")
    with pytest.raises(ImportError, match="4.57.1"):
        from_transformers(block)
    with pytest.raises(ImportError, match="transformers>=5"):
        tiny_block("OLMoE")
