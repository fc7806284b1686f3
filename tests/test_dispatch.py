"""Every dispatch strategy equals the dense reference: outputs and gradients, with and without
capacity, over a table of shapes (experts with no token, E > N, K = E, ...)."""

import pytest
import torch

from moe_lab import SparseMoE, make_routing_plan
from moe_lab.dispatch import dispatch_loop, dispatch_sorted

STRATEGIES = ("loop", "sorted", "padded")
# (N, D, F, E, K, activation, capacity_factor)
CASES = [
    (16, 8, 16, 4, 2, "swiglu", None),
    (1, 8, 16, 4, 2, "swiglu", None),  # one token: most experts get nothing
    (3, 8, 12, 16, 2, "swiglu", None),  # E > N
    (20, 12, 8, 8, 1, "gelu", None),  # Switch top-1
    (20, 12, 8, 8, 8, "relu", None),  # K = E
    (33, 16, 32, 8, 2, "swiglu", 1.0),
    (33, 16, 32, 8, 2, "swiglu", 0.25),  # heavy dropping
    (40, 8, 16, 4, 3, "gelu", 1.25),
    (64, 32, 64, 64, 8, "swiglu", None),
]


def _layers(case, seed=0):
    n, d, f, e, k, act, cf = case
    layers = {}
    for strategy in ("dense", *STRATEGIES):
        torch.manual_seed(seed)
        layers[strategy] = SparseMoE(d, f, e, k, dispatch=strategy, activation=act,
                                     capacity_factor=cf)
    return layers


def _run(layer, x, grad_y):
    x = x.clone().requires_grad_(True)
    out = layer(x)
    out.y.backward(grad_y)
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return out, x.grad, grads


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_matches_dense_reference(case, strategy):
    n, d = case[0], case[1]
    x = torch.randn(n, d)
    grad_y = torch.randn(n, d)
    layers = _layers(case)
    ref_out, ref_dx, ref_grads = _run(layers["dense"], x, grad_y)
    out, dx, grads = _run(layers[strategy], x, grad_y)
    torch.testing.assert_close(out.y, ref_out.y, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dx, ref_dx, atol=1e-5, rtol=1e-4)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert torch.equal(out.dropped, ref_out.dropped)
    assert torch.equal(out.tokens_per_expert, ref_out.tokens_per_expert)


def test_batched_input_keeps_its_shape():
    layer = SparseMoE(8, 16, 4, 2)
    x = torch.randn(3, 5, 8)
    out = layer(x)
    assert out.y.shape == (3, 5, 8)
    assert out.router.logits.shape == (15, 4)
    assert out.router.topk_idx.shape == (15, 2)
    assert out.dropped.shape == (15, 2)
    assert out.tokens_per_expert.shape == (4,)


@pytest.mark.parametrize("strategy", ("dense", *STRATEGIES))
@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8)])
def test_empty_input_gives_empty_output(strategy, shape):
    layer = SparseMoE(8, 16, 4, 2, dispatch=strategy, capacity_factor=1.0)
    out = layer(torch.randn(*shape))
    assert out.y.shape == shape
    assert out.dropped.shape == (0, 2)
    assert out.tokens_per_expert.tolist() == [0, 0, 0, 0]


def test_sorted_backward_with_a_stride_zero_gradient():
    """y.sum().backward() feeds an expanded (stride-0) gradient; grouped_mm must still work."""
    torch.manual_seed(1)
    sorted_layer = SparseMoE(16, 32, 4, 2, dispatch="sorted")
    torch.manual_seed(1)
    dense_layer = SparseMoE(16, 32, 4, 2, dispatch="dense")
    x = torch.randn(10, 16)
    sorted_layer(x).y.sum().backward()
    dense_layer(x).y.sum().backward()
    torch.testing.assert_close(sorted_layer.experts.w_down.grad, dense_layer.experts.w_down.grad,
                               atol=1e-5, rtol=1e-4)


class _Combine(torch.nn.Module):
    """Wraps a dispatch function so functional_call can swap the expert weights for gradcheck."""

    def __init__(self, experts, dispatch):
        super().__init__()
        self.experts, self.dispatch = experts, dispatch

    def forward(self, x, plan):
        return self.dispatch(x, plan, self.experts)


@pytest.mark.parametrize("dispatch", [dispatch_sorted, dispatch_loop])
def test_gradcheck_float64_combine(dispatch):
    """Finite differences agree with autograd for x, the gate weights and the expert weights."""
    layer = SparseMoE(4, 6, 3, 2).double()
    combine_module = _Combine(layer.experts, dispatch)
    n = 5
    x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    topk_idx = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2], [1, 0]])
    topk_weights = torch.rand(n, 2, dtype=torch.float64, requires_grad=True)
    w_up = layer.experts.w_up.detach().clone().requires_grad_(True)
    w_down = layer.experts.w_down.detach().clone().requires_grad_(True)

    def combine(x, topk_weights, w_up, w_down):
        plan = make_routing_plan(topk_idx, topk_weights, 3, capacity=3)  # drops some
        params = {"experts.w_up": w_up, "experts.w_down": w_down}
        return torch.func.functional_call(combine_module, params, (x, plan))

    assert torch.autograd.gradcheck(combine, (x, topk_weights, w_up, w_down))


def test_deterministic_sorted_dispatch():
    layer = SparseMoE(16, 32, 8, 2, dispatch="sorted")
    x = torch.randn(50, 16)
    assert torch.equal(layer(x).y, layer(x).y)


@pytest.mark.parametrize("strategy", ("dense", *STRATEGIES))
def test_bf16_autocast_runs_the_experts_in_bf16_and_answers_in_x_dtype(strategy):
    torch.manual_seed(0)
    layer = SparseMoE(32, 64, 4, 2, dispatch=strategy)
    x = torch.randn(40, 32)
    reference = layer(x).y
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.y.dtype == x.dtype  # the layer answers in its input's dtype
    assert not torch.equal(out.y, reference)  # the experts did run in bf16
    torch.testing.assert_close(out.y, reference, atol=3e-2, rtol=3e-2)
    out.y.pow(2).sum().backward()
    assert layer.experts.w_up.grad is not None


@pytest.mark.slow
def test_torch_compile_matches_eager_in_fp32():
    torch.manual_seed(0)
    layer = SparseMoE(32, 64, 8, 2)
    compiled = torch.compile(layer)
    x = torch.randn(64, 32, requires_grad=True)
    grad_y = torch.randn(64, 32)
    y = compiled(x).y
    y.backward(grad_y)
    dx_compiled, x.grad = x.grad, None
    expected = layer(x).y
    expected.backward(grad_y)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dx_compiled, x.grad, atol=1e-5, rtol=1e-4)
