"""Checkers for lesson 07 (expert parallelism): the bookkeeping of the all-to-all.

References: :func:`moe_lab.systems.parallel.send_splits`, :func:`moe_lab.systems.parallel.local_expert_order`.

- :func:`check_send_splits`: ``send_splits(topk_idx, num_experts, world_size) -> (W,)``: rows a
  rank sends to each rank, one per (token, expert) assignment, experts owned in contiguous
  blocks (rank r owns experts r * E/W ... (r + 1) * E/W - 1).
- :func:`check_local_expert_order`: ``local_expert_order(recv_counts) -> (R,)``: the received
  rows come source rank by source rank (within a source, local expert by local expert); return
  an order that makes each local expert's rows contiguous. Any order within one expert works
  (the undo uses the same order), so every grouping passes.

Catalogued mistakes: round-robin ownership (e % W), counting tokens instead of assignments, a
missing ``minlength``, returning per-expert counts instead of per-rank splits; leaving rows in
arrival order, labelling the chunks expert-major (transposed), an order that loses rows, an
input changed in place. A list of ints is accepted for the splits (what all_to_all takes).

Cases: N = 1, W = 1, W = E, a rank that receives nothing; one source rank, one local expert,
nothing received at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.checks.core import CheckFailed, call, checker, fmt, fresh, set_case, whole_number
from moe_lab.checks.efficiency import expect_grouped_by
from moe_lab.systems.parallel import send_splits


@checker("check_send_splits")
def check_send_splits(fn: Callable[[torch.Tensor, int, int], object]) -> None:
    gen = torch.Generator().manual_seed(0)
    # (N, E, K, W); the last case routes only to experts 0-1, so rank 1 receives nothing
    for num_tokens, num_experts, top_k, world_size in [(6, 4, 2, 2), (9, 6, 2, 3), (8, 8, 1, 4),
                                                       (5, 4, 2, 2), (1, 4, 2, 2), (6, 4, 2, 1),
                                                       (7, 4, 2, 4)]:
        router_logits = torch.randn(num_tokens, num_experts, generator=gen)  # (N, E)
        if (num_tokens, world_size) == (5, 2):
            router_logits[:, 2:] = -1e4
        topk_idx = torch.topk(router_logits, top_k, dim=-1).indices  # (N, K)
        expected = send_splits(topk_idx, num_experts, world_size)  # (W,)
        case = f"(N={num_tokens}, E={num_experts}, K={top_k}, W={world_size})"
        set_case(case[1:-1])
        got = call(fn, *fresh(topk_idx), num_experts, world_size, names=("topk_idx",))
        if isinstance(got, list | tuple) and None not in (splits := [whole_number(v) for v in got]):
            got = torch.tensor(splits, dtype=torch.long)  # what all_to_all takes: a list of ints
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"Return a (W,) tensor of row counts, got {type(got).__name__}.")
        per_expert = torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)
        if got.dim() == 1 and got.shape[0] == num_experts != world_size \
                and torch.equal(got.long(), per_expert):
            raise CheckFailed(f"You returned {num_experts} numbers, one per expert; the "
                              f"all-to-all wants one per rank (W={world_size}): sum the counts "
                              "of each rank's block of E/W experts.")
        if got.dim() == 1 and got.shape[0] < world_size \
                and torch.equal(got.long(), expected[:got.shape[0]]):
            raise CheckFailed(f"With {case[1:-1]}: you returned {got.shape[0]} splits for W={world_size} "
                              "ranks: a rank that gets nothing still needs its 0 "
                              "(bincount's minlength).")
        if got.shape != expected.shape:
            raise CheckFailed(f"The splits should have shape (W,) = {tuple(expected.shape)}, "
                              f"got {tuple(got.shape)}.")
        if torch.equal(got.long(), expected):
            continue
        round_robin = torch.bincount(topk_idx.reshape(-1) % world_size, minlength=world_size)
        per_token = torch.stack([
            ((topk_idx // (num_experts // world_size)) == r).any(-1).sum()
            for r in range(world_size)])
        if torch.equal(got.long(), round_robin):
            raise CheckFailed(f"With {case[1:-1]}: you assigned expert e to rank e % W (round robin). Here "
                              "experts are owned in contiguous blocks: owner(e) = e // (E / W).")
        if torch.equal(got.long(), per_token):
            raise CheckFailed(f"With {case[1:-1]}: you counted tokens, but a token whose K experts live on "
                              "the same rank is sent once per assignment: count the N*K "
                              "(token, expert) pairs.")
        raise CheckFailed(f"With {case[1:-1]}: expected splits {expected.tolist()}, got {got.tolist()}, "
                          f"for topk_idx = {fmt(topk_idx, 12)}. Rank r owns experts "
                          f"r * E/W to (r + 1) * E/W - 1; count the assignments to each block.")


@checker("check_local_expert_order")
def check_local_expert_order(fn: Callable[[torch.Tensor], object]) -> None:
    for recv_counts in ([[2, 1], [1, 2]], [[0, 3, 1], [2, 0, 0], [1, 1, 4]], [[3], [0], [2]],
                        [[1, 0], [0, 2], [2, 1], [0, 0]], [[2, 0, 1]], [[0, 0], [0, 0]]):
        set_case(f"recv_counts={recv_counts}")
        recv_counts = torch.tensor(recv_counts)  # (W, E_local)
        world_size, local_experts = recv_counts.shape
        # the local expert of each received row, in arrival order (source-major)
        chunk_expert = torch.arange(local_experts).repeat(world_size)  # (W * E_local,)
        local_expert_of_row = chunk_expert.repeat_interleave(recv_counts.reshape(-1))  # (R,)
        order = call(fn, *fresh(recv_counts), names=("recv_counts",))
        num_rows = int(recv_counts.sum())
        if isinstance(order, torch.Tensor) and order.shape == (num_rows,) and \
                torch.equal(order.long(), torch.arange(num_rows)) and \
                not bool((local_expert_of_row[1:] >= local_expert_of_row[:-1]).all()):
            raise CheckFailed(f"With recv_counts={recv_counts.tolist()} your order leaves the rows "
                              "as they arrived, grouped by source rank; the grouped GEMM needs "
                              "each local expert's rows contiguous.")
        expect_grouped_by(order, local_expert_of_row,
                          f"order (recv_counts={recv_counts.tolist()})", row_name="received row")
