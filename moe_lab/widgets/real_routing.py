"""Lesson 09's real-routing explorer: pick a model, a view and a layer; see the heatmap."""

from __future__ import annotations

import ipywidgets as widgets

from moe_lab.analysis.real_routing import ModelRouting
from moe_lab.viz.real_routing import VIEWS, real_routing_figure, real_routing_table
from moe_lab.widgets._output import StaticFallback, show_in_output


class RealRoutingExplorer(StaticFallback, widgets.VBox):
    """Dropdowns (model, view, layer or layer pair) -> one heatmap in ``output``. ``table`` and
    ``figure`` hold the last ones drawn."""

    def __init__(self, routing: dict[str, ModelRouting], *, model: str = "olmoe",
                 view: str = VIEWS[0]) -> None:
        self.routing = routing
        self.model = widgets.Dropdown(options=[(r.model, k) for k, r in routing.items()], value=model,
                                      description="model")
        self.view = widgets.Dropdown(options=list(VIEWS), value=view, description="view")
        self.index = widgets.Dropdown(description="layer")
        self._switching = False
        self.output = widgets.Output()  # shows the figure as plotly JSON (no FigureWidget)
        self.output.add_class("moe-real-routing-plot")
        self._set_index_options()
        self.model.observe(lambda _: self.update(), names="value")
        self.view.observe(lambda _: (self._set_index_options(), self.update()), names="value")
        self.index.observe(lambda _: self.update(), names="value")
        super().__init__([widgets.HBox([self.model, self.view, self.index]), self.output])
        self.update()

    def _set_index_options(self) -> None:
        first = next(iter(self.routing.values()))
        if self.view.value == VIEWS[0]:
            options = [(str(layer), i) for i, layer in enumerate(first.layers)]
        else:
            options = [(f"{a} -> {b}", i) for i, (a, b) in enumerate(first.crosslayer_pairs)]
        self._switching = True  # options, then the first entry: draw once, after
        self.index.options = options
        self.index.value = 0
        self._switching = False

    def update(self) -> None:
        if self._switching or self.index.value is None:
            return
        self.table = real_routing_table(self.routing[self.model.value], self.view.value, self.index.value)
        self.figure = real_routing_figure(self.table)  # a go.Figure
        show_in_output(self.output, self.figure)
