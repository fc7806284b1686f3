"""A live training dashboard: pass it as a callback to a training loop and watch the expert load,
the router entropy and the losses move while it trains. Lesson 04.

    dashboard = TrainingDashboard(num_experts=8)
    display(dashboard)
    run = train_toy(config, callbacks=[dashboard])   # redraws every ``redraw_every`` steps
    dashboard.finish()                               # last redraw

One figure is reused for every run (``reset`` starts a new one): redraws update its traces in
place and show its JSON in an ``ipywidgets.Output`` (see :mod:`moe_lab.widgets._output`).
``current_data()`` is the data drawn last, ``figure_data()`` what the figure holds.
"""

from __future__ import annotations

import ipywidgets as widgets

from moe_lab.stats import StepStats
from moe_lab.validation import check_positive_int
from moe_lab.viz.dashboard import (
    DashboardData,
    apply_dashboard_data,
    dashboard_data,
    dashboard_figure,
)
from moe_lab.widgets._output import StaticFallback, show_in_output


class TrainingDashboard(StaticFallback, widgets.VBox):
    """A callback ``dashboard(stats)`` that draws the run so far every ``redraw_every`` steps."""

    def __init__(self, num_experts: int, *, redraw_every: int = 10,
                 title: str = "training") -> None:
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.redraw_every = check_positive_int("redraw_every", redraw_every)
        self.history: list[StepStats] = []
        self.title = title
        self.status = widgets.HTML(value="waiting for the first step")
        self.status.add_class("moe-dashboard-status")
        self.figure = dashboard_figure(self.current_data(), title)  # a go.Figure
        self.output = widgets.Output()
        self.output.add_class("moe-dashboard-plot")
        show_in_output(self.output, self.figure)
        super().__init__([self.status, self.output])

    def reset(self, title: str = "training") -> None:
        """Forget the previous run and clear the figure."""
        self.history, self.title = [], title
        self._draw()

    def __call__(self, stats: StepStats) -> None:
        self.update(stats)

    def update(self, stats: StepStats) -> None:
        if not isinstance(stats, StepStats):
            raise TypeError(f"stats must be a StepStats, got {type(stats).__name__}")
        if stats.num_experts != self.num_experts:
            raise ValueError(f"stats must report {self.num_experts} experts, got "
                             f"{stats.num_experts}")
        self.history.append(stats)
        if len(self.history) == 1 or stats.step % self.redraw_every == 0:
            self._draw()

    def finish(self) -> None:
        """Draw the last steps (call after training)."""
        self._draw()

    def current_data(self) -> DashboardData:
        return dashboard_data(self.history, self.num_experts)

    def figure_data(self) -> dict[str, object]:
        """What the figure holds now: steps, load (experts x steps), max/mean, entropy, losses."""
        heatmap, ratio, entropy, *losses = self.figure.data
        return {
            "steps": list(ratio.x or ()),
            "load": [list(row) for row in (heatmap.z or ())],
            "max_over_mean": list(ratio.y or ()),
            "router_entropy": list(entropy.y or ()),
            "losses": {trace.name: list(trace.y or ()) for trace in losses},
            "title": self.figure.layout.title.text,
        }

    def _draw(self) -> None:
        data = self.current_data()
        if len(self.figure.data) == 3 + len(data.losses):
            apply_dashboard_data(self.figure, data)
            self.figure.layout.title.text = self.title
        else:  # other losses than the figure has traces for: rebuild it, once
            self.figure = dashboard_figure(data, self.title)
        show_in_output(self.output, self.figure)
        if self.history:
            last = self.history[-1]
            losses = ", ".join(f"{name} {value:.3g}" for name, value in last.losses.items())
            self.status.value = (f"<b>{self.title}</b>, step {last.step}: max/mean load "
                                 f"{last.max_over_mean:.2f}, entropy {last.router_entropy:.2f}"
                                 f" nats; {losses}")
        else:
            self.status.value = f"<b>{self.title}</b>: waiting for the first step"
