"""Shared experts (DeepSeekMoE): every shared expert runs on every token and is added, unweighted,
to the routed sum. Tested against a plain loop over tokens, shared and routed experts: outputs and
gradients, every dispatch strategy, with and without capacity, and on empty input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from plain_references import one_expert

from moe_lab import SparseMoE
from moe_lab.dispatch import DISPATCH_STRATEGIES


def loop_reference(layer, x):
    """y_n = sum_s Shared_s(x_n) + sum_{k kept} w_{n,k} Expert_{i_{n,k}}(x_n), token by token."""
    out = layer(x)  # the routing decision (and drops) to replay
    x_flat = x.reshape(-1, layer.d_model)
    rows = []
    for n in range(x_flat.shape[0]):
        y_n = torch.zeros(layer.d_model)
        for s in range(layer.num_shared_experts):
            y_n = y_n + one_expert(layer.shared_experts, s, x_flat[n])
        for k in range(layer.top_k):
            if not out.dropped[n, k]:
                e = int(out.router.topk_idx[n, k])
                y_n = y_n + out.router.topk_weights[n, k] * one_expert(layer.experts, e, x_flat[n])
        rows.append(y_n)
    return torch.stack(rows).view(x.shape) if rows else x.new_zeros(x.shape)


# (N, D, F, E, K, shared, activation, capacity_factor)
CASES = [
    (12, 8, 16, 4, 2, 1, "swiglu", None),
    (1, 8, 16, 4, 2, 2, "swiglu", None),
    (10, 8, 12, 7, 3, 3, "gelu", None),
    (20, 8, 8, 8, 1, 1, "relu", 0.5),  # drops: the shared experts still see every token
    (16, 16, 8, 31, 7, 1, "swiglu", None),  # the lesson's 1 shared + 31 routed, top-7
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("dispatch", DISPATCH_STRATEGIES)
def test_shared_experts_match_loop_reference(case, dispatch):
    n, d, f, e, k, shared, act, cf = case
    layer = SparseMoE(d, f, e, k, num_shared_experts=shared, dispatch=dispatch, activation=act,
                      capacity_factor=cf)
    x = torch.randn(n, d, requires_grad=True)
    grad_y = torch.randn(n, d)
    y = layer(x).y
    grads = torch.autograd.grad(y, (x, *layer.parameters()), grad_y)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = loop_reference(layer, x_ref)
    grads_ref = torch.autograd.grad(y_ref, (x_ref, *layer.parameters()), grad_y)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    names = ["x", *(name for name, _ in layer.named_parameters())]
    for name, g, g_ref in zip(names, grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4, msg=name)


def test_a_dropped_token_still_gets_the_shared_experts():
    layer = SparseMoE(8, 16, 4, 1, num_shared_experts=1, capacity_factor=0.25)
    x = torch.randn(16, 8)
    out = layer(x)
    assert out.num_dropped > 0
    dropped_token = int(torch.where(out.dropped[:, 0])[0][0])
    # a token whose routed assignment was dropped still gets the shared expert's output
    shared_only = layer.shared_experts.forward_expert(x[dropped_token:dropped_token + 1], 0)[0]
    torch.testing.assert_close(out.y[dropped_token], shared_only)


def test_zero_shared_experts_is_the_plain_layer():
    torch.manual_seed(0)
    plain = SparseMoE(8, 16, 4, 2)
    torch.manual_seed(0)
    zero = SparseMoE(8, 16, 4, 2, num_shared_experts=0)
    assert zero.shared_experts is None
    assert sum(p.numel() for p in zero.parameters()) == sum(p.numel() for p in plain.parameters())
    x = torch.randn(5, 8)
    torch.testing.assert_close(zero(x).y, plain(x).y)


def test_shared_expert_parameters_and_batched_shape():
    layer = SparseMoE(8, 16, 4, 2, num_shared_experts=2)
    assert layer.shared_experts.w_gate.shape == (2, 8, 16)
    x = torch.randn(3, 5, 8)
    out = layer(x)
    assert out.y.shape == (3, 5, 8)
    torch.testing.assert_close(out.y, loop_reference(layer, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dispatch", DISPATCH_STRATEGIES)
@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8)])
def test_empty_input_with_shared_experts(dispatch, shape):
    layer = SparseMoE(8, 16, 4, 2, num_shared_experts=1, dispatch=dispatch)
    out = layer(torch.randn(*shape))
    assert out.y.shape == shape
    assert out.tokens_per_expert.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_num_shared_experts(value, error):
    with pytest.raises(error, match="num_shared_experts"):
        SparseMoE(8, 16, 4, 2, num_shared_experts=value)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 12), e=st.integers(1, 6), k=st.integers(1, 6), shared=st.integers(0, 3),
       dispatch=st.sampled_from(DISPATCH_STRATEGIES), cf=st.sampled_from([None, 0.5, 1.5]),
       seed=st.integers(0, 2**16))
def test_shared_experts_match_loop_over_shapes(n, e, k, shared, dispatch, cf, seed):
    torch.manual_seed(seed)
    layer = SparseMoE(4, 8, e, min(k, e), num_shared_experts=shared, dispatch=dispatch,
                      capacity_factor=cf)
    x = torch.randn(n, 4)
    torch.testing.assert_close(layer(x).y, loop_reference(layer, x), atol=1e-5, rtol=1e-4)


def test_config_round_trip_keeps_the_shared_experts():
    layer = SparseMoE(8, 16, 4, 2, num_shared_experts=2)
    assert layer.config.num_shared_experts == 2
    twin = SparseMoE.from_config(layer.config)
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(5, 8)
    torch.testing.assert_close(twin(x).y, layer(x).y)
