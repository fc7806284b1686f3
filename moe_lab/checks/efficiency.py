"""Checkers for lesson 06 (efficiency): the sort at the heart of the sorted dispatch.

Reference: :func:`moe_lab.make_routing_plan` (``sort_order``, ``tokens_per_expert``).

- :func:`check_sort_by_expert`: ``sort_by_expert(topk_idx, num_experts) -> (order, counts)``:
  ``order`` (N*K,) lists the flat assignment ids (token * K + slot) so that each expert's
  assignments are contiguous, experts in increasing order; ``counts`` (E,) is the segment length
  of each expert. Any order within one expert is correct (the unsort uses the same order), so
  the checker accepts every grouping, not only the stable one.

Catalogued mistakes: token ids instead of assignment ids (``order // K``), sorting each token's
K experts (``dim=-1``) instead of the flat list, ``bincount`` without ``minlength``, an order that
repeats or loses assignments, the sorted expert ids instead of their positions, a descending
sort (contiguous segments, experts in the wrong order), an input changed in place.

Cases: N = 1, K = E, an expert with no token in the middle, E from 3 to 16.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.checks.core import CheckFailed, call, checker, expect_pair, fresh, set_case
from moe_lab.dispatch import make_routing_plan


def expect_grouped_by(order: object, keys: torch.Tensor, what: str, *, row_name: str) -> None:
    """Raise :class:`CheckFailed` unless ``order`` is a permutation of range(len(keys)) that
    makes ``keys[order]`` non-decreasing (each key's rows contiguous, keys in increasing order)."""
    if not isinstance(order, torch.Tensor):
        raise CheckFailed(f"{what} should be a torch.Tensor, got {type(order).__name__}.")
    if order.dtype not in (torch.int64, torch.int32):
        raise CheckFailed(f"{what} should hold integer row ids (int64), got {order.dtype}.")
    num_rows = keys.shape[0]
    if order.dim() != 1 or order.shape[0] != num_rows:
        raise CheckFailed(f"{what} should have shape ({num_rows},): one entry per {row_name}, "
                          f"got {tuple(order.shape)}.")
    if not torch.equal(order.sort().values.long(), torch.arange(num_rows)):
        if num_rows > 1 and torch.equal(order.long(), keys.sort().values):
            raise CheckFailed(f"{what} holds the sorted expert ids (sort(...).values), not the "
                              f"positions of the {row_name}s: return torch.argsort(...) (or "
                              f"sort(...).indices).")
        raise CheckFailed(f"{what} should be a permutation of 0..{num_rows - 1}: every "
                          f"{row_name} exactly once (some are repeated or missing).")
    grouped = keys[order.long()]  # (rows,)
    if bool((grouped[1:] >= grouped[:-1]).all()):
        return
    runs = torch.unique_consecutive(grouped)  # one entry per contiguous segment
    if runs.numel() == torch.unique(grouped).numel():  # every expert in one segment
        descending = bool((runs[1:] < runs[:-1]).all())
        raise CheckFailed(f"Each expert's {row_name}s are contiguous in {what}, but the experts "
                          f"come in the order {runs.tolist()}"
                          + (": a descending sort. Sort ascending (descending=False)"
                             if descending else ". Sort by expert id, ascending")
                          + ", so that segment e comes e-th, as the counts list them.")
    raise CheckFailed(f"{what} does not make each expert's {row_name}s contiguous: after "
                      f"reordering, the experts read {grouped.tolist()[:12]}"
                      f"{'...' if num_rows > 12 else ''}. Sort by expert "
                      "(torch.argsort(keys, stable=True)).")


def sort_by_expert_reference(topk_idx: torch.Tensor,
                             num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's answer: the routing plan's ``sort_order`` (N*K,) and counts (E,)."""
    plan = make_routing_plan(topk_idx, torch.ones(topk_idx.shape), num_experts)
    return plan.sort_order, plan.tokens_per_expert


@checker("check_sort_by_expert")
def check_sort_by_expert(fn: Callable[[torch.Tensor, int], object]) -> None:
    gen = torch.Generator().manual_seed(0)
    # (N, E, K, an expert that gets no token, or None)
    for num_tokens, num_experts, top_k, empty in [(6, 4, 2, None), (9, 8, 2, None),
                                                  (5, 6, 1, None), (12, 16, 4, None),
                                                  (1, 4, 2, None), (4, 3, 3, None),
                                                  (8, 5, 2, 2), (7, 5, 2, 4)]:
        set_case(f"N={num_tokens}, E={num_experts}, K={top_k}")
        router_logits = torch.randn(num_tokens, num_experts, generator=gen)  # (N, E)
        if empty is not None:
            router_logits[:, empty] = -1e4
        topk_idx = torch.topk(router_logits, top_k, dim=-1).indices  # (N, K)
        _, expected_counts = sort_by_expert_reference(topk_idx, num_experts)
        order, counts = expect_pair(call(fn, *fresh(topk_idx), num_experts, names=("topk_idx",)),
                                    "order, tokens_per_expert")
        if order.shape == expected_counts.shape and counts.shape == (num_tokens * top_k,) \
                and num_tokens * top_k != num_experts and torch.equal(order.long(), expected_counts):
            raise CheckFailed("You returned the pair swapped: return (order, tokens_per_expert), "
                              "the N*K assignment ids first, then the E counts.")
        if counts.dim() == 1 and counts.shape[0] < num_experts \
                and torch.equal(counts.long(), expected_counts[:counts.shape[0]]):
            raise CheckFailed(f"The tokens_per_expert tensor has {counts.shape[0]} entries for E="
                              f"{num_experts} experts: the last experts got no token. Use "
                              "torch.bincount(..., minlength=num_experts).")
        if counts.shape != expected_counts.shape or \
                not torch.equal(counts.long(), expected_counts):
            raise CheckFailed(f"tokens_per_expert should be {expected_counts.tolist()} "
                              f"(N={num_tokens}, E={num_experts}, K={top_k}), got "
                              f"{counts.tolist()}: count every (token, slot) assignment.")
        flat = topk_idx.reshape(-1)  # (N*K,)
        if isinstance(order, torch.Tensor) and order.shape == flat.shape and top_k > 1 and \
                not order.is_floating_point() and int(order.min()) >= 0 and \
                torch.equal(torch.bincount(order.long(), minlength=num_tokens),
                            torch.full((num_tokens,), top_k)) and \
                not torch.equal(order.long(), flat.sort().values):
            raise CheckFailed("Your order holds token ids, but it should index the N*K flat "
                              "assignments (token * K + slot): a token with K experts appears "
                              "K times. Sort topk_idx.reshape(-1), not the tokens.")
        if order.shape == topk_idx.shape and not order.is_floating_point() and torch.equal(
                order.sort(dim=-1).values.long(), torch.arange(top_k).expand_as(topk_idx)):
            raise CheckFailed(f"Your order has shape {tuple(order.shape)} = (N, K): you sorted each "
                              "token's experts. Flatten first: topk_idx.reshape(-1), then "
                              "argsort the N*K expert ids.")
        expect_grouped_by(order, topk_idx.reshape(-1), "order", row_name="assignment")
