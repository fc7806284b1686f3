"""Routing statistics of one training step: load per expert, router entropy, losses. Lesson 04.

Plain numbers, computed from the router's output, so that a training loop (:mod:`moe_lab.lm.toy`)
can hand them to a callback and a figure (:mod:`moe_lab.viz.dashboard`) can draw them without
either knowing the other.

    load_i          = tokens_per_expert_i / sum_j tokens_per_expert_j        (share of assignments)
    max_over_mean   = max_i tokens_per_expert_i / mean_i tokens_per_expert_i (1 = balanced, E/K = collapsed)
    router_entropy  = mean_n  - sum_i p_{n,i} log2 p_{n,i}                   (bits; log2 E = uniform)

Conventions shared by the whole package: entropies are in bits; the imbalance max/mean of an
empty load (no assignment at all) is 1.0, as for a balanced one (no expert is above the mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from moe_lab.validation import check_float_tensor


def router_entropy(router_probs: torch.Tensor) -> float:
    """Mean over tokens of the entropy of the router distribution, in bits (log2 E at most)."""
    check_float_tensor("router_probs", router_probs)
    if router_probs.dim() != 2:
        raise ValueError(f"router_probs must have shape (N, E), got {tuple(router_probs.shape)}")
    if router_probs.shape[0] == 0:
        return 0.0
    probs = router_probs.detach().float()  # (N, E)
    # H_n = - sum_i p_{n,i} log2 p_{n,i}
    entropy = -(probs * probs.clamp_min(1e-12).log2()).sum(dim=-1)  # (N,)
    return float(entropy.mean())


def max_over_mean_load(tokens_per_expert: torch.Tensor) -> float:
    """max_i load_i / mean_i load_i: 1.0 when balanced (and for an empty load), E / K when one
    expert is in every token's top-K (E when every assignment is on one expert)."""
    counts = tokens_per_expert.detach().float()  # (E,)
    mean = counts.mean()
    return float(counts.max() / mean) if mean > 0 else 1.0


@dataclass(frozen=True)
class StepStats:
    """What a dashboard shows for one step.

    step:              the step number (0-based)
    load:              per-expert share of the N*K assignments, E floats summing to 1
    max_over_mean:     max load / mean load (1 = balanced, E = collapsed)
    router_entropy:    mean per-token entropy of the router probabilities (bits)
    max_abs_logit:     largest |router logit| in the batch (what the z-loss keeps small)
    losses:            name -> value, e.g. {"task": 2.1, "switch": 1.03}
    """

    step: int
    load: tuple[float, ...]
    max_over_mean: float
    router_entropy: float
    max_abs_logit: float
    losses: dict[str, float] = field(default_factory=dict)

    @property
    def num_experts(self) -> int:
        return len(self.load)


def routing_summary(router_logits: torch.Tensor, router_probs: torch.Tensor,
                    tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """One step's routing statistics as one float64 tensor on the router's device, read nothing:
    (E + 3,) = load (E), max_over_mean, router_entropy, max_abs_logit (the fields of
    :class:`StepStats`; a training loop reads it with its other numbers in one host sync)."""
    counts = tokens_per_expert.detach().double()  # (E,)
    total = counts.sum()
    # load_i = counts_i / sum_j counts_j (zeros when nothing was routed)
    load = torch.where(total > 0, counts / total.clamp_min(1), counts)  # (E,)
    mean = counts.mean()
    # max_over_mean = max_i counts_i / mean_i counts_i (0 when nothing was routed)
    max_over_mean = torch.where(mean > 0, counts.max() / mean.clamp_min(1e-12), 0.0)
    if router_probs.shape[0]:
        probs = router_probs.detach().double()  # (N, E)
        # H_n = - sum_i p_{n,i} log2 p_{n,i} (bits), averaged over the tokens
        entropy = -(probs * probs.clamp_min(1e-12).log2()).sum(dim=-1).mean()
        max_abs_logit = router_logits.detach().abs().max().double()
    else:
        entropy = max_abs_logit = counts.new_zeros(())
    return torch.cat([load, torch.stack([max_over_mean, entropy, max_abs_logit])])  # (E + 3,)


def stats_from_summary(step: int, summary: list[float],
                       losses: dict[str, float] | None = None) -> StepStats:
    """:class:`StepStats` from a :func:`routing_summary` read to the host (E + 3 floats)."""
    *load, max_over_mean, entropy, max_abs_logit = summary
    return StepStats(
        step=int(step),
        load=tuple(round(float(v), 6) for v in load),
        max_over_mean=float(max_over_mean),
        router_entropy=float(entropy),
        max_abs_logit=float(max_abs_logit),
        losses={name: float(value) for name, value in (losses or {}).items()},
    )


def step_stats(step: int, router_logits: torch.Tensor, router_probs: torch.Tensor,
               tokens_per_expert: torch.Tensor, losses: dict[str, float] | None = None,
               ) -> StepStats:
    """Summarise one step's routing: logits and probs (N, E), tokens_per_expert (E,).
    One host read (:func:`routing_summary`, then ``tolist``)."""
    return stats_from_summary(step, routing_summary(router_logits, router_probs,
                                                    tokens_per_expert).tolist(), losses)
