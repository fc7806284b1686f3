"""Checkers for lesson 03, the weighted-sum combine.

- :func:`check_combine_loop`: ``combine_loop(x, plan, experts) -> y`` (N, D), the per-expert loop
  with ``index_add_`` (compared with :func:`moe_lab.dispatch.dispatch_loop`).
- :func:`check_scatter_combine`: ``scatter_combine(h_sorted, sort_order, topk_weights, num_tokens)
  -> y`` (N, D), putting expert outputs sorted by expert back to their tokens (compared with
  :func:`moe_lab.dispatch.dispatch_sorted`).
- :func:`check_gate_weights`: ``gate_weights(router_logits, top_k) -> (topk_idx, topk_weights)``
  with a gradient that reaches the logits (compared with :func:`moe_lab.topk_routing`).

Each runs the learner's function on small seeded inputs and, when the answer is wrong, recomputes
the usual mistakes to say which one it looks like.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.checks.core import CheckFailed, checker, expect_close
from moe_lab.dispatch import (
    RoutingPlan,
    compute_capacity,
    dispatch_loop,
    dispatch_sorted,
    make_routing_plan,
)
from moe_lab.experts import Experts
from moe_lab.routing import TopKRouter, topk_routing


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-5, rtol=1e-4)


def _diagnose(actual: object, expected: torch.Tensor, what: str,
              suspects: list[tuple[torch.Tensor, str]]) -> None:
    """Pass if ``actual`` matches ``expected``; else name the first suspect it matches."""
    if isinstance(actual, torch.Tensor) and _close(actual.detach(), expected):
        return
    if isinstance(actual, torch.Tensor):
        for candidate, hint in suspects:
            if _close(actual.detach(), candidate):
                raise CheckFailed(f"{what} does not match the reference. {hint}")
    expect_close(actual if not isinstance(actual, torch.Tensor) else actual.detach(), expected,
                 what)


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


COMBINE_CASES = (
    dict(seed=0),
    dict(seed=1, capacity_factor=0.75),  # some assignments dropped
    dict(seed=2, num_tokens=9, num_experts=6, top_k=3, capacity_factor=0.6),
    dict(seed=3, num_tokens=5, num_experts=3, top_k=1),
)


def _per_slot_outputs(x: torch.Tensor, plan: RoutingPlan, experts: Experts) -> torch.Tensor:
    """h[n, k] = Expert_{topk_idx[n, k]}(x_n): (N, K, D), for diagnosing mistakes."""
    h_all = experts.forward_all(x)  # (E, N, D)
    token = torch.arange(x.shape[0]).unsqueeze(-1).expand_as(plan.topk_idx)  # (N, K)
    return h_all[plan.topk_idx, token]  # (N, K, D)


@checker("check_combine_loop")
def check_combine_loop(combine_loop: Callable[..., torch.Tensor]) -> None:
    """combine_loop(x, plan, experts) -> y (N, D): y_n = sum over kept k of w_nk * Expert(x_n)."""
    for case in COMBINE_CASES:
        x, plan, experts = make_combine_case(**case)
        with torch.no_grad():
            expected = dispatch_loop(x, plan, experts)  # (N, D)
            actual = combine_loop(x, plan, experts)
            h = _per_slot_outputs(x, plan, experts)  # (N, K, D)
        weights = plan.topk_weights.unsqueeze(-1)  # (N, K, 1)
        keep = plan.keep.unsqueeze(-1).to(x.dtype)  # (N, K, 1)
        # "last expert wins": y[token_idx] = ... overwrites earlier experts' contributions
        last_slot = torch.where(plan.keep, plan.topk_idx, -1).argmax(dim=-1)  # (N,)
        overwrite = (weights * h)[torch.arange(x.shape[0]), last_slot] \
            * plan.keep.any(dim=-1, keepdim=True)  # (N, D)
        suspects = [
            ((keep * h).sum(1), "It equals the sum of the chosen experts' outputs without their "
             "weights: multiply each expert's output by its top-k weight before adding it."),
            (expected + ((1 - keep) * weights * x.unsqueeze(1)).sum(1),
             "Dropped (token, expert) pairs must contribute nothing, but you added "
             "weight * x for them (a 'pass-through'). The residual connection outside the layer "
             "already carries a dropped token on; skip assignments where plan.keep is False."),
            ((weights * h).sum(1), "You also computed the dropped assignments: skip the (token, "
             "slot) pairs where plan.keep is False (they are over the expert's capacity)."),
            (overwrite, "Each token keeps only one expert's contribution: did you write "
             "y[token_idx] = ... ? Use y.index_add_(0, token_idx, ...) so the K contributions "
             "of a token add up."),
        ]
        _diagnose(actual, expected, f"y for case {case}", suspects)


@checker("check_scatter_combine")
def check_scatter_combine(scatter_combine: Callable[..., torch.Tensor]) -> None:
    """scatter_combine(h_sorted, sort_order, topk_weights, num_tokens) -> y (N, D).

    h_sorted (M, D): expert outputs, one row per kept assignment, in the order of sort_order;
    sort_order (M,): the flat id token * K + slot of each row; topk_weights (N, K)."""
    for case in COMBINE_CASES:
        x, plan, experts = make_combine_case(**case)
        num_tokens, top_k = plan.topk_idx.shape
        with torch.no_grad():
            expected = dispatch_sorted(x, plan, experts)  # (N, D)
            x_sorted = x[plan.sort_order // top_k]  # (M, D)
            h_sorted = experts.forward_grouped(x_sorted, plan.tokens_per_expert.tolist())
            actual = scatter_combine(h_sorted.clone(), plan.sort_order.clone(),
                                     plan.topk_weights.clone(), num_tokens)
        flat_weights = plan.topk_weights.reshape(-1)  # (N*K,)
        token_of = plan.sort_order // top_k  # (M,)
        unweighted = torch.zeros_like(x).index_add(0, token_of, h_sorted)
        wrong_token = torch.zeros_like(x).index_add(
            0, plan.sort_order % top_k, h_sorted * flat_weights[plan.sort_order].unsqueeze(-1))
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
        _diagnose(actual, expected, f"y for case {case}", suspects)


GATE_CASES = ((0, 6, 4, 2), (1, 5, 8, 1), (2, 7, 6, 3), (3, 4, 4, 4))  # seed, N, E, K


@checker("check_gate_weights")
def check_gate_weights(gate_weights: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    """gate_weights(router_logits, top_k) -> (topk_idx, topk_weights), Mixtral style: softmax,
    top-k, renormalise; the weights must stay differentiable with respect to the logits."""
    for seed, num_tokens, num_experts, top_k in GATE_CASES:
        generator = torch.Generator().manual_seed(seed)
        logits = torch.randn(num_tokens, num_experts, generator=generator)  # (N, E)
        upstream = torch.randn(num_tokens, top_k, generator=generator)  # (N, K) dL/dw
        ref_logits = logits.clone().requires_grad_(True)
        ref_idx, ref_weights = topk_routing(torch.softmax(ref_logits, -1), top_k)
        (ref_weights * upstream).sum().backward()
        learner_logits = logits.clone().requires_grad_(True)
        result = gate_weights(learner_logits, top_k)
        if not isinstance(result, tuple) or len(result) != 2:
            raise CheckFailed("return a tuple (topk_idx, topk_weights).")
        topk_idx, topk_weights = result
        where = f"(N={num_tokens}, E={num_experts}, K={top_k})"
        if not isinstance(topk_idx, torch.Tensor) or topk_idx.dtype != torch.int64:
            raise CheckFailed(f"topk_idx should be an int64 tensor {where}.")
        if not torch.equal(topk_idx, ref_idx):
            raise CheckFailed(f"topk_idx {where} is not the top-k of the logits, best first: "
                              "use torch.topk(..., k=top_k, dim=-1).")
        probs = torch.softmax(logits, -1)  # (N, E)
        _diagnose(topk_weights, ref_weights.detach(), f"topk_weights {where}", [
            (probs.gather(-1, ref_idx), "These are the raw top-k probabilities: renormalise "
             "them to sum to 1 over the K chosen experts (Mixtral)."),
            (logits.gather(-1, ref_idx), "These are the raw logits: apply a softmax."),
        ])
        if not topk_weights.requires_grad:
            raise CheckFailed(
                f"topk_weights {where} carry no gradient back to router_logits, so the router "
                "would never learn. Did you detach them, or build them from topk_idx / a one-hot "
                "(an integer index has no gradient)? Gather them from the softmax.")
        (topk_weights * upstream).sum().backward()
        grad = learner_logits.grad
        if grad is None:
            raise CheckFailed(f"no gradient reached router_logits {where}.")
        expect_close(grad, ref_logits.grad, f"the gradient of router_logits {where}",
                     hint="The values are right but the gradient is not: is part of the "
                          "computation detached?")
