"""Figures of the real models' routing (OLMoE-1B-7B, Mixtral-8x7B). Lesson 09.

:func:`real_routing_table` turns the shipped counts into the plain table one heatmap shows
(tested): domain specialisation (domains down, experts across, % of the domain's tokens on each
expert) or cross-layer co-activation (experts of the earlier layer down, of the later layer
across, P(j | i)). :func:`real_routing_figure` only draws it.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from moe_lab.analysis.real_routing import COMMON_DOMAINS, ModelRouting, coactivation, domain_specialisation

VIEWS = ("domain specialisation", "co-activation")


@dataclass(frozen=True)
class RealRoutingTable:
    """z: rows x columns of values; reference: the uniform-routing value (a dashed colour bar
    tick); labels and title say what was drawn."""

    z: list[list[float]]          # rounded: % to 2 decimals, probabilities to 4
    row_labels: list[str]
    column_labels: list[str]
    reference: float
    title: str


def _rounded(values, digits: int) -> list[list[float]]:
    """Fewer digits than float64 carries: a 64 x 64 heatmap's JSON shrinks fourfold."""
    return [[round(v, digits) for v in row] for row in values.tolist()]


def real_routing_table(routing: ModelRouting, view: str, index: int) -> RealRoutingTable:
    """``view``: one of VIEWS; ``index``: the layer (specialisation) or layer pair (co-activation)
    position, 0-based."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    experts = [f"E{e}" for e in range(routing.num_experts)]
    if view == "domain specialisation":
        layer = routing.layers[index]
        share = domain_specialisation(routing, layer)  # (D, E) %
        return RealRoutingTable(_rounded(share, 2), list(COMMON_DOMAINS), experts,
                                100.0 * routing.top_k / routing.num_experts,
                                f"{routing.model}, layer {layer}: % of each domain's tokens per "
                                f"expert (uniform {100.0 * routing.top_k / routing.num_experts:g} %)")
    a, b = routing.crosslayer_pairs[index]
    table = coactivation(routing, index)  # (E, E)
    return RealRoutingTable(_rounded(table, 4), [f"L{a} {e}" for e in experts],
                            [f"L{b} {e}" for e in experts], 1.0 / routing.num_experts,
                            f"{routing.model}: P(expert at layer {b} | expert at layer {a}), same slot "
                            f"(uniform {1.0 / routing.num_experts:.3g})")


def real_routing_figure(table: RealRoutingTable) -> go.Figure:
    figure = go.Figure(go.Heatmap(z=table.z, x=table.column_labels, y=table.row_labels,
                                  zmin=0, colorscale="Viridis",
                                  hovertemplate="%{y} -> %{x}: %{z:.3g}<extra></extra>"))
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(title=table.title, height=max(320, 9 * len(table.row_labels) + 140),
                         margin={"t": 60, "b": 40})
    return figure
