"""The training dashboard's data and figures: expert load, router entropy and losses per step.
Lesson 04.

:func:`dashboard_data` turns a list of :class:`moe_lab.lm.stats.StepStats` into plain lists (tested);
:func:`dashboard_figure` draws them in four panels (load share of each expert over the steps as a
heatmap; max/mean load; router entropy against its maximum log2 E; every loss), and
:func:`apply_dashboard_data` updates such a figure in place, for live redraws.
:func:`compare_runs_figure` puts one metric of several runs side by side.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moe_lab.lm.stats import StepStats

_METRICS = ("max_over_mean", "router_entropy", "max_abs_logit")
LOSS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
# One colour per series name in every figure of the course: a loss keeps its colour from run to
# run (lesson 04's dashboards), a run keeps its colour across figures (a run named after the loss
# it trains with shares that loss's colour).
SERIES_COLOURS = {
    "task": "#1f77b4", "switch": "#ff7f0e", "importance": "#9467bd", "z": "#d62728",
    "z-loss": "#d62728", "none": "#7f7f7f", "bias": "#2ca02c",  # lesson 04's losses and runs
    "dense": "#1f77b4", "moe": "#d62728", "dense_total": "#2ca02c",  # lesson 05's runs
}


def series_colour(name: str) -> str:
    """The colour of the series ``name``: :data:`SERIES_COLOURS`, else one of
    :data:`LOSS_COLOURS` picked by a checksum of the name (the same in every figure and run)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in SERIES_COLOURS:
        return SERIES_COLOURS[name]
    return LOSS_COLOURS[zlib.crc32(name.encode("utf-8")) % len(LOSS_COLOURS)]


@dataclass(frozen=True)
class DashboardData:
    """Per-step series of one run.

    steps: S step numbers; load: E rows of S load shares (experts x steps); max_over_mean,
    router_entropy, max_abs_logit: S values each; losses: name -> S values (None where a step did
    not report that loss); num_experts: E.
    """

    steps: list[int]
    load: list[list[float]]
    max_over_mean: list[float]
    router_entropy: list[float]
    max_abs_logit: list[float]
    losses: dict[str, list[float | None]]
    num_experts: int


def dashboard_data(history: Sequence[StepStats], num_experts: int | None = None) -> DashboardData:
    """Plain series from the StepStats of a run (E from the stats, or ``num_experts`` if empty)."""
    if not history and num_experts is None:
        raise ValueError("num_experts is needed when history is empty")
    experts = history[0].num_experts if history else int(num_experts or 0)
    if any(stats.num_experts != experts for stats in history):
        raise ValueError(f"every step must report the load of the same {experts} experts")
    names: list[str] = []
    for stats in history:
        names.extend(name for name in stats.losses if name not in names)
    return DashboardData(
        steps=[stats.step for stats in history],
        load=[[stats.load[e] for stats in history] for e in range(experts)],
        max_over_mean=[stats.max_over_mean for stats in history],
        router_entropy=[stats.router_entropy for stats in history],
        max_abs_logit=[stats.max_abs_logit for stats in history],
        losses={name: [stats.losses.get(name) for stats in history] for name in names},
        num_experts=experts,
    )


def dashboard_figure(data: DashboardData, title: str = "training") -> go.Figure:
    """Four panels: load heatmap, max/mean load, router entropy, losses."""
    figure = make_subplots(rows=2, cols=2, vertical_spacing=0.16, horizontal_spacing=0.14,
                           subplot_titles=("load share per expert", "max / mean load",
                                           "router entropy (bits)", "losses"))
    # the colour bar right of the heatmap's own panel (top left), not at the figure's right edge
    figure.add_trace(go.Heatmap(colorscale="Viridis", zmin=0.0, zmax=1.0, showscale=True,
                                colorbar={"len": 0.4, "y": 0.79, "xanchor": "left",
                                          "x": figure.layout.xaxis.domain[1] + 0.005,
                                          "thickness": 10, "title": {"text": "share"}}),
                     row=1, col=1)
    figure.add_trace(go.Scatter(mode="lines", name="max/mean load", showlegend=False,
                                line={"color": "#d62728"}), row=1, col=2)
    figure.add_trace(go.Scatter(mode="lines", name="router entropy", showlegend=False,
                                line={"color": "#2ca02c"}), row=2, col=1)
    for name in data.losses:
        figure.add_trace(go.Scatter(mode="lines", name=name, line={"color": series_colour(name)}),
                         row=2, col=2)
    # reference lines: perfectly balanced (1.0 and log E) and fully collapsed (E)
    experts = max(data.num_experts, 1)
    figure.add_hline(y=1.0, line_dash="dot", line_color="grey", row=1, col=2)
    figure.add_hline(y=float(experts), line_dash="dot", line_color="grey", row=1, col=2)
    figure.add_hline(y=math.log2(experts), line_dash="dot", line_color="grey", row=2, col=1)
    figure.update_yaxes(title_text="expert", row=1, col=1)
    figure.update_yaxes(range=[0, experts + 0.5], row=1, col=2)
    figure.update_yaxes(range=[0, math.log2(experts) * 1.1 + 1e-3], row=2, col=1)
    figure.update_yaxes(type="log", row=2, col=2)
    figure.update_xaxes(title_text="step", row=2, col=1)
    figure.update_xaxes(title_text="step", row=2, col=2)
    # the loss legend right of the losses panel, at its height (below the figure it covered the
    # "step" axis title; inside the panel, the curves)
    figure.update_layout(title=title, height=520, margin={"t": 80, "b": 40, "l": 50, "r": 100},
                         legend={"x": 1.01, "xanchor": "left", "y": 0.42, "yanchor": "top"},
                         template="none")  # the default template adds 6 kB to every redraw
    apply_dashboard_data(figure, data)
    return figure


def apply_dashboard_data(figure: go.Figure, data: DashboardData) -> None:
    """Write ``data`` into a figure made by :func:`dashboard_figure` with the same loss names."""
    if len(figure.data) != 3 + len(data.losses):
        raise ValueError("the figure was made for other losses; build a new one")
    with figure.batch_update():
        heatmap, ratio, entropy, *loss_traces = figure.data
        heatmap.x, heatmap.y = data.steps, list(range(data.num_experts))
        heatmap.z = [[round(v, 2) for v in row] for row in data.load]
        ratio.x, ratio.y = data.steps, _short(data.max_over_mean)
        entropy.x, entropy.y = data.steps, _short(data.router_entropy)
        for trace, (name, values) in zip(loss_traces, data.losses.items(), strict=True):
            # a log axis cannot show 0: clip exact zeros to a tiny positive value
            trace.x, trace.name = data.steps, name
            trace.y = _short([None if v is None else max(v, 1e-6) for v in values])


def _short(values: Sequence[float | None]) -> list[float | None]:
    """4 significant digits: what a plot can show, and a third of the bytes sent to the browser."""
    return [None if v is None else float(f"{v:.4g}") for v in values]


def compare_runs_figure(runs: Mapping[str, Sequence[StepStats]], metric: str = "max_over_mean",
                        title: str | None = None) -> go.Figure:
    """One line per run of ``metric`` ("max_over_mean", "router_entropy", "max_abs_logit" or a
    loss name) against the step."""
    figure = go.Figure()
    for name, history in runs.items():
        if metric in _METRICS:
            values = [getattr(stats, metric) for stats in history]
        else:
            values = [stats.losses.get(metric) for stats in history]
        figure.add_trace(go.Scatter(x=[stats.step for stats in history], y=values, mode="lines",
                                    name=name, line={"color": series_colour(name)}))
    figure.update_layout(title=title or f"{metric} per step", height=340, template="none",
                         xaxis_title="step", yaxis_title=metric,
                         margin={"t": 60, "b": 40, "l": 50, "r": 20})
    return figure
