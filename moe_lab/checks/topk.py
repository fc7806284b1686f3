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
keep test, ranking slot-major (GShard) instead of in token order, a softmax that overflows at
logits near 100, detached weights, an int 0/1 keep mask, keeping nothing, changing an input in
place, a fixed E or capacity.

Cases: N = 1, several E, every K from 1 to E on a small E, logits near 100, an expert that gets
no token (also in the middle), capacities 0 and above the load, capacity points where floor,
round and int(x) + 1 differ from ceil, and N = 0.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    expect_close,
    expect_pair,
    expect_same_grad,
    fmt,
    fresh,
    set_case,
)
from moe_lab.dispatch import compute_capacity, make_routing_plan
from moe_lab.routing import topk_routing

# (N, E, K, offset): logits = offset + 2 * randn; an offset of 100 overflows exp in float32
_TOPK_CASES = [(8, 8, 2, 0.0), (1, 4, 2, 0.0), (5, 4, 1, 0.0), (4, 4, 3, 0.0), (6, 4, 4, 0.0),
               (6, 8, 3, 0.0), (16, 64, 8, 0.0), (5, 6, 2, 100.0)]


@checker("check_topk_routing")
def check_topk_routing(fn: Callable[[torch.Tensor, int], object]) -> None:
    """Mixtral: p = softmax(router_logits); topk_idx = top-K of p, best first;
    topk_weights = p[topk_idx] / sum(p[topk_idx])."""
    gen = torch.Generator().manual_seed(0)
    for n_tokens, num_experts, top_k, offset in _TOPK_CASES:
        where = f"N={n_tokens}, E={num_experts}, K={top_k}" + (
            f", logits near {offset:.0f}" if offset else "")
        set_case(where)
        router_logits = offset + torch.randn(n_tokens, num_experts, generator=gen) * 2  # (N, E)
        logits_ref = router_logits.clone().requires_grad_(True)
        router_probs = torch.softmax(logits_ref, dim=-1)  # (N, E)
        expected_idx, expected_w = topk_routing(router_probs, top_k, normalize=True)  # (N, K) x2
        router_probs = router_probs.detach()
        (logits_in,) = fresh(router_logits, grad=True)
        topk_idx, topk_weights = expect_pair(call(fn, logits_in, top_k, names=("router_logits",)),
                                             "topk_idx, topk_weights")
        if topk_idx.shape != expected_idx.shape:
            raise CheckFailed(f"topk_idx should have shape (N, K) = {tuple(expected_idx.shape)},"
                              f" got {tuple(topk_idx.shape)} ({where}).")
        if topk_idx.dtype not in (torch.int64, torch.int32):
            swapped = topk_idx.is_floating_point() and not topk_weights.is_floating_point()
            raise CheckFailed(f"topk_idx should hold expert ids (int64), got {topk_idx.dtype}"
                              + (": the pair is swapped. Return (topk_idx, topk_weights)."
                                 if swapped else ": keep torch.topk's .indices as they are "
                                 "(no .float()), and return (topk_idx, topk_weights)."))
        inputs = {"router_logits": router_logits}
        if isinstance(topk_weights, torch.Tensor) and topk_weights.shape == expected_w.shape \
                and not bool(torch.isfinite(topk_weights).all()):
            expect_close(topk_weights, expected_w.detach(), f"topk_weights ({where})",
                         inputs=inputs)
        same_sets = torch.equal(topk_idx.sort(-1).values.long(), expected_idx.sort(-1).values)
        if not same_sets:
            smallest = torch.topk(router_probs, top_k, dim=-1, largest=False).indices
            if torch.equal(topk_idx.sort(-1).values.long(), smallest.sort(-1).values):
                raise CheckFailed("You chose the K *least* likely experts: use the largest "
                                  "probabilities (torch.topk's default largest=True).")
            row = int((topk_idx.sort(-1).values.long() != expected_idx.sort(-1).values)
                      .any(-1).nonzero()[0])
            raise CheckFailed(f"Some tokens chose different experts than the reference ({where})"
                              f": token {row} has logits {fmt(router_logits[row])}, the top-{top_k}"
                              f" experts are {expected_idx[row].tolist()}, you chose "
                              f"{topk_idx[row].tolist()}. Pick the K largest router "
                              f"probabilities per token (over dim=-1).")
        if not torch.equal(topk_idx.long(), expected_idx):
            raise CheckFailed("Right experts, wrong order: list each token's experts best first, "
                              "as torch.topk does (sorted=True).")
        if not isinstance(topk_weights, torch.Tensor) or topk_weights.shape != expected_w.shape:
            raise CheckFailed(f"topk_weights should have shape (N, K) = "
                              f"{tuple(expected_w.shape)} ({where}).")
        weight_sums = topk_weights.detach().double().sum(-1)  # (N,)
        raw = router_probs.gather(-1, expected_idx)  # (N, K)
        if not torch.allclose(weight_sums, torch.ones_like(weight_sums), atol=1e-4):
            if torch.allclose(topk_weights.detach().double(), raw.double(), atol=1e-5):
                raise CheckFailed("The top-k weights don't sum to 1: did you renormalise? "
                                  "Divide the K probabilities by their sum (Mixtral), or "
                                  "equivalently take a softmax over the K chosen logits.")
            raise CheckFailed(f"The top-k weights don't sum to 1 (sums like "
                              f"{weight_sums[0].item():.3f}): did you renormalise?")
        if top_k > 1 and torch.allclose(topk_weights.detach().double(),
                                        torch.softmax(raw.double(), -1), atol=1e-5):
            raise CheckFailed("The weights sum to 1 but are too even: that is a double softmax "
                              "(softmax over probabilities). Renormalise the probabilities by "
                              "their sum, or take the softmax over the top-k *logits*.")
        expect_close(topk_weights, expected_w.detach(), f"topk_weights ({where})",
                     inputs=inputs)
        expect_same_grad(topk_weights, expected_w, {"router_logits": logits_in},
                         {"router_logits": logits_ref}, f"topk_weights ({where})")


def _skewed_topk_idx(n_tokens: int, num_experts: int, top_k: int,
                     gen: torch.Generator) -> torch.Tensor:
    """Distinct experts per token, drawn with a skew so that some experts overflow."""
    popularity = torch.linspace(3.0, 0.5, num_experts)  # (E,)
    return torch.multinomial(popularity.expand(n_tokens, -1), top_k,
                             generator=gen)  # (N, K)


# (N, E, K, the expert that gets no token)
_COUNT_CASES = [(10, 4, 2, 3), (7, 6, 1, 5), (32, 8, 3, 7), (1, 4, 2, 3), (12, 6, 2, 2),
                (5, 3, 3, None)]


@checker("check_tokens_per_expert")
def check_tokens_per_expert(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """``tokens_per_expert(topk_idx (N, K), num_experts) -> (E,)``: assignments per expert."""
    gen = torch.Generator().manual_seed(1)
    for n_tokens, num_experts, top_k, empty in _COUNT_CASES:
        where = f"N={n_tokens}, E={num_experts}, K={top_k}"
        set_case(where)
        topk_idx = _skewed_topk_idx(n_tokens, num_experts, top_k, gen)  # (N, K)
        if empty is not None:  # that expert gets nothing (its choices go to another expert)
            topk_idx[topk_idx == empty] = (empty + 1) % num_experts
        expected = make_routing_plan(topk_idx, torch.ones(topk_idx.shape), num_experts) \
            .tokens_per_expert  # (E,)
        got = call(fn, *fresh(topk_idx), num_experts, names=("topk_idx",))
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"Return a torch.Tensor of shape (E,), got {type(got).__name__}.")
        if got.dim() == 1 and got.shape[0] < num_experts \
                and torch.equal(got.long(), expected[:got.shape[0]]):
            raise CheckFailed(f"Got {got.shape[0]} counts for {num_experts} experts ({where}): "
                              f"an expert that receives no token still needs its 0 "
                              f"(torch.bincount(..., minlength=num_experts)).")
        if got.shape != expected.shape:
            raise CheckFailed(f"tokens_per_expert should have shape (E,) = {tuple(expected.shape)}"
                              f", got {tuple(got.shape)}: sum the (N, K) choices into E counts.")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            expect_close(got, expected, f"tokens_per_expert ({where})")  # names the NaN or inf
        if top_k > 1 and torch.equal(got.long(), torch.bincount(topk_idx[:, 0],
                                                                 minlength=num_experts)):
            raise CheckFailed("You counted only each token's first choice: every one of the K "
                              "choices is an assignment (flatten topk_idx).")
        if int(got.sum()) != n_tokens * top_k and int(got.sum()) == n_tokens and top_k > 1:
            raise CheckFailed(f"The counts sum to N={n_tokens}, not N*K={n_tokens * top_k}: "
                              f"count every (token, slot) assignment.")
        expect_close(got, expected, f"tokens_per_expert ({where})", atol=0, rtol=0,
                     inputs={"topk_idx": topk_idx})


# (capacity_factor, N, K, E): every product exact in binary floating point; some exact
# multiples (int(x) + 1 is wrong there), some not (floor and round are wrong there), N = 0
_CAPACITY_CASES = [(1.0, 10, 2, 4), (1.25, 10, 2, 4), (1.0, 7, 1, 2), (0.5, 3, 1, 8),
                   (2.0, 16, 2, 8), (1.5, 9, 2, 8), (0.25, 64, 1, 16), (1.0, 1, 1, 4),
                   (1.5, 6, 2, 3), (1.0, 0, 2, 4), (1.25, 10, 1, 4)]
# the last: capacity_factor * N * K = 12.5, where the integer ceiling (a + b - 1) // b rounds down


def _capacity_answer(got: object) -> int:
    """The learner's capacity as an int, or :class:`CheckFailed` naming what it is instead."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = int(got.item())
    if isinstance(got, numbers.Integral) and not isinstance(got, bool):  # numpy ints too
        got = int(got)
    if isinstance(got, float) and got.is_integer():
        raise CheckFailed(f"Return an int (a number of slots), got the float {got}: "
                          f"wrap it in int(...) after rounding up.")
    if isinstance(got, bool) or not isinstance(got, int):
        raise CheckFailed(f"Return an int, got {type(got).__name__} ({got!r}).")
    return got


@checker("check_capacity")
def check_capacity(fn: Callable[[float, int, int, int], int]) -> None:
    """``capacity(capacity_factor, num_tokens, top_k, num_experts) -> int``:
    C = ceil(capacity_factor * N * K / E)."""
    answers = []
    for case in _CAPACITY_CASES:
        set_case("capacity_factor={}, N={}, K={}, E={}".format(*case))
        answers.append(_capacity_answer(call(fn, *case, names=())))

    def explains(mistake: Callable[[float, int, int, int], int]) -> bool:
        """Whether a mistake gives every answer (not only the first wrong one)."""
        return all(got == mistake(*case) for case, got in zip(_CAPACITY_CASES, answers,
                                                               strict=True))

    for (capacity_factor, n_tokens, top_k, num_experts), got in zip(_CAPACITY_CASES, answers,
                                                                   strict=True):
        expected = compute_capacity(capacity_factor, n_tokens, top_k, num_experts)
        if got == expected:
            continue
        exact = capacity_factor * n_tokens * top_k / num_experts
        case = (f"for capacity_factor={capacity_factor}, N={n_tokens}, K={top_k}, "
                f"E={num_experts} expected C = ceil({exact:g}) = {expected}, got {got}")
        if n_tokens == 0:
            raise CheckFailed(f"{case}. With no token no slot is needed: C = ceil(0) = 0 (a "
                              f"lower bound such as max(1, ...) is not part of the formula).")
        if got == expected + 1 and exact == int(exact):
            raise CheckFailed(f"Off by one: {case}. At an exact multiple ceil(x) = x: adding 1 "
                              f"(int(x) + 1 or ceil(x) + 1) over-counts. Use math.ceil alone.")
        assignments = capacity_factor * n_tokens * top_k  # a float when capacity_factor is
        if got == int((assignments + num_experts - 1) // num_experts):
            raise CheckFailed(f"{case}. The integer ceiling (a + b - 1) // b holds for integers "
                              f"only: capacity_factor * N * K = {assignments:g} is not one, and "
                              f"({assignments:g} + {num_experts - 1}) // {num_experts} rounds "
                              f"down. Use math.ceil(capacity_factor * N * K / E).")
        if got in (math.floor(exact), round(exact)) and got < expected:
            raise CheckFailed(f"Off by one: {case}. You rounded down (or to nearest); round up "
                              f"with math.ceil so the mean load N*K/E fits.")
        if explains(lambda cf, n, k, e: math.ceil(cf * n / e)):
            raise CheckFailed(f"{case}. Each token makes K assignments: the mean load per expert "
                              f"is N*K/E, not N/E.")
        if explains(lambda cf, n, k, e: math.ceil(n * k / e)):
            raise CheckFailed(f"{case}. You left out capacity_factor: C = ceil(capacity_factor "
                              f"* N * K / E).")
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
                                                   (24, 6, 3, 9), (1, 4, 2, 1), (10, 4, 2, 0),
                                                   (8, 5, 2, 16)]:
        cases.append((_skewed_topk_idx(n_tokens, num_experts, top_k, gen), num_experts,
                      capacity))
    ambiguous = None  # the message of a case where two mistakes give the same mask
    for topk_idx, num_experts, capacity in cases:
        n_tokens, top_k = topk_idx.shape
        where = f"N={n_tokens}, E={num_experts}, K={top_k}, capacity={capacity}"
        set_case(where)
        plan = make_routing_plan(topk_idx, torch.ones(topk_idx.shape), num_experts, capacity)
        got = call(fn, *fresh(topk_idx), num_experts, capacity, names=("topk_idx",))
        if not isinstance(got, torch.Tensor) or got.shape != plan.keep.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"Return a (N, K) = {tuple(plan.keep.shape)} bool tensor, "
                              f"got {shape}.")
        if got.dtype != torch.bool:
            raise CheckFailed(f"Return a bool mask, got {got.dtype}: an integer 0/1 tensor used "
                              f"as an index (x[mask]) selects rows 0 and 1 instead of masking. "
                              f"Keep the comparison's result (position < capacity) as it is.")
        if torch.equal(got, plan.keep):
            continue
        kept_per_expert = torch.bincount(topk_idx[got], minlength=num_experts)  # (E,)
        demand = torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)
        drops_whole = (demand <= capacity)[topk_idx]  # (N, K): overloaded experts dropped
        if torch.equal(got, drops_whole) and not bool(got.any()):
            ambiguous = ambiguous or (  # every expert is overloaded: a later case tells which
                f"You kept no assignment at all ({where}), where the reference keeps "
                f"{int(plan.keep.sum())}: an expert keeps its first C assignments "
                f"(position < capacity, positions counting from 0).")
            continue
        if torch.equal(got, drops_whole):
            raise CheckFailed(f"You dropped every assignment of an expert whose load is over "
                              f"capacity {capacity} ({where}): an overloaded expert still keeps "
                              f"its first C assignments (position < capacity); only those past "
                              f"C are dropped.")
        if not bool(got.any()):
            raise CheckFailed(f"You kept no assignment at all ({where}), where the reference "
                              f"keeps {int(plan.keep.sum())}. Positions within an expert count "
                              f"from 0, and position 0 is kept whenever capacity >= 1: keep "
                              f"position < capacity (< capacity - 1 would be off by one).")
        if bool(got.all()) and capacity < int(demand.max()):
            raise CheckFailed(f"You kept every assignment ({where}), but an expert got "
                              f"{int(demand.max())}: keep at most C per expert.")
        if torch.equal(got, plan.position <= capacity):
            raise CheckFailed(f"An expert kept {capacity + 1} assignments with capacity "
                              f"{capacity}: off by one, did you use <= instead of <? "
                              f"Positions count from 0, so keep position < capacity.")
        if capacity > 1 and torch.equal(got, plan.position < capacity - 1):
            raise CheckFailed(f"Each full expert kept {capacity - 1} assignments, not "
                              f"{capacity}: off by one. Positions count from 0: keep "
                              f"position < capacity.")
        if (kept_per_expert > capacity).any():
            raise CheckFailed(f"An expert kept {int(kept_per_expert.max())} assignments with "
                              f"capacity {capacity}: keep at most C per expert.")
        if torch.equal(kept_per_expert, demand.clamp(max=capacity)):
            raise CheckFailed("The right number kept per expert, but not the right ones: rank "
                              "each expert's assignments in token order (token 0 first; within a "
                              "token, slot 0 first) and keep the first C. Ranking all first "
                              "choices before any second choice is GShard's order, not ours.")
        raise CheckFailed(f"Kept {int(got.sum())} assignments, expected {int(plan.keep.sum())} "
                          f"({where}): keep min(load, C) per expert. topk_idx = "
                          f"{fmt(topk_idx, 12)}, expected {fmt(plan.keep, 12)}, got "
                          f"{fmt(got, 12)}.")
    if ambiguous:
        raise CheckFailed(ambiguous)
