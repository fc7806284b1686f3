"""Figures of lesson 05: loss curves, the capacity-factor sweep, language x expert heatmaps.

Each ``*_table`` function turns metric logs (the JSON files of moe_lab/results/lesson05) or count
tables into plain lists (tested); each ``*_figure`` function only draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from moe_lab.lm.model import TinyLM, route_model_text
from moe_lab.lm.text_routing import TextRouting
from moe_lab.viz.dashboard import series_colour
from moe_lab.viz.explorer import RoutingFn

_CURVE_AXES = ("step", "wall_time")


@dataclass(frozen=True)
class Curve:
    name: str
    x: list[float]
    val_loss: list[float]


def loss_curve_table(logs: Mapping[str, Mapping], x: str = "step") -> list[Curve]:
    """Validation loss of each log against ``x``: "step" or "wall_time" (training seconds)."""
    if x not in _CURVE_AXES:
        raise ValueError(f"x must be one of {_CURVE_AXES}, got {x!r}")
    return [Curve(name, [float(e[x]) for e in log["evals"]],
                  [float(e["val_loss"]) for e in log["evals"]]) for name, log in logs.items()]


def loss_curves_figure(logs: Mapping[str, Mapping], title: str = "validation loss") -> go.Figure:
    """Two panels: validation loss against steps, and against training wall time."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("against steps", "against wall time"))
    for col, x in enumerate(_CURVE_AXES, start=1):
        for curve in loss_curve_table(logs, x):
            figure.add_trace(go.Scatter(x=curve.x, y=curve.val_loss, name=curve.name,
                                        mode="lines", showlegend=col == 1,
                                        line={"color": series_colour(curve.name)}),
                             row=1, col=col)
    figure.update_xaxes(title_text="step", row=1, col=1)
    figure.update_xaxes(title_text="training seconds (this machine)", row=1, col=2)
    figure.update_yaxes(title_text="val loss (nats / byte)", row=1, col=1)
    figure.update_layout(title=title, height=380, margin={"t": 70, "b": 40})
    return figure


@dataclass(frozen=True)
class SweepRow:
    label: str  # "0.5", ..., "dropless"
    capacity_factor: float | None
    drop_rate: float  # validation drop rate at the end of training
    val_loss: float


def capacity_sweep_table(logs: Sequence[Mapping]) -> list[SweepRow]:
    """One row per run (final evaluation), sorted by capacity factor, dropless last."""
    rows = []
    for log in logs:
        factor = log["model_config"]["capacity_factor"]
        last = log["evals"][-1]
        rows.append(SweepRow("dropless" if factor is None else f"{factor:g}", factor,
                             float(last["val_drop_rate"]), float(last["val_loss"])))
    return sorted(rows, key=lambda r: float("inf") if r.capacity_factor is None
                  else r.capacity_factor)


def capacity_sweep_figure(rows: Sequence[SweepRow]) -> go.Figure:
    """Drop rate and validation loss against the capacity factor (two panels)."""
    labels = [r.label for r in rows]
    figure = make_subplots(rows=1, cols=2, subplot_titles=("drop rate", "validation loss"))
    figure.add_trace(go.Bar(x=labels, y=[r.drop_rate for r in rows], name="drop rate",
                            marker_color="#d62728"), row=1, col=1)
    figure.add_trace(go.Scatter(x=labels, y=[r.val_loss for r in rows], name="val loss",
                                mode="lines+markers"), row=1, col=2)
    figure.update_xaxes(title_text="capacity factor", type="category")
    figure.update_yaxes(title_text="share of assignments dropped", row=1, col=1)
    figure.update_yaxes(title_text="nats / byte", row=1, col=2)
    figure.update_layout(height=350, showlegend=False, margin={"t": 50, "b": 40})
    return figure


def expert_share_table(counts: torch.Tensor) -> list[list[float]]:
    """Row-normalised counts: share of each label's assignments that go to each expert.
    Empty rows stay zero."""
    if not isinstance(counts, torch.Tensor) or counts.dim() != 2:
        raise ValueError("counts must be a 2-D tensor (labels, experts)")
    totals = counts.double().sum(dim=1, keepdim=True).clamp_min(1.0)  # (L, 1)
    return (counts.double() / totals).tolist()


def specialisation_heatmap_figure(counts_per_layer: Sequence[torch.Tensor],
                                  labels: Sequence[str],
                                  title: str = "share of each language's tokens per expert") \
        -> go.Figure:
    """One heatmap per MoE layer: labels down, experts across, colour = share of the label's
    assignments. A uniform router gives 1/E everywhere. Labels with no tokens are left out."""
    num_layers = len(counts_per_layer)
    if num_layers == 0:
        raise ValueError("counts_per_layer must hold at least one layer")
    present = [i for i in range(len(labels)) if any(c[i].sum() > 0 for c in counts_per_layer)]
    labels = [labels[i] for i in present]
    counts_per_layer = [c[present] for c in counts_per_layer]
    figure = make_subplots(rows=1, cols=num_layers,
                           subplot_titles=[f"layer {i}" for i in range(num_layers)],
                           horizontal_spacing=0.08)
    for i, counts in enumerate(counts_per_layer, start=1):
        shares = expert_share_table(counts)
        figure.add_trace(go.Heatmap(z=shares, x=[f"E{e}" for e in range(counts.shape[1])],
                                    y=list(labels), zmin=0, zmax=max(0.5, max(map(max, shares))),
                                    colorscale="Viridis", showscale=i == num_layers,
                                    hovertemplate="%{y} -> %{x}: %{z:.2f}<extra></extra>"),
                         row=1, col=i)
        figure.update_yaxes(autorange="reversed", row=1, col=i, showticklabels=i == 1)
    figure.update_layout(title=title, height=max(300, 18 * len(labels) + 120),
                         margin={"t": 70, "b": 30})
    return figure


def lm_route_fn(model: TinyLM) -> RoutingFn:
    """A routing callable for :class:`moe_lab.widgets.explorer.RoutingExplorer` over a trained
    MoE language model. The model's K is fixed, so ``top_k`` and ``noise`` are ignored (hide
    those sliders); texts longer than max_seq_len bytes are cut."""
    if not isinstance(model, TinyLM) or model.config.ffn != "moe":
        raise ValueError("model must be a TinyLM with ffn='moe'")

    def route_fn(text: str, top_k: int, noise: float) -> TextRouting:
        return route_model_text(model, text)

    return route_fn
