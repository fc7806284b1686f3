"""moe_lab.interop.swap_moe_blocks inside whole transformers models: for each of the seven
families, a tiny causal LM (odd E, K = 1 and K = E, widths not a multiple of 8, dense layers
between MoE layers, a left-padded batch) with every MoE block swapped gives the same logits and
the same greedy generation in float32 and in bfloat16 (loaded as the family loads it), reaches
the model's parameters with its gradients, reports router logits to transformers (aux loss),
keeps the state dict's names (save_pretrained / from_pretrained), compiles with fullgraph=True,
and restores the original blocks."""

import functools

import pytest
import torch

pytest.importorskip("transformers")

from moe_lab.interop import (  # noqa: E402
    FAMILIES,
    FamilyMoE,
    SwappedMoEBlock,
    restore_moe_blocks,
    swap_moe_blocks,
    tiny_block,
    tiny_model,
)

FAMILY_NAMES = [family.name for family in FAMILIES]


def model_class(family):
    return type(tiny_model(family))


def batch(seed=0):
    """Two sequences, the second left-padded by three tokens."""
    ids = torch.randint(3, 256, (2, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


def generate(model, ids, mask):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)


def moe_blocks(model):
    return [m for m in model.modules() if isinstance(m, SwappedMoEBlock)]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_float32_logits_generation_and_router_logits_equal(family):
    model = tiny_model(family)
    ids, mask = batch()
    expected = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    expected_tokens = generate(model, ids, mask)
    parameters = dict(model.named_parameters())
    keys = list(model.state_dict())

    assert swap_moe_blocks(model) is model
    assert len(moe_blocks(model)) == {"Qwen2-MoE": 1, "DeepSeek-V3": 1, "Llama 4": 1}.get(family, 2)
    assert list(model.state_dict()) == keys  # the family's names, in its order
    assert all(p is parameters[name] for name, p in model.named_parameters())  # no copies
    out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert len(out.router_logits) == len(expected.router_logits) > 0
    for ours, theirs in zip(out.router_logits, expected.router_logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    if expected.aux_loss is not None:  # the families whose causal LM adds the aux loss
        torch.testing.assert_close(out.aux_loss, expected.aux_loss, atol=1e-5, rtol=1e-5)
    assert torch.equal(generate(model, ids, mask), expected_tokens)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bfloat16_as_the_family_loads_it(family, tmp_path):
    """from_pretrained(dtype=bfloat16) with the family's own dtype rules (DeepSeek-V3 keeps its
    router in float32): the same router logits, the same logits bit for bit (the swapped
    blocks follow the eager experts' rounding: the "loop" dispatch, the family's weight dtype),
    the same greedy tokens."""
    tiny_model(family).save_pretrained(tmp_path)
    # the eager experts: transformers' grouped_mm refuses widths like 20 in bf16 on a CPU
    model = model_class(family).from_pretrained(tmp_path, dtype=torch.bfloat16,
                                        experts_implementation="eager").eval()
    ids, mask = batch(1)
    expected = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    expected_tokens = generate(model, ids, mask)
    swap_moe_blocks(model)
    if family == "DeepSeek-V3":
        assert moe_blocks(model)[0].router.weight.dtype == torch.float32
    out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    assert torch.equal(out.router_logits[0], expected.router_logits[0])
    if family != "Llama 4":  # Llama 4's experts are its own (no experts implementation)
        assert all(block.dispatch == "loop" for block in moe_blocks(model))
    assert torch.equal(out.logits, expected.logits)
    assert torch.equal(generate(model, ids, mask), expected_tokens)


# widths the grouped kernels take in bf16 (multiples of 8); OLMoE's q/k norms need head_dim * heads
ALIGNED = dict(hidden_size=64, intermediate_size=32, moe_intermediate_size=32,
               shared_expert_intermediate_size=32, head_dim=32)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bfloat16_logits_are_bit_for_bit_in_each_experts_implementation(family, implementation):
    """With weights large enough that every rounding shows (std 0.3), a bf16 model's logits are
    the same bits before and after the swap, whichever experts implementation transformers runs
    (Llama 4 has only its own): the swapped blocks combine in the family's weight dtype and
    follow the implementation's order of sums."""
    names = {"Mixtral", "Qwen2-MoE", "Qwen3-MoE", "OLMoE", "DeepSeek-V3", "gpt-oss", "Llama 4"}
    assert set(FAMILY_NAMES) == names
    config = {k: v for k, v in ALIGNED.items() if family == "OLMoE" or k != "head_dim"}
    if family == "Qwen2-MoE":
        config["mlp_only_layers"] = []
    model = tiny_model(family, **config)
    redraw(model)
    model = model.to(torch.bfloat16)
    if not model._can_set_experts_implementation():
        if implementation != "eager":
            pytest.skip(f"{family} has only its own experts implementation")
    else:
        model.set_experts_implementation(implementation)
    ids = torch.randint(3, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    expected = model(ids).logits
    swap_moe_blocks(model)
    assert torch.equal(model(ids).logits, expected)
    for block in moe_blocks(model):  # an assigned dispatch is kept (and validated)
        block.dispatch = "padded"
        with pytest.raises(ValueError, match="dispatch"):
            block.dispatch = "fastest"
    assert all(block.dispatch == "padded" for block in moe_blocks(model))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_gradients_reach_the_models_parameters(family):
    model = tiny_model(family)
    reference = tiny_model(family)  # the same seed: the same weights, never swapped
    ids, mask = batch(2)
    swap_moe_blocks(model.train())
    reference.train()
    model.model.embed_tokens.requires_grad_(False)  # a frozen parameter stays frozen
    reference.model.embed_tokens.requires_grad_(False)
    for m in (model, reference):
        m(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    grads = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None
            continue
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, grads[name].grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["Mixtral", "Qwen2-MoE", "OLMoE", "gpt-oss"])
def test_aux_loss_joins_the_training_loss(family):
    model = tiny_model(family)
    ids, mask = batch(3)
    expected = model(input_ids=ids, attention_mask=mask, labels=ids, output_router_logits=True)
    swap_moe_blocks(model)
    out = model(input_ids=ids, attention_mask=mask, labels=ids, output_router_logits=True)
    assert out.aux_loss is not None and out.aux_loss > 0
    torch.testing.assert_close(out.loss, expected.loss, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    router = moe_blocks(model)[0].router
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_pretrained_of_a_swapped_model_round_trips(family, tmp_path):
    model = swap_moe_blocks(tiny_model(family, seed=4))
    model.save_pretrained(tmp_path)
    fresh = model_class(family).from_pretrained(tmp_path).eval()
    ids, mask = batch(4)
    torch.testing.assert_close(fresh(input_ids=ids, attention_mask=mask).logits,
                               model(input_ids=ids, attention_mask=mask).logits,
                               atol=1e-5, rtol=1e-5)
    state = fresh.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_restore_puts_back_the_blocks_with_the_current_parameters(family):
    model = tiny_model(family)
    ids, mask = batch(5)
    swap_moe_blocks(model)
    block = moe_blocks(model)[0]
    # replace a parameter object (as load_state_dict(assign=True) does) and edit it
    replacement = torch.nn.Parameter(block.experts.down_proj.detach() * 2)
    block.experts.down_proj = replacement
    expected = model(input_ids=ids, attention_mask=mask).logits
    restore_moe_blocks(model)
    assert not moe_blocks(model)
    assert not any(isinstance(m, FamilyMoE) for m in model.modules())
    assert any(p is replacement for p in model.parameters())
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected,
                               atol=1e-5, rtol=1e-5)


# Configurations beyond the tiny defaults: odd E, K = 1 and K = E, widths not a multiple of 8,
# interleaved MoE layers, DeepSeek-V3's group limits and scaling, no shared experts, and a
# Llama 4 router whose logits saturate the sigmoid (router_std).
VARIANTS = [
    ("Mixtral", dict(num_local_experts=7, num_experts_per_tok=3, hidden_size=36,
                     intermediate_size=20)),
    ("Mixtral", dict(num_local_experts=5, num_experts_per_tok=5)),
    ("Qwen2-MoE", dict(num_hidden_layers=4, mlp_only_layers=[], decoder_sparse_step=2,
                       num_experts=7, num_experts_per_tok=1)),
    ("Qwen2-MoE", dict(mlp_only_layers=[], hidden_size=36, moe_intermediate_size=20,
                       shared_expert_intermediate_size=20, num_experts=5,
                       num_experts_per_tok=3, norm_topk_prob=True)),
    ("Qwen3-MoE", dict(num_experts=5, num_experts_per_tok=2, norm_topk_prob=False)),
    ("OLMoE", dict(num_experts=7, num_experts_per_tok=3, norm_topk_prob=True)),
    ("DeepSeek-V3", dict(n_routed_experts=9, n_group=3, topk_group=2, num_experts_per_tok=5,
                         first_k_dense_replace=0, routed_scaling_factor=0.7)),
    ("DeepSeek-V3", dict(n_group=2, topk_group=1, num_experts_per_tok=2, norm_topk_prob=False)),
    ("DeepSeek-V3", dict(n_shared_experts=0)),
    ("gpt-oss", dict(num_local_experts=5, num_experts_per_tok=1, swiglu_limit=0.3)),
    ("Llama 4", dict(num_hidden_layers=4, moe_layers=None, interleave_moe_layer_step=2,
                     num_local_experts=5, num_experts_per_tok=2)),
    ("Llama 4", dict(num_local_experts=5, num_experts_per_tok=2, router_std=5.0)),
]


def redraw(model, *, std=0.3, router_std=None, seed=123):
    """Weights large enough that every expert changes the logits (transformers' std 0.02 makes
    the MoE's share tiny): normal(0, std) for every matrix, router_std for the routers', and
    the selection and expert biases normal(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "norm" not in name:
                scale = router_std if router_std and name.endswith(("gate.weight",
                                                                    "router.weight")) else std
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
            elif name.endswith("_bias") or name.endswith(".bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))


@pytest.mark.parametrize("family, config", VARIANTS,
                         ids=[f"{f}-" + "-".join(f"{k}={v}" for k, v in c.items())[:60]
                              for f, c in VARIANTS])
def test_variants_equal_the_unswapped_model(family, config):
    config = dict(config)
    router_std = config.pop("router_std", None)
    model = tiny_model(family, **config)
    redraw(model, router_std=router_std)
    keys = list(model.state_dict())
    ids, mask = batch(1)
    expected = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    expected_tokens = generate(model, ids, mask)
    swap_moe_blocks(model)
    assert list(model.state_dict()) == keys
    out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    scale = max(1.0, expected.logits.abs().max().item())
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5 * scale, rtol=0)
    for ours, theirs in zip(out.router_logits, expected.router_logits, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5 * scale, rtol=0)
    assert torch.equal(generate(model, ids, mask), expected_tokens)
    restore_moe_blocks(model)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected.logits,
                               atol=0, rtol=0)


def initialised_on_meta(family, *, swap):
    """Built on the meta device (no memory), optionally swapped, then materialised and
    initialised by transformers (``initialize_weights``, as ``from_pretrained`` does for missing
    weights) under one seed: the state dict."""
    config = tiny_model(family).config
    with torch.device("meta"):
        model = model_class(family)(config)
    if swap:
        swap_moe_blocks(model)
    model.to_empty(device="cpu")
    for module in model.modules():  # forget the initialisation done on the meta device
        module.__dict__.pop("_is_hf_initialized", None)
    torch.manual_seed(1)
    model.initialize_weights()
    return model.state_dict()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_transformers_initialises_swapped_blocks_as_the_family_does(family):
    """transformers initialises by module class; a swapped block is initialised through its
    original block, so the swapped model's weights are the unswapped model's, bit for bit, in
    the family's own distributions (e.g. the routers' normal(0, initializer_range), not zeros
    or whatever memory to_empty left)."""
    plain, swapped = initialised_on_meta(family, swap=False), initialised_on_meta(family, swap=True)
    assert list(swapped) == list(plain)
    for name, tensor in plain.items():
        assert torch.equal(swapped[name], tensor), name
    experts = [name for name in plain if ".experts." in name]
    assert experts and all(0 < swapped[name].float().std() < 1 for name in experts
                           if swapped[name].numel() > 1 and "bias" not in name)


def _compiled_logits_equal_eager(model):
    """Dynamo captures the whole model in one graph, and it computes the eager logits."""
    ids, mask = batch(6)
    expected = model(input_ids=ids, attention_mask=mask).logits
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(input_ids=ids, attention_mask=mask).logits, expected,
                               atol=1e-5, rtol=1e-5)


@functools.cache
def _why_dynamo_cannot_capture_transformers() -> str | None:
    """None when this torch's Dynamo captures an *unswapped* tiny model in one graph (transformers'
    grouped experts), else its reason: torch 2.6 stops inside transformers' own output wrapper."""
    model = tiny_model("Mixtral", intermediate_size=16)
    model.set_experts_implementation("grouped_mm")
    try:
        _compiled_logits_equal_eager(model)
    except torch._dynamo.exc.Unsupported as error:
        return str(error).splitlines()[0]
    return None


def assert_compiles_in_one_graph(model):
    """:func:`_compiled_logits_equal_eager`, skipped (with the reason) only where this torch's
    Dynamo cannot capture transformers' unswapped model either: no fault of moe_lab's."""
    try:
        _compiled_logits_equal_eager(model)
    except torch._dynamo.exc.Unsupported:
        why = _why_dynamo_cannot_capture_transformers()
        if why is None:
            raise
        pytest.skip(f"torch {torch.__version__} cannot compile transformers' unswapped model in "
                    f"one graph either: {why}")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_the_whole_swapped_model_compiles_with_fullgraph(family):
    """Dynamo captures the whole model in one graph (dense dispatch: no data-dependent shapes)."""
    model = swap_moe_blocks(tiny_model(family))
    for block in moe_blocks(model):
        block.dispatch = "dense"
    assert_compiles_in_one_graph(model)


@pytest.mark.slow
@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
def test_the_swapped_model_compiles_with_fullgraph_and_the_sorted_dispatch(implementation):
    """The default dispatch compiles in one graph; with transformers' eager experts the swapped
    blocks run the loop in eager mode (bit for bit as the family) and the sorted dispatch under
    torch.compile (transformers' own eager experts cannot be captured in one graph)."""
    model = tiny_model("Mixtral", intermediate_size=16)
    model.set_experts_implementation(implementation)
    swap_moe_blocks(model)
    expected_dispatch = "loop" if implementation == "eager" else "sorted"
    assert all(block.dispatch == expected_dispatch for block in moe_blocks(model))
    assert_compiles_in_one_graph(model)


def test_bad_input_is_refused_by_name():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        swap_moe_blocks("Mixtral")
    with pytest.raises(ValueError, match="from_transformers"):
        swap_moe_blocks(tiny_block("Mixtral"))
    with pytest.raises(ValueError, match="holds no MoE block"):
        swap_moe_blocks(torch.nn.Linear(4, 4))
    model = swap_moe_blocks(tiny_model("OLMoE"))
    with pytest.raises(ValueError, match="2 already swapped"):
        swap_moe_blocks(model)
    with pytest.raises(ValueError, match="no swapped MoE block"):
        restore_moe_blocks(tiny_model("OLMoE"))


def test_a_block_that_cannot_be_read_leaves_the_model_untouched():
    model = tiny_model("Mixtral")
    model.model.layers[1].mlp.experts = torch.nn.ModuleList([torch.nn.Linear(20, 20)])
    with pytest.raises(TypeError, match="ModuleList"):
        swap_moe_blocks(model)
    assert not moe_blocks(model)
