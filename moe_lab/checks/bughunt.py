"""Checkers for lesson 11's bug hunt: real MoE bugs, each reported in a public repository.

Each checker runs the learner's fixed version of a snippet on small seeded cases, compares it
with a reference built from moe_lab, and names the likely mistake of a wrong fix:

- :func:`check_aux_loss_added`: ``training_loss(logits, targets, loss_mask, aux_loss)``
  (minimind #140: the aux loss computed, never added to the loss).
- :func:`check_aux_loss_full_softmax`: ``aux_loss(router_probs, topk_idx)`` (paiml/aprender
  #2162: P_i accumulated over the top-k only).
- :func:`check_aux_loss_padding`: ``load_balancing_loss_func(router_logits, top_k,
  attention_mask)`` (transformers #28505: padding counted in the balance loss).
- :func:`check_dropped_tokens`: ``sparse_mlp(hidden_states, router_mask, router_probs, experts)``
  (transformers #37017: dropped tokens passed through unchanged).
- :func:`check_router_returns_logits`: ``router_forward(hidden_states, weight, top_k)``
  (transformers #45120: the router returned probabilities as logits; the loss took a softmax
  again).
- :func:`check_sigmoid_normalisation`: ``normalised_scores(router_logits)`` (Megatron-LM #1545:
  an epsilon that lets a sigmoid router lower the aux loss by shrinking every score).
- :func:`check_recompute_count`: ``update_expert_bias(expert_bias, tokens_per_expert, coeff,
  full_recompute)`` (torchtitan #1593: tokens counted twice under full activation recompute).

:data:`BUGS` holds each bug's source and link (the lesson's cells cite them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    expect_close,
    expect_same_grad,
    fresh,
    set_case,
)
from moe_lab.losses import load_balancing_loss
from moe_lab.routing import topk_routing


@dataclass(frozen=True)
class Bug:
    """One bug of the hunt: where it was reported and what it broke."""

    name: str  # the checker's suffix
    source: str  # "repository #number"
    url: str
    effect: str


BUGS = (
    Bug("aux_loss_added", "jingyaogong/minimind #140",
        "https://github.com/jingyaogong/minimind/issues/140",
        "the balance loss is computed in every MoE layer and never reaches the optimizer"),
    Bug("aux_loss_full_softmax", "paiml/aprender #2162",
        "https://github.com/paiml/aprender/pull/2162",
        "P_i sums only the probabilities of the chosen experts"),
    Bug("aux_loss_padding", "huggingface/transformers #28505",
        "https://github.com/huggingface/transformers/issues/28505",
        "padding tokens count in f and P"),
    Bug("dropped_tokens", "huggingface/transformers #37017",
        "https://github.com/huggingface/transformers/issues/37017",
        "a token dropped by the capacity comes out as its input, scaled by its router probability"),
    Bug("router_returns_logits", "huggingface/transformers #45120",
        "https://github.com/huggingface/transformers/issues/45120",
        "the loss applies softmax to probabilities: softmax(softmax(logits))"),
    Bug("sigmoid_normalisation", "NVIDIA/Megatron-LM #1545",
        "https://github.com/NVIDIA/Megatron-LM/issues/1545",
        "an epsilon of 1e-20 lets the router push every sigmoid score below it and the aux loss "
        "towards 0"),
    Bug("recompute_count", "pytorch/torchtitan #1593",
        "https://github.com/pytorch/torchtitan/pull/1593",
        "full activation recompute runs each MoE forward twice and doubles the expert counts"),
)


def _allclose(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return (isinstance(a, torch.Tensor) and a.shape == b.shape
            and bool(torch.allclose(a.detach().double(), b.detach().double(), atol=atol,
                                    rtol=1e-4)))


def _scalar(value: object, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise CheckFailed(f"{what} should be a single number (a 0-d tensor), got "
                          f"{getattr(value, 'shape', type(value).__name__)}.")
    return value.reshape(())


def _suspect(actual: object, suspects: list[tuple[torch.Tensor, str]], what: str,
             expected: torch.Tensor) -> None:
    """Nothing when ``actual`` equals ``expected``; else raise with the hint of the first suspect
    (a known wrong version) it equals, or the plain comparison."""
    if isinstance(actual, torch.Tensor) and _allclose(actual, expected):
        return
    for candidate, hint in suspects:
        if isinstance(actual, torch.Tensor) and _allclose(actual, candidate):
            values = (f" is {actual.item():.4f}, the reference {expected.item():.4f}"
                      if actual.numel() == 1 else " differs from the reference")
            raise CheckFailed(f"{what}{values}. {hint}")
    expect_close(actual, expected, what)


# ------------------------------------------------------------- minimind #140: aux loss added


def _lm_case(seed: int, padded: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 11, generator=generator)  # (B, T, V)
    targets = torch.randint(11, (2, 5), generator=generator)  # (B, T)
    loss_mask = torch.ones(2, 5)
    if padded:
        loss_mask[1, -padded:] = 0.0
    router_logits = torch.randn(10, 4, generator=generator)  # (N, E) of one MoE layer
    return logits, targets, loss_mask, router_logits


@checker("check_aux_loss_added")
def check_aux_loss_added(fn: Callable[..., torch.Tensor]) -> None:
    """``training_loss(logits, targets, loss_mask, aux_loss)``: the masked mean cross-entropy
    plus the aux loss (already multiplied by its coefficient), with its gradient."""
    for seed, padded in ((0, 0), (1, 3)):
        set_case(f"seed {seed}, {padded} padded positions")
        logits, targets, loss_mask, router_logits = _lm_case(seed, padded)
        leaf, = fresh(router_logits, grad=True)
        probs = torch.softmax(leaf, dim=-1)
        aux_loss = 0.01 * load_balancing_loss(probs, probs.topk(2, dim=-1).indices)
        got = _scalar(call(fn, logits.clone(), targets.clone(), loss_mask.clone(), aux_loss,
                           names=("logits", "targets", "loss_mask")), "the training loss")
        ref_leaf, = fresh(router_logits, grad=True)
        ref_probs = torch.softmax(ref_leaf, dim=-1)
        ref_aux = 0.01 * load_balancing_loss(ref_probs, ref_probs.topk(2, dim=-1).indices)
        ce = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none")
        lm = (ce * loss_mask.reshape(-1)).sum() / loss_mask.sum()
        expected = lm + ref_aux
        per_position = lm + ref_aux * loss_mask.numel() / loss_mask.sum()
        _suspect(got, [
            (lm, "That is the language-model loss alone: the aux loss is computed but never "
                 "added, so nothing balances the router (minimind #140). Add it: "
                 "loss = loss + aux_loss."),
            (per_position, "The aux loss is added at every position before the masked mean, "
                           "padding included, so it grows by N / (real tokens): add it once, "
                           "after the mean."),
        ], "the training loss", expected)
        got_grad = torch.autograd.grad(got, leaf, allow_unused=True)[0] if got.requires_grad \
            else None
        if got_grad is None or not bool(got_grad.any()):
            raise CheckFailed("The value is right but no gradient reaches the router: the aux "
                              "loss was added as a number (.item(), .detach(), float(...)). "
                              "Add the tensor itself so its gradient balances the router.")
        expected_grad = torch.autograd.grad(expected, ref_leaf)[0]
        expect_close(got_grad, expected_grad, "the gradient with respect to the router logits")


# ---------------------------------------------------- aprender #2162: P over every expert


@checker("check_aux_loss_full_softmax")
def check_aux_loss_full_softmax(fn: Callable[..., torch.Tensor]) -> None:
    """``aux_loss(router_probs, topk_idx)`` = E * sum_i f_i P_i, f over the N*K choices and P the
    mean of the full softmax (compared with :func:`moe_lab.load_balancing_loss`)."""
    for seed, n, e, k in ((0, 12, 4, 2), (1, 9, 6, 1), (2, 16, 8, 3)):
        set_case(f"N={n}, E={e}, K={k}")
        generator = torch.Generator().manual_seed(seed)
        logits = torch.randn(n, e, generator=generator) * 2  # (N, E)
        probs = torch.softmax(logits, dim=-1)
        topk_idx, _ = topk_routing(probs, k)
        leaf, ref_leaf = fresh(probs, grad=True) + fresh(probs, grad=True)
        got = _scalar(call(fn, leaf, topk_idx.clone(), names=("router_probs", "topk_idx")),
                      "the aux loss")
        expected = load_balancing_loss(ref_leaf, topk_idx)
        chosen = torch.zeros(n, e).scatter(1, topk_idx, 1.0)  # (N, E)
        f = chosen.mean(0) / k
        topk_only = e * (f * (probs * chosen).mean(0)).sum()
        mean_over_choosers = e * (f * (probs * chosen).sum(0) / chosen.sum(0).clamp_min(1)).sum()
        _suspect(got, [
            (topk_only, "P_i only sums the probabilities of the tokens that chose expert i: "
                        "the Switch loss needs P_i = the mean of the full softmax over all N "
                        "tokens, for every expert (aprender #2162)."),
            (mean_over_choosers, "P_i is averaged over the tokens that chose expert i; it must "
                                 "be the mean over all N tokens of the full softmax."),
            (expected * k, "That is K times the reference: f must be the share of the N*K "
                           "choices (divide the counts by N*K, not N)."),
        ], "the aux loss", expected)
        expect_same_grad(got, expected, {"router_probs": leaf}, {"router_probs": ref_leaf},
                         "the aux loss")


# ------------------------------------------------------- transformers #28505: padding


def _padded_router_case(seed: int, batch: int, seq: int, e: int,
                        pads: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    router_logits = torch.randn(batch * seq, e, generator=generator) * 2  # (B*T, E)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    for b, pad in enumerate(pads):
        if pad:
            attention_mask[b, -pad:] = 0
    return router_logits, attention_mask


@checker("check_aux_loss_padding")
def check_aux_loss_padding(fn: Callable[..., torch.Tensor]) -> None:
    """``load_balancing_loss_func(router_logits, top_k, attention_mask)`` in Mixtral's convention
    (K times :func:`moe_lab.load_balancing_loss`), padding (mask 0) left out of f and P."""
    for seed, batch, seq, e, k, pads in ((0, 3, 6, 4, 2, (0, 2, 5)), (1, 2, 5, 8, 2, (0, 0)),
                                         (2, 2, 7, 6, 1, (3, 6))):
        set_case(f"B={batch}, T={seq}, E={e}, K={k}, padding {pads}")
        router_logits, attention_mask = _padded_router_case(seed, batch, seq, e, pads)
        leaf, ref_leaf = fresh(router_logits, grad=True) + fresh(router_logits, grad=True)
        got = _scalar(call(fn, leaf, k, attention_mask.clone(),
                           names=("router_logits", "top_k", "attention_mask")), "the aux loss")
        mask = attention_mask.reshape(-1).bool()
        probs = torch.softmax(ref_leaf, dim=-1)
        topk_idx = probs.topk(k, dim=-1).indices
        expected = k * load_balancing_loss(probs, topk_idx, mask)
        plain = torch.softmax(router_logits, dim=-1)
        chosen = torch.zeros_like(plain).scatter(1, topk_idx.detach(), 1.0)  # (N, E)
        real = mask.double().unsqueeze(1).to(plain.dtype)
        f_masked = (chosen * real).sum(0) / real.sum()
        p_masked = (plain * real).sum(0) / real.sum()
        _suspect(got, [
            (k * load_balancing_loss(plain, topk_idx.detach()),
             "Padding tokens count in the loss: weight f and P by the attention mask "
             "(transformers #28505)."),
            (e * (f_masked * plain.mean(0)).sum(),
             "f leaves out the padding but P does not: mask the router probabilities too."),
            (e * (f_masked * p_masked).sum() * (real.sum() / real.numel()) ** 2,
             "The padding is zeroed but the means still divide by all B*T tokens: divide by "
             "the number of real tokens."),
        ], "the aux loss", expected)
        expect_same_grad(got, expected, {"router_logits": leaf}, {"router_logits": ref_leaf},
                         "the aux loss")


# ----------------------------------------------------- transformers #37017: dropped tokens


def _switch_case(seed: int, n: int, d: int, e: int, capacity: int):
    generator = torch.Generator().manual_seed(seed)
    hidden_states = torch.randn(n, d, generator=generator)  # (N, D)
    router_probs_full = torch.softmax(torch.randn(n, e, generator=generator) * 2, dim=-1)
    top1 = router_probs_full.argmax(dim=-1)  # (N,)
    # keep the first `capacity` tokens of each expert (token order), as Switch does
    position = torch.zeros(n, dtype=torch.long)
    for i in range(e):
        members = (top1 == i).nonzero().squeeze(1)
        position[members] = torch.arange(len(members))
    kept = position < capacity  # (N,)
    router_mask = F.one_hot(top1, e) * kept.unsqueeze(1)  # (N, E), all-zero row: dropped
    router_probs = router_probs_full.max(dim=-1, keepdim=True).values  # (N, 1)
    weights = torch.randn(e, d, d, generator=generator) / d ** 0.5  # (E, D, D)
    return hidden_states, router_mask, router_probs, weights, kept


@checker("check_dropped_tokens")
def check_dropped_tokens(fn: Callable[..., torch.Tensor]) -> None:
    """``sparse_mlp(hidden_states, router_mask, router_probs, experts)``: a kept token's output is
    its expert's output times its router probability; a dropped token's (all-zero row of
    router_mask) is 0: the residual connection outside the layer carries it on."""
    for seed, n, capacity in ((0, 12, 2), (1, 8, 100), (2, 10, 0)):
        set_case(f"N={n}, capacity {capacity} per expert")
        hidden_states, router_mask, router_probs, weights, kept = _switch_case(seed, n, 6, 3,
                                                                              capacity)
        experts = [torch.nn.Linear(6, 6, bias=False) for _ in range(3)]
        with torch.no_grad():
            for expert, w in zip(experts, weights, strict=True):
                expert.weight.copy_(w)
        got = call(fn, hidden_states.clone(), router_mask.clone(), router_probs.clone(), experts,
                   names=("hidden_states", "router_mask", "router_probs"))
        with torch.no_grad():
            expert_out = torch.stack([experts[i](hidden_states) for i in range(3)])  # (E, N, D)
            chosen = router_mask.argmax(dim=-1)  # (N,)
            routed = expert_out[chosen, torch.arange(n)]  # (N, D)
            expected = torch.where(kept.unsqueeze(1), router_probs * routed,
                                   torch.zeros_like(routed))
            passthrough = torch.where(kept.unsqueeze(1), router_probs * routed, router_probs
                                      * hidden_states)
            identity = torch.where(kept.unsqueeze(1), router_probs * routed, hidden_states)
            unscaled = torch.where(kept.unsqueeze(1), routed, torch.zeros_like(routed))
        if isinstance(got, torch.Tensor):
            got = got.detach()
        _suspect(got, [
            (passthrough, "A dropped token comes out as its input times the probability of an "
                          "expert it never reached (transformers #37017): start the output from "
                          "zeros, not from a copy of hidden_states."),
            (identity, "A dropped token comes out as its input: the residual connection around "
                       "the MoE layer already adds it, so the layer must add 0 for it."),
            (unscaled, "Kept tokens are not multiplied by their router probability any more: "
                       "keep the scaling, only the starting tensor was wrong."),
        ], "the layer's output", expected)


# ----------------------------------------- transformers #45120: router returns its logits


@checker("check_router_returns_logits")
def check_router_returns_logits(fn: Callable[..., object]) -> None:
    """``router_forward(hidden_states, weight, top_k)`` returns (router_logits, top_weights,
    top_idx): the raw logits x W^T (the loss takes their softmax once), the top-k probabilities
    renormalised to sum 1, and their experts."""
    for seed, n, d, e, k in ((0, 7, 5, 6, 2), (1, 5, 4, 8, 3), (2, 6, 3, 4, 1)):
        set_case(f"N={n}, E={e}, K={k}")
        generator = torch.Generator().manual_seed(seed)
        hidden_states = torch.randn(n, d, generator=generator)
        weight = torch.randn(e, d, generator=generator)
        out = call(fn, hidden_states.clone(), weight.clone(), k,
                   names=("hidden_states", "weight", "top_k"))
        if not (isinstance(out, tuple | list) and len(out) == 3):
            raise CheckFailed("Return three things: (router_logits, top_weights, top_idx).")
        router_logits, top_weights, top_idx = out
        logits = hidden_states @ weight.T  # (N, E)
        probs = torch.softmax(logits, dim=-1)
        _suspect(router_logits, [
            (probs, "router_logits holds probabilities: the loss applies softmax again, "
                    "softmax(softmax(logits)) is nearly uniform and the balance loss loses its "
                    "signal (transformers #45120). Keep the logits in their own variable."),
            (torch.log_softmax(logits, dim=-1),
             "router_logits holds log-probabilities: the loss's softmax gives the right "
             "probabilities, but the z-loss reads the logits too, and logsumexp(log_softmax) "
             "is 0, so the z-loss vanishes. Return x W^T itself."),
        ], "router_logits", logits)
        expected_idx = torch.topk(probs, k, dim=-1).indices
        if not isinstance(top_idx, torch.Tensor) or not torch.equal(
                top_idx.sort(dim=-1).values, expected_idx.sort(dim=-1).values):
            raise CheckFailed("top_idx should be the K experts with the largest probabilities.")
        raw = torch.gather(logits, 1, top_idx)
        chosen = torch.gather(probs, 1, top_idx)  # (N, K) in the learner's order
        _suspect(top_weights, [
            (raw, "top_weights are raw logits: take the softmax first, then the top-k, then "
                  "renormalise (only the returned router_logits must stay raw)."),
            (chosen, "top_weights are not renormalised: divide them by their sum."),
        ], "top_weights", chosen / chosen.sum(dim=-1, keepdim=True))


# ----------------------------------- Megatron-LM #1545: normalised sigmoid scores, epsilon


@checker("check_sigmoid_normalisation")
def check_sigmoid_normalisation(fn: Callable[..., torch.Tensor]) -> None:
    """``normalised_scores(router_logits)`` = s / sum_j s_j with s = sigmoid(router_logits):
    each row sums to 1 whatever the logits (DeepSeek-V3 eq. 19), down to logits of -80 where
    every float32 score is below 1e-34."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=generator)
    for shift in (0.0, -30.0, -60.0, -80.0):
        set_case(f"router logits shifted by {shift}")
        logits = base + shift  # (N, E)
        leaf, = fresh(logits, grad=True)
        got = call(fn, leaf, names=("router_logits",))
        exact = torch.sigmoid(logits.double())
        expected = (exact / exact.sum(dim=-1, keepdim=True)).float()  # (N, E)
        scores = torch.sigmoid(logits)
        suspects = [(scores / (scores.sum(dim=-1, keepdim=True) + eps), hint) for eps, hint in (
            (1e-20, "With all scores below the epsilon 1e-20, s / (sum + eps) is about s / eps, "
                    "nearly 0 for every expert, and so is the aux loss: the router can lower "
                    "the loss by shrinking every score (Megatron-LM #1545). Use an epsilon "
                    "far below any score, torch.finfo(torch.float32).tiny, or none."),
            (1e-30, "A smaller fixed epsilon only moves the trap: at logits near -80 every "
                    "score is below 1e-34. Use torch.finfo(torch.float32).tiny or none.")
        )]
        suspects.append((torch.softmax(logits, dim=-1),
                         "These are softmax probabilities, not normalised sigmoid scores "
                         "(DeepSeek-V3 normalises s = sigmoid(logits): s / sum_j s_j)."))
        if isinstance(got, torch.Tensor) and got.shape == expected.shape:
            _suspect(got, suspects, "the table of normalised scores", expected)
        else:
            expect_close(got, expected, "the table of normalised scores")
        if shift == 0.0:
            ref_leaf, = fresh(logits, grad=True)
            ref_scores = torch.sigmoid(ref_leaf)
            expect_same_grad(got, ref_scores / ref_scores.sum(dim=-1, keepdim=True),
                             {"router_logits": leaf}, {"router_logits": ref_leaf},
                             "the table of normalised scores")


# ------------------------------------------- torchtitan #1593: counted twice under recompute


@checker("check_recompute_count")
def check_recompute_count(fn: Callable[..., object]) -> None:
    """``update_expert_bias(expert_bias, tokens_per_expert, coeff, full_recompute)`` returns
    (new_bias, tokens_routed): the sign update b += coeff * sign(mean - c) re-centred to mean 0,
    and the step's true counts. ``tokens_per_expert`` (L, E) was summed by every MoE forward;
    with ``full_recompute`` each forward ran twice (once more in the backward)."""
    generator = torch.Generator().manual_seed(0)
    for full_recompute in (False, True):
        set_case(f"full_recompute={full_recompute}")
        routed = torch.randint(0, 50, (2, 6), generator=generator).float()  # (L, E) true counts
        counted = routed * 2 if full_recompute else routed
        bias = torch.randn(2, 6, generator=generator) * 0.01
        out = call(fn, bias.clone(), counted.clone(), 1e-3, full_recompute,
                   names=("expert_bias", "tokens_per_expert", "coeff", "full_recompute"))
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise CheckFailed("Return two things: (new_bias, tokens_routed).")
        new_bias, tokens = out
        delta = 1e-3 * torch.sign(routed.mean(dim=-1, keepdim=True) - routed)  # (L, E)
        expected_bias = bias + delta - delta.mean(dim=-1, keepdim=True)
        _suspect(new_bias, [
            (bias + (delta - delta.mean(dim=-1, keepdim=True)) / 2,
             "The bias moves half a step under recompute: the sign update does not depend on "
             "the counts' scale (sign(2m - 2c) = sign(m - c)), so leave the step alone and "
             "correct the counts instead."),
        ], "new_bias", expected_bias)
        _suspect(tokens, [
            (routed * 2, "The counts are twice the tokens the step routed: with full "
                         "recompute every MoE forward runs again in the backward and adds its "
                         "counts a second time (torchtitan #1593). Halve them when "
                         "full_recompute is on."),
            (routed / 2, "The counts are halved without recompute: only a recomputed forward "
                         "counts twice."),
        ], "tokens_routed", routed)
