"""Capacity and token dropping, drawn as a token x expert grid. Lesson 02.

:func:`capacity_grid_table` applies C = ceil(capacity_factor * N * K / E) to a routing
(:func:`moe_lab.compute_capacity`, :func:`moe_lab.make_routing_plan`) and returns plain lists
(tested); :func:`capacity_grid_figure` draws kept assignments in green, dropped ones in red.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from moe_lab.dispatch import compute_capacity, make_routing_plan
from moe_lab.validation import check_index_tensor, check_positive_float, check_positive_int

NOT_CHOSEN, KEPT, DROPPED = 0, 1, 2


@dataclass(frozen=True)
class CapacityGridTable:
    """grid: (N, E) cells, NOT_CHOSEN / KEPT / DROPPED; demand and kept: (E,) assignments per
    expert before and after the cut to ``capacity``."""

    grid: list[list[int]]
    token_labels: list[str]
    capacity: int
    capacity_factor: float
    demand: list[int]
    kept: list[int]
    num_dropped: int
    num_assignments: int

    @property
    def drop_rate(self) -> float:
        """Share of the N*K assignments dropped (0 when there are none)."""
        return self.num_dropped / self.num_assignments if self.num_assignments else 0.0


def capacity_grid_table(topk_idx: torch.Tensor, num_experts: int, capacity_factor: float,
                        token_labels: list[str] | None = None) -> CapacityGridTable:
    """Which (token, expert) assignments survive capacity C, dropping in token order."""
    check_positive_int("num_experts", num_experts)
    check_positive_float("capacity_factor", capacity_factor)
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dim() != 2:
        raise ValueError("topk_idx must be an (N, K) integer tensor")
    num_tokens, top_k = topk_idx.shape
    check_index_tensor("topk_idx", topk_idx, num_tokens, num_experts)
    labels = [str(t) for t in range(num_tokens)] if token_labels is None else list(token_labels)
    if len(labels) != num_tokens:
        raise ValueError(f"token_labels must have one label per token ({num_tokens}), "
                         f"got {len(labels)}")
    capacity = compute_capacity(capacity_factor, num_tokens, top_k, num_experts)
    plan = make_routing_plan(topk_idx, torch.ones(topk_idx.shape), num_experts, capacity)
    grid = torch.full((num_tokens, num_experts), NOT_CHOSEN, dtype=torch.long)  # (N, E)
    # cell (n, topk_idx[n, k]) = KEPT if kept else DROPPED
    status = torch.where(plan.keep, KEPT, DROPPED)  # (N, K)
    grid.scatter_(1, topk_idx.long(), status)
    demand = torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)
    return CapacityGridTable(
        grid=grid.tolist(), token_labels=labels, capacity=capacity,
        capacity_factor=float(capacity_factor), demand=demand.tolist(),
        kept=plan.tokens_per_expert.tolist(), num_dropped=int((~plan.keep).sum()),
        num_assignments=num_tokens * top_k)


def capacity_grid_figure(table: CapacityGridTable, title: str = "capacity") -> go.Figure:
    """Tokens down, experts across; green kept, red dropped; x labels 'e: kept/demand'."""
    num_experts = len(table.demand)
    rows = list(range(len(table.token_labels)))
    experts = list(range(num_experts))
    colorscale = [[0.0, "#f4f4f4"], [0.33, "#f4f4f4"], [0.33, "#2ca02c"], [0.66, "#2ca02c"],
                  [0.66, "#d62728"], [1.0, "#d62728"]]
    figure = go.Figure(go.Heatmap(
        z=table.grid, x=experts, y=rows, zmin=-0.5, zmax=2.5, colorscale=colorscale,
        showscale=False, xgap=1, ygap=1,
        hovertemplate="token %{y}, expert %{x}: %{z} (1 kept, 2 dropped)<extra></extra>"))
    figure.update_layout(
        title=(f"{title}: factor {table.capacity_factor:g} -> C = {table.capacity} per expert; "
               f"dropped {table.num_dropped}/{table.num_assignments} "
               f"({100 * table.drop_rate:.1f} %)" if rows else f"{title}: no tokens"),
        xaxis=dict(title="expert (kept/demand)", tickmode="array", tickvals=experts,
                   range=[-0.5, num_experts - 0.5],  # every expert, also with no tokens
                   ticktext=[f"{e}: {k}/{d}" for e, (k, d)
                             in enumerate(zip(table.kept, table.demand, strict=True))]),
        yaxis=dict(title="token", tickmode="array", tickvals=rows, ticktext=table.token_labels,
                   autorange="reversed"),
        height=min(900, 160 + 16 * max(len(rows), 4)), margin=dict(l=60, r=20, t=50, b=50))
    return figure
