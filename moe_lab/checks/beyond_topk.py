"""Checkers for lesson 08, beyond token-choice top-k.

- :func:`check_fine_grained_layout`: ``fine_grained_layout(num_experts, top_k, d_ff, granularity,
  num_shared_experts) -> (routed experts, routed per token, d_ff)`` (compared with
  :func:`moe_lab.systems.params.fine_grained`).
- :func:`check_expert_choice_select`: ``expert_choice_select(router_probs, capacity) ->
  (token_idx, gates)``, each (E, C): every expert's C best tokens (compared with
  :func:`moe_lab.variants.expert_choice.expert_choice_routing`; any order within an expert's row).
- :func:`check_soft_moe_weights`: ``soft_moe_weights(slot_logits) -> (dispatch_weights,
  combine_weights)`` for slot_logits (B, T, E*S) (compared with
  :func:`moe_lab.variants.soft_moe.soft_moe_weights`).

Each runs the learner's function on small seeded inputs (one token, other expert counts, large
logits), checks gradients and that the inputs are left unchanged, and, when the answer is wrong,
recomputes the usual mistakes to say which one it looks like.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    diagnose,
    expect_close,
    expect_pair,
    matches,
    set_case,
)
from moe_lab.systems.params import fine_grained
from moe_lab.variants.expert_choice import expert_choice_routing
from moe_lab.variants.soft_moe import soft_moe_weights

# ------------------------------------------------------------------ fine-grained and shared

_LAYOUT_CASES = (  # E, K, F, m, S
    (8, 2, 64, 4, 0),  # lesson 08's fine-grained run
    (8, 2, 64, 4, 1),  # lesson 08's shared run
    (16, 2, 5632, 4, 4),  # DeepSeekMoE-like: m = 4, 4 shared
    (8, 2, 64, 1, 1),  # no cut: one of the K experts made shared
    (1, 1, 12, 3, 2),  # one expert cut in three, two of them shared
    (4, 1, 12, 1, 0),  # unchanged
)


@checker("check_fine_grained_layout")
def check_fine_grained_layout(fine_grained_layout: Callable[..., tuple[int, int, int]]) -> None:
    """fine_grained_layout(E, K, F, m, S) -> (m*E - S, m*K - S, F // m)."""
    for e, k, f, m, s in _LAYOUT_CASES:
        layout = fine_grained(e, k, f, m, s)
        expected = (layout.num_experts, layout.top_k, layout.d_ff)
        where = f"for (E={e}, K={k}, F={f}, m={m}, S={s})"
        set_case(where[4:])
        out = call(fine_grained_layout, e, k, f, m, s, names=())
        if not (isinstance(out, tuple | list) and len(out) == 3):
            raise CheckFailed(f"return a tuple (num_experts, top_k, d_ff), got {out!r} {where}.")
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in out):
            raise CheckFailed(f"return three Python ints, got {out!r} {where}: d_ff // m is an "
                              "int, d_ff / m a float.")
        out = tuple(int(v) for v in out)  # numpy ints too
        if out == expected:
            continue
        hints = [
            ((m * e, m * k - s, f // m), "The shared experts still count among the routed "
             "ones: there are m * E - S routed experts left, the S shared ones run outside the "
             "router."),
            ((m * e - s, m * k, f // m), "The shared experts are on top of the m * K routed ones: "
             "take them out of the routed budget (m * K - S per token) so the active compute "
             "stays K * F."),
            ((m * e, m * k, f // m), "The shared experts are missing: S of the m * E experts "
             "become shared, and S of the m * K per token."),
            ((m * e - s, m * k - s, f * m), "Each fine-grained expert is narrower: d_ff // m, "
             "not d_ff * m (the m pieces together are one old expert)."),
            ((m * e - s, k - s, f // m), "Route to m * K experts: each old expert is now m "
             "pieces, and a token runs all the pieces it used to run."),
        ]
        for candidate, hint in hints:
            if out == candidate:
                raise CheckFailed(f"got {out} {where}, expected {expected}. {hint}")
        raise CheckFailed(f"got {out} {where}, expected {expected} = (m*E - S, m*K - S, F // m).")


# ------------------------------------------------------------------ expert choice

_SELECT_CASES = (  # seed, N, E, C, logit scale
    (0, 12, 4, 3, 1.0),
    (1, 1, 4, 1, 1.0),  # one token: every expert takes it
    (2, 9, 3, 6, 1.0),  # capacity 2N/E: tokens shared by several experts
    (3, 10, 7, 10, 1.0),  # C = N: every expert takes every token
    (4, 16, 8, 2, 50.0),  # large logits: probabilities 0 and 1
)


def _select_case(seed: int, num_tokens: int, num_experts: int, scale: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=generator) * scale
    return torch.softmax(logits, dim=-1)  # (N, E)


@checker("check_expert_choice_select")
def check_expert_choice_select(expert_choice_select: Callable[..., object]) -> None:
    """expert_choice_select(router_probs (N, E), capacity C) -> (token_idx, gates), each (E, C):
    row e holds the C tokens with the highest router_probs[:, e] and those probabilities; the
    gates carry the gradient back to router_probs."""
    for seed, n, e, c, scale in _SELECT_CASES:
        probs = _select_case(seed, n, e, scale)
        where = f"(N={n}, E={e}, C={c})"
        # ties (saturated probabilities) may be broken either way: compare the chosen values
        best = expert_choice_routing(probs, c)[1]  # (E, C) the package's gates, best first
        worst = torch.topk(probs.t(), c, dim=-1, largest=False).values.flip(-1)  # (E, C)
        learner_probs = probs.clone().requires_grad_(True)
        set_case(where[1:-1])
        # names=(): the in-place check below names router_probs with its own hint
        token_idx, gates = expect_pair(call(expert_choice_select, learner_probs, c, names=()),
                                       "token_idx, gates")
        if not torch.equal(learner_probs.detach(), probs):
            raise CheckFailed(f"router_probs {where} was changed in place: work on a copy (or "
                              "use out-of-place ops such as .t() and torch.topk).")
        if token_idx.shape == (n, c) and (e, c) != (n, c):
            raise CheckFailed(f"token_idx has shape {tuple(token_idx.shape)} {where}: that is one "
                              "row per token (token choice). Expert choice ranks the tokens for "
                              "each expert: take the top-C of router_probs.T (E, N) along dim -1.")
        if token_idx.shape == (c, e) and (e, c) != (c, e):
            raise CheckFailed(f"token_idx has shape {tuple(token_idx.shape)} {where}: top-C over "
                              "dim 0 of router_probs gives (C, E); transpose first so each row is "
                              "one expert, (E, C).")
        if token_idx.shape != (e, c) or token_idx.dtype not in (torch.int64, torch.int32):
            raise CheckFailed(f"token_idx should be an integer tensor of shape (E, C) = {(e, c)} "
                              f"{where}, got {token_idx.dtype} {tuple(token_idx.shape)}.")
        token_idx = token_idx.long()
        if token_idx.min() < 0 or token_idx.max() >= n or any(
                len(set(row.tolist())) < c for row in token_idx):
            raise CheckFailed(f"token_idx {where} must hold C different tokens in [0, N) per "
                              "expert.")
        chosen = probs.t().gather(1, token_idx)  # (E, C) probabilities of the picked tokens
        chosen_sorted = chosen.sort(dim=-1, descending=True).values
        if not torch.allclose(chosen_sorted, best):
            if torch.allclose(chosen_sorted, worst):
                raise CheckFailed(f"token_idx {where} holds each expert's lowest-scoring tokens: "
                                  "keep the largest probabilities (largest=True).")
            raise CheckFailed(f"token_idx {where} is not each expert's C best tokens: expert e "
                              "ranks router_probs[:, e] over the N tokens.")
        expect_close(gates.detach(), chosen, f"gates {where}",
                     hint="The gates are the chosen tokens' probabilities for that expert: "
                          "router_probs[token_idx[e, c], e].")
        if not gates.requires_grad:
            raise CheckFailed(f"gates {where} carry no gradient back to router_probs, so the "
                              "router would never learn: gather them from router_probs, do not "
                              "detach them.")
        upstream = torch.randn(e, c, generator=torch.Generator().manual_seed(seed + 100))
        (gates * upstream).sum().backward()
        # d/dp[n, e] of sum_c upstream[e, c] * p[token_idx[e, c], e]
        expected_grad = torch.zeros_like(probs)
        expected_grad[token_idx, torch.arange(e).unsqueeze(-1).expand_as(token_idx)] = upstream
        expect_close(learner_probs.grad, expected_grad, f"the gradient of router_probs {where}",
                     hint="The values are right but the gradient is not: is part of the "
                          "computation detached?")


# ------------------------------------------------------------------ Soft MoE

SOFT_CASES = (  # seed, B, T, E*S, logit scale
    (0, 2, 6, 4, 1.0),
    (1, 1, 1, 3, 1.0),  # one token: every slot is that token, D = 1
    (2, 3, 5, 8, 1.0),  # more slots than tokens
    (3, 2, 4, 6, 1e4),  # large logits: exp() overflows unless the max is subtracted
)


def _non_finite_hint(dispatch: torch.Tensor, combine: torch.Tensor, logits: torch.Tensor,
                     where: str) -> str:
    """Name the likely cause of inf/NaN weights: exp() of the raw logits overflowing, or one max
    of the whole tensor subtracted (rows far below it underflow to 0, and 0/0 is NaN)."""
    shifted = (logits - logits.max()).exp()  # (B, T, E*S): one global max
    global_max = (shifted / shifted.sum(-2, keepdim=True), shifted / shifted.sum(-1, keepdim=True))
    bad = (~torch.isfinite(dispatch.detach()), ~torch.isfinite(combine.detach()))
    if all(torch.equal(b, ~torch.isfinite(g)) for b, g in zip(bad, global_max, strict=True)):
        return (f"The weights {where} hold NaN: you subtracted one max of the whole tensor "
                "before exp(), so the entries far below it underflow to 0 and a softmax of "
                "zeros is 0/0. Subtract the max along each softmax's own axis "
                "(.amax(dim, keepdim=True)), or use torch.softmax.")
    if float(logits.abs().max()) > 80:
        return (f"The weights {where} hold inf or NaN: exp() of a large logit overflows "
                "float32 (above 88). Subtract the max along the softmax's axis before exp(), or "
                "use torch.softmax.")
    return f"The weights {where} hold inf or NaN where the reference is finite."


@checker("check_soft_moe_weights")
def check_soft_moe_weights(soft_moe_weights_fn: Callable[..., object]) -> None:
    """soft_moe_weights(slot_logits (B, T, E*S)) -> (dispatch_weights, combine_weights), each
    (B, T, E*S): a softmax over the T tokens of each sequence (dispatch) and over the E*S slots of
    each token (combine), differentiable, finite for large logits."""
    for seed, b, t, slots, scale in SOFT_CASES:
        generator = torch.Generator().manual_seed(seed)
        logits = torch.randn(b, t, slots, generator=generator) * scale
        where = f"(B={b}, T={t}, E*S={slots}{', large logits' if scale > 100 else ''})"
        ref_dispatch, ref_combine = soft_moe_weights(logits)
        learner_logits = logits.clone().requires_grad_(True)
        set_case(where[1:-1])
        dispatch, combine = expect_pair(call(soft_moe_weights_fn, learner_logits, names=()),
                                        "dispatch_weights, combine_weights")
        if not torch.equal(learner_logits.detach(), logits):
            raise CheckFailed(f"slot_logits {where} was changed in place (e.g. .exp_() or -=): "
                              "compute on a copy.")
        if not (torch.isfinite(dispatch).all() and torch.isfinite(combine).all()):
            raise CheckFailed(_non_finite_hint(dispatch, combine, logits, where))
        if dispatch.shape == ref_combine.shape and t > 1 \
                and matches(dispatch, ref_combine) and matches(combine, ref_dispatch):
            raise CheckFailed(f"dispatch_weights and combine_weights {where} are swapped: you "
                              "took the dispatch softmax over the slots (dim -1) and the combine "
                              "softmax over the tokens (dim -2). Dispatch mixes the T tokens of "
                              "a sequence into each slot (softmax over dim -2); combine mixes "
                              "the slots for each token (softmax over dim -1).")
        if not (b == 1 and t == 1):
            diagnose(dispatch, ref_dispatch, f"dispatch_weights {where}", [
                (ref_combine, "Your dispatch softmax runs over the slots (dim -1), the combine "
                 "axis: dispatch mixes the T tokens of a sequence into each slot, so take it "
                 "over the token axis, dim -2."),
                (torch.softmax(logits, dim=0), "Your dispatch softmax runs over the batch "
                 "(dim 0), which mixes different sequences: take it over the token axis, "
                 "dim -2."),
            ])
        diagnose(combine, ref_combine, f"combine_weights {where}", [
            (ref_dispatch, "Your combine softmax runs over the tokens (dim -2), the dispatch "
             "axis: a token's output mixes the slot outputs, so take it over the slots, "
             "dim -1."),
        ] if t > 1 else [])
        expect_close(dispatch.detach(), ref_dispatch, f"dispatch_weights {where}")
        if not (dispatch.requires_grad and combine.requires_grad):
            raise CheckFailed(f"the weights {where} carry no gradient back to slot_logits: Soft "
                              "MoE is trained end to end through them; do not detach.")
        up_d, up_c = (torch.randn(b, t, slots, generator=generator) for _ in range(2))
        ref_logits = logits.clone().requires_grad_(True)
        ref_d, ref_c = soft_moe_weights(ref_logits)
        ((ref_d * up_d).sum() + (ref_c * up_c).sum()).backward()
        ((dispatch * up_d).sum() + (combine * up_c).sum()).backward()
        expect_close(learner_logits.grad, ref_logits.grad, f"the gradient of slot_logits {where}",
                     hint="The values are right but the gradient is not: is part of the "
                          "computation detached?")
