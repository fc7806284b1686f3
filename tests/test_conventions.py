"""The real models' routing conventions (lesson 09): the core's options (scaling factor,
group-limited selection, Llama 4's input weighting, shared experts and their gate, GeGLU) and
gpt-oss's quirks kept in moe_lab.interop.quirks (logit bias, expert biases, clamped SwiGLU). Each
against a plain loop, outputs and gradients, under every dispatch."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from moe_lab import SparseMoE, TopKRouter
from moe_lab.dispatch import DISPATCH_STRATEGIES
from moe_lab.interop.quirks import BlockNames, FamilyMoE, FamilyRouter, GptOssExperts
from moe_lab.layer import SparseMoEConfig
from moe_lab.routing import limit_to_top_groups, topk_routing

torch.manual_seed(0)


def loop_group_limited_topk(scores, top_k, num_groups, topk_groups):
    """Token by token: group score = sum of the group's two best scores; keep the best groups."""
    chosen = []
    for row in scores.tolist():
        size = len(row) // num_groups
        groups = [sorted(row[g * size:(g + 1) * size], reverse=True) for g in range(num_groups)]
        group_score = [sum(g[:2]) for g in groups]
        best_groups = sorted(range(num_groups), key=lambda g: -group_score[g])[:topk_groups]
        eligible = [e for e in range(len(row)) if e // size in best_groups]
        chosen.append(sorted(sorted(eligible, key=lambda e: -row[e])[:top_k]))
    return chosen


@pytest.mark.parametrize("num_experts,num_groups,topk_groups,top_k",
                         [(8, 4, 2, 2), (16, 4, 1, 3), (12, 3, 2, 5), (8, 8, 3, 3), (8, 2, 2, 8)])
def test_group_limited_selection_matches_a_loop(num_experts, num_groups, topk_groups, top_k):
    scores = torch.rand(50, num_experts)
    idx, _ = topk_routing(scores, top_k, num_groups=num_groups, topk_groups=topk_groups)
    assert sorted(map(sorted, idx.tolist())) == sorted(
        loop_group_limited_topk(scores, top_k, num_groups, topk_groups))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 12), st.integers(1, 4), st.integers(2, 4), st.data())
def test_group_limited_selection_property(num_tokens, num_groups, group_size, data):
    """Over shapes: the choice matches the loop, and every chosen expert lies in a kept group."""
    num_experts = num_groups * group_size
    topk_groups = data.draw(st.integers(1, num_groups))
    top_k = data.draw(st.integers(1, topk_groups * group_size))
    scores = torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(num_tokens))
    idx, _ = topk_routing(scores, top_k, num_groups=num_groups, topk_groups=topk_groups)
    assert idx.shape == (num_tokens, top_k)
    assert sorted(map(sorted, idx.tolist())) == sorted(
        loop_group_limited_topk(scores, top_k, num_groups, topk_groups))
    groups_used = [len(set((row // group_size).tolist())) for row in idx]
    assert all(g <= topk_groups for g in groups_used)


def test_group_limit_changes_the_choice_at_a_known_point():
    # groups {0,1} {2,3}: group 0 scores 0.9+0.0, group 1 scores 0.5+0.5 -> group 1 wins
    scores = torch.tensor([[0.9, 0.0, 0.5, 0.5]])
    assert limit_to_top_groups(scores, 2, 1).tolist() == [[float("-inf")] * 2 + [0.5, 0.5]]
    idx, _ = topk_routing(scores, 1, num_groups=2, topk_groups=1)
    assert idx.tolist() == [[2]]
    assert topk_routing(scores, 1)[0].tolist() == [[0]]  # without the limit: expert 0


def _param(generator, *shape, scale=1.0):
    return nn.Parameter(torch.randn(*shape, generator=generator) * scale / shape[-1] ** 0.5)


def gpt_oss_layer(d_model, d_ff, num_experts, top_k, dispatch="sorted", seed=1):
    """gpt-oss's conventions as interop builds them: a router with a logit bias, clamped SwiGLU
    experts with biases (random weights, large enough that the clamps bite)."""
    g = torch.Generator().manual_seed(seed)
    router = FamilyRouter(_param(g, num_experts, d_model), top_k, bias=_param(g, num_experts),
                          router_dtype=torch.float32)
    experts = GptOssExperts(_param(g, num_experts, d_model, 2 * d_ff, scale=8.0),
                            _param(g, num_experts, 2 * d_ff), _param(g, num_experts, d_ff, d_model),
                            _param(g, num_experts, d_model), alpha=1.702, limit=7.0)
    config = SparseMoEConfig(d_model, d_ff, num_experts, top_k, dispatch=dispatch)
    return FamilyMoE(config, BlockNames(router="router"), router, experts, family="gpt-oss")


def test_router_bias_and_scaling_factor_against_the_formula():
    g = torch.Generator().manual_seed(0)
    router = FamilyRouter(_param(g, 5, 6), 2, bias=_param(g, 5), scoring="sigmoid",
                          scaling_factor=2.5, router_dtype=torch.float32)
    x = torch.randn(7, 6)
    out = router(x)
    logits = x @ router.weight.T + router.bias  # (N, E)
    torch.testing.assert_close(out.logits, logits)
    top = torch.sigmoid(logits).topk(2, dim=-1)
    assert torch.equal(out.topk_idx, top.indices)
    torch.testing.assert_close(out.topk_weights, 2.5 * top.values / top.values.sum(-1, keepdim=True))


def test_defaults_keep_todays_router():
    router = TopKRouter(4, 3, 1)
    assert router.scaling_factor == 1.0 and router.num_groups == 1
    assert router.router_dtype == torch.float32
    assert set(dict(router.named_parameters())) == {"weight"}


@pytest.mark.parametrize("kwargs,error", [
    (dict(num_groups=3), ValueError),        # 8 experts do not split into 3 groups
    (dict(num_groups=4, topk_groups=5), ValueError),
    (dict(num_groups=4, topk_groups=1, top_k=3), ValueError),  # 3 do not fit in one group of 2
    (dict(num_groups=0), ValueError),
    (dict(topk_groups=1.5), TypeError),
    (dict(scaling_factor=0.0), ValueError),
    (dict(scaling_factor="2"), TypeError),
])
def test_bad_router_options_are_refused_by_name(kwargs, error):
    args = dict(top_k=2) | kwargs
    with pytest.raises(error, match=next(iter(kwargs))):
        TopKRouter(4, 8, args.pop("top_k"), **args)


def reference_expert(experts, e, x):
    """One expert, written out from the formulas of experts.py and interop/quirks.py."""
    if isinstance(experts, GptOssExperts):
        limit = experts.limit
        gate_up = x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
        g, u = gate_up[:, ::2].clamp(max=limit), gate_up[:, 1::2].clamp(-limit, limit)
        h = (u + 1) * g * torch.sigmoid(experts.alpha * g)
        return h @ experts.down_proj[e] + experts.down_proj_bias[e]
    act = {"swiglu": F.silu, "geglu": F.gelu, "gelu": F.gelu, "relu": F.relu}[experts.activation]
    if experts.w_gate is None:
        return act(x @ experts.w_up[e]) @ experts.w_down[e]
    return (act(x @ experts.w_gate[e]) * (x @ experts.w_up[e])) @ experts.w_down[e]


def reference_layer(layer, x):
    routing = layer.router(x)
    y = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for k in range(layer.top_k):
            e, w = int(routing.topk_idx[n, k]), routing.topk_weights[n, k]
            if layer.weight_inputs:
                y[n] += reference_expert(layer.experts, e, w * x[n:n + 1])[0]
            else:
                y[n] += w * reference_expert(layer.experts, e, x[n:n + 1])[0]
        for s in range(layer.num_shared_experts):
            gate = (torch.sigmoid(x[n] @ layer.shared_expert_gate.weight[0])
                    if layer.shared_expert_gate is not None else 1.0)
            y[n] += gate * reference_expert(layer.shared_experts, s, x[n:n + 1])[0]
    return y


CONVENTIONS = [
    dict(family="gpt-oss"),                                                             # interop
    dict(scoring="sigmoid", num_groups=4, topk_groups=2, scaling_factor=2.5),           # DeepSeek-V3
    dict(scoring="sigmoid", normalize=False, weight_inputs=True),                       # Llama 4
    dict(activation="geglu", weight_inputs=True),
    dict(num_shared_experts=1, shared_d_ff=20, gate_shared_experts=True, normalize=False),  # Qwen2
    dict(num_shared_experts=2, shared_d_ff=5, gate_shared_experts=True, weight_inputs=True),
    dict(activation="geglu", num_shared_experts=2, gate_shared_experts=True),
    dict(activation="relu", num_shared_experts=1),
]


def make_layer(options, dispatch="sorted"):
    if options.get("family") == "gpt-oss":
        return gpt_oss_layer(8, 12, 8, 3, dispatch=dispatch)
    torch.manual_seed(1)
    layer = SparseMoE(8, 12, 8, 3, dispatch=dispatch, **options)
    with torch.no_grad():  # large pre-activations, where the activations differ most
        layer.experts.w_up.mul_(8)
    return layer


@pytest.mark.parametrize("dispatch", DISPATCH_STRATEGIES)
@pytest.mark.parametrize("options", CONVENTIONS, ids=lambda o: ",".join(o))
def test_conventions_match_the_loop_outputs_and_gradients(options, dispatch):
    layer = make_layer(options, dispatch)
    x = torch.randn(20, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = layer(x)
    expected = reference_layer(layer, x_ref)
    torch.testing.assert_close(out.y, expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(expected)
    out.y.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


def test_clamps_bite_in_the_gpt_oss_test():
    experts = gpt_oss_layer(8, 12, 8, 3).experts
    pre = torch.randn(20, 8) @ experts.gate_up_proj[0]  # (N, 2F)
    assert (pre[:, ::2] > experts.limit).any() and (pre[:, 1::2].abs() > experts.limit).any()


def test_shared_experts_are_built_with_the_layers_activation():
    """The routed and the shared experts are made by one rule: the same activation."""
    for activation in ("swiglu", "geglu", "gelu", "relu"):
        layer = SparseMoE(8, 12, 4, 2, activation=activation, num_shared_experts=2, shared_d_ff=6)
        assert layer.shared_experts.activation == layer.experts.activation == activation
        assert (layer.shared_experts.w_gate is None) == (layer.experts.w_gate is None)


@pytest.mark.parametrize("dispatch", DISPATCH_STRATEGIES)
def test_weight_inputs_with_capacity_drops_the_same_assignments(dispatch):
    torch.manual_seed(2)
    output_weighted = SparseMoE(8, 12, 4, 2, dispatch=dispatch, capacity_factor=0.5)
    input_weighted = SparseMoE(8, 12, 4, 2, dispatch=dispatch, capacity_factor=0.5, weight_inputs=True)
    input_weighted.load_state_dict(output_weighted.state_dict())
    x = torch.randn(30, 8)
    a, b = output_weighted(x), input_weighted(x)
    assert a.num_dropped > 0
    assert torch.equal(a.dropped, b.dropped) and torch.equal(a.tokens_per_expert, b.tokens_per_expert)
    # a token whose slots were all dropped gets 0 in both orders
    all_dropped = b.dropped.all(dim=1)
    assert torch.equal(b.y[all_dropped], torch.zeros_like(b.y[all_dropped]))


def test_input_and_output_weighting_differ_for_swiglu():
    torch.manual_seed(3)
    a = SparseMoE(8, 12, 4, 1, normalize=False)
    b = SparseMoE(8, 12, 4, 1, normalize=False, weight_inputs=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(10, 8)
    assert (a(x).y - b(x).y).abs().max() > 1e-3


def test_empty_input_with_every_convention():
    for options in CONVENTIONS:
        out = make_layer(options)(torch.randn(0, 8))
        assert out.y.shape == (0, 8) and out.router.topk_idx.shape == (0, 3)


def test_shared_gate_needs_a_shared_expert_and_widths_are_checked():
    with pytest.raises(ValueError, match="gate_shared_experts"):
        SparseMoE(8, 12, 4, 2, gate_shared_experts=True)
    with pytest.raises(ValueError, match="shared_d_ff"):
        SparseMoE(8, 12, 4, 2, num_shared_experts=1, shared_d_ff=0)
    layer = SparseMoE(8, 12, 4, 2, num_shared_experts=1, shared_d_ff=20, gate_shared_experts=True)
    assert layer.shared_experts.w_up.shape == (1, 8, 20)
    assert layer.shared_expert_gate.weight.shape == (1, 8)


def test_gpt_oss_options_of_the_core_are_gone_with_a_pointer():
    for options in (dict(router_bias=True), dict(expert_bias=True), dict(swiglu_limit=3.0)):
        with pytest.raises(TypeError, match="interop.quirks"):
            SparseMoE(8, 12, 4, 2, **options)
    with pytest.raises(ValueError, match="GptOssExperts"):
        SparseMoE(8, 12, 4, 2, activation="clamped_swiglu")
