"""The per-token probability heatmap of lesson 01: type text, see each byte token's router
probabilities over the experts and its top-k choice; switch the router to bf16 or turn noise on."""

from __future__ import annotations

import ipywidgets as widgets
import torch

from moe_lab.viz.router import MAX_TOKENS, router_heatmap_figure, router_heatmap_table
from moe_lab.widgets._output import StaticFallback, show_in_output
from moe_lab.widgets._toy import ToyByteRouter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
NOISES = {"off (eval)": None, "noisy top-k (train)": "noisy_topk", "jitter (train)": "jitter"}


class RouterHeatmap(StaticFallback, widgets.VBox):
    """Text box, K slider, router dtype and noise -> a heatmap redrawn into one ``output``.
    ``table`` holds the last table drawn, ``figure`` the last figure (a ``go.Figure``)."""

    def __init__(self, text: str = "Experts route tokens: 전문가 🙂", *, d_model: int = 32,
                 num_experts: int = 8, top_k: int = 2, seed: int = 0) -> None:
        self.toy = ToyByteRouter(d_model, num_experts, seed=seed)
        self.text = widgets.Text(value=text, description="text", continuous_update=True,
                                 layout=widgets.Layout(width="480px"))
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=num_experts, description="top k")
        self.dtype = widgets.Dropdown(options=list(DTYPES), value="float32",
                                      description="router dtype")
        self.noise = widgets.Dropdown(options=list(NOISES), value="off (eval)",
                                      description="noise")
        self.output = widgets.Output()  # shows the figure as plotly JSON (no FigureWidget)
        self.output.add_class("moe-router-plot")
        for control in (self.text, self.top_k, self.dtype, self.noise):
            control.observe(lambda _: self.update(), names="value")
        super().__init__([self.text, widgets.HBox([self.top_k, self.dtype, self.noise]),
                          self.output])
        self.update()

    def update(self) -> None:
        routed = self.toy.route(self.text.value, self.top_k.value, noise=NOISES[self.noise.value],
                                router_dtype=DTYPES[self.dtype.value], max_tokens=MAX_TOKENS)
        self.table = router_heatmap_table(routed)
        self.figure = router_heatmap_figure(self.table)  # a go.Figure
        show_in_output(self.output, self.figure)
