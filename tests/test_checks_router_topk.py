"""Lessons 01 and 02: every solution passes its checker, every catalogued bug fails it with the
message that names the mistake, and an unimplemented stub gets "not implemented yet"."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lesson_sources import lesson_solution

from moe_lab.checks.router import check_jitter, check_noisy_topk_logits, check_router_probs
from moe_lab.checks.topk import (
    check_capacity,
    check_keep_mask,
    check_tokens_per_expert,
    check_topk_routing,
)

# ------------------------------------------------------------------ lesson 01: router probs


router_probs_solution = lesson_solution("01", "router_probs")  # the lesson's own solution cell


def router_probs_double_softmax(x, weight):
    return torch.softmax(router_probs_solution(x, weight), dim=-1)


def router_probs_wrong_dim(x, weight):
    return torch.softmax(x.float() @ weight.float().T, dim=0)


def router_probs_bf16(x, weight):
    return torch.softmax(x @ weight.T, dim=-1).float()


def router_probs_no_softmax(x, weight):
    return x.float() @ weight.float().T


def router_probs_no_transpose(x, weight):
    return torch.softmax(x.float() @ weight.float(), dim=-1)


# ------------------------------------------------------------------ lesson 01: noisy top-k


noisy_solution = lesson_solution("01", "noisy_topk_logits")  # the lesson's own solution cell


def noisy_on_in_eval(x, w_gate, w_noise, training):
    return noisy_solution(x, w_gate, w_noise, True)


def noisy_never(x, w_gate, w_noise, training):
    return x @ w_gate.T


def noisy_no_softplus(x, w_gate, w_noise, training):
    router_logits = x @ w_gate.T
    if not training:
        return router_logits
    return router_logits + torch.randn_like(router_logits) * (x @ w_noise.T)


def noisy_unit_std(x, w_gate, w_noise, training):
    router_logits = x @ w_gate.T
    return router_logits + torch.randn_like(router_logits) if training else router_logits


# ------------------------------------------------------------------ lesson 01: jitter


jitter_solution = lesson_solution("01", "jitter")  # the lesson's own solution cell


def jitter_on_in_eval(x, eps, training):
    return jitter_solution(x, eps, True)


def jitter_additive(x, eps, training):
    return x + torch.empty_like(x).uniform_(-eps, eps) if training else x


def jitter_one_scalar(x, eps, training):
    return x * (1 + eps * (2 * torch.rand(()) - 1)) if training else x


def jitter_never(x, eps, training):
    return x


# ------------------------------------------------------------------ lesson 02: top-k


topk_solution = lesson_solution("02", "route_topk")  # the lesson's own solution cell


def topk_solution_softmax_of_topk_logits(router_logits, top_k):
    topk_logits, topk_idx = torch.topk(router_logits, top_k, dim=-1)
    return topk_idx, torch.softmax(topk_logits, dim=-1)


def topk_no_renormalisation(router_logits, top_k):
    topk_probs, topk_idx = torch.topk(torch.softmax(router_logits, -1), top_k, dim=-1)
    return topk_idx, topk_probs


def topk_double_softmax(router_logits, top_k):
    topk_probs, topk_idx = torch.topk(torch.softmax(router_logits, -1), top_k, dim=-1)
    return topk_idx, torch.softmax(topk_probs, dim=-1)


def topk_smallest(router_logits, top_k):
    topk_probs, topk_idx = torch.topk(torch.softmax(router_logits, -1), top_k, largest=False)
    return topk_idx, topk_probs / topk_probs.sum(-1, keepdim=True)


def topk_ascending(router_logits, top_k):
    idx, weights = topk_solution(router_logits, top_k)
    return idx.flip(-1), weights.flip(-1)


def topk_swapped(router_logits, top_k):
    idx, weights = topk_solution(router_logits, top_k)
    return weights, idx


tokens_per_expert_solution = lesson_solution("02", "tokens_per_expert")  # the lesson's own solution cell


def tokens_per_expert_no_minlength(topk_idx, num_experts):
    return torch.bincount(topk_idx.reshape(-1))


def tokens_per_expert_first_choice(topk_idx, num_experts):
    return torch.bincount(topk_idx[:, 0], minlength=num_experts)


def tokens_per_expert_one_hot_wrong_axis(topk_idx, num_experts):
    return F.one_hot(topk_idx, num_experts).sum(0)  # (K, E)


capacity_solution = lesson_solution("02", "capacity")  # the lesson's own solution cell


def capacity_floor(capacity_factor, num_tokens, top_k, num_experts):
    return math.floor(capacity_factor * num_tokens * top_k / num_experts)


def capacity_int(capacity_factor, num_tokens, top_k, num_experts):
    return int(capacity_factor * num_tokens * top_k / num_experts)


def capacity_no_k(capacity_factor, num_tokens, top_k, num_experts):
    return math.ceil(capacity_factor * num_tokens / num_experts)


def capacity_plus_one(capacity_factor, num_tokens, top_k, num_experts):
    return capacity_solution(capacity_factor, num_tokens, top_k, num_experts) + 1


def capacity_float(capacity_factor, num_tokens, top_k, num_experts):
    return float(capacity_solution(capacity_factor, num_tokens, top_k, num_experts))


def _positions(flat_expert, num_experts):
    one_hot = F.one_hot(flat_expert, num_experts)  # (M, E)
    return (one_hot.cumsum(0) - 1)[torch.arange(flat_expert.numel()), flat_expert]  # (M,)


keep_mask_solution = lesson_solution("02", "keep_mask")  # the lesson's own solution cell


def keep_mask_le(topk_idx, num_experts, capacity):
    num_tokens, top_k = topk_idx.shape
    position = _positions(topk_idx.reshape(-1), num_experts)
    return (position <= capacity).view(num_tokens, top_k)


def keep_mask_slot_major(topk_idx, num_experts, capacity):
    position = _positions(topk_idx.T.reshape(-1), num_experts)  # all first choices first
    return (position < capacity).view(topk_idx.shape[1], topk_idx.shape[0]).T


def keep_mask_latest_first(topk_idx, num_experts, capacity):
    return keep_mask_solution(topk_idx.flip(0), num_experts, capacity).flip(0)


def keep_mask_keep_all(topk_idx, num_experts, capacity):
    return torch.ones(topk_idx.shape, dtype=torch.bool)


# ------------------------------------------------------------------ the table


SOLUTIONS = [
    (check_router_probs, router_probs_solution),
    (check_noisy_topk_logits, noisy_solution),
    (check_jitter, jitter_solution),
    (check_topk_routing, topk_solution),
    (check_topk_routing, topk_solution_softmax_of_topk_logits),
    (check_tokens_per_expert, tokens_per_expert_solution),
    (check_capacity, capacity_solution),
    (check_keep_mask, keep_mask_solution),
]

BUGS = [
    (check_router_probs, router_probs_double_softmax, "double softmax"),
    (check_router_probs, router_probs_wrong_dim, "over the experts"),
    (check_router_probs, router_probs_bf16, "float32"),
    (check_router_probs, router_probs_no_softmax, "did you apply the softmax"),
    (check_router_probs, router_probs_no_transpose, "RuntimeError"),
    (check_noisy_topk_logits, noisy_on_in_eval, "still on in eval"),
    (check_noisy_topk_logits, noisy_never, "no noise"),
    (check_noisy_topk_logits, noisy_no_softplus, "softplus"),
    (check_noisy_topk_logits, noisy_unit_std, "wrong scale"),
    (check_jitter, jitter_on_in_eval, "leave x unchanged in eval"),
    (check_jitter, jitter_additive, "additive"),
    (check_jitter, jitter_one_scalar, "one u per element"),
    (check_jitter, jitter_never, "came back unchanged"),
    (check_topk_routing, topk_no_renormalisation, "did you renormalise?"),
    (check_topk_routing, topk_double_softmax, "double softmax"),
    (check_topk_routing, topk_smallest, "least"),
    (check_topk_routing, topk_ascending, "best first"),
    (check_topk_routing, topk_swapped, "swap"),
    (check_tokens_per_expert, tokens_per_expert_no_minlength, "minlength"),
    (check_tokens_per_expert, tokens_per_expert_first_choice, "first choice"),
    (check_tokens_per_expert, tokens_per_expert_one_hot_wrong_axis, "shape (E,)"),
    (check_capacity, capacity_floor, "Off by one"),
    (check_capacity, capacity_int, "rounded down"),
    (check_capacity, capacity_no_k, "N*K/E"),
    (check_capacity, capacity_plus_one, "adding 1"),
    (check_capacity, capacity_float, "Return an int"),
    (check_keep_mask, keep_mask_le, "<= instead of <"),
    (check_keep_mask, keep_mask_slot_major, "GShard"),
    (check_keep_mask, keep_mask_latest_first, "token order"),
    (check_keep_mask, keep_mask_keep_all, "at most C"),
]


@pytest.mark.parametrize(("check", "solution"), SOLUTIONS,
                         ids=[s.__name__ for _, s in SOLUTIONS])
def test_solution_passes(check, solution) -> None:
    result = check(solution, verbose=False)
    assert result, str(result)
    assert result.status == "passed"


@pytest.mark.parametrize(("check", "bug", "message"), BUGS, ids=[b.__name__ for _, b, _ in BUGS])
def test_bug_fails_with_its_message(check, bug, message) -> None:
    result = check(bug, verbose=False)
    assert not result
    assert result.status in ("failed", "error")
    assert message in result.message, result.message


CHECKERS = sorted({check for check, _ in SOLUTIONS}, key=lambda c: c.__name__)


@pytest.mark.parametrize("check", CHECKERS, ids=[c.__name__ for c in CHECKERS])
def test_stub_is_not_implemented_yet(check, capsys) -> None:
    def stub(*args):
        raise NotImplementedError

    result = check(stub)
    assert not result and result.status == "not implemented"
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("check", CHECKERS, ids=[c.__name__ for c in CHECKERS])
def test_a_crash_is_reported_not_raised(check) -> None:
    def crashes(*args):
        raise IndexError("boom")

    result = check(crashes, verbose=False)
    assert result.status == "error" and "IndexError: boom" in result.message


@pytest.mark.parametrize("check", CHECKERS, ids=[c.__name__ for c in CHECKERS])
def test_checkers_leave_the_learners_rng_alone(check) -> None:
    solution = dict(SOLUTIONS)[check]
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    assert check(solution, verbose=False)  # passes whatever the RNG state
    assert torch.equal(torch.rand(3), expected_next)

def keep_mask_lt_minus_one(topk_idx, num_experts, capacity):
    return keep_mask_solution(topk_idx, num_experts, capacity - 1)


def test_keep_mask_one_too_few() -> None:
    result = check_keep_mask(keep_mask_lt_minus_one, verbose=False)
    assert not result and "off by one" in result.message
