"""Lesson 07 figures: tokens sent between ranks, and dropless vs capacity-padded exchange.

:func:`tokens_sent_table` and :func:`exchange_cost_table` are pure (tested); the figure
functions only draw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from moe_lab.dispatch import compute_capacity
from moe_lab.validation import check_positive_float, check_positive_int


@dataclass(frozen=True)
class TokensSentTable:
    """rows[s][d]: rows rank s sent to rank d. local: rows that stayed on their rank."""

    rows: list[list[int]]
    total: int
    local: int

    @property
    def remote_share(self) -> float:
        """Share of the rows that crossed between ranks (the all-to-all's real traffic)."""
        return 1 - self.local / self.total if self.total else 0.0


def tokens_sent_table(tokens_sent: torch.Tensor) -> TokensSentTable:
    """From the (W, W) matrix of :class:`moe_lab.systems.parallel.ExpertParallelResult`."""
    if tokens_sent.dim() != 2 or tokens_sent.shape[0] != tokens_sent.shape[1]:
        raise ValueError(f"tokens_sent must be a square (W, W) matrix, "
                         f"got {tuple(tokens_sent.shape)}")
    return TokensSentTable(rows=tokens_sent.tolist(), total=int(tokens_sent.sum()),
                           local=int(tokens_sent.diagonal().sum()))


def tokens_sent_figure(table: TokensSentTable, title: str = "rows sent between ranks") -> go.Figure:
    """Heatmap, source rank down, destination across, the count in every cell."""
    ranks = list(range(len(table.rows)))
    figure = go.Figure(go.Heatmap(
        z=table.rows, x=ranks, y=ranks, colorscale="Blues", showscale=False, xgap=2, ygap=2,
        text=table.rows, texttemplate="%{text}",
        hovertemplate="rank %{y} -> rank %{x}: %{z} rows<extra></extra>"))
    figure.update_layout(
        # two short lines: one line of ~50 characters was clipped by a figure this narrow
        title=dict(text=f"{title}<br>{table.total} rows, {100 * table.remote_share:.0f} % cross ranks",
                   font=dict(size=14)),
        xaxis=dict(title="destination rank (owns the experts)", tickvals=ranks),
        yaxis=dict(title="source rank (holds the tokens)", tickvals=ranks, autorange="reversed"),
        height=150 + 60 * len(ranks), width=max(360, 200 + 60 * len(ranks)),
        margin=dict(l=60, r=20, t=70, b=50))
    return figure


@dataclass(frozen=True)
class ExchangeCost:
    """One way to exchange tokens. rows_sent: rows on the wire (dispatch direction); useful:
    real assignments among them; padding: empty rows; dropped: assignments not computed;
    count_exchange: whether the sizes must be exchanged first (and read on the host)."""

    mode: str
    capacity: int | None
    rows_sent: int
    useful: int
    padding: int
    dropped: int
    count_exchange: bool


def exchange_cost_table(routed: torch.Tensor, token_splits: Sequence[int], top_k: int,
                        capacity_factors: Sequence[float] = (1.0, 1.25, 2.0)
                        ) -> list[ExchangeCost]:
    """Dropless vs capacity-padded exchange for ``routed`` (W, E) assignments per (source rank,
    expert). Padded: every source sends exactly C rows per expert, with one C for all ranks
    (fixed shapes), C = ceil(capacity_factor * n_max * K / E) from the largest shard."""
    if routed.dim() != 2:
        raise ValueError(f"routed must have shape (W, E), got {tuple(routed.shape)}")
    world_size, num_experts = routed.shape
    if len(token_splits) != world_size:
        raise ValueError(f"token_splits must have one entry per rank ({world_size}), "
                         f"got {len(token_splits)}")
    check_positive_int("top_k", top_k)
    total = int(routed.sum())
    rows = [ExchangeCost("dropless", None, total, total, 0, 0, True)]
    for factor in capacity_factors:
        check_positive_float("capacity_factor", factor)
        capacity = compute_capacity(factor, max(token_splits), top_k, num_experts)
        kept = int(routed.clamp(max=capacity).sum())
        sent = world_size * num_experts * capacity
        rows.append(ExchangeCost(f"padded cf={factor:g}", capacity, sent, kept, sent - kept,
                                 total - kept, False))
    return rows


def exchange_cost_figure(costs: Sequence[ExchangeCost],
                         title: str = "dropless vs capacity-padded exchange") -> go.Figure:
    """Stacked bars per mode: useful rows, padding rows, and dropped assignments."""
    modes = [c.mode for c in costs]
    figure = go.Figure()
    figure.add_bar(x=modes, y=[c.useful for c in costs], name="useful rows",
                   marker_color="#2ca02c")
    figure.add_bar(x=modes, y=[c.padding for c in costs], name="padding rows",
                   marker_color="#c7c7c7")
    figure.add_bar(x=modes, y=[c.dropped for c in costs], name="dropped (not sent)",
                   marker_color="#d62728")
    figure.update_layout(barmode="stack", title=title, height=340,
                         yaxis=dict(title="rows (dispatch direction)"),
                         margin=dict(l=60, r=20, t=50, b=50))
    return figure
