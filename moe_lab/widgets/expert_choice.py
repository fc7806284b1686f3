"""Lesson 08's live figure: type a text, slide the capacity factor and K, and compare token
choice (every token gets K experts, loads vary) with expert choice (every expert gets C tokens,
tokens get 0 to E experts) on the same toy router."""

from __future__ import annotations

import ipywidgets as widgets

from moe_lab.viz.beyond_topk import ChoiceLoads, choice_loads, choice_loads_figure
from moe_lab.widgets._output import StaticFallback, show_in_output
from moe_lab.widgets._toy import ToyByteRouter

MAX_TOKENS = 64


class ExpertChoiceExplorer(StaticFallback, widgets.VBox):
    """``loads`` holds the last :class:`moe_lab.viz.beyond_topk.ChoiceLoads`, ``figure`` the last
    figure (a ``go.Figure``), shown in ``output``."""

    def __init__(self, text: str = "the cat sat on the mat, and the dog sat too",
                 *, capacity_factor: float = 1.0, top_k: int = 1, num_experts: int = 8,
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
        self.note = widgets.HTML()  # what was routed, and the tokens no expert took
        for control in (self.text, self.capacity_factor, self.top_k):
            control.observe(lambda _: self.update(), names="value")
        super().__init__([self.text, widgets.HBox([self.capacity_factor, self.top_k]),
                          self.note, self.output])
        self.update()

    def update(self) -> None:
        routed = self.toy.route(self.text.value, self.top_k.value, max_tokens=MAX_TOKENS)
        if routed.num_tokens == 0:  # nothing typed: nothing is routed, the last figure goes
            self.loads = self.figure = None
            self.note.value = "<i>Type a text: each of its bytes is one token.</i>"
            self.output.clear_output()
            return
        self.loads = choice_loads(routed.router_probs[0], self.top_k.value,
                                  self.capacity_factor.value)
        self.note.value = _note(self.loads, routed.num_tokens, routed.total_tokens)
        self.figure = choice_loads_figure(self.loads)  # a go.Figure
        show_in_output(self.output, self.figure)


def _note(loads: ChoiceLoads, num_tokens: int, total_tokens: int) -> str:
    """One line under the sliders: what was routed, and how many tokens no expert took."""
    cut = (f" (the first {num_tokens} of the text's {total_tokens} bytes: the toy routes at most "
           f"{MAX_TOKENS})" if total_tokens > num_tokens else "")
    return (f"{num_tokens} tokens{cut}; expert choice, C = {loads.capacity} per expert: "
            f"<b>{loads.tokens_left_out}</b> of {num_tokens} tokens got no expert.")
