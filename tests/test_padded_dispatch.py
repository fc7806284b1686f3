"""The capacity-padded bmm path (dispatch="padded") against the dense reference: outputs and
gradients (input, router, experts), dropless and with capacity, plus the buffer it builds."""

import pytest
import torch

from moe_lab import SparseMoE, make_routing_plan
from moe_lab.dispatch import dispatch_dense, dispatch_padded

# (N, D, F, E, K, activation, capacity_factor)
CASES = [
    (24, 8, 16, 4, 2, "swiglu", None),  # dropless: C = the busiest expert's load
    (24, 8, 16, 4, 2, "swiglu", 1.0),
    (24, 8, 16, 4, 2, "swiglu", 0.5),  # heavy dropping
    (24, 8, 16, 4, 2, "swiglu", 4.0),  # C > N: mostly padding
    (2, 8, 16, 8, 2, "swiglu", None),  # most experts idle
    (2, 8, 16, 8, 2, "swiglu", 0.1),  # C = 1
    (17, 12, 8, 6, 1, "gelu", 1.25),
    (10, 8, 8, 4, 4, "relu", 1.0),  # K = E
]


def _forward_backward(strategy, case, x, grad_y):
    n, d, f, e, k, act, cf = case
    torch.manual_seed(1)
    layer = SparseMoE(d, f, e, k, dispatch=strategy, activation=act, capacity_factor=cf)
    x = x.clone().requires_grad_(True)
    out = layer(x)
    out.y.backward(grad_y)
    return out, x.grad, {name: p.grad for name, p in layer.named_parameters()}


@pytest.mark.parametrize("case", CASES, ids=[f"N{c[0]}-E{c[3]}-K{c[4]}-cf{c[6]}" for c in CASES])
def test_padded_equals_dense_outputs_and_gradients(case):
    torch.manual_seed(0)
    x, grad_y = torch.randn(case[0], case[1]), torch.randn(case[0], case[1])
    dense, dense_gx, dense_grads = _forward_backward("dense", case, x, grad_y)
    padded, padded_gx, padded_grads = _forward_backward("padded", case, x, grad_y)
    torch.testing.assert_close(padded.y, dense.y, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded.dropped, dense.dropped)
    torch.testing.assert_close(padded.tokens_per_expert, dense.tokens_per_expert)
    torch.testing.assert_close(padded_gx, dense_gx, atol=1e-5, rtol=1e-4)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    if case[6] is not None and case[6] <= 0.5:
        assert padded.num_dropped > 0  # the capacity really cut something


def test_padded_buffer_has_e_times_c_rows_and_padding_costs_flops():
    """The bmm runs on exactly E*C rows: with C = capacity, padding is computed and thrown away."""
    torch.manual_seed(0)
    layer = SparseMoE(8, 16, 4, 2, dispatch="padded", capacity_factor=2.0)
    x = torch.randn(12, 8)
    seen = []
    original = layer.experts.forward_padded
    layer.experts.forward_padded = lambda buf: seen.append(tuple(buf.shape)) or original(buf)
    out = layer(x)
    capacity = layer.capacity(12)  # ceil(2.0 * 12 * 2 / 4) = 12
    assert capacity == 12
    assert seen == [(4, capacity, 8)]
    assert int(out.tokens_per_expert.sum()) == 24 < 4 * capacity  # half the rows are padding


def test_padded_dropless_capacity_is_busiest_expert():
    torch.manual_seed(0)
    x = torch.randn(9, 8)
    layer = SparseMoE(8, 16, 4, 2, dispatch="padded")
    routing = layer.router(x)
    plan = make_routing_plan(routing.topk_idx, routing.topk_weights, 4)
    seen = []
    original = layer.experts.forward_padded
    layer.experts.forward_padded = lambda buf: seen.append(buf.shape[1]) or original(buf)
    y = dispatch_padded(x, plan, layer.experts)
    assert seen == [int(plan.tokens_per_expert.max())]
    torch.testing.assert_close(y, dispatch_dense(x, plan, layer.experts), atol=1e-5, rtol=1e-4)
