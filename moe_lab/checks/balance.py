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
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.balancing import BiasBalancer
from moe_lab.checks.core import CheckFailed, checker, expect_close
from moe_lab.losses import average_over_layers, load_balancing_loss, router_z_loss
from moe_lab.routing import TopKRouter, topk_routing


def _matches(actual: torch.Tensor, candidate: torch.Tensor) -> bool:
    return bool(torch.allclose(actual.detach().double().reshape(candidate.shape),
                               candidate.double(), atol=1e-5, rtol=1e-4))


def _scalar(value: object, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{what} should be a torch.Tensor, got {type(value).__name__}.")
    if value.numel() != 1:
        raise CheckFailed(f"{what} should be a single number (a 0-d tensor), got shape "
                          f"{tuple(value.shape)}: did you forget to sum or average?")
    return value.reshape(())


def _diagnose_scalar(actual: torch.Tensor, expected: torch.Tensor, what: str,
                     suspects: list[tuple[torch.Tensor, str]]) -> None:
    if _matches(actual, expected):
        return
    for candidate, hint in suspects:
        if _matches(actual, candidate):
            raise CheckFailed(f"{what} is {actual.item():.4f}, the reference is "
                              f"{expected.item():.4f}. {hint}")
    expect_close(actual.detach(), expected, what)


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


SWITCH_CASES = ((0, 16, 4, 2, 1.0), (1, 12, 6, 1, 3.0), (2, 20, 8, 3, 2.0))


@checker("check_switch_loss")
def check_switch_loss(switch_loss: Callable[..., torch.Tensor]) -> None:
    """switch_loss(router_probs (N, E), topk_idx (N, K)) -> E * sum_i f_i * P_i."""
    for seed, num_tokens, num_experts, top_k, sharpness in SWITCH_CASES:
        _, probs, topk_idx = make_routing_case(seed, num_tokens, num_experts, top_k, sharpness)
        where = f"the loss (N={num_tokens}, E={num_experts}, K={top_k})"
        expected = load_balancing_loss(probs, topk_idx)
        learner_probs = probs.clone().requires_grad_(True)
        actual = _scalar(switch_loss(learner_probs, topk_idx.clone()), where)
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
            (top_k * expected, "Your value is K times the reference: f_i should be the share of "
             "the N*K assignments (divide the counts by N*K). Summing the shares of each of the K "
             "slots is Hugging Face Mixtral's convention, K times ours."),
            (num_experts * (probs.mean(0) ** 2).sum(), "You used the probabilities for f too: f_i "
             "is the share of tokens actually routed to expert i (counted from topk_idx)."),
        ]
        _diagnose_scalar(actual, expected, where, suspects)
        if not actual.requires_grad:
            raise CheckFailed(f"{where} has no gradient with respect to router_probs: P must stay "
                              "differentiable (f is a count and cannot carry one).")
        actual.backward()
        expected_grad = num_experts * f.expand_as(probs) / num_tokens  # dL/dp_{n,i} = E f_i / N
        expect_close(learner_probs.grad, expected_grad, f"the gradient of {where}")


Z_CASES = ((0, 8, 4, 1.0), (1, 6, 8, 5.0), (2, 10, 3, 0.1))


@checker("check_z_loss")
def check_z_loss(z_loss: Callable[..., torch.Tensor]) -> None:
    """z_loss(router_logits (N, E)) -> mean over tokens of logsumexp(logits)^2."""
    for seed, num_tokens, num_experts, scale in Z_CASES:
        logits, probs, _ = make_routing_case(seed, num_tokens, num_experts, 1, scale)
        where = f"the z-loss (N={num_tokens}, E={num_experts}, logit scale {scale})"
        expected = router_z_loss(logits)
        actual = _scalar(z_loss(logits.clone()), where)
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
        _diagnose_scalar(actual, expected, where, suspects)


def make_layer_cases(seed: int, num_layers: int, num_tokens: int, num_experts: int, top_k: int,
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer probs and topk_idx, each layer with its own (uneven) load."""
    probs, idx = [], []
    for layer in range(num_layers):
        _, p, i = make_routing_case(seed * 10 + layer, num_tokens, num_experts, top_k,
                                    sharpness=1.0 + 2.0 * layer)
        probs.append(p)
        idx.append(i)
    return probs, idx


LAYER_CASES = ((0, 2, 12, 4, 2), (1, 3, 10, 6, 1), (2, 4, 8, 8, 2))


@checker("check_model_balance_loss")
def check_model_balance_loss(model_balance_loss: Callable[..., torch.Tensor]) -> None:
    """model_balance_loss(per_layer_probs, per_layer_idx) -> the Switch loss averaged over the
    L layers (each layer's loss computed on that layer's own tokens)."""
    for seed, num_layers, num_tokens, num_experts, top_k in LAYER_CASES:
        probs, idx = make_layer_cases(seed, num_layers, num_tokens, num_experts, top_k)
        where = f"the model's loss (L={num_layers} layers, E={num_experts}, K={top_k})"
        per_layer = [load_balancing_loss(p, i) for p, i in zip(probs, idx, strict=True)]
        expected = average_over_layers(per_layer)
        actual = _scalar(model_balance_loss([p.clone() for p in probs],
                                            [i.clone() for i in idx]), where)
        suspects = [
            (load_balancing_loss(torch.cat(probs), torch.cat(idx)), "You pooled the layers: "
             "concatenating the tokens of all layers mixes their loads, so one layer's "
             "overloaded expert can hide behind another layer's underloaded one. Compute the "
             "loss per layer, then average (moe_lab.average_over_layers)."),
            (torch.stack(per_layer).sum(), "You summed the per-layer losses: average them, so "
             "the coefficient means the same whatever the depth."),
        ]
        _diagnose_scalar(actual, expected, where, suspects)


BIAS_CASES = ((0, 4, 0.01), (1, 8, 0.1), (2, 6, 0.001))


@checker("check_bias_update")
def check_bias_update(bias_update: Callable[..., torch.Tensor]) -> None:
    """bias_update(bias (E,), tokens_per_expert (E,), gamma) -> the new bias (E,):
    b_i + gamma * sign(mean_load - load_i)."""
    for seed, num_experts, gamma in BIAS_CASES:
        generator = torch.Generator().manual_seed(seed)
        bias = 0.1 * torch.randn(num_experts, generator=generator)  # (E,)
        load = torch.randint(0, 20, (num_experts,), generator=generator)  # (E,)
        load[0] = int(load.float().mean().round())  # keep a near-tie in the table
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            router = TopKRouter(4, num_experts, 1)
        router.score_correction_bias.copy_(bias)
        expected = BiasBalancer(router, gamma=gamma).update(load).clone()
        where = f"the new bias (E={num_experts}, gamma={gamma})"
        actual = bias_update(bias.clone(), load.clone(), gamma)
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            raise CheckFailed(f"return the new bias, a tensor of shape ({num_experts},).")
        mean = load.float().mean()
        suspects = [
            (bias - gamma * torch.sign(mean - load), "The sign is flipped: an overloaded expert "
             "(load above the mean) must get a LOWER bias, so it is chosen less often."),
            (bias + gamma * (mean - load), "Use the sign of (mean - load), not the difference "
             "itself: DeepSeek-V3 moves every bias by the same step gamma."),
            (gamma * torch.sign(mean - load), "Add the step to the old bias: the bias "
             "accumulates over steps."),
        ]
        if _matches(actual, expected):
            continue
        for candidate, hint in suspects:
            if _matches(actual, candidate):
                raise CheckFailed(f"{where} does not match. {hint}")
        expect_close(actual, expected, where)
