"""Checkers for lesson 04, load balancing.

- :func:`check_switch_loss`: ``switch_loss(router_probs, topk_idx) -> loss`` = E * sum_i f_i P_i
  (compared with :func:`moe_lab.load_balancing_loss`).
- :func:`check_z_loss`: ``z_loss(router_logits) -> loss`` = mean_n logsumexp(logits_n)^2
  (compared with :func:`moe_lab.router_z_loss`).
- :func:`check_model_balance_loss`: ``model_balance_loss(per_layer_probs, per_layer_idx) -> loss``,
  the Switch loss of a model with several MoE layers (compared with the per-layer losses averaged
  by :func:`moe_lab.average_over_layers`).
- :func:`check_bias_update`: ``bias_update(bias, tokens_per_expert, gamma) -> new_bias``, one
  DeepSeek-V3 step (compared with :class:`moe_lab.BiasBalancer`).

Cases: N = 1, K = E, E from 1 to 8, concentrated routing, logits near 100 for the z-loss, loads
exactly at the mean for the bias. The inputs are fresh copies that must come back unchanged, and
each loss's gradient is compared with the reference's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.balancing import BiasBalancer
from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    diagnose,
    expect_close,
    expect_same_grad,
    fresh,
    matches,
    set_case,
)
from moe_lab.losses import average_over_layers, load_balancing_loss, router_z_loss
from moe_lab.routing import TopKRouter, topk_routing


def _scalar(value: object, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{what} should be a torch.Tensor, got {type(value).__name__}.")
    if value.numel() != 1:
        raise CheckFailed(f"{what} should be a single number (a 0-d tensor), got shape "
                          f"{tuple(value.shape)}: did you forget to sum or average?")
    return value.reshape(())


def make_routing_case(seed: int, num_tokens: int, num_experts: int, top_k: int,
                      sharpness: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (router_logits (N, E), router_probs (N, E), topk_idx (N, K)); sharpness scales the
    logits (large values concentrate the load)."""
    generator = torch.Generator().manual_seed(seed)
    bias = torch.randn(num_experts, generator=generator)  # (E,) makes the load uneven
    router_logits = sharpness * (torch.randn(num_tokens, num_experts, generator=generator)
                                 + bias)  # (N, E)
    router_probs = torch.softmax(router_logits, dim=-1)  # (N, E)
    topk_idx, _ = topk_routing(router_probs, top_k)
    return router_logits, router_probs, topk_idx


# seed, N, E, K, sharpness
_SWITCH_CASES = ((0, 16, 4, 2, 1.0), (1, 12, 6, 1, 3.0), (2, 20, 8, 3, 2.0), (3, 1, 4, 2, 1.0),
                (4, 8, 4, 4, 1.0), (5, 10, 3, 1, 10.0))


@checker("check_switch_loss")
def check_switch_loss(switch_loss: Callable[..., torch.Tensor]) -> None:
    """switch_loss(router_probs (N, E), topk_idx (N, K)) -> E * sum_i f_i * P_i."""
    for seed, num_tokens, num_experts, top_k, sharpness in _SWITCH_CASES:
        _, probs, topk_idx = make_routing_case(seed, num_tokens, num_experts, top_k, sharpness)
        where = f"the loss (N={num_tokens}, E={num_experts}, K={top_k})"
        set_case(where[10:-1])
        probs_ref = probs.clone().requires_grad_(True)
        expected = load_balancing_loss(probs_ref, topk_idx)
        learner_probs, = fresh(probs, grad=True)
        actual = _scalar(call(switch_loss, learner_probs, *fresh(topk_idx),
                              names=("router_probs", "topk_idx")), where)
        # the usual mistakes, recomputed
        counts = torch.zeros_like(probs).scatter_add(
            1, topk_idx, torch.ones_like(topk_idx, dtype=probs.dtype))  # (N, E)
        f = counts.mean(0) / top_k  # (E,)
        raw_topk = torch.zeros_like(probs).scatter(1, topk_idx, probs.gather(1, topk_idx))
        renorm_topk = raw_topk / raw_topk.sum(-1, keepdim=True)  # (N, E)
        suspects = [
            (num_experts * (f * raw_topk.mean(0)).sum(), "P_i must be the mean of the FULL "
             "router probabilities of expert i over all tokens, not of the top-k weights "
             "(zero for unchosen experts): the full softmax is what lets the gradient reach "
             "every expert."),
            (num_experts * (f * renorm_topk.mean(0)).sum(), "P_i must be the mean of the FULL "
             "router probabilities, not of the renormalised top-k weights."),
            ((f * probs.mean(0)).sum(), "You forgot the factor E: with it, uniform routing "
             "gives exactly 1.0 whatever E."),
            (top_k * expected.detach(), "Your value is K times the reference: f_i should be the "
             "share of the N*K assignments (divide the counts by N*K). Summing the shares of "
             "each of the K slots is Hugging Face Mixtral's convention, K times ours."),
            (num_experts * (probs.mean(0) ** 2).sum(), "You used the probabilities for f too: f_i "
             "is the share of tokens actually routed to expert i (counted from topk_idx)."),
        ]
        if num_experts != 4:
            suspects.append((4 * (f * probs.mean(0)).sum(), f"You multiplied by 4, not by E = "
                             f"router_probs.shape[1] = {num_experts}."))
        diagnose(actual, expected, where, suspects,
                         inputs={"router_probs": probs, "topk_idx": topk_idx})
        if not actual.requires_grad:
            raise CheckFailed(f"{where} has no gradient with respect to router_probs: P must stay "
                              "differentiable (f is a count and cannot carry one). .item(), "
                              ".detach() or torch.tensor(...) cut the graph.")
        expect_same_grad(actual, expected, {"router_probs": learner_probs},
                         {"router_probs": probs_ref}, where)


# seed, N, E, logit scale, logit offset (100: exp overflows float32)
_Z_CASES = ((0, 8, 4, 1.0, 0.0), (1, 6, 8, 5.0, 0.0), (2, 10, 3, 0.1, 0.0), (3, 1, 4, 1.0, 0.0),
           (4, 6, 4, 1.0, 100.0))


@checker("check_z_loss")
def check_z_loss(z_loss: Callable[..., torch.Tensor]) -> None:
    """z_loss(router_logits (N, E)) -> mean over tokens of logsumexp(logits)^2."""
    for seed, num_tokens, num_experts, scale, offset in _Z_CASES:
        logits, probs, _ = make_routing_case(seed, num_tokens, num_experts, 1, scale)
        logits = logits + offset  # (N, E)
        probs = torch.softmax(logits, dim=-1)  # (N, E)
        where = (f"the z-loss (N={num_tokens}, E={num_experts}, logit scale {scale}"
                 + (f", logits near {offset:.0f})" if offset else ")"))
        set_case(where[11:-1])
        logits_ref = logits.clone().requires_grad_(True)
        expected = router_z_loss(logits_ref)
        logits_in, = fresh(logits, grad=True)
        actual = _scalar(call(z_loss, logits_in, names=("router_logits",)), where)
        z = torch.logsumexp(logits, dim=-1)  # (N,)
        suspects = [
            (z.mean(), "You forgot to square: the loss is the mean of logsumexp(logits)^2."),
            (z.mean() ** 2, "Square each token's logsumexp, then average (not the square of the "
             "average)."),
            (z.square().sum(), "Average over tokens rather than summing, so the loss does not "
             "grow with the batch size."),
            (torch.logsumexp(probs, -1).square().mean(), "Use the logits, not the "
             "probabilities: the z-loss penalises large logits, which a softmax hides."),
            (logits.max(-1).values.square().mean(), "Use logsumexp over the experts, not the "
             "largest logit."),
        ]
        if num_tokens == 1:  # one token: the mean of one square is the square of the mean
            suspects = suspects[:1] + suspects[3:]
        diagnose(actual, expected, where, suspects, inputs={"router_logits": logits})
        expect_same_grad(actual, expected, {"router_logits": logits_in},
                         {"router_logits": logits_ref}, where)


def _make_layer_cases(seed: int, num_layers: int, num_tokens: int, num_experts: int, top_k: int,
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer probs and topk_idx, each layer with its own (uneven) load."""
    probs, idx = [], []
    for layer in range(num_layers):
        _, p, i = make_routing_case(seed * 10 + layer, num_tokens, num_experts, top_k,
                                    sharpness=1.0 + 2.0 * layer)
        probs.append(p)
        idx.append(i)
    return probs, idx


_LAYER_CASES = ((0, 2, 12, 4, 2), (1, 3, 10, 6, 1), (2, 4, 8, 8, 2))


@checker("check_model_balance_loss")
def check_model_balance_loss(model_balance_loss: Callable[..., torch.Tensor]) -> None:
    """model_balance_loss(per_layer_probs, per_layer_idx) -> the Switch loss averaged over the
    L layers (each layer's loss computed on that layer's own tokens)."""
    for seed, num_layers, num_tokens, num_experts, top_k in _LAYER_CASES:
        probs, idx = _make_layer_cases(seed, num_layers, num_tokens, num_experts, top_k)
        where = f"the model's loss (L={num_layers} layers, E={num_experts}, K={top_k})"
        set_case(where[17:-1])
        probs_ref = [p.clone().requires_grad_(True) for p in probs]
        per_layer = [load_balancing_loss(p, i) for p, i in zip(probs_ref, idx, strict=True)]
        expected = average_over_layers(per_layer)
        probs_in = list(fresh(*probs, grad=True))
        actual = _scalar(call(model_balance_loss, probs_in, list(fresh(*idx)),
                              names=("per_layer_probs", "per_layer_idx")), where)
        suspects = [
            (load_balancing_loss(torch.cat(probs), torch.cat(idx)), "You pooled the layers: "
             "concatenating the tokens of all layers mixes their loads, so one layer's "
             "overloaded expert can hide behind another layer's underloaded one. Compute the "
             "loss per layer, then average (moe_lab.average_over_layers)."),
            (torch.stack(per_layer).sum(), "You summed the per-layer losses: average them, so "
             "the coefficient means the same whatever the depth."),
        ]
        if num_layers > 1:
            suspects.append((per_layer[-1], "That is the last layer's loss alone: average the "
                             "losses of all L layers."))
        diagnose(actual, expected, where, suspects)
        expect_same_grad(actual, expected,
                         {f"per_layer_probs[{i}]": p for i, p in enumerate(probs_in)},
                         {f"per_layer_probs[{i}]": p for i, p in enumerate(probs_ref)}, where)


# seed, E, gamma, loads (None: random); some loads sit exactly at the mean
_BIAS_CASES = ((0, 4, 0.01, None), (1, 8, 0.1, None), (2, 6, 0.001, None),
              (3, 3, 0.01, [2, 4, 6]), (4, 4, 0.1, [5, 5, 5, 5]), (5, 1, 0.01, [7]),
              (6, 5, 0.05, [0, 10, 3, 3, 4]))


@checker("check_bias_update")
def check_bias_update(bias_update: Callable[..., torch.Tensor]) -> None:
    """bias_update(bias (E,), tokens_per_expert (E,), gamma) -> the new bias (E,):
    b_i + gamma * sign(mean_load - load_i)."""
    for seed, num_experts, gamma, loads in _BIAS_CASES:
        generator = torch.Generator().manual_seed(seed)
        bias = 0.1 * torch.randn(num_experts, generator=generator)  # (E,)
        if loads is None:
            load = torch.randint(0, 20, (num_experts,), generator=generator)  # (E,)
            load[0] = int(load.float().mean().round())  # keep a near-tie in the table
        else:
            load = torch.tensor(loads)  # (E,) int64, as torch.bincount returns
        router = TopKRouter(4, num_experts, 1)
        router.score_correction_bias.copy_(bias)
        expected = BiasBalancer(router, gamma=gamma).update(load).clone()
        where = f"the new bias (E={num_experts}, gamma={gamma}, loads {load.tolist()})"
        set_case(where[13:-1])
        actual = call(bias_update, *fresh(bias, load), gamma, names=("bias", "tokens_per_expert"))
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            raise CheckFailed(f"Return the new bias, a tensor of shape ({num_experts},).")
        mean = load.float().mean()
        suspects = [
            (bias - gamma * torch.sign(mean - load), "The sign is flipped: an overloaded expert "
             "(load above the mean) must get a LOWER bias, so it is chosen less often."),
            (bias + gamma * (mean - load), "Use the sign of (mean - load), not the difference "
             "itself: DeepSeek-V3 moves every bias by the same step gamma."),
            (gamma * torch.sign(mean - load), "Add the step to the old bias: the bias "
             "accumulates over steps."),
        ]
        if matches(actual, expected):
            continue
        for candidate, hint in suspects:
            if matches(actual, candidate):
                raise CheckFailed(f"{where} does not match the reference. {hint}")
        at_mean = load.float() == mean  # (E,)
        off = ~torch.isclose(actual.detach().double(), expected.double(), atol=1e-6)  # (E,)
        if bool(at_mean.any()) and bool((off <= at_mean).all()):
            raise CheckFailed(f"{where}: only the experts whose load equals the mean exactly are "
                              f"wrong. They must hold still: sign(0) = 0 (torch.sign), where a "
                              f"comparison such as load > mean moves them anyway.")
        expect_close(actual, expected, where, inputs={"bias": bias, "tokens_per_expert": load})
