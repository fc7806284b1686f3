"""Lesson 08 checkers: the lesson's solutions and correct alternatives pass, each catalogued bug
fails with the hint that names it, a stub gets "not implemented yet"."""

import pytest
import torch
from lesson_sources import lesson_solution

from moe_lab.checks.beyond_topk import (
    check_expert_choice_select,
    check_fine_grained_layout,
    check_soft_moe_weights,
)


def stub(*args):
    raise NotImplementedError


def run(check, fn):
    return check(fn, verbose=False)


# ---------------------------------------------------------------- fine-grained layout

layout_solution = lesson_solution("08", "fine_grained_layout")


def layout_via_package(e, k, f, m, s):
    from moe_lab.systems.params import fine_grained

    layout = fine_grained(e, k, f, m, s)
    return layout.num_experts, layout.top_k, layout.d_ff


def layout_as_list(e, k, f, m, s):
    fine_e, fine_k = m * e, m * k
    return [fine_e - s, fine_k - s, f // m]


LAYOUT_BUGS = [
    (lambda e, k, f, m, s: (m * e, m * k - s, f // m), "still count among the routed"),
    (lambda e, k, f, m, s: (m * e - s, m * k, f // m), "on top of the m * K routed"),
    (lambda e, k, f, m, s: (m * e, m * k, f // m), "shared experts are missing"),
    (lambda e, k, f, m, s: (m * e - s, m * k - s, f * m), "not d_ff * m"),
    (lambda e, k, f, m, s: (m * e - s, k - s, f // m), "Route to m * K"),
    (lambda e, k, f, m, s: (m * e - s, m * k - s, f / m), "three Python ints"),
    (lambda e, k, f, m, s: (m * e - s, m * k - s), "return a tuple"),
    (lambda e, k, f, m, s: (m * e - s + 1, m * k - s, f // m), "m*E - S, m*K - S, F // m"),
]


@pytest.mark.parametrize("fn", [layout_solution, layout_via_package, layout_as_list])
def test_layout_correct_versions_pass(fn):
    assert run(check_fine_grained_layout, fn)


@pytest.mark.parametrize(("bug", "hint"), LAYOUT_BUGS)
def test_layout_bugs_fail_with_their_hint(bug, hint):
    result = run(check_fine_grained_layout, bug)
    assert result.status == "failed" and hint in result.message, result.message


# ---------------------------------------------------------------- expert choice selection

select_solution = lesson_solution("08", "expert_choice_select")


def select_by_argsort(router_probs, capacity):
    order = router_probs.argsort(dim=0, descending=True)[:capacity].t()  # (E, C)
    gates = router_probs.t().gather(1, order)
    return order, gates


def select_by_loop(router_probs, capacity):
    rows, gates = [], []
    for e in range(router_probs.shape[1]):
        column = router_probs[:, e]
        best = sorted(range(len(column)), key=lambda n: float(column[n].detach()))[::-1][:capacity]
        rows.append(torch.tensor(sorted(best), dtype=torch.long))  # any order within a row
        gates.append(column[rows[-1]])
    return torch.stack(rows), torch.stack(gates)


def select_token_choice(router_probs, capacity):
    gates, idx = torch.topk(router_probs, capacity, dim=-1)  # per token: (N, C)
    return idx, gates


def select_dim0(router_probs, capacity):
    gates, idx = torch.topk(router_probs, capacity, dim=0)  # (C, E)
    return idx, gates


def select_lowest(router_probs, capacity):
    gates, idx = torch.topk(router_probs.t(), capacity, dim=-1, largest=False)
    return idx, gates


def select_detached(router_probs, capacity):
    idx, gates = select_solution(router_probs, capacity)
    return idx, gates.detach()


def select_in_place(router_probs, capacity):
    router_probs.data.mul_(1.0)  # harmless
    router_probs.data[0, 0] += 1.0  # edits the caller's tensor
    return select_solution(router_probs, capacity)


def select_wrong_gates(router_probs, capacity):
    idx, gates = select_solution(router_probs, capacity)
    return idx, gates / gates.sum(-1, keepdim=True)  # renormalised: not the probabilities


def select_wrong_grad(router_probs, capacity):
    idx, gates = select_solution(router_probs, capacity)
    return idx, gates + (gates - gates.detach()) * 0.5  # same values, gradient 1.5x


def select_float_idx(router_probs, capacity):
    idx, gates = select_solution(router_probs, capacity)
    return idx.float(), gates


SELECT_BUGS = [
    (select_token_choice, "token choice"),
    (select_dim0, "transpose first"),
    (select_lowest, "largest=True"),
    (select_detached, "carry no gradient"),
    (select_in_place, "changed in place"),
    (select_wrong_gates, "router_probs[token_idx[e, c], e]"),
    (select_wrong_grad, "gradient is not"),
    (select_float_idx, "integer tensor"),
    (lambda p, c: select_solution(p, c)[0], "Return a pair"),
]


@pytest.mark.parametrize("fn", [select_solution, select_by_argsort, select_by_loop])
def test_select_correct_versions_pass(fn):
    assert run(check_expert_choice_select, fn)


@pytest.mark.parametrize(("bug", "hint"), SELECT_BUGS)
def test_select_bugs_fail_with_their_hint(bug, hint):
    result = run(check_expert_choice_select, bug)
    assert result.status == "failed" and hint in result.message, result.message


# ---------------------------------------------------------------- Soft MoE weights

soft_solution = lesson_solution("08", "soft_moe_weights")


def soft_by_hand(slot_logits):
    def stable_softmax(z, dim):
        z = z - z.amax(dim=dim, keepdim=True)
        return z.exp() / z.exp().sum(dim=dim, keepdim=True)

    return stable_softmax(slot_logits, 1), stable_softmax(slot_logits, 2)


def soft_log_space(slot_logits):
    return (slot_logits.log_softmax(-2).exp(), slot_logits.log_softmax(-1).exp())


def soft_swapped(slot_logits):
    dispatch, combine = soft_solution(slot_logits)
    return combine, dispatch


def soft_over_batch(slot_logits):
    return torch.softmax(slot_logits, dim=0), torch.softmax(slot_logits, dim=-1)


def soft_naive_exp(slot_logits):
    z = slot_logits.exp()
    return z / z.sum(-2, keepdim=True), z / z.sum(-1, keepdim=True)


def soft_in_place(slot_logits):
    slot_logits.data.sub_(1.0)  # softmax does not care, the caller does
    return soft_solution(slot_logits)


def soft_detached(slot_logits):
    dispatch, combine = soft_solution(slot_logits)
    return dispatch.detach(), combine.detach()


def soft_combine_over_tokens(slot_logits):
    dispatch, _ = soft_solution(slot_logits)
    return dispatch, dispatch


def soft_wrong_grad(slot_logits):
    dispatch, combine = soft_solution(slot_logits)
    return dispatch, combine + (combine - combine.detach())


SOFT_BUGS = [
    (soft_swapped, "are swapped"),
    (soft_over_batch, "mixes different sequences"),
    (soft_naive_exp, "Subtract the max"),
    (soft_in_place, "changed in place"),
    (soft_detached, "carry no gradient"),
    (soft_combine_over_tokens, "Your combine softmax runs over the tokens"),
    (soft_wrong_grad, "gradient is not"),
    (lambda z: torch.softmax(z, -1), "Return a pair"),
]


@pytest.mark.parametrize("fn", [soft_solution, soft_by_hand, soft_log_space])
def test_soft_correct_versions_pass(fn):
    assert run(check_soft_moe_weights, fn)


@pytest.mark.parametrize(("bug", "hint"), SOFT_BUGS)
def test_soft_bugs_fail_with_their_hint(bug, hint):
    result = run(check_soft_moe_weights, bug)
    assert result.status == "failed" and hint in result.message, result.message


@pytest.mark.parametrize("check", [check_fine_grained_layout, check_expert_choice_select,
                                   check_soft_moe_weights])
def test_stub_is_not_implemented(check):
    result = run(check, stub)
    assert result.status == "not implemented" and not result


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    run(check_expert_choice_select, select_solution)
    run(check_soft_moe_weights, soft_solution)
    assert torch.equal(torch.rand(3), before)
