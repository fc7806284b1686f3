"""Does a later token change an earlier token's output? A measurement for MoE layers. Lesson 08.

A decoder generates one token at a time and caches what the earlier tokens computed, so its
layers must be causal: the output at position t may depend on tokens 0..t only. Attention is made
causal by its mask; an MoE layer is causal when each token's routing depends on that token alone
(dropless token choice). Capacity (token choice with drops), expert choice (each expert ranks all
tokens) and Soft MoE (slots mix all tokens) let other tokens in.

The measurement: run the layer on x (B, T, D), replace the last token of sequence 0 by a random
vector, run it again, and compare the outputs at the earlier positions of sequence 0 (causality)
and at every position of the other sequences (mixing across the batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from moe_lab.validation import check_float_tensor


@dataclass(frozen=True)
class CausalityReport:
    """max_change_earlier: max |y' - y| over positions 0..T-2 of sequence 0; share_changed_earlier:
    share of those positions whose output moved by more than ``tolerance``; the same two over the
    other sequences of the batch (0 when B = 1)."""

    max_change_earlier: float
    share_changed_earlier: float
    max_change_other_sequences: float
    share_changed_other_sequences: float


@torch.no_grad()
def _output(layer_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``layer_fn(x)`` as a (B, T, D) tensor, or a TypeError/ValueError that says what came back."""
    y = layer_fn(x)
    if not isinstance(y, torch.Tensor):
        hint = (" (a layer's output object: return its .y, e.g. lambda v: layer(v).y)"
                if hasattr(y, "y") else "")
        raise TypeError(f"layer_fn must return a tensor (B, T, D), got {type(y).__name__}{hint}")
    if y.shape != x.shape:
        raise ValueError(f"layer_fn must return the shape of x, (B, T, D) = {tuple(x.shape)}, "
                         f"got {tuple(y.shape)}: reshape a flattened (B*T, D) output back")
    return y


def last_token_perturbation(layer_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                            seed: int = 0, tolerance: float = 1e-6) -> CausalityReport:
    """Perturb x[0, -1] (a fresh N(0, 1) vector) and report how the other outputs of
    ``layer_fn`` ((B, T, D) -> (B, T, D)) change."""
    check_float_tensor("x", x)
    if x.dim() != 3 or x.shape[1] < 2:
        raise ValueError(f"x must have shape (B, T, D) with T >= 2, got {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(seed)
    x_perturbed = x.clone()
    x_perturbed[0, -1] = torch.randn(x.shape[-1], generator=generator).to(x)
    # |y' - y| per position, max over the features
    change = (_output(layer_fn, x_perturbed) - _output(layer_fn, x)).abs().amax(dim=-1).float()  # (B, T)
    earlier, others = change[0, :-1], change[1:].reshape(-1)  # (T-1,), ((B-1)*T,)

    def share(values: torch.Tensor) -> float:
        return float((values > tolerance).float().mean()) if values.numel() else 0.0

    return CausalityReport(
        max_change_earlier=float(earlier.max()),
        share_changed_earlier=share(earlier),
        max_change_other_sequences=float(others.max()) if others.numel() else 0.0,
        share_changed_other_sequences=share(others))
