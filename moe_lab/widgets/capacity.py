"""The capacity widget of lesson 02: slide the capacity factor and watch which (token, expert)
assignments drop in a token x expert grid, with the drop rate."""

from __future__ import annotations

import ipywidgets as widgets

from moe_lab.viz.capacity import capacity_grid_figure, capacity_grid_table
from moe_lab.widgets._output import StaticFallback, show_in_output
from moe_lab.widgets._toy import ToyByteRouter

MAX_TOKENS = 48  # tokens routed (C depends on N, so the text is cut before routing)


class CapacityGrid(StaticFallback, widgets.VBox):
    """Text, capacity factor and K -> a grid figure redrawn into one ``output``. ``table`` holds
    the last table, ``figure`` the last figure (a ``go.Figure``)."""

    def __init__(self, text: str = "the cat sat on the mat, and the dog sat too",
                 *, capacity_factor: float = 1.0, d_model: int = 32, num_experts: int = 8,
                 top_k: int = 2, seed: int = 0) -> None:
        self.toy = ToyByteRouter(d_model, num_experts, seed=seed)
        self.text = widgets.Text(value=text, description="text",
                                 layout=widgets.Layout(width="480px"))
        self.capacity_factor = widgets.FloatSlider(value=capacity_factor, min=0.05, max=4.0,
                                                   step=0.05, description="capacity factor",
                                                   style={"description_width": "110px"})
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=num_experts, description="top k")
        self.drop_rate = widgets.HTML()
        self.output = widgets.Output()  # shows the figure as plotly JSON (no FigureWidget)
        self.output.add_class("moe-capacity-plot")
        for control in (self.text, self.capacity_factor, self.top_k):
            control.observe(lambda _: self.update(), names="value")
        super().__init__([self.text, widgets.HBox([self.capacity_factor, self.top_k]),
                          self.drop_rate, self.output])
        self.update()

    def update(self) -> None:
        routed = self.toy.route(self.text.value, self.top_k.value, max_tokens=MAX_TOKENS)
        self.table = capacity_grid_table(routed.topk_idx[0], self.toy.num_experts,
                                         self.capacity_factor.value, routed.labels)
        cut = (f" (first {routed.num_tokens} of {routed.total_tokens} tokens)"
               if routed.truncated else "")
        self.drop_rate.value = (f"C = <b>{self.table.capacity}</b> slots per expert; dropped "
                                f"<b>{self.table.num_dropped}</b> of "
                                f"{self.table.num_assignments} assignments: drop rate "
                                f"<b>{100 * self.table.drop_rate:.1f} %</b>{cut}")
        self.figure = capacity_grid_figure(self.table)  # a go.Figure
        show_in_output(self.output, self.figure)
