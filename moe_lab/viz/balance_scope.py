"""Figure of lesson 11: what each balance scope did to specialisation and to the load.

:func:`scope_points` turns the shipped logs (:func:`moe_lab.lm.balance_scope.load_runs`) into
plain rows, one per (scope, seed) (tested); :func:`scope_figure` only draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from moe_lab.lm.balance_scope import seed_values
from moe_lab.viz.dashboard import series_colour

PANELS = (("mi_language", "I(language; expert), bits, mean of the layers"),
          ("window_load_max_over_mean", "load max/mean within a window"),
          ("val_loss", "validation loss (nats / byte)"))


@dataclass(frozen=True)
class ScopePoint:
    scope: str
    seed: int  # position in the scope's list of logs
    metric: str
    value: float


def scope_points(runs: Mapping[str, Sequence[Mapping]]) -> list[ScopePoint]:
    """One point per (scope, seed, panel metric), layers averaged."""
    return [ScopePoint(scope, seed, metric, value)
            for metric, _ in PANELS
            for scope, logs in runs.items()
            for seed, value in enumerate(seed_values(logs, metric))]


def scope_figure(runs: Mapping[str, Sequence[Mapping]],
                 title: str = "balance scope: specialisation, local balance, loss "
                              "(one dot per seed)") -> go.Figure:
    """Three panels, one dot per seed for each scope: I(language; expert), the load's max/mean
    within a window, and the validation loss."""
    points = scope_points(runs)
    figure = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[t for _, t in PANELS])
    for col, (metric, _) in enumerate(PANELS, start=1):
        for scope in runs:
            mine = [p for p in points if p.metric == metric and p.scope == scope]
            figure.add_trace(go.Scatter(x=[scope] * len(mine), y=[p.value for p in mine],
                                        mode="markers", name=scope, showlegend=col == 1,
                                        marker={"size": 10, "color": series_colour(scope)}),
                             row=1, col=col)
    figure.update_layout(title=title, height=380, margin={"t": 80, "b": 40})
    return figure
