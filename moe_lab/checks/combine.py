"""Checkers for lesson 03, the weighted-sum combine.

- :func:`check_combine_loop`: ``combine_loop(x, plan, experts) -> y`` (N, D), the per-expert loop
  with ``index_add_`` (compared with :func:`moe_lab.dispatch.dispatch_loop`).
- :func:`check_scatter_combine`: ``scatter_combine(h_sorted, sort_order, topk_weights, num_tokens)
  -> y`` (N, D), putting expert outputs sorted by expert back to their tokens (compared with
  :func:`moe_lab.dispatch.dispatch_sorted`).
- :func:`check_gate_weights`: ``gate_weights(router_logits, top_k) -> (topk_idx, topk_weights)``
  with a gradient that reaches the logits (compared with :func:`moe_lab.topk_routing`).

Each runs the learner's function on small seeded inputs and, when the answer is wrong, recomputes
the usual mistakes to say which one it looks like. Cases: N = 1, E from 3 to 6, K up to E, with
and without drops, logits near 100 for the gate; the inputs are fresh copies that must come back
unchanged, and the gradients (to x, the experts' weights and the combine weights, or to the
logits) are compared with the reference.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch

from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    diagnose,
    expect_pair,
    expect_same_grad,
    expect_unchanged,
    fresh,
    set_case,
    snapshot,
)
from moe_lab.dispatch import (
    RoutingPlan,
    combine_kept,
    compute_capacity,
    dispatch_loop,
    dispatch_sorted,
    make_routing_plan,
)
from moe_lab.experts import Experts
from moe_lab.routing import TopKRouter, topk_routing


def make_combine_case(seed: int, *, num_tokens: int = 12, d_model: int = 8, d_ff: int = 16,
                      num_experts: int = 4, top_k: int = 2,
                      capacity_factor: float | None = None,
                      ) -> tuple[torch.Tensor, RoutingPlan, Experts]:
    """A small seeded (x, plan, experts): x (N, D), the plan after capacity, the experts."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        experts = Experts(num_experts, d_model, d_ff)
        router = TopKRouter(d_model, num_experts, top_k)
    x = torch.randn(num_tokens, d_model, generator=generator)  # (N, D)
    with torch.no_grad():
        routing = router(x)
    capacity = None if capacity_factor is None else compute_capacity(
        capacity_factor, num_tokens, top_k, num_experts)
    plan = make_routing_plan(routing.topk_idx, routing.topk_weights, num_experts, capacity)
    return x, plan, experts


_COMBINE_CASES = (
    dict(seed=0),
    dict(seed=1, capacity_factor=0.75),  # some assignments dropped
    dict(seed=2, num_tokens=9, num_experts=6, top_k=3, capacity_factor=0.6),
    dict(seed=3, num_tokens=5, num_experts=3, top_k=1),
    dict(seed=4, num_tokens=1, num_experts=4, top_k=2),  # one token
    dict(seed=5, num_tokens=6, num_experts=3, top_k=3),  # K = E
    dict(seed=6, num_tokens=10, num_experts=6, top_k=2, capacity_factor=0.25),  # many drops
)


def _case_text(case: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in case.items() if k != "seed")


def _with_weight_leaf(plan: RoutingPlan) -> RoutingPlan:
    """The plan with its own copy of topk_weights, a leaf that collects the gradient."""
    return dataclasses.replace(plan, topk_weights=plan.topk_weights.detach().clone()
                               .requires_grad_(True))


def _expert_grads(experts: Experts) -> dict[str, torch.Tensor]:
    return {name: param for name, param in experts.named_parameters()}


def _per_slot_outputs(x: torch.Tensor, plan: RoutingPlan, experts: Experts) -> torch.Tensor:
    """h[n, k] = Expert_{topk_idx[n, k]}(x_n): (N, K, D), for diagnosing mistakes."""
    h_all = experts.forward_all(x)  # (E, N, D)
    token = torch.arange(x.shape[0]).unsqueeze(-1).expand_as(plan.topk_idx)  # (N, K)
    return h_all[plan.topk_idx, token]  # (N, K, D)


@checker("check_combine_loop")
def check_combine_loop(combine_loop: Callable[..., torch.Tensor]) -> None:
    """combine_loop(x, plan, experts) -> y (N, D): y_n = sum over kept k of w_nk * Expert(x_n)."""
    for case in _COMBINE_CASES:
        where = _case_text(case) or "N=12, E=4, K=2"
        set_case(where)
        x, plan, experts = make_combine_case(**case)
        plan_ref, experts_ref = _with_weight_leaf(plan), copy.deepcopy(experts)
        x_ref = x.clone().requires_grad_(True)
        expected = dispatch_loop(x_ref, plan_ref, experts_ref)  # (N, D)
        plan_in, (x_in,) = _with_weight_leaf(plan), fresh(x, grad=True)
        plan_before = snapshot([plan_in.topk_idx, plan_in.topk_weights, plan_in.keep])
        actual = call(combine_loop, x_in, plan_in, experts, names=("x",))
        expect_unchanged("plan (topk_idx, topk_weights, keep)",
                         [plan_in.topk_idx, plan_in.topk_weights, plan_in.keep], plan_before)
        with torch.no_grad():
            h = _per_slot_outputs(x, plan, experts)  # (N, K, D)
        weights = plan.topk_weights.unsqueeze(-1)  # (N, K, 1)
        keep = plan.keep.unsqueeze(-1).to(x.dtype)  # (N, K, 1)
        # "last expert wins": y[token_idx] = ... overwrites earlier experts' contributions
        last_slot = torch.where(plan.keep, plan.topk_idx, -1).argmax(dim=-1)  # (N,)
        overwrite = (weights * h)[torch.arange(x.shape[0]), last_slot] \
            * plan.keep.any(dim=-1, keepdim=True)  # (N, D)
        first_four = (weights * keep * h * (plan.topk_idx < 4).unsqueeze(-1)).sum(1)  # (N, D)
        suspects = [
            ((keep * h).sum(1), "It equals the sum of the chosen experts' outputs without their "
             "weights: multiply each expert's output by its top-k weight before adding it."),
            (expected.detach() + ((1 - keep) * weights * x.unsqueeze(1)).sum(1),
             "Dropped (token, expert) pairs must contribute nothing, but you added "
             "weight * x for them (a 'pass-through'). The residual connection outside the layer "
             "already carries a dropped token on; skip assignments where plan.keep is False."),
            ((weights * h).sum(1), "You also computed the dropped assignments: skip the (token, "
             "slot) pairs where plan.keep is False (they are over the expert's capacity)."),
            (overwrite, "Each token keeps only one expert's contribution: did you write "
             "y[token_idx] = ... ? Use y.index_add_(0, token_idx, ...) so the K contributions "
             "of a token add up."),
        ]
        if plan.num_experts > 4:
            suspects.append((first_four, f"Only experts 0-3 contributed, of E="
                             f"{plan.num_experts}: loop over range(experts.num_experts), not a "
                             f"fixed 4."))
        diagnose(actual, expected.detach(), f"y ({where})", suspects,
                  inputs={"x": x, "topk_idx": plan.topk_idx, "keep": plan.keep})
        leaves = {"x": x_in, "topk_weights": plan_in.topk_weights, **_expert_grads(experts)}
        reference = {"x": x_ref, "topk_weights": plan_ref.topk_weights,
                     **_expert_grads(experts_ref)}
        expect_same_grad(actual, expected, leaves, reference, f"y ({where})")


@checker("check_scatter_combine")
def check_scatter_combine(scatter_combine: Callable[..., torch.Tensor]) -> None:
    """scatter_combine(h_sorted, sort_order, topk_weights, num_tokens) -> y (N, D).

    h_sorted (M, D): expert outputs, one row per kept assignment, in the order of sort_order;
    sort_order (M,): the flat id token * K + slot of each row; topk_weights (N, K)."""
    for case in _COMBINE_CASES:
        where = _case_text(case) or "N=12, E=4, K=2"
        set_case(where)
        x, plan, experts = make_combine_case(**case)
        num_tokens, top_k = plan.topk_idx.shape
        with torch.no_grad():
            expected = dispatch_sorted(x, plan, experts)  # (N, D)
            x_sorted = x[plan.sort_order // top_k]  # (M, D)
            h_sorted = experts.forward_grouped(x_sorted, plan.tokens_per_expert.tolist())
        h_ref = h_sorted.clone().requires_grad_(True)
        plan_ref = _with_weight_leaf(plan)
        reference_y = combine_kept(h_ref, plan_ref)  # (N, D), the same sum with a graph
        h_in, weights_in = fresh(h_sorted, plan.topk_weights, grad=True)
        (order_in,) = fresh(plan.sort_order)
        actual = call(scatter_combine, h_in, order_in, weights_in, num_tokens,
                      names=("h_sorted", "sort_order", "topk_weights"))
        flat_weights = plan.topk_weights.reshape(-1)  # (N*K,)
        token_of = plan.sort_order // top_k  # (M,)
        unweighted = torch.zeros_like(x).index_add(0, token_of, h_sorted)
        wrong_token = torch.zeros(max(num_tokens, top_k), x.shape[1]).index_add(
            0, plan.sort_order % top_k, h_sorted * flat_weights[plan.sort_order].unsqueeze(-1)
        )[:num_tokens]  # (N, D)
        num_rows = plan.sort_order.numel()
        unsorted_weights = torch.zeros_like(x).index_add(
            0, token_of, h_sorted * flat_weights[:num_rows].unsqueeze(-1))
        suspects = [
            (unweighted, "It equals the unweighted sum: multiply row j by "
             "topk_weights.reshape(-1)[sort_order[j]] before adding it to its token."),
            (wrong_token, "The rows went to the wrong tokens: sort_order holds token * K + slot, "
             "so the token is sort_order // K (not % K)."),
            (unsorted_weights, "The weights are in the wrong order: the rows of h_sorted follow "
             "sort_order, so gather the weights with topk_weights.reshape(-1)[sort_order]."),
        ]
        diagnose(actual, expected, f"y ({where})", suspects,
                  inputs={"topk_weights": plan.topk_weights})
        expect_same_grad(actual, reference_y, {"h_sorted": h_in, "topk_weights": weights_in},
                         {"h_sorted": h_ref, "topk_weights": plan_ref.topk_weights},
                         f"y ({where})")


# seed, N, E, K, logit offset (100: exp overflows float32)
_GATE_CASES = ((0, 6, 4, 2, 0.0), (1, 5, 8, 1, 0.0), (2, 7, 6, 3, 0.0), (3, 4, 4, 4, 0.0),
              (4, 1, 4, 2, 0.0), (5, 5, 4, 3, 0.0), (6, 6, 5, 2, 100.0))


@checker("check_gate_weights")
def check_gate_weights(gate_weights: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    """gate_weights(router_logits, top_k) -> (topk_idx, topk_weights), Mixtral style: softmax,
    top-k, renormalise; the weights must stay differentiable with respect to the logits."""
    for seed, num_tokens, num_experts, top_k, offset in _GATE_CASES:
        where = f"(N={num_tokens}, E={num_experts}, K={top_k}" + (
            f", logits near {offset:.0f})" if offset else ")")
        set_case(where[1:-1])
        generator = torch.Generator().manual_seed(seed)
        logits = offset + torch.randn(num_tokens, num_experts, generator=generator)  # (N, E)
        ref_logits = logits.clone().requires_grad_(True)
        ref_idx, ref_weights = topk_routing(torch.softmax(ref_logits, -1), top_k)
        (learner_logits,) = fresh(logits, grad=True)
        topk_idx, topk_weights = expect_pair(
            call(gate_weights, learner_logits, top_k, names=("router_logits",)),
            "topk_idx, topk_weights")
        if topk_idx.dtype not in (torch.int64, torch.int32):
            raise CheckFailed(f"topk_idx should be an int64 tensor {where}, got {topk_idx.dtype}.")
        if topk_idx.shape != ref_idx.shape or not torch.equal(topk_idx.long(), ref_idx):
            raise CheckFailed(f"topk_idx {where} is not the top-k of the logits, best first: "
                              "use torch.topk(..., k=top_k, dim=-1).")
        probs = torch.softmax(logits, -1)  # (N, E)
        diagnose(topk_weights, ref_weights.detach(), f"topk_weights {where}", [
            (probs.gather(-1, ref_idx), "These are the raw top-k probabilities: renormalise "
             "them to sum to 1 over the K chosen experts (Mixtral)."),
            (logits.gather(-1, ref_idx), "These are the raw logits: apply a softmax."),
        ], inputs={"router_logits": logits})
        expect_same_grad(topk_weights, ref_weights, {"router_logits": learner_logits},
                         {"router_logits": ref_logits}, f"topk_weights {where}")
