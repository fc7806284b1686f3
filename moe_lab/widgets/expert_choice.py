"""Lesson 08's live figure: type a text, slide the capacity factor and K, and compare token
choice (every token gets K experts, loads vary) with expert choice (every expert gets C tokens,
tokens get 0 to E experts) on the same toy router."""

from __future__ import annotations

import ipywidgets as widgets

from moe_lab.viz.beyond_topk import choice_loads, choice_loads_figure
from moe_lab.widgets._output import StaticFallback, show_in_output
from moe_lab.widgets._toy import ToyByteRouter

MAX_TOKENS = 64


class ExpertChoiceExplorer(StaticFallback, widgets.VBox):
    """``loads`` holds the last :class:`moe_lab.viz.beyond_topk.ChoiceLoads`, ``figure`` the last
    figure (a ``go.Figure``), shown in ``output``."""

    def __init__(self, text: str = "the cat sat on the mat, and the dog sat too",
                 *, capacity_factor: float = 2.0, top_k: int = 2, num_experts: int = 8,
                 seed: int = 0) -> None:
        self.toy = ToyByteRouter(32, num_experts, seed=seed)
        style = {"description_width": "110px"}
        self.text = widgets.Text(value=text, description="text", style=style,
                                 layout=widgets.Layout(width="480px"))
        self.capacity_factor = widgets.FloatSlider(value=capacity_factor, min=0.25, max=8.0,
                                                   step=0.25, description="capacity factor",
                                                   style=style, continuous_update=False)
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=num_experts, description="top k",
                                       style=style, continuous_update=False)
        self.output = widgets.Output()  # plotly JSON, no FigureWidget
        self.output.add_class("moe-expert-choice-plot")
        for control in (self.text, self.capacity_factor, self.top_k):
            control.observe(lambda _: self.update(), names="value")
        super().__init__([self.text, widgets.HBox([self.capacity_factor, self.top_k]),
                          self.output])
        self.update()

    def update(self) -> None:
        text = self.text.value or " "  # an empty box routes one space, not nothing
        routed = self.toy.route(text, self.top_k.value, max_tokens=MAX_TOKENS)
        self.loads = choice_loads(routed.router_probs[0], self.top_k.value,
                                  self.capacity_factor.value)
        self.figure = choice_loads_figure(self.loads)  # a go.Figure
        show_in_output(self.output, self.figure)
