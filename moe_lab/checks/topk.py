"""Checkers for lesson 02 (top-k sparse activation and capacity).

References: :func:`moe_lab.topk_routing`, :func:`moe_lab.compute_capacity`,
:func:`moe_lab.make_routing_plan`.

- :func:`check_topk_routing`: ``topk_routing(router_logits, top_k) -> (topk_idx, topk_weights)``,
  the Mixtral convention (softmax over all E, top-k, renormalise).
- :func:`check_tokens_per_expert`: ``tokens_per_expert(topk_idx, num_experts) -> (E,)``.
- :func:`check_capacity`: ``capacity(capacity_factor, num_tokens, top_k, num_experts) -> int``.
- :func:`check_keep_mask`: ``keep_mask(topk_idx, num_experts, capacity) -> (N, K) bool``,
  dropping in token order.

Catalogued mistakes each checker names: no renormalisation, a double softmax, experts not best
first, the smallest instead of the largest probabilities, counting only the first choice, a
missing ``minlength``, capacity rounded down (floor) or without K, ``<=`` instead of ``<`` in the
keep test, ranking slot-major (GShard) instead of in token order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from moe_lab.checks.core import CheckFailed, checker, expect_close, expect_pair
from moe_lab.dispatch import compute_capacity, make_routing_plan
from moe_lab.routing import topk_routing


@checker("check_topk_routing")
def check_topk_routing(fn: Callable[[torch.Tensor, int], object]) -> None:
    """Mixtral: p = softmax(router_logits); topk_idx = top-K of p, best first;
    topk_weights = p[topk_idx] / sum(p[topk_idx])."""
    gen = torch.Generator().manual_seed(0)
    for n_tokens, num_experts, top_k in [(8, 8, 2), (5, 4, 1), (6, 8, 3), (16, 64, 8)]:
        router_logits = torch.randn(n_tokens, num_experts, generator=gen) * 2  # (N, E)
        router_probs = torch.softmax(router_logits, dim=-1)  # (N, E)
        expected_idx, expected_w = topk_routing(router_probs, top_k, normalize=True)  # (N, K) x2
        topk_idx, topk_weights = expect_pair(fn(router_logits, top_k), "topk_idx, topk_weights")
        if topk_idx.shape != expected_idx.shape:
            raise CheckFailed(f"topk_idx should have shape (N, K) = {tuple(expected_idx.shape)},"
                              f" got {tuple(topk_idx.shape)}.")
        if topk_idx.dtype not in (torch.int64, torch.int32):
            raise CheckFailed(f"topk_idx should hold expert ids (int64), got {topk_idx.dtype}: "
                              f"did you swap the pair? Return (topk_idx, topk_weights).")
        same_sets = torch.equal(topk_idx.sort(-1).values, expected_idx.sort(-1).values)
        if not same_sets:
            smallest = torch.topk(router_probs, top_k, dim=-1, largest=False).indices
            if torch.equal(topk_idx.sort(-1).values, smallest.sort(-1).values):
                raise CheckFailed("you chose the K *least* likely experts: use the largest "
                                  "probabilities (torch.topk's default largest=True).")
            raise CheckFailed("some tokens chose different experts than the reference: pick the "
                              "K largest router probabilities per token (over dim=-1).")
        if not torch.equal(topk_idx.long(), expected_idx):
            raise CheckFailed("right experts, wrong order: list each token's experts best first, "
                              "as torch.topk does (sorted=True).")
        weight_sums = topk_weights.double().sum(-1)  # (N,)
        raw = router_probs.gather(-1, expected_idx)  # (N, K)
        if not torch.allclose(weight_sums, torch.ones_like(weight_sums), atol=1e-4):
            if torch.allclose(topk_weights.double(), raw.double(), atol=1e-5):
                raise CheckFailed("the top-k weights don't sum to 1: did you renormalise? "
                                  "Divide the K probabilities by their sum (Mixtral), or "
                                  "equivalently take a softmax over the K chosen logits.")
            raise CheckFailed(f"the top-k weights don't sum to 1 (sums like "
                              f"{weight_sums[0].item():.3f}): did you renormalise?")
        if torch.allclose(topk_weights.double(), torch.softmax(raw.double(), -1), atol=1e-5) \
                and top_k > 1:
            raise CheckFailed("the weights sum to 1 but are too even: that is a double softmax "
                              "(softmax over probabilities). Renormalise the probabilities by "
                              "their sum, or take the softmax over the top-k *logits*.")
        expect_close(topk_weights, expected_w, f"topk_weights (N={n_tokens}, E={num_experts}, "
                     f"K={top_k})", hint="weights = p[topk_idx] / p[topk_idx].sum(-1).")


def _skewed_topk_idx(n_tokens: int, num_experts: int, top_k: int,
                     gen: torch.Generator) -> torch.Tensor:
    """Distinct experts per token, drawn with a skew so that some experts overflow."""
    popularity = torch.linspace(3.0, 0.5, num_experts)  # (E,)
    return torch.multinomial(popularity.expand(n_tokens, -1), top_k,
                             generator=gen)  # (N, K)


@checker("check_tokens_per_expert")
def check_tokens_per_expert(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``tokens_per_expert(topk_idx (N, K), num_experts) -> (E,)``: assignments per expert."""
    gen = torch.Generator().manual_seed(1)
    for n_tokens, num_experts, top_k in [(10, 4, 2), (7, 6, 1), (32, 8, 3)]:
        topk_idx = _skewed_topk_idx(n_tokens, num_experts, top_k, gen)  # (N, K)
        topk_idx[topk_idx == num_experts - 1] = 0  # the last expert gets nothing
        expected = make_routing_plan(topk_idx, torch.ones(topk_idx.shape), num_experts) \
            .tokens_per_expert  # (E,)
        got = fn(topk_idx, num_experts)
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"return a torch.Tensor of shape (E,), got {type(got).__name__}.")
        if got.shape == (num_experts - 1,) or (got.dim() == 1 and got.shape[0] < num_experts):
            raise CheckFailed(f"got {got.shape[0]} counts for {num_experts} experts: an expert "
                              f"that receives no token still needs a 0 "
                              f"(torch.bincount(..., minlength=num_experts)).")
        if got.shape != expected.shape:
            raise CheckFailed(f"tokens_per_expert should have shape (E,) = {tuple(expected.shape)}"
                              f", got {tuple(got.shape)}: sum the (N, K) choices into E counts.")
        if top_k > 1 and torch.equal(got.long(), torch.bincount(topk_idx[:, 0],
                                                                 minlength=num_experts)):
            raise CheckFailed("you counted only each token's first choice: every one of the K "
                              "choices is an assignment (flatten topk_idx).")
        if int(got.sum()) != n_tokens * top_k and int(got.sum()) == n_tokens:
            raise CheckFailed(f"the counts sum to N={n_tokens}, not N*K={n_tokens * top_k}: "
                              f"count every (token, slot) assignment.")
        expect_close(got, expected, f"tokens_per_expert (N={n_tokens}, E={num_experts}, "
                     f"K={top_k})", atol=0, rtol=0)


# (capacity_factor, N, K, E): every product exact in binary floating point
_CAPACITY_CASES = [(1.0, 10, 2, 4), (1.25, 10, 2, 4), (1.0, 7, 1, 2), (0.5, 3, 1, 8),
                   (2.0, 16, 2, 8), (1.5, 9, 2, 8), (0.25, 64, 1, 16)]


@checker("check_capacity")
def check_capacity(fn: Callable[[float, int, int, int], int]) -> None:
    """``capacity(capacity_factor, num_tokens, top_k, num_experts) -> int``:
    C = ceil(capacity_factor * N * K / E)."""
    for capacity_factor, n_tokens, top_k, num_experts in _CAPACITY_CASES:
        expected = compute_capacity(capacity_factor, n_tokens, top_k, num_experts)
        got = fn(capacity_factor, n_tokens, top_k, num_experts)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, float) and got == int(got):
            raise CheckFailed(f"return an int (a number of slots), got the float {got}: "
                              f"wrap it in int(...) after rounding up.")
        if isinstance(got, bool) or not isinstance(got, int):
            raise CheckFailed(f"return an int, got {type(got).__name__} ({got!r}).")
        if got == expected:
            continue
        exact = capacity_factor * n_tokens * top_k / num_experts
        case = (f"for capacity_factor={capacity_factor}, N={n_tokens}, K={top_k}, "
                f"E={num_experts} expected C = ceil({exact:g}) = {expected}, got {got}")
        if got == math.floor(exact) or got == round(exact):
            raise CheckFailed(f"off by one: {case}. You rounded down (or to nearest); round up "
                              f"with math.ceil so the mean load N*K/E fits.")
        if got == math.ceil(capacity_factor * n_tokens / num_experts):
            raise CheckFailed(f"{case}. Each token makes K assignments: the mean load per expert "
                              f"is N*K/E, not N/E.")
        if got == expected + 1:
            raise CheckFailed(f"off by one: {case}. ceil already rounds up; don't add 1.")
        raise CheckFailed(f"{case}: C = ceil(capacity_factor * N * K / E).")


@checker("check_keep_mask")
def check_keep_mask(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    """``keep_mask(topk_idx (N, K), num_experts, capacity) -> (N, K) bool``: an assignment is
    kept when fewer than C earlier assignments (in token order, then slot) went to its expert."""
    gen = torch.Generator().manual_seed(2)
    # tokens -> (0, 1), (1, 0), (0, 1): with C = 1, token order keeps both of token 0's
    # choices and drops token 1's first choice; GShard's slot-major order would keep it
    cases = [(torch.tensor([[0, 1], [1, 0], [0, 1]]), 2, 1)]
    for n_tokens, num_experts, top_k, capacity in [(12, 4, 2, 4), (16, 8, 1, 2),
                                                   (24, 6, 3, 9)]:
        cases.append((_skewed_topk_idx(n_tokens, num_experts, top_k, gen), num_experts,
                      capacity))
    for topk_idx, num_experts, capacity in cases:
        plan = make_routing_plan(topk_idx, torch.ones(topk_idx.shape), num_experts, capacity)
        got = fn(topk_idx, num_experts, capacity)
        if not isinstance(got, torch.Tensor) or got.shape != plan.keep.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"return a (N, K) = {tuple(plan.keep.shape)} bool tensor, "
                              f"got {shape}.")
        got = got.bool()
        if torch.equal(got, plan.keep):
            continue
        kept_per_expert = torch.bincount(topk_idx[got], minlength=num_experts)  # (E,)
        demand = torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)
        if torch.equal(got, plan.position <= capacity):
            raise CheckFailed(f"an expert kept {capacity + 1} assignments with capacity "
                              f"{capacity}: off by one, did you use <= instead of <? "
                              f"Positions count from 0, so keep position < capacity.")
        if torch.equal(got, plan.position < capacity - 1):
            raise CheckFailed(f"each full expert kept {capacity - 1} assignments, not "
                              f"{capacity}: off by one. Positions count from 0: keep "
                              f"position < capacity.")
        if (kept_per_expert > capacity).any():
            raise CheckFailed(f"an expert kept {int(kept_per_expert.max())} assignments with "
                              f"capacity {capacity}: keep at most C per expert.")
        if torch.equal(kept_per_expert, demand.clamp(max=capacity)):
            raise CheckFailed("the right number kept per expert, but not the right ones: rank "
                              "each expert's assignments in token order (token 0 first; within a "
                              "token, slot 0 first) and keep the first C. Ranking all first "
                              "choices before any second choice is GShard's order, not ours.")
        raise CheckFailed(f"kept {int(got.sum())} assignments, expected {int(plan.keep.sum())}: "
                          f"keep min(load, C) per expert.")
