"""The public API at its edges (issue 10): every bad input is refused with a ValueError or TypeError
that names the argument, attributes are validated on assignment, x's dtype is never mixed with the
weights' silently, and the losses have one defined value on empty input, never NaN, in float64
when given float64.

Tables: one row per case, (what is called, the error type, the words the message must contain),
or (what is computed, the expected value).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moe_lab import (
    DISPATCH_STRATEGIES,
    BiasBalancer,
    Experts,
    SparseMoE,
    TopKRouter,
    average_over_layers,
    compute_capacity,
    cv_squared,
    environment_summary,
    importance_loss,
    load_balancing_loss,
    make_routing_plan,
    pick_device,
    router_z_loss,
    seed_everything,
    sequence_load_balancing_loss,
    topk_routing,
)
from moe_lab.grouped_gemm import grouped_matmul
from moe_lab.interop import mixtral_expert_weights, restore_moe_blocks, tiny_block, tiny_model
from moe_lab.quizzes import grade, parse_number, review_questions
from moe_lab.systems.decisions import compute_dtype, decide, decisions_for, needs_loss_scaling
from moe_lab.systems.parallel import local_expert_order, splits_from_counts

D, F, E, K = 16, 32, 4, 2
gen = torch.Generator().manual_seed(0)
probs = torch.softmax(torch.randn(6, E, generator=gen), -1)  # (N, E)
idx = probs.topk(K, -1).indices  # (N, K)
weights = probs.gather(-1, idx)  # (N, K)
router = TopKRouter(D, E, K)
experts = Experts(E, D, F)
x5 = torch.randn(5, D, generator=gen)  # (N, D)


def _set(obj: object, name: str, value: object):
    return lambda: setattr(obj, name, value)


BAD_INPUT = [
    # topk_routing
    ("topk K=0", lambda: topk_routing(probs, 0), ValueError, ["top_k", ">= 1"]),
    ("topk K>E", lambda: topk_routing(probs, E + 1), ValueError, ["top_k", f"num_experts={E}"]),
    ("topk K float", lambda: topk_routing(probs, 1.0), TypeError, ["top_k"]),
    ("topk int probs", lambda: topk_routing(idx, 1), TypeError, ["router_probs", "floating"]),
    ("topk list probs", lambda: topk_routing([[0.5, 0.5]], 1), TypeError, ["router_probs"]),
    ("topk bias shape", lambda: topk_routing(probs, 1, selection_bias=torch.zeros(3)),
     ValueError, ["selection_bias", "(E=4,)"]),
    ("topk meta", lambda: topk_routing(probs.to("meta"), 1), ValueError, ["router_probs", "meta"]),
    # make_routing_plan
    ("plan ids >= E", lambda: make_routing_plan(idx + E, weights, E), ValueError,
     ["topk_idx", "[0, 4)"]),
    ("plan ids < 0", lambda: make_routing_plan(idx - E, weights, E), ValueError, ["topk_idx"]),
    ("plan 1-D ids", lambda: make_routing_plan(idx[:, 0], weights[:, 0], E), ValueError,
     ["topk_idx", "(N, K)"]),
    ("plan float ids", lambda: make_routing_plan(idx.float(), weights, E), TypeError,
     ["topk_idx", "integer"]),
    ("plan weight shape", lambda: make_routing_plan(idx, weights[:3], E), ValueError,
     ["topk_weights", "shape"]),
    ("plan int weights", lambda: make_routing_plan(idx, idx, E), TypeError, ["topk_weights"]),
    ("plan capacity < 0", lambda: make_routing_plan(idx, weights, E, -1), ValueError,
     ["capacity", ">= 0"]),
    ("plan capacity float", lambda: make_routing_plan(idx, weights, E, 2.5), TypeError,
     ["capacity", "int"]),
    ("plan E=0", lambda: make_routing_plan(idx, weights, 0), ValueError, ["num_experts"]),
    # compute_capacity
    ("capacity E=0", lambda: compute_capacity(1.0, 10, 1, 0), ValueError, ["num_experts"]),
    ("capacity factor 0", lambda: compute_capacity(0, 10, 2, 4), ValueError, ["capacity_factor"]),
    ("capacity factor < 0", lambda: compute_capacity(-1.0, 10, 2, 4), ValueError,
     ["capacity_factor"]),
    ("capacity factor inf", lambda: compute_capacity(math.inf, 10, 2, 4), ValueError,
     ["capacity_factor", "finite"]),
    ("capacity factor nan", lambda: compute_capacity(math.nan, 10, 2, 4), ValueError,
     ["capacity_factor"]),
    ("capacity overflow", lambda: compute_capacity(1e308, 10, 2, 4), ValueError,
     ["capacity_factor", "too large"]),
    ("capacity N<0", lambda: compute_capacity(1.0, -1, 2, 4), ValueError, ["num_tokens"]),
    ("capacity K>E", lambda: compute_capacity(1.0, 10, 5, 4), ValueError, ["top_k"]),
    ("capacity factor str", lambda: compute_capacity("1", 10, 2, 4), TypeError,
     ["capacity_factor"]),
    # TopKRouter.decide and forward
    ("decide int logits", lambda: router.decide(idx), TypeError, ["router_logits", "floating"]),
    ("decide wrong width", lambda: router.decide(torch.randn(5, E + 1)), ValueError,
     ["router_logits", "num_experts=4"]),
    ("decide 1-D", lambda: router.decide(torch.randn(E)), ValueError, ["router_logits", "(N, E"]),
    ("decide K>E", lambda: router.decide(torch.randn(5, E), top_k=E + 1), ValueError, ["top_k"]),
    ("router meta x", lambda: router(torch.randn(5, D, device="meta")), ValueError,
     ["x", "meta"]),
    # Experts
    ("experts called", lambda: experts(x5), TypeError, ["not called directly", "forward_grouped"]),
    ("grouped counts short", lambda: experts.forward_grouped(x5, [2, 2, 0, 0]), ValueError,
     ["counts", "sum to", "M=5"]),
    ("grouped counts long", lambda: experts.forward_grouped(x5, [2, 2, 2, 0]), ValueError,
     ["counts", "sum to"]),
    ("grouped counts E", lambda: experts.forward_grouped(x5, [2, 3]), ValueError,
     ["counts", "E=4"]),
    ("grouped counts < 0", lambda: experts.forward_grouped(x5, [6, -1, 0, 0]), ValueError,
     ["counts", ">= 0"]),
    ("grouped counts float", lambda: experts.forward_grouped(x5, [2.0, 3.0, 0.0, 0.0]), TypeError,
     ["counts"]),
    ("grouped float tensor", lambda: experts.forward_grouped(x5, torch.tensor([2.0, 3, 0, 0])),
     TypeError, ["counts"]),
    ("grouped width", lambda: experts.forward_grouped(torch.randn(5, D + 1), [5, 0, 0, 0]),
     ValueError, ["x_sorted", "d_model"]),
    ("expert id", lambda: experts.forward_expert(x5, E), ValueError, ["e", "[0, 4)"]),
    ("padded E", lambda: experts.forward_padded(torch.randn(E - 1, 2, D)), ValueError,
     ["x_padded", "E=4"]),
    ("padded dims", lambda: experts.forward_padded(torch.randn(2, D)), ValueError, ["x_padded"]),
    ("experts fp64 x", lambda: experts.forward_all(x5.double()), TypeError,
     ["x", "torch.float64", "torch.float32"]),
    # average_over_layers
    ("layers mixed shapes", lambda: average_over_layers([torch.tensor(1.0), torch.ones(2)]),
     ValueError, ["per_layer_losses", "same shape"]),
    ("layers floats", lambda: average_over_layers([1.0, 2.0]), TypeError, ["per_layer_losses[0]"]),
    ("layers a tensor", lambda: average_over_layers(torch.ones(3)), TypeError,
     ["per_layer_losses", "list"]),
    ("layers empty", lambda: average_over_layers([]), ValueError, ["per_layer_losses"]),
    ("layers int", lambda: average_over_layers([torch.tensor(1)]), TypeError,
     ["per_layer_losses[0]"]),
    # seed_everything
    ("seed float", lambda: seed_everything(1.5), TypeError, ["seed", "int"]),
    ("seed str", lambda: seed_everything("0"), TypeError, ["seed"]),
    ("seed bool", lambda: seed_everything(True), TypeError, ["seed"]),
    ("seed < 0", lambda: seed_everything(-1), ValueError, ["seed", "2**32"]),
    ("seed too big", lambda: seed_everything(2**32), ValueError, ["seed"]),
    # devices
    ("device name", lambda: pick_device("gpu"), ValueError, ["prefer", "'cpu'"]),
    ("device type", lambda: pick_device(0), TypeError, ["prefer"]),
    ("summary device", lambda: environment_summary("tpu0"), ValueError, ["device"]),
    # absurd hyperparameters
    ("layer factor inf", lambda: SparseMoE(D, F, E, K, capacity_factor=math.inf), ValueError,
     ["capacity_factor", "finite"]),
    ("layer factor nan", lambda: SparseMoE(D, F, E, K, capacity_factor=math.nan), ValueError,
     ["capacity_factor"]),
    ("jitter_eps 2", lambda: TopKRouter(D, E, K, noise="jitter", jitter_eps=2.0), ValueError,
     ["jitter_eps", "(0, 1)"]),
    ("jitter_eps 1", lambda: TopKRouter(D, E, K, jitter_eps=1.0), ValueError, ["jitter_eps"]),
    ("gamma inf", lambda: BiasBalancer(TopKRouter(D, E, K), gamma=math.inf), ValueError,
     ["gamma", "finite"]),
    ("gamma nan", lambda: BiasBalancer(TopKRouter(D, E, K), gamma=math.nan), ValueError,
     ["gamma"]),
    ("balancer load < 0", lambda: BiasBalancer(TopKRouter(D, E, K)).update(
        torch.tensor([1, -1, 0, 0])), ValueError, ["tokens_per_expert", ">= 0"]),
    ("balancer load nan", lambda: BiasBalancer(TopKRouter(D, E, K)).update(
        torch.tensor([1.0, math.nan, 0, 0])), ValueError, ["tokens_per_expert", "finite"]),
    # losses
    ("mask values", lambda: load_balancing_loss(probs, idx, torch.tensor([1, 2, 0, 1, 1, 1])),
     ValueError, ["mask", "True/False"]),
    ("mask meta", lambda: router_z_loss(probs, torch.ones(6, dtype=torch.bool, device="meta")),
     ValueError, ["mask", "meta"]),
    ("cv eps 0", lambda: cv_squared(torch.ones(3), eps=0.0), ValueError, ["eps"]),
    ("z-loss meta", lambda: router_z_loss(torch.zeros(3, E, device="meta")), ValueError,
     ["router_logits", "meta"]),
    ("lbl meta", lambda: load_balancing_loss(probs.to("meta"), idx), ValueError,
     ["router_probs", "meta"]),
    ("experts meta", lambda: experts.forward_all(x5.to("meta")), ValueError, ["x", "meta"]),
    # values read by a check that already syncs: NaN fails it too; flags and types named
    ("lbl nan probs", lambda: load_balancing_loss(probs * math.nan, idx), ValueError,
     ["router_probs", "NaN"]),
    ("lbl counts < 0", lambda: load_balancing_loss(probs, idx, expert_counts=torch.tensor(
        [-1, 2, 3, 4])), ValueError, ["expert_counts", ">= 0"]),
    ("lbl counts nan", lambda: load_balancing_loss(probs, idx, expert_counts=torch.tensor(
        [math.nan, 2, 3, 4])), ValueError, ["expert_counts", "finite"]),
    ("lbl check_range str", lambda: load_balancing_loss(probs, idx, check_range="no"), TypeError,
     ["check_range"]),
    ("sequence loss nan probs", lambda: sequence_load_balancing_loss(probs * math.nan, idx, 3),
     ValueError, ["router_probs", "nan"]),
    ("topk normalize str", lambda: topk_routing(probs, K, normalize="yes"), TypeError,
     ["normalize"]),
    ("topk scaling nan", lambda: topk_routing(probs, K, scaling_factor=math.nan), ValueError,
     ["scaling_factor", "finite"]),
    ("topk scaling 0", lambda: topk_routing(probs, K, scaling_factor=0.0), ValueError,
     ["scaling_factor"]),
    ("plan check_range str", lambda: make_routing_plan(idx, weights, E, check_range=0), TypeError,
     ["check_range"]),
    ("balancer load bool", lambda: BiasBalancer(TopKRouter(D, E, K)).update(
        torch.ones(E, dtype=torch.bool)), TypeError, ["tokens_per_expert", "counts"]),
    ("balancer load list", lambda: BiasBalancer(TopKRouter(D, E, K)).update([1, 2, 3, 4]),
     TypeError, ["tokens_per_expert", "list"]),
    ("recv_counts float", lambda: local_expert_order(torch.ones(2, 2)), TypeError,
     ["recv_counts", "integer"]),
    ("recv_counts < 0", lambda: local_expert_order(torch.tensor([[1, -1]])), ValueError,
     ["recv_counts", ">= 0"]),
    ("mixtral odd rows", lambda: mixtral_expert_weights(torch.ones(2, 5, 4), torch.ones(2, 4, 2)),
     ValueError, ["gate_up_proj", "down_proj", "(2, 5, 4)"]),
    ("mixtral experts differ", lambda: mixtral_expert_weights(torch.ones(2, 4, 4),
                                                              torch.ones(3, 4, 2)),
     ValueError, ["do not fit"]),
    ("mixtral list", lambda: mixtral_expert_weights([[1.0]], torch.ones(2, 4, 2)), TypeError,
     ["gate_up_proj"]),
    ("decisions device name", lambda: decisions_for("tpu"), ValueError, ["device", "'tpu'"]),
    ("loss scaling dtype str", lambda: needs_loss_scaling("float16"), TypeError,
     ["dtype", "torch.dtype"]),
    ("grade a question id", lambda: grade("q1", "a"), TypeError, ["question", "str"]),
    ("review seed str", lambda: review_questions(seed="1"), TypeError, ["seed"]),
    ("expert id numpy", lambda: experts.forward_expert(x5, np.int64(1)), TypeError,
     ["e must be an int", "int64"]),
    ("topk router_logits int", lambda: topk_routing(probs, K, router_logits=idx), TypeError,
     ["router_logits"]),
    ("splits float counts", lambda: splits_from_counts(torch.ones(E), 2), TypeError,
     ["tokens_per_expert", "integer"]),
    ("splits list counts", lambda: splits_from_counts([1, 2, 3, 4], 2), TypeError,
     ["tokens_per_expert"]),
    ("splits 2-D counts", lambda: splits_from_counts(torch.ones(2, 2, dtype=torch.long), 2),
     ValueError, ["tokens_per_expert", "(E,)"]),
    ("restore None", lambda: restore_moe_blocks(None), TypeError, ["model", "NoneType"]),
    ("tiny block d_model 0", lambda: tiny_block("Mixtral", d_model=0), ValueError, ["d_model"]),
    ("tiny block seed str", lambda: tiny_block("Mixtral", seed="0"), TypeError, ["seed"]),
    ("tiny block scale nan", lambda: tiny_block("Mixtral", scale=math.nan), ValueError,
     ["scale"]),
    ("tiny model seed < 0", lambda: tiny_model("Mixtral", seed=-1), ValueError, ["seed"]),
    ("decide unknown device type", lambda: decide("tpu", None, "2.5.1"), ValueError,
     ["device_type", "'tpu'"]),
    ("decide device with index", lambda: compute_dtype("cuda:0", (8, 0)), ValueError,
     ["device_type", "no index"]),
    ("decide version int", lambda: decide("cpu", None, 2), TypeError, ["torch_version"]),
    ("grouped offsets float", lambda: grouped_matmul(x5, torch.ones(2, D, F), torch.tensor(
        [2.0, 5.0])), TypeError, ["offsets", "int32"]),
    ("grouped offsets int64", lambda: grouped_matmul(x5, torch.ones(2, D, F), torch.tensor(
        [2, 5])), TypeError, ["offsets", "int32", "torch.int64"]),
    ("grouped offsets per expert", lambda: grouped_matmul(x5, torch.ones(2, D, F), torch.tensor(
        [5], dtype=torch.int32)), ValueError, ["offsets", "E=2"]),
    ("grouped 2-D weight", lambda: grouped_matmul(x5, torch.ones(D, F), torch.tensor(
        [5], dtype=torch.int32)), ValueError, ["weight", "3 dimensions"]),
    ("grouped widths", lambda: grouped_matmul(x5, torch.ones(2, D + 1, F), torch.tensor(
        [2, 5], dtype=torch.int32)), ValueError, ["x_sorted", "A=17"]),
]


@pytest.mark.parametrize(("call", "error", "words"), [row[1:] for row in BAD_INPUT],
                         ids=[row[0] for row in BAD_INPUT])
def test_bad_input_is_refused_with_the_argument_named(call, error, words):
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))



@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_cuda_asked_for_on_a_machine_without_it_is_refused_where_it_is_named():
    with pytest.raises(ValueError, match="prefer='cuda' asks for CUDA"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="device='cuda:0' asks for CUDA"):
        environment_summary("cuda:0")


def test_a_number_too_large_for_a_float_is_no_number():
    assert parse_number("1e400") is None and parse_number("-1e400") is None
    assert parse_number("1e300") == 1e300

# ---------------------------------------------------------------- attributes set after construction

def _layer() -> SparseMoE:
    torch.manual_seed(0)
    return SparseMoE(D, F, E, K)


_moe = _layer()
_balancer = BiasBalancer(TopKRouter(D, E, K))
BAD_ASSIGNMENT = [
    ("dispatch case", _set(_moe, "dispatch", "Sorted"), ValueError, ["dispatch", "'sorted'"]),
    ("dispatch unknown", _set(_moe, "dispatch", "fast"), ValueError, ["dispatch"]),
    ("capacity 0", _set(_moe, "capacity_factor", 0), ValueError, ["capacity_factor", "> 0"]),
    ("capacity inf", _set(_moe, "capacity_factor", math.inf), ValueError, ["capacity_factor"]),
    ("capacity str", _set(_moe, "capacity_factor", "1"), TypeError, ["capacity_factor"]),
    ("layer top_k", _set(_moe, "top_k", E + 1), ValueError, ["top_k"]),
    ("router top_k", _set(_moe.router, "top_k", 0), ValueError, ["top_k"]),
    ("router jitter", _set(_moe.router, "jitter_eps", 2.0), ValueError, ["jitter_eps"]),
    ("balancer gamma", _set(_balancer, "gamma", math.inf), ValueError, ["gamma"]),
    ("balancer gamma 0", _set(_balancer, "gamma", 0.0), ValueError, ["gamma"]),
]


@pytest.mark.parametrize(("assign", "error", "words"), [row[1:] for row in BAD_ASSIGNMENT],
                         ids=[row[0] for row in BAD_ASSIGNMENT])
def test_assignment_is_validated_and_leaves_the_old_value(assign, error, words):
    before = (_moe.dispatch, _moe.capacity_factor, _moe.top_k, _moe.router.jitter_eps,
              _balancer.gamma)
    with pytest.raises(error) as caught:
        assign()
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))
    assert before == (_moe.dispatch, _moe.capacity_factor, _moe.top_k, _moe.router.jitter_eps,
                      _balancer.gamma)


def test_valid_assignments_take_effect():
    moe = _layer()
    x = torch.randn(12, D, generator=torch.Generator().manual_seed(1))
    reference = moe(x).y
    for strategy in DISPATCH_STRATEGIES:
        moe.dispatch = strategy
        torch.testing.assert_close(moe(x).y, reference, atol=1e-5, rtol=1e-4)
    moe.capacity_factor = 0.5  # C = ceil(0.5 * 12 * 2 / 4) = 3
    out = moe(x)
    assert moe.capacity(12) == 3 and int(out.tokens_per_expert.max()) <= 3
    moe.top_k = 1  # one K for the router and the capacity
    assert moe.router.top_k == 1 and moe(x).router.topk_idx.shape == (12, 1)
    assert moe.capacity(12) == 2  # ceil(0.5 * 12 * 1 / 4)


# ---------------------------------------------------------------- x's dtype and device

DTYPE_CASES = [(strategy, dtype) for strategy in DISPATCH_STRATEGIES
               for dtype in (torch.float64, torch.float16, torch.bfloat16)]


@pytest.mark.parametrize(("strategy", "dtype"), DTYPE_CASES)
def test_one_error_for_x_in_another_dtype_than_the_weights(strategy, dtype):
    moe = SparseMoE(D, F, E, K, dispatch=strategy)
    with pytest.raises(TypeError) as caught:
        moe(torch.randn(5, D, dtype=dtype))
    message = str(caught.value)
    assert message.startswith("x has dtype")
    assert str(dtype) in message and "torch.float32" in message and "autocast" in message


@pytest.mark.parametrize("strategy", DISPATCH_STRATEGIES)
def test_a_meta_input_is_refused_clearly(strategy):
    moe = SparseMoE(D, F, E, K, dispatch=strategy)
    with pytest.raises(ValueError, match="x is on the meta device"):
        moe(torch.randn(5, D, device="meta"))


@pytest.mark.parametrize("strategy", DISPATCH_STRATEGIES)
def test_a_cast_layer_and_autocast_are_accepted(strategy):
    torch.manual_seed(0)
    moe = SparseMoE(D, F, E, K, dispatch=strategy)
    x = torch.randn(6, D)
    reference = moe(x).y
    y64 = moe.double()(x.double()).y  # cast the layer: computed in float64
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), reference, atol=1e-5, rtol=1e-4)
    moe.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf16 = moe(x).y
    assert y_bf16.dtype == torch.float32  # answers in x's dtype
    torch.testing.assert_close(y_bf16, reference, atol=5e-2, rtol=5e-2)


def test_int32_indices_are_converted_and_a_huge_capacity_costs_no_memory():
    plan = make_routing_plan(idx.int(), weights, E, capacity=2)
    reference = make_routing_plan(idx, weights, E, capacity=2)
    assert plan.topk_idx.dtype == torch.int64
    assert torch.equal(plan.keep, reference.keep) and torch.equal(plan.sort_order,
                                                                  reference.sort_order)
    torch.manual_seed(0)
    moe = SparseMoE(D, F, E, K, dispatch="padded", capacity_factor=1e6)  # C far above N*K
    x = torch.randn(6, D)
    out = moe(x)
    assert out.num_dropped == 0
    moe.capacity_factor, moe.dispatch = None, "dense"
    torch.testing.assert_close(out.y, moe(x).y, atol=1e-5, rtol=1e-4)


def test_grouped_counts_may_be_a_tensor():
    counts = torch.tensor([2, 0, 3, 0])
    torch.testing.assert_close(experts.forward_grouped(x5, counts),
                               experts.forward_grouped(x5, [2, 0, 3, 0]))


# ---------------------------------------------------------------- losses at their edges

def _empty(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype).requires_grad_(True)


_no_tokens = torch.zeros(0, K, dtype=torch.long)
_padding = torch.zeros(6, dtype=torch.bool)
LOSS_VALUES = [
    # (name, value of the loss, expected)
    ("lbl N=0", lambda: load_balancing_loss(_empty(0, E), _no_tokens), 0.0),
    ("z N=0", lambda: router_z_loss(_empty(0, E)), 0.0),
    ("importance N=0", lambda: importance_loss(_empty(0, E)), 0.0),
    ("cv no experts", lambda: cv_squared(_empty(0)), 0.0),
    ("cv one expert", lambda: cv_squared(torch.tensor([3.0])), 0.0),
    ("lbl all padding", lambda: load_balancing_loss(probs, idx, _padding), 0.0),
    ("z all padding", lambda: router_z_loss(torch.randn(6, E), _padding), 0.0),
    ("importance all padding", lambda: importance_loss(probs, _padding), 0.0),
    ("lbl int mask == bool mask", lambda: load_balancing_loss(probs, idx, torch.tensor(
        [1, 1, 0, 1, 0, 1])), load_balancing_loss(probs, idx, torch.tensor(
            [True, True, False, True, False, True])).item()),
    ("lbl uniform", lambda: load_balancing_loss(torch.full((4, 4), 0.25),
                                                torch.tensor([[0], [1], [2], [3]])), 1.0),
    ("cv 1e20", lambda: cv_squared(torch.tensor([1e20, 3e20])), 0.25),  # Var 1 / Mean^2 4
    ("cv 1e20 float64", lambda: cv_squared(torch.tensor([1e20, 3e20], dtype=torch.float64)), 0.25),
    ("cv 1e38", lambda: cv_squared(torch.tensor([1e38, 3e38])), 0.25),
    ("cv equal", lambda: cv_squared(torch.full((4,), 7e25)), 0.0),
    ("z logits 1e4", lambda: router_z_loss(torch.tensor([[1e4, 0.0]])), 1e8),
]


@pytest.mark.parametrize(("value", "expected"), [row[1:] for row in LOSS_VALUES],
                         ids=[row[0] for row in LOSS_VALUES])
def test_loss_values_at_edge_points(value, expected):
    loss = value()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("value", [row[1] for row in LOSS_VALUES[:4]],
                         ids=[row[0] for row in LOSS_VALUES[:4]])
def test_empty_losses_keep_a_finite_zero_gradient(value):
    loss = value()
    leaf = next(t for t in _leaves(loss))
    loss.backward()
    assert leaf.grad is not None and torch.equal(leaf.grad, torch.zeros_like(leaf))


def _leaves(loss: torch.Tensor):
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        if hasattr(node, "variable"):
            yield node.variable
        stack.extend(fn for fn, _ in node.next_functions)


def _probs64(n: int = 5) -> torch.Tensor:
    logits = torch.randn(n, E, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return torch.softmax(logits, -1)


GRADCHECK = [
    ("load_balancing_loss", lambda p: load_balancing_loss(p, p.detach().topk(K, -1).indices)),
    ("router_z_loss", lambda p: router_z_loss(p * 5)),
    ("importance_loss", lambda p: importance_loss(p)),
    ("cv_squared", lambda p: cv_squared(p.sum(0))),
    ("masked load_balancing_loss", lambda p: load_balancing_loss(
        p, p.detach().topk(K, -1).indices, torch.tensor([1, 0, 1, 1, 0]))),
]


@pytest.mark.parametrize("loss", [row[1] for row in GRADCHECK], ids=[row[0] for row in GRADCHECK])
def test_float64_losses_stay_float64_and_pass_gradcheck(loss):
    p = _probs64().requires_grad_(True)
    assert loss(p).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, (p,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_losses_are_computed_in_float32(dtype):
    p = _probs64().to(dtype)
    for loss in (router_z_loss(p), importance_loss(p), load_balancing_loss(p, p.topk(K, -1).indices),
                 cv_squared(p.sum(0))):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ---- issue 20: silent wrong results and obscure errors, one row each ---------------------------

def _issue20_rows():
    import json

    from moe_lab import Experts as _Experts
    from moe_lab.analysis.placement import device_loads, greedy_placement
    from moe_lab.analysis.real_routing import DATA_FILE, load_real_routing
    from moe_lab.quizzes import grade, load_quiz
    from moe_lab.routing import limit_to_top_groups
    from moe_lab.variants.causality import last_token_perturbation
    from moe_lab.variants.expert_choice import expert_choice_capacity
    from moe_lab.variants.upcycling import upcycle

    grouped = TopKRouter(D, 8, 2, num_groups=4, topk_groups=2)  # 4 eligible experts
    layer = SparseMoE(D, F, 8, 2, num_shared_experts=1)
    x3 = torch.randn(2, 4, D, generator=gen)  # (B, T, D)
    raw = json.loads(DATA_FILE.read_text(encoding="utf-8"))

    def damaged(edit):
        def run(tmp_path):
            copy = json.loads(json.dumps(raw))
            edit(copy)
            path = tmp_path / "routing.json"
            path.write_text(json.dumps(copy), encoding="utf-8")
            return load_real_routing(path)
        return run

    def top_k_past_groups():
        grouped.top_k = 5  # valid for 8 experts, not for the 4 the groups leave
        try:
            return grouped(torch.randn(3, D, generator=gen))
        finally:
            grouped.top_k = 2

    placement = greedy_placement(torch.tensor([4.0, 3.0, 2.0, 1.0]), 2)
    return [
        ("top_k reassigned past the group limit", top_k_past_groups, ValueError,
         ["top_k=5", "topk_groups=2", "4 eligible"]),
        ("num_groups not dividing E", lambda: limit_to_top_groups(torch.randn(3, 8), 3, 1),
         ValueError, ["num_groups must divide num_experts=8"]),
        ("topk_routing groups", lambda: topk_routing(probs, 2, num_groups=3), ValueError,
         ["num_groups"]),
        ("shared_d_ff without shared experts", lambda: SparseMoE(D, F, E, K, shared_d_ff=64),
         ValueError, ["shared_d_ff=64", "num_shared_experts"]),
        ("upcycle scaling_factor", lambda: upcycle(_Experts(1, D, F), E, K, scaling_factor=2.0),
         ValueError, ["scaling_factor", "step-0"]),
        ("upcycle weight_inputs", lambda: upcycle(_Experts(1, D, F), E, K, weight_inputs=True),
         ValueError, ["weight_inputs", "step-0"]),
        ("upcycle expert_bias", lambda: upcycle(_Experts(1, D, F), E, K, expert_bias=True),
         TypeError, ["expert_bias", "moe_lab.interop"]),
        ("expert choice capacity factor < 0", lambda: expert_choice_capacity(-1.0, 16, 4),
         ValueError, ["capacity_factor", "> 0"]),
        ("expert choice num_experts 0", lambda: expert_choice_capacity(1.0, 16, 0),
         ValueError, ["num_experts"]),
        ("load_balancing_loss given logits", lambda: load_balancing_loss(
            torch.randn(6, E, generator=gen) * 3, idx), ValueError, ["probabilities", "logits"]),
        ("causality, the layer's output object", lambda: last_token_perturbation(
            lambda v: layer(v), x3), TypeError, ["layer_fn", "MoEOutput", ".y"]),
        ("causality, a flattened output", lambda: last_token_perturbation(
            lambda v: layer(v).y.reshape(-1, D), x3), ValueError, ["layer_fn", "(8, 16)"]),
        ("placement given another model's loads", lambda: device_loads(
            placement.experts, placement.replicas, torch.rand(8)), ValueError,
         ["replicas", "another model"]),
        ("placement ids past E", lambda: device_loads(
            [[0, 7]], torch.ones(4, dtype=torch.int64), torch.rand(4)), ValueError,
         ["expert ids 0..7", "E=4"]),
        ("grade an int short answer", lambda: grade(load_quiz(12).questions[0], 5), TypeError,
         ["response", "int"]),
        ("grade a list for a choice", lambda: grade(
            next(q for q in load_quiz(8).questions if q.kind == "choice"), ["a"]), TypeError,
         ["response", "list"]),
        ("damaged routing file: top_k 0", damaged(
            lambda r: next(iter(r["models"].values())).update(top_k=0)), ValueError,
         ["/top_k", ">= 1"]),
        ("damaged routing file: a string", damaged(
            lambda r: next(iter(r["models"].values())).update(num_experts="8")), ValueError,
         ["/num_experts", "'8'"]),
    ]


ISSUE20 = _issue20_rows()


@pytest.mark.parametrize(("call", "error", "words"), [row[1:] for row in ISSUE20],
                         ids=[row[0] for row in ISSUE20])
def test_issue20_bad_input_is_refused_with_the_argument_named(call, error, words, tmp_path):
    import inspect

    with pytest.raises(error) as caught:
        call(tmp_path) if inspect.signature(call).parameters else call()
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_upcycle_is_the_dense_ffn_at_step_0_for_every_activation():
    from moe_lab import Experts as _Experts
    from moe_lab.variants.upcycling import upcycle

    for activation in ("swiglu", "geglu", "gelu", "relu"):
        dense = _Experts(1, D, F, activation=activation)
        moe = upcycle(dense, E, K)
        x = torch.randn(7, D, generator=gen) * 3
        assert (moe(x).y - dense.forward_all(x)[0]).abs().max() < 1e-5, activation


def test_upcycle_refuses_a_familys_experts_by_name():
    """A family's experts (gpt-oss's biases and clamped SwiGLU live in moe_lab.interop, subclasses
    of Experts) hold what the core's experts do not: upcycle refuses any subclass by name rather
    than drop it."""
    from moe_lab import Experts as _Experts
    from moe_lab.variants.upcycling import upcycle

    class BiasedExperts(_Experts):
        pass

    with pytest.raises(TypeError, match="BiasedExperts"):
        upcycle(BiasedExperts(1, D, F), E, K)


def test_quiz_field_typo_names_the_file_and_question(tmp_path):
    from moe_lab.quizzes import QuizFormatError, load_quiz
    from moe_lab.quizzes.schema import QUIZ_DIR

    text = (QUIZ_DIR / "08.yaml").read_text(encoding="utf-8").replace("field: top_k",
                                                                     "field: top_kk")
    (tmp_path / "08.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(QuizFormatError, match=r"08.yaml question 0 \(fine-grained-top-k\).*top_kk"):
        load_quiz(tmp_path / "08.yaml")
