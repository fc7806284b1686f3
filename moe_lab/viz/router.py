"""The router's per-token probabilities, drawn as a heatmap. Lesson 01.

:func:`router_heatmap_table` turns a :class:`moe_lab.RouterOutput` and one label per token into
plain lists (tested); :func:`router_heatmap_figure` draws it: tokens down, experts across, colour
= router probability, a marker on each token's chosen experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from moe_lab.routing import RouterOutput

MAX_TOKENS = 64  # rows drawn; longer inputs are cut (the figure says so)


@dataclass(frozen=True)
class RouterHeatmapTable:
    """token_labels: T labels; probs: (T, E); topk_idx, topk_weights: (T, K); num_tokens: the
    number of tokens before the cut to ``max_tokens``."""

    token_labels: list[str]
    probs: list[list[float]]
    topk_idx: list[list[int]]
    topk_weights: list[list[float]]
    num_experts: int
    num_tokens: int


def router_heatmap_table(routing: RouterOutput, token_labels: list[str],
                         max_tokens: int = MAX_TOKENS, *,
                         source_tokens: int | None = None) -> RouterHeatmapTable:
    """Plain lists of the first ``max_tokens`` tokens' probabilities and choices.
    ``source_tokens``: the length of the text these tokens were cut from, if it was cut."""
    num_tokens, num_experts = routing.probs.shape
    if len(token_labels) != num_tokens:
        raise ValueError(f"token_labels must have one label per token ({num_tokens}), "
                         f"got {len(token_labels)}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    shown = min(num_tokens, max_tokens)
    return RouterHeatmapTable(
        token_labels=list(token_labels[:shown]),
        probs=routing.probs[:shown].detach().float().tolist(),
        topk_idx=routing.topk_idx[:shown].tolist(),
        topk_weights=routing.topk_weights[:shown].detach().float().tolist(),
        num_experts=num_experts,
        num_tokens=max(num_tokens, source_tokens or 0),
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
    elif table.num_tokens > len(rows):
        title = f"{title}: first {len(rows)} of {table.num_tokens} tokens"
    figure.update_layout(
        title=title,  # every expert on the axis, with or without tokens (none: autorange shows -1..6)
        xaxis=dict(title="expert", tickmode="array", tickvals=experts,
                   range=[-0.5, table.num_experts - 0.5]),
        yaxis=dict(title="token", tickmode="array", tickvals=rows, ticktext=table.token_labels,
                   autorange="reversed"),
        height=min(900, 160 + 18 * max(len(rows), 4)), showlegend=False,
        margin=dict(l=60, r=20, t=50, b=40))
    return figure
