"""The router's per-token probabilities, drawn as a heatmap. Lesson 01.

:func:`router_heatmap_table` turns one layer of a :class:`moe_lab.lm.text_routing.TextRouting` into
plain lists (tested); :func:`router_heatmap_figure` draws it: tokens down, experts across, colour
= router probability, a marker on each token's chosen experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from moe_lab.lm.text_routing import TextRouting

MAX_TOKENS = 64  # rows drawn; longer texts are cut before routing (the figure says so)


@dataclass(frozen=True)
class RouterHeatmapTable:
    """What the heatmap draws for one layer: token_labels: T labels; probs: (T, E); topk_idx,
    topk_weights: (T, K); total_tokens: the tokens of the whole text (> T when it was cut)."""

    token_labels: list[str]
    probs: list[list[float]]
    topk_idx: list[list[int]]
    topk_weights: list[list[float]]
    num_experts: int
    total_tokens: int

    @property
    def num_tokens(self) -> int:
        """T, the tokens drawn."""
        return len(self.token_labels)


def router_heatmap_table(routing: TextRouting, layer: int = 0) -> RouterHeatmapTable:
    """Plain lists of ``layer``'s probabilities and choices for the tokens of ``routing``."""
    if not isinstance(routing, TextRouting):
        raise TypeError(f"routing must be a TextRouting (moe_lab.lm.text_routing), "
                        f"got {type(routing).__name__}")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < routing.num_layers:
        raise ValueError(f"layer must be an int in [0, {routing.num_layers}), got {layer!r}")
    return RouterHeatmapTable(
        token_labels=list(routing.labels),
        probs=routing.router_probs[layer].tolist(),
        topk_idx=routing.topk_idx[layer].tolist(),
        topk_weights=routing.topk_weights[layer].tolist(),
        num_experts=routing.num_experts,
        total_tokens=routing.total_tokens,
    )


def router_heatmap_figure(table: RouterHeatmapTable, title: str = "router probabilities") \
        -> go.Figure:
    """Heatmap (tokens x experts) with a dot on every chosen (token, expert)."""
    rows = list(range(len(table.token_labels)))
    experts = list(range(table.num_experts))
    chosen_x = [e for row in table.topk_idx for e in row]
    chosen_y = [t for t, row in enumerate(table.topk_idx) for _ in row]
    chosen_w = [f"weight {w:.2f}" for row in table.topk_weights for w in row]
    figure = go.Figure([
        go.Heatmap(z=table.probs, x=experts, y=rows, zmin=0.0, zmax=1.0, colorscale="Blues",
                   colorbar=dict(title="p"),
                   hovertemplate="token %{y}, expert %{x}: p = %{z:.3f}<extra></extra>"),
        go.Scatter(x=chosen_x, y=chosen_y, mode="markers", text=chosen_w, name="top-k",
                   marker=dict(symbol="circle", size=7, color="orange",
                               line=dict(width=1, color="black")),
                   hovertemplate="token %{y} -> expert %{x}, %{text}<extra></extra>"),
    ])
    if not rows:
        title = f"{title}: no tokens (type some text)"
    elif table.total_tokens > table.num_tokens:
        title = f"{title}: first {table.num_tokens} of {table.total_tokens} tokens"
    figure.update_layout(
        title=title,  # every expert on the axis, with or without tokens (none: autorange shows -1..6)
        xaxis=dict(title="expert", tickmode="array", tickvals=experts,
                   range=[-0.5, table.num_experts - 0.5]),
        yaxis=dict(title="token", tickmode="array", tickvals=rows, ticktext=table.token_labels,
                   autorange="reversed"),
        height=min(900, 160 + 18 * max(len(rows), 4)), showlegend=False,
        margin=dict(l=60, r=20, t=50, b=40))
    return figure
