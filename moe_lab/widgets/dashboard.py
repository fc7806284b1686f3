"""A live training dashboard: pass it as a callback to a training loop and watch the expert load,
the router entropy and the losses move while it trains. Lesson 04.

    dashboard = TrainingDashboard(num_experts=8, title="no balancing loss", pace_s=0.2)
    dashboard.show()                                 # in the cell that trains
    run = train_toy(config, callbacks=[dashboard])   # redraws every ``redraw_every`` steps
    dashboard.finish()                               # last redraw; the cell keeps the final figure

One dashboard per run, shown next to the code that trains it. Redraws update the figure's traces
and show its JSON in an ``ipywidgets.Output`` (see :mod:`moe_lab.widgets._output`); ``pace_s``
waits after each redraw during training, so a run of a second stays visible while it runs.
``finish()`` also replaces the cell's display with the final one, so a saved notebook (and a
front end without the widget) shows the run's result. ``current_data()`` is the data drawn last,
``figure_data()`` what the figure holds.
"""

from __future__ import annotations

import time

import ipywidgets as widgets
from IPython.display import DisplayHandle, display

from moe_lab.lm.stats import StepStats
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
                 title: str = "training", pace_s: float = 0.0) -> None:
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.redraw_every = check_positive_int("redraw_every", redraw_every)
        if isinstance(pace_s, bool) or not isinstance(pace_s, (int, float)):
            raise TypeError(f"pace_s must be a number of seconds, got {type(pace_s).__name__}")
        if not 0 <= pace_s <= 5:
            raise ValueError(f"pace_s must lie in [0, 5] seconds, got {pace_s}")
        self.pace_s = float(pace_s)
        self._handle: DisplayHandle | None = None
        self.history: list[StepStats] = []
        self.title = title
        self.status = widgets.HTML(value="waiting for the first step")
        self.status.add_class("moe-dashboard-status")
        self.figure = dashboard_figure(self.current_data(), title)  # a go.Figure
        self.output = widgets.Output()
        self.output.add_class("moe-dashboard-plot")
        show_in_output(self.output, self.figure)
        super().__init__([self.status, self.output])

    def show(self) -> None:
        """Display the dashboard (in the cell that trains); :meth:`finish` updates this display."""
        self._handle = display(self._display_bundle(), raw=True, display_id=True)
        displayed = getattr(self, "_handle_displayed", None)  # ipywidgets 7's on_displayed hook
        if displayed is not None:
            displayed()

    def _display_bundle(self) -> dict[str, object]:
        bundle = self._repr_mimebundle_()
        if bundle is None:
            raise ValueError("the dashboard was closed; make a new one")
        return bundle

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
            if self.pace_s:
                time.sleep(self.pace_s)  # the redraw stays on screen a moment

    def finish(self) -> None:
        """Draw the last steps (call after training); the display made by :meth:`show` becomes
        the final figure, the one a saved notebook keeps."""
        self._draw()
        if self._handle is not None:
            self._handle.update(self._display_bundle(), raw=True)

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
                                 f" bits; {losses}")
        else:
            self.status.value = f"<b>{self.title}</b>: waiting for the first step"
