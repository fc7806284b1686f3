"""The routing explorer: type text, see which experts each token goes to. Lessons 03 and 05.

:class:`RoutingExplorer` wires a Text box, a K slider, a noise slider and (for several layers) a
layer menu to any *routing callable* ``route_fn(text, top_k, noise) -> TextRouting`` (the
interface is documented in :mod:`moe_lab.viz.explorer`), and redraws one reused figure (shown in an Output) on
every keystroke: the figure's traces are updated in place and its JSON is shown in an
``ipywidgets.Output`` (see :mod:`moe_lab.widgets._output` for why not a FigureWidget).

Lesson 03::

    explorer = RoutingExplorer(byte_router_fn(embedding, moe.router), num_experts=E)

Lesson 05 (a trained model with several MoE layers and a fixed K)::

    explorer = RoutingExplorer(my_route_fn, num_experts=E, top_k=K, show_top_k=False,
                               show_noise=False)

For tests and browser checks: ``current_table()`` is the TextRouting last drawn,
``figure_data()`` what the figure holds now, ``last_redraw_ms`` the time of the last redraw; the
controls carry the CSS classes ``moe-explorer-text``, ``moe-explorer-k``, ``moe-explorer-noise``
and ``moe-explorer-layer``.
"""

from __future__ import annotations

import time

import ipywidgets as widgets

from moe_lab.lm.text_routing import TextRouting
from moe_lab.lm.tokenizer import clean_text
from moe_lab.systems.threads import torch_threads
from moe_lab.validation import check_positive_int, check_top_k
from moe_lab.viz.explorer import (
    RoutingFn,
    apply_explorer_traces,
    explorer_figure,
    explorer_traces,
)
from moe_lab.widgets._output import StaticFallback, show_in_output


class RoutingExplorer(StaticFallback, widgets.VBox):
    """Text, K and noise controls over one reused routing figure."""

    def __init__(self, route_fn: RoutingFn, *, num_experts: int,
                 text: str = "Experts route tokens: 전문가 🙂", top_k: int = 2,
                 noise_max: float = 2.0, show_top_k: bool = True,
                 show_noise: bool = True, num_threads: int | None = 1) -> None:
        if not callable(route_fn):
            raise TypeError(f"route_fn must be callable, got {type(route_fn).__name__}")
        check_positive_int("num_experts", num_experts)
        check_top_k(top_k, num_experts)
        self.route_fn = route_fn
        self.num_threads = num_threads  # torch threads while routing (see moe_lab.systems.threads)
        self.last_redraw_ms = 0.0
        self.text = widgets.Text(value=clean_text(text), description="text",
                                 placeholder="type a sentence", continuous_update=True,
                                 layout=widgets.Layout(width="560px"))
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=num_experts, description="top k",
                                       continuous_update=True)
        self.noise = widgets.FloatSlider(value=0.0, min=0.0, max=float(noise_max), step=0.05,
                                         description="noise std", continuous_update=True)
        self.top_k.layout.display = None if show_top_k else "none"
        self.noise.layout.display = None if show_noise else "none"
        self.text.add_class("moe-explorer-text")
        self.top_k.add_class("moe-explorer-k")
        self.noise.add_class("moe-explorer-noise")
        self._table = self._route()
        self.layer = widgets.Dropdown(
            options=[(name, i) for i, name in enumerate(self._table.layer_names)], value=0,
            description="layer")
        self.layer.add_class("moe-explorer-layer")
        self.layer.layout.display = None if self._table.num_layers > 1 else "none"
        self.figure = explorer_figure(self._table, 0)  # a go.Figure, updated in place
        self.output = widgets.Output()
        self.output.add_class("moe-explorer-plot")
        show_in_output(self.output, self.figure)
        for control in (self.text, self.top_k, self.noise):
            control.observe(lambda _: self.update(), names="value")
        self.layer.observe(lambda _: self.redraw(), names="value")  # same routing, other layer
        super().__init__([self.text, widgets.HBox([self.top_k, self.noise, self.layer]),
                          self.output])

    def _route(self) -> TextRouting:
        with torch_threads(self.num_threads):
            table = self.route_fn(self.text.value, int(self.top_k.value),
                                  float(self.noise.value))
        if not isinstance(table, TextRouting):
            raise TypeError(f"route_fn must return a TextRouting (moe_lab.lm.text_routing), "
                            f"got {type(table).__name__}")
        return table

    def update(self) -> None:
        """Route the current text with the current settings and redraw (in place)."""
        start = time.perf_counter()
        self._table = self._route()
        self.redraw(start)

    def redraw(self, start: float | None = None) -> None:
        """Draw the current routing's selected layer (in place), without routing again."""
        start = time.perf_counter() if start is None else start
        layer = min(int(self.layer.value or 0), self._table.num_layers - 1)
        apply_explorer_traces(self.figure, explorer_traces(self._table, layer))
        show_in_output(self.output, self.figure)
        self.last_redraw_ms = (time.perf_counter() - start) * 1e3

    def current_table(self) -> TextRouting:
        """The TextRouting the figure shows now."""
        return self._table

    def figure_data(self) -> dict[str, object]:
        """What the figure holds now: token labels, colours, opacities, bar heights, title."""
        grid, bars = self.figure.data[0], self.figure.data[1]
        return {
            "text": list(grid.text or ()),
            "colour": list(grid.marker.color or ()),
            "opacity": list(grid.marker.opacity or ()),
            "hover": list(grid.hovertext or ()),
            "bar_y": list(bars.y or ()),
            "title": self.figure.layout.title.text,
        }
