"""Lessons 03 and 04: every solution passes its checker, every catalogued bug fails it with the
message that names the mistake, and an unimplemented stub gets "not implemented yet"."""

from __future__ import annotations

import pytest
import torch
from lesson_sources import lesson_solution

from moe_lab.checks.balance import (
    check_bias_update,
    check_model_balance_loss,
    check_switch_loss,
    check_z_loss,
)
from moe_lab.checks.combine import check_combine_loop, check_gate_weights, check_scatter_combine

# ---------------------------------------------------------------- lesson 03 solutions and bugs


combine_loop_solution = lesson_solution("03", "combine_loop")  # the lesson's own solution cell


def combine_loop_no_weights(x, plan, experts):
    y = torch.zeros_like(x)
    for e in range(experts.num_experts):
        token_idx, slot = torch.where((plan.topk_idx == e) & plan.keep)
        y.index_add_(0, token_idx, experts.forward_expert(x[token_idx], e))
    return y


def combine_loop_passthrough(x, plan, experts):
    y = combine_loop_solution(x, plan, experts)
    token_idx, slot = torch.where(~plan.keep)  # dropped: pass x through, scaled by its weight
    return y.index_add(0, token_idx, x[token_idx] * plan.topk_weights[token_idx, slot, None])


def combine_loop_ignores_capacity(x, plan, experts):
    y = torch.zeros_like(x)
    for e in range(experts.num_experts):
        token_idx, slot = torch.where(plan.topk_idx == e)
        h = experts.forward_expert(x[token_idx], e)
        y.index_add_(0, token_idx, h * plan.topk_weights[token_idx, slot].unsqueeze(-1))
    return y


def combine_loop_overwrites(x, plan, experts):
    y = torch.zeros_like(x)
    for e in range(experts.num_experts):
        token_idx, slot = torch.where((plan.topk_idx == e) & plan.keep)
        h = experts.forward_expert(x[token_idx], e)
        y[token_idx] = h * plan.topk_weights[token_idx, slot].unsqueeze(-1)
    return y


scatter_combine_solution = lesson_solution("03", "scatter_combine")  # the lesson's own solution cell


def scatter_combine_no_weights(h_sorted, sort_order, topk_weights, num_tokens):
    y = h_sorted.new_zeros(num_tokens, h_sorted.shape[1])
    return y.index_add(0, sort_order // topk_weights.shape[1], h_sorted)


def scatter_combine_modulo(h_sorted, sort_order, topk_weights, num_tokens):
    weight = topk_weights.reshape(-1)[sort_order].unsqueeze(-1)
    y = h_sorted.new_zeros(num_tokens, h_sorted.shape[1])
    return y.index_add(0, sort_order % topk_weights.shape[1], h_sorted * weight)


def scatter_combine_unsorted_weights(h_sorted, sort_order, topk_weights, num_tokens):
    weight = topk_weights.reshape(-1)[: sort_order.numel()].unsqueeze(-1)
    y = h_sorted.new_zeros(num_tokens, h_sorted.shape[1])
    return y.index_add(0, sort_order // topk_weights.shape[1], h_sorted * weight)


gate_weights_solution = lesson_solution("03", "gate_weights")  # the lesson's own solution cell


def gate_weights_detached(router_logits, top_k):
    topk_idx, topk_weights = gate_weights_solution(router_logits, top_k)
    return topk_idx, topk_weights.detach()


def gate_weights_no_renorm(router_logits, top_k):
    probs = torch.softmax(router_logits, dim=-1)
    topk_weights, topk_idx = torch.topk(probs, top_k, dim=-1)
    return topk_idx, topk_weights


def gate_weights_no_softmax(router_logits, top_k):
    topk_logits, topk_idx = torch.topk(router_logits, top_k, dim=-1)
    return topk_idx, topk_logits


# ---------------------------------------------------------------- lesson 04 solutions and bugs


switch_loss_solution = lesson_solution("04", "switch_loss")  # the lesson's own solution cell


def _topk_weight_matrix(router_probs, topk_idx):
    return torch.zeros_like(router_probs).scatter(1, topk_idx, router_probs.gather(1, topk_idx))


def switch_loss_p_from_topk(router_probs, topk_idx):
    num_experts = router_probs.shape[1]
    f = torch.bincount(topk_idx.reshape(-1), minlength=num_experts).float() / topk_idx.numel()
    return num_experts * torch.sum(f * _topk_weight_matrix(router_probs, topk_idx).mean(0))


def switch_loss_p_from_renormalised_topk(router_probs, topk_idx):
    num_experts = router_probs.shape[1]
    f = torch.bincount(topk_idx.reshape(-1), minlength=num_experts).float() / topk_idx.numel()
    w = _topk_weight_matrix(router_probs, topk_idx)
    return num_experts * torch.sum(f * (w / w.sum(-1, keepdim=True)).mean(0))


def switch_loss_no_factor_e(router_probs, topk_idx):
    return switch_loss_solution(router_probs, topk_idx) / router_probs.shape[1]


def switch_loss_hf_mixtral(router_probs, topk_idx):
    # transformers' load_balancing_loss_func: one-hot (N, K, E), mean over tokens -> (K, E)
    expert_mask = torch.nn.functional.one_hot(topk_idx, router_probs.shape[1]).float()
    tokens_per_expert = expert_mask.mean(dim=0)  # (K, E)
    return router_probs.shape[1] * torch.sum(tokens_per_expert * router_probs.mean(0))


def switch_loss_soft_f(router_probs, topk_idx):
    return router_probs.shape[1] * torch.sum(router_probs.mean(0) ** 2)


def switch_loss_detached(router_probs, topk_idx):
    return switch_loss_solution(router_probs.detach(), topk_idx)


z_loss_solution = lesson_solution("04", "z_loss")  # the lesson's own solution cell


def z_loss_no_square(router_logits):
    return torch.logsumexp(router_logits, dim=-1).mean()


def z_loss_sum(router_logits):
    return torch.logsumexp(router_logits, dim=-1).square().sum()


def z_loss_of_probs(router_logits):
    return torch.logsumexp(router_logits.softmax(-1), dim=-1).square().mean()


def z_loss_square_of_mean(router_logits):
    return torch.logsumexp(router_logits, dim=-1).mean() ** 2


model_balance_loss_solution = lesson_solution("04", "model_balance_loss")  # the lesson's own solution cell


def model_balance_loss_pooled(per_layer_probs, per_layer_idx):
    from moe_lab import load_balancing_loss
    return load_balancing_loss(torch.cat(per_layer_probs), torch.cat(per_layer_idx))


def model_balance_loss_summed(per_layer_probs, per_layer_idx):
    from moe_lab import load_balancing_loss
    return sum(load_balancing_loss(p, i)
               for p, i in zip(per_layer_probs, per_layer_idx, strict=True))


bias_update_solution = lesson_solution("04", "bias_update")  # the lesson's own solution cell


def bias_update_flipped(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    return bias - gamma * torch.sign(load.mean() - load)


def bias_update_proportional(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    return bias + gamma * (load.mean() - load)


def bias_update_no_accumulation(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    return gamma * torch.sign(load.mean() - load)


def not_implemented(*args, **kwargs):
    raise NotImplementedError


SOLUTIONS = [
    (check_combine_loop, combine_loop_solution),
    (check_scatter_combine, scatter_combine_solution),
    (check_gate_weights, gate_weights_solution),
    (check_switch_loss, switch_loss_solution),
    (check_z_loss, z_loss_solution),
    (check_model_balance_loss, model_balance_loss_solution),
    (check_bias_update, bias_update_solution),
]

BUGS = [
    (check_combine_loop, combine_loop_no_weights, "without their weights"),
    (check_combine_loop, combine_loop_passthrough, "must contribute nothing"),
    (check_combine_loop, combine_loop_ignores_capacity, "plan.keep is False"),
    (check_combine_loop, combine_loop_overwrites, "index_add_"),
    (check_scatter_combine, scatter_combine_no_weights, "unweighted sum"),
    (check_scatter_combine, scatter_combine_modulo, "sort_order // K"),
    (check_scatter_combine, scatter_combine_unsorted_weights, "wrong order"),
    (check_gate_weights, gate_weights_detached, "no gradient back to router_logits"),
    (check_gate_weights, gate_weights_no_renorm, "renormalise"),
    (check_gate_weights, gate_weights_no_softmax, "apply a softmax"),
    (check_switch_loss, switch_loss_p_from_topk, "FULL router probabilities of expert"),
    (check_switch_loss, switch_loss_p_from_renormalised_topk, "renormalised top-k weights"),
    (check_switch_loss, switch_loss_no_factor_e, "factor E"),
    (check_switch_loss, switch_loss_hf_mixtral, "K times the reference"),
    (check_switch_loss, switch_loss_soft_f, "counted from topk_idx"),
    (check_switch_loss, switch_loss_detached, "no gradient with respect to router_probs"),
    (check_z_loss, z_loss_no_square, "forgot to square"),
    (check_z_loss, z_loss_sum, "rather than summing"),
    (check_z_loss, z_loss_of_probs, "not the probabilities"),
    (check_z_loss, z_loss_square_of_mean, "not the square of the average"),
    (check_model_balance_loss, model_balance_loss_pooled, "pooled the layers"),
    (check_model_balance_loss, model_balance_loss_summed, "summed the per-layer losses"),
    (check_bias_update, bias_update_flipped, "sign is flipped"),
    (check_bias_update, bias_update_proportional, "not the difference"),
    (check_bias_update, bias_update_no_accumulation, "accumulates"),
]


@pytest.mark.parametrize(("check", "solution"), SOLUTIONS,
                         ids=[s.__name__ for _, s in SOLUTIONS])
def test_solution_passes(check, solution, capsys):
    result = check(solution)
    assert result, str(result)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(("check", "bug", "phrase"), BUGS, ids=[b.__name__ for _, b, _ in BUGS])
def test_bug_fails_with_its_hint(check, bug, phrase):
    result = check(bug, verbose=False)
    assert not result
    assert result.status == "failed", str(result)
    assert phrase in result.message, str(result)


@pytest.mark.parametrize("check", [c for c, _ in SOLUTIONS], ids=lambda c: c.__name__)
def test_stub_is_not_implemented_yet(check, capsys):
    result = check(not_implemented)
    assert not result and result.status == "not implemented"
    assert "not implemented yet" in capsys.readouterr().out


def test_crashing_function_is_reported_not_raised():
    result = check_z_loss(lambda logits: logits @ torch.ones(2, 2), verbose=False)
    assert result.status == "error" and "RuntimeError" in result.message


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_combine_loop(combine_loop_solution, verbose=False)
    check_bias_update(bias_update_solution, verbose=False)
    assert torch.equal(torch.rand(3), expected)


def test_hf_mixtral_convention_is_k_times_ours():
    """The relation the lesson states, at a random point and for several K."""
    from moe_lab import load_balancing_loss
    from moe_lab.checks.balance import make_routing_case
    for top_k in (1, 2, 3):
        _, probs, topk_idx = make_routing_case(7, 32, 6, top_k)
        ours = load_balancing_loss(probs, topk_idx)
        assert torch.allclose(switch_loss_hf_mixtral(probs, topk_idx), top_k * ours)
