"""Checker for lesson 11, the balance scope.

- :func:`check_sequence_balance_loss`: ``sequence_balance_loss(router_probs, topk_idx, seq_len)``
  = the mean over sequences of sum_i f_i P_i, DeepSeek-V3's sequence-wise loss (compared with
  :func:`moe_lab.sequence_load_balancing_loss`).

Cases: one sequence, one token per sequence, K = E, concentrated routing, normalised sigmoid
scores; the inputs are fresh copies that must come back unchanged, and the gradient is compared
with the reference's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    diagnose,
    expect_same_grad,
    fresh,
    set_case,
)
from moe_lab.losses import load_balancing_loss, sequence_load_balancing_loss

# seed, B, T, E, K, sharpness
SEQUENCE_CASES = ((0, 3, 8, 4, 2, 1.0), (1, 1, 12, 8, 2, 3.0), (2, 4, 1, 4, 1, 1.0),
                  (3, 2, 6, 3, 3, 2.0), (4, 5, 10, 8, 1, 4.0))


def _case(seed: int, batch: int, seq: int, e: int, k: int,
          sharpness: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    per_sequence = torch.randn(batch, 1, e, generator=generator) * 2  # each sequence its favourites
    logits = sharpness * (torch.randn(batch, seq, e, generator=generator) + per_sequence)
    scores = torch.sigmoid(logits.reshape(batch * seq, e))  # (N, E)
    probs = scores / scores.sum(dim=-1, keepdim=True)  # normalised: rows sum to 1
    return probs, scores.topk(k, dim=-1).indices


@checker("check_sequence_balance_loss")
def check_sequence_balance_loss(fn: Callable[..., torch.Tensor]) -> None:
    for seed, batch, seq, e, k, sharpness in SEQUENCE_CASES:
        set_case(f"B={batch}, T={seq}, E={e}, K={k}")
        probs, topk_idx = _case(seed, batch, seq, e, k, sharpness)
        leaf, ref_leaf = fresh(probs, grad=True) + fresh(probs, grad=True)
        got = call(fn, leaf, topk_idx.clone(), seq, names=("router_probs", "topk_idx", "seq_len"))
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            raise CheckFailed(f"The loss should be a single number (a 0-d tensor), got "
                              f"{getattr(got, 'shape', type(got).__name__)}: average over the "
                              f"sequences.")
        got = got.reshape(())
        expected = sequence_load_balancing_loss(ref_leaf, topk_idx, seq)
        whole_batch = load_balancing_loss(probs, topk_idx)
        per_sequence = torch.stack([load_balancing_loss(probs[b * seq:(b + 1) * seq],
                                                        topk_idx[b * seq:(b + 1) * seq])
                                    for b in range(batch)])  # (B,)
        suspects = [
            (per_sequence.sum(), "That is the sum over sequences: take their mean."),
            (expected * k, "That is K times the reference: f_i = E / (K T) x count, the share "
                           "of the sequence's T*K choices, times E."),
            (expected / e, "That is the reference divided by E: f_i carries the factor E "
                           "(uniform routing must give 1)."),
        ]
        if batch > 1:
            suspects.insert(0, (whole_batch, "That is the loss over the whole batch: f and P "
                                             "must be computed per sequence (reshape to "
                                             "(B, T, E)), then averaged."))
        diagnose(got, expected.detach(), "the sequence-wise loss",
                 [(candidate.detach(), hint) for candidate, hint in suspects])
        expect_same_grad(got, expected, {"router_probs": leaf}, {"router_probs": ref_leaf},
                         "the sequence-wise loss")
