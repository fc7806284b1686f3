"""Batch dependence: with a capacity, a token's output depends on the other tokens. Lesson 10.

With capacity C = ceil(c * N * K / E) per expert and drops in token order, whether token n keeps
its expert e depends on how many tokens *before it in the batch* chose e. The same sequence,
served alone or batched with others, can then get a different output: a server's answer would
depend on its neighbours' requests. Dropless routing (no capacity) computes every assignment,
so each token's output is its own, whatever the batch (to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_lab.layer import SparseMoE


@dataclass(frozen=True)
class BatchDependence:
    """changed: share of the B * T tokens whose output batched differs (by more than atol)
    from the output of their sequence run alone; dropped_alone, dropped_batched: shares of
    assignments dropped in the two runs."""

    changed: float
    dropped_alone: float
    dropped_batched: float


@torch.no_grad()
def batch_dependence(layer: SparseMoE, x: torch.Tensor, *, atol: float = 1e-5) -> BatchDependence:
    """Run ``layer`` on x (B, T, D) once as a batch of B sequences (N = B * T tokens share the
    capacity) and once per sequence alone; compare each token's two outputs."""
    if not isinstance(layer, SparseMoE):
        raise TypeError(f"layer must be a SparseMoE, got {type(layer).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError("x must be a tensor (B, T, D)")
    batched = layer(x)
    alone = [layer(x[b:b + 1]) for b in range(x.shape[0])]
    y_alone = torch.cat([out.y for out in alone])  # (B, T, D)
    changed = ((batched.y - y_alone).abs().amax(dim=-1) > atol).float().mean()  # share of (B, T)
    dropped_alone = torch.cat([out.dropped.reshape(-1) for out in alone]).float().mean()
    return BatchDependence(float(changed), float(dropped_alone),
                           float(batched.dropped.float().mean()))
