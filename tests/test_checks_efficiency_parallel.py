"""Lessons 06-07 checkers: each solution passes; each catalogued mistake fails with its hint."""

import pytest
import torch
from lesson_sources import lesson_solution

from moe_lab.checks.efficiency import check_sort_by_expert
from moe_lab.checks.parallel import check_local_expert_order, check_send_splits

# --- lesson 06: sort_by_expert(topk_idx, num_experts) -> (order, tokens_per_expert) ----------

sort_by_expert_solution = lesson_solution("06", "sort_by_expert")  # the lesson's own solution cell


def sort_by_expert_unstable(topk_idx, num_experts):  # also correct: any grouping works
    flat_expert = topk_idx.reshape(-1)
    return torch.argsort(flat_expert, descending=True).flip(0), \
        torch.bincount(flat_expert, minlength=num_experts)


def sort_token_ids(topk_idx, num_experts):
    order, counts = sort_by_expert_solution(topk_idx, num_experts)
    return order // topk_idx.shape[1], counts


def sort_within_token(topk_idx, num_experts):
    return torch.argsort(topk_idx, dim=-1), torch.bincount(topk_idx.reshape(-1),
                                                           minlength=num_experts)


def sort_no_minlength(topk_idx, num_experts):
    order, _ = sort_by_expert_solution(topk_idx, num_experts)
    return order, torch.bincount(topk_idx.reshape(-1))


def sort_loses_rows(topk_idx, num_experts):
    order, counts = sort_by_expert_solution(topk_idx, num_experts)
    return torch.cat([order[:1], order[:-1]]), counts


def sort_not_sorted(topk_idx, num_experts):
    _, counts = sort_by_expert_solution(topk_idx, num_experts)
    return torch.arange(topk_idx.numel()), counts


def sort_stub(topk_idx, num_experts):
    raise NotImplementedError


# --- lesson 07: send_splits(topk_idx, num_experts, world_size) -> (W,) ------------------------

send_splits_solution = lesson_solution("07", "my_send_splits")  # the lesson's own solution cell


def send_splits_round_robin(topk_idx, num_experts, world_size):
    return torch.bincount(topk_idx.reshape(-1) % world_size, minlength=world_size)


def send_splits_per_token(topk_idx, num_experts, world_size):
    owner = topk_idx // (num_experts // world_size)  # (N, K)
    return torch.stack([(owner == r).any(-1).sum() for r in range(world_size)])


def send_splits_no_minlength(topk_idx, num_experts, world_size):
    return torch.bincount(topk_idx.reshape(-1) // (num_experts // world_size))


def send_splits_per_expert(topk_idx, num_experts, world_size):
    return torch.bincount(topk_idx.reshape(-1), minlength=num_experts)


def send_splits_stub(topk_idx, num_experts, world_size):
    raise NotImplementedError


# --- lesson 07: local_expert_order(recv_counts) -> (R,) --------------------------------------

local_order_solution = lesson_solution("07", "my_local_expert_order")  # the lesson's own solution cell


def local_order_arrival(recv_counts):
    return torch.arange(int(recv_counts.sum()))


def local_order_transposed(recv_counts):
    world_size, local_experts = recv_counts.shape
    chunk_expert = torch.arange(local_experts).repeat_interleave(world_size)
    return torch.argsort(chunk_expert.repeat_interleave(recv_counts.reshape(-1)), stable=True)


def local_order_loses_rows(recv_counts):
    order = local_order_solution(recv_counts)
    return order[:-1]


CASES = [
    (check_sort_by_expert, sort_by_expert_solution, "passed", "all cases match"),
    (check_sort_by_expert, sort_by_expert_unstable, "passed", "all cases match"),
    (check_sort_by_expert, sort_token_ids, "failed", "token ids"),
    (check_sort_by_expert, sort_within_token, "failed", "sorted each token's experts"),
    (check_sort_by_expert, sort_no_minlength, "failed", "minlength"),
    (check_sort_by_expert, sort_loses_rows, "failed", "permutation"),
    (check_sort_by_expert, sort_not_sorted, "failed", "contiguous"),
    (check_sort_by_expert, sort_stub, "not implemented", "not implemented yet"),
    (check_send_splits, send_splits_solution, "passed", "all cases match"),
    (check_send_splits, send_splits_round_robin, "failed", "round robin"),
    (check_send_splits, send_splits_per_token, "failed", "counted tokens"),
    (check_send_splits, send_splits_no_minlength, "failed", "minlength"),
    (check_send_splits, send_splits_per_expert, "failed", "one per expert"),
    (check_send_splits, send_splits_stub, "not implemented", "not implemented yet"),
    (check_local_expert_order, local_order_solution, "passed", "all cases match"),
    (check_local_expert_order, local_order_arrival, "failed", "as they arrived"),
    (check_local_expert_order, local_order_transposed, "failed", "contiguous"),
    (check_local_expert_order, local_order_loses_rows, "failed", "shape"),
]


@pytest.mark.parametrize("check, fn, status, message", CASES,
                         ids=[f"{c.__name__}-{f.__name__}" for c, f, _, _ in CASES])
def test_checker_verdicts(check, fn, status, message, capsys):
    result = check(fn)
    assert result.status == status, result.message
    assert message in result.message
    assert bool(result) == (status == "passed")
    assert result.name in capsys.readouterr().out
