"""Lesson 11's checkers: the bug hunt's seven checkers, each against the lesson's fix (read from
its collapsed solution cell), the original buggy snippet and two wrong fixes, each failing with
its hint; and the sequence-wise loss exercise."""

import pytest
import torch
import torch.nn.functional as F
from lesson_sources import lesson_solution

from moe_lab.checks import (
    check_aux_loss_added,
    check_aux_loss_full_softmax,
    check_aux_loss_padding,
    check_dropped_tokens,
    check_recompute_count,
    check_router_returns_logits,
    check_sequence_balance_loss,
    check_sigmoid_normalisation,
)
from moe_lab.checks.bughunt import BUGS

# ---------------------------------------------------------------- 1. minimind #140


def _ce(logits, targets, loss_mask):
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                           reduction="none").view(targets.size())
    return loss


def training_loss_original(logits, targets, loss_mask, aux_loss):
    loss = _ce(logits, targets, loss_mask)
    return (loss * loss_mask).sum() / loss_mask.sum()


def training_loss_detached(logits, targets, loss_mask, aux_loss):
    loss = _ce(logits, targets, loss_mask)
    return (loss * loss_mask).sum() / loss_mask.sum() + aux_loss.item()


def training_loss_per_position(logits, targets, loss_mask, aux_loss):
    loss = _ce(logits, targets, loss_mask)
    return (loss * loss_mask + aux_loss).sum() / loss_mask.sum()


def training_loss_inside_mean(logits, targets, loss_mask, aux_loss):
    # a correct alternative: added to every real position, then the masked mean
    loss = _ce(logits, targets, loss_mask)
    return ((loss + aux_loss) * loss_mask).sum() / loss_mask.sum()


# ---------------------------------------------------------------- 2. aprender #2162


def _loop_aux(router_probs, topk_idx, p_rule, f_divisor):
    num_tokens, num_experts = router_probs.shape
    top_k = topk_idx.shape[1]
    counts, prob_sums = [0.0] * num_experts, [0.0] * num_experts
    for t in range(num_tokens):
        chosen = topk_idx[t].tolist()
        for i in chosen:
            counts[i] += 1
        for i in chosen if p_rule in ("topk", "choosers") else range(num_experts):
            prob_sums[i] = prob_sums[i] + router_probs[t, i]
    f = [c / (num_tokens * (top_k if f_divisor == "NK" else 1)) for c in counts]
    if p_rule == "choosers":
        p = [s / max(c, 1) for s, c in zip(prob_sums, counts, strict=True)]
    else:
        p = [s / num_tokens for s in prob_sums]
    return num_experts * sum(fi * pi for fi, pi in zip(f, p, strict=True))


def aux_loss_original(router_probs, topk_idx):
    return _loop_aux(router_probs, topk_idx, "topk", "NK")


def aux_loss_mean_over_choosers(router_probs, topk_idx):
    return _loop_aux(router_probs, topk_idx, "choosers", "NK")


def aux_loss_f_over_n(router_probs, topk_idx):
    return _loop_aux(router_probs, topk_idx, "all", "N")


# --------------------------------------------------------------- 3. transformers #28505


def _mixtral_loss(router_logits, top_k, attention_mask, mask_f, mask_p, divide_by_real):
    num_experts = router_logits.shape[-1]
    routing_weights = torch.softmax(router_logits, dim=-1)
    _, selected = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = F.one_hot(selected, num_experts).float()  # (N, K, E)
    real = attention_mask.reshape(-1).float()
    count = real.sum() if divide_by_real else real.numel()
    ones = torch.ones_like(real)
    wf, wp = (real if mask_f else ones), (real if mask_p else ones)
    tokens_per_expert = (expert_mask * wf[:, None, None]).sum(0) / (count if mask_f else real.numel())
    prob_per_expert = (routing_weights * wp[:, None]).sum(0) / (count if mask_p else real.numel())
    return num_experts * torch.sum(tokens_per_expert * prob_per_expert.unsqueeze(0))


def load_balancing_loss_func_original(router_logits, top_k, attention_mask):
    return _mixtral_loss(router_logits, top_k, attention_mask, False, False, True)


def load_balancing_loss_func_f_only(router_logits, top_k, attention_mask):
    return _mixtral_loss(router_logits, top_k, attention_mask, True, False, True)


def load_balancing_loss_func_divides_by_all(router_logits, top_k, attention_mask):
    return _mixtral_loss(router_logits, top_k, attention_mask, True, True, False)


# --------------------------------------------------------------- 4. transformers #37017


def _sparse_mlp(hidden_states, router_mask, router_probs, experts, start, rule):
    next_states = hidden_states.clone() if start == "clone" else torch.zeros_like(hidden_states)
    for idx, expert in enumerate(experts):
        token_indices = router_mask[:, idx].bool()
        next_states[token_indices] = expert(hidden_states[token_indices])
    if rule == "scale":
        return router_probs * next_states
    if rule == "unscaled":
        return next_states
    dropped = ~router_mask.bool().any(dim=-1, keepdim=True)  # (N, 1)
    return torch.where(dropped, hidden_states, router_probs * next_states)


def sparse_mlp_original(hidden_states, router_mask, router_probs, experts):
    return _sparse_mlp(hidden_states, router_mask, router_probs, experts, "clone", "scale")


def sparse_mlp_unscaled(hidden_states, router_mask, router_probs, experts):
    return _sparse_mlp(hidden_states, router_mask, router_probs, experts, "zeros", "unscaled")


def sparse_mlp_identity(hidden_states, router_mask, router_probs, experts):
    return _sparse_mlp(hidden_states, router_mask, router_probs, experts, "clone", "identity")


def sparse_mlp_zero_prob(hidden_states, router_mask, router_probs, experts):
    # a correct alternative: keep the clone, zero the dropped tokens' probability
    kept = router_mask.bool().any(dim=-1, keepdim=True).to(router_probs.dtype)
    return _sparse_mlp(hidden_states, router_mask, router_probs * kept, experts, "clone", "scale")


# --------------------------------------------------------------- 5. transformers #45120


def router_forward_original(hidden_states, weight, top_k):
    router_logits = F.linear(hidden_states, weight)
    router_logits = torch.softmax(router_logits.float(), dim=-1)
    value, index = torch.topk(router_logits, top_k, dim=-1)
    return router_logits, value / value.sum(dim=-1, keepdim=True), index


def router_forward_log_softmax(hidden_states, weight, top_k):
    router_logits = torch.log_softmax(F.linear(hidden_states, weight), dim=-1)
    value, index = torch.topk(router_logits.exp(), top_k, dim=-1)
    return router_logits, value / value.sum(dim=-1, keepdim=True), index


def router_forward_raw_weights(hidden_states, weight, top_k):
    router_logits = F.linear(hidden_states, weight)
    value, index = torch.topk(router_logits, top_k, dim=-1)
    return router_logits, value, index


def router_forward_topk_then_softmax(hidden_states, weight, top_k):
    # a correct alternative (gpt-oss, Mixtral): softmax over the top-k logits
    router_logits = F.linear(hidden_states, weight)
    value, index = torch.topk(router_logits, top_k, dim=-1)
    return router_logits, torch.softmax(value, dim=-1), index


# --------------------------------------------------------------- 6. Megatron-LM #1545


def _normalised(router_logits, eps):
    scores = torch.sigmoid(router_logits)
    return scores / (scores.sum(dim=-1, keepdim=True) + eps)


def normalised_scores_original(router_logits):
    return _normalised(router_logits, 1e-20)


def normalised_scores_smaller_eps(router_logits):
    return _normalised(router_logits, 1e-30)


def normalised_scores_softmax(router_logits):
    return torch.softmax(router_logits, dim=-1)


def normalised_scores_no_eps(router_logits):
    # a correct alternative, proposed in the thread: no epsilon
    return _normalised(router_logits, 0.0)


# --------------------------------------------------------------- 7. torchtitan #1593


def _update(expert_bias, tokens_per_expert, coeff, full_recompute, rule):
    if rule == "always_halve" or (rule == "fix" and full_recompute):
        tokens_per_expert = tokens_per_expert / 2
    step = coeff / 2 if rule == "half_step" and full_recompute else coeff
    delta = step * torch.sign(tokens_per_expert.mean(dim=-1, keepdim=True) - tokens_per_expert)
    delta = delta - delta.mean(dim=-1, keepdim=True)
    return expert_bias + delta, tokens_per_expert


def update_expert_bias_original(expert_bias, tokens_per_expert, coeff, full_recompute):
    return _update(expert_bias, tokens_per_expert, coeff, full_recompute, "none")


def update_expert_bias_always_halve(expert_bias, tokens_per_expert, coeff, full_recompute):
    return _update(expert_bias, tokens_per_expert, coeff, full_recompute, "always_halve")


def update_expert_bias_half_step(expert_bias, tokens_per_expert, coeff, full_recompute):
    return _update(expert_bias, tokens_per_expert, coeff, full_recompute, "half_step")


def update_expert_bias_floor_division(expert_bias, tokens_per_expert, coeff, full_recompute):
    # a correct alternative (torchtitan's own): integer halving of the doubled counts
    if full_recompute:
        tokens_per_expert = tokens_per_expert // 2
    return _update(expert_bias, tokens_per_expert, coeff, False, "none")


# ------------------------------------------------------------------------- the tables

SOLUTIONS = [
    (check_aux_loss_added, lesson_solution("11", "training_loss")),
    (check_aux_loss_full_softmax, lesson_solution("11", "aux_loss")),
    (check_aux_loss_padding, lesson_solution("11", "load_balancing_loss_func")),
    (check_dropped_tokens, lesson_solution("11", "sparse_mlp")),
    (check_router_returns_logits, lesson_solution("11", "router_forward")),
    (check_sigmoid_normalisation, lesson_solution("11", "normalised_scores")),
    (check_recompute_count, lesson_solution("11", "update_expert_bias")),
    (check_sequence_balance_loss, lesson_solution("11", "sequence_balance_loss")),
]

CORRECT_ALTERNATIVES = [
    (check_aux_loss_added, training_loss_inside_mean),
    (check_dropped_tokens, sparse_mlp_zero_prob),
    (check_router_returns_logits, router_forward_topk_then_softmax),
    (check_sigmoid_normalisation, normalised_scores_no_eps),
    (check_recompute_count, update_expert_bias_floor_division),
]

# (checker, original or wrong fix, a phrase of the hint it must get); the original first
WRONG = [
    (check_aux_loss_added, training_loss_original, "never added"),
    (check_aux_loss_added, training_loss_detached, "added as a number"),
    (check_aux_loss_added, training_loss_per_position, "at every position"),
    (check_aux_loss_full_softmax, aux_loss_original, "aprender #2162"),
    (check_aux_loss_full_softmax, aux_loss_mean_over_choosers, "averaged over the tokens that chose"),
    (check_aux_loss_full_softmax, aux_loss_f_over_n, "K times the reference"),
    (check_aux_loss_padding, load_balancing_loss_func_original, "transformers #28505"),
    (check_aux_loss_padding, load_balancing_loss_func_f_only, "mask the router probabilities too"),
    (check_aux_loss_padding, load_balancing_loss_func_divides_by_all, "number of real tokens"),
    (check_dropped_tokens, sparse_mlp_original, "transformers #37017"),
    (check_dropped_tokens, sparse_mlp_unscaled, "not multiplied by their router probability"),
    (check_dropped_tokens, sparse_mlp_identity, "residual connection"),
    (check_router_returns_logits, router_forward_original, "transformers #45120"),
    (check_router_returns_logits, router_forward_log_softmax, "z-loss vanishes"),
    (check_router_returns_logits, router_forward_raw_weights, "are raw logits"),
    (check_sigmoid_normalisation, normalised_scores_original, "Megatron-LM #1545"),
    (check_sigmoid_normalisation, normalised_scores_smaller_eps, "only moves the trap"),
    (check_sigmoid_normalisation, normalised_scores_softmax, "softmax probabilities"),
    (check_recompute_count, update_expert_bias_original, "torchtitan #1593"),
    (check_recompute_count, update_expert_bias_always_halve, "halved without recompute"),
    (check_recompute_count, update_expert_bias_half_step, "half a step"),
]


@pytest.mark.parametrize(("check", "solution"), SOLUTIONS, ids=[s.__name__ for _, s in SOLUTIONS])
def test_lesson_fix_passes(check, solution, capsys):
    result = check(solution)
    assert result, str(result)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize(("check", "fn"), CORRECT_ALTERNATIVES,
                         ids=[f.__name__ for _, f in CORRECT_ALTERNATIVES])
def test_correct_alternative_passes(check, fn):
    result = check(fn, verbose=False)
    assert result, str(result)


@pytest.mark.parametrize(("check", "fn", "phrase"), WRONG, ids=[f.__name__ for _, f, _ in WRONG])
def test_original_and_wrong_fixes_fail_with_their_hint(check, fn, phrase):
    result = check(fn, verbose=False)
    assert result.status == "failed", str(result)
    assert phrase in result.message, str(result)


def test_every_bug_has_a_checker_an_original_and_two_wrong_fixes():
    import moe_lab.checks as checks

    for bug in BUGS:
        check = getattr(checks, f"check_{bug.name}")
        assert sum(1 for c, _, _ in WRONG if c is check) >= 3, bug.name
        assert bug.url.startswith("https://github.com/") and "#" in bug.source


# ------------------------------------------------------- the sequence-wise loss exercise


def sequence_loss_whole_batch(router_probs, topk_idx, seq_len):
    from moe_lab import load_balancing_loss

    return load_balancing_loss(router_probs, topk_idx)


def sequence_loss_sum(router_probs, topk_idx, seq_len):
    from moe_lab import load_balancing_loss

    return sum(load_balancing_loss(router_probs[i:i + seq_len], topk_idx[i:i + seq_len])
               for i in range(0, router_probs.shape[0], seq_len))


def sequence_loss_k_times(router_probs, topk_idx, seq_len):
    return lesson_solution("11", "sequence_balance_loss")(router_probs, topk_idx, seq_len) \
        * topk_idx.shape[1]


def sequence_loss_detached(router_probs, topk_idx, seq_len):
    return lesson_solution("11", "sequence_balance_loss")(router_probs.detach(), topk_idx,
                                                          seq_len)


@pytest.mark.parametrize(("fn", "phrase"), [
    (sequence_loss_whole_batch, "whole batch"), (sequence_loss_sum, "sum over sequences"),
    (sequence_loss_k_times, "K times"), (sequence_loss_detached, "gradient")])
def test_sequence_exercise_mistakes(fn, phrase):
    result = check_sequence_balance_loss(fn, verbose=False)
    assert result.status == "failed" and phrase in result.message, str(result)


def test_stubs_are_not_implemented_yet():
    def stub(*args):
        raise NotImplementedError

    for check, _ in SOLUTIONS:
        assert check(stub, verbose=False).status == "not implemented"


def test_checkers_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for check, solution in SOLUTIONS:
        check(solution, verbose=False)
    assert torch.equal(torch.rand(3), expected)
