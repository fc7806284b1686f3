"""Batch size and top-k against distinct experts, bytes read and FLOPs. Lesson 10.

Sliders for E and K (and the layer's width from a preset); the figure is
:func:`moe_lab.viz.inference.traffic_figure` of :func:`moe_lab.viz.inference.traffic_table`.
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from moe_lab.inference.traffic import expected_distinct_experts
from moe_lab.viz.inference import traffic_figure, traffic_table
from moe_lab.widgets._output import StaticFallback, show_in_output


class TrafficExplorer(StaticFallback, widgets.VBox):
    """E, K and a batch size B -> experts touched, MB read and GFLOPs per step of one layer of
    width (D, F) in bf16 (default: Mixtral-8x7B's). ``table`` and ``figure`` hold what was drawn."""

    def __init__(self, num_experts: int = 8, top_k: int = 2, *, d_model: int = 4096,
                 d_ff: int = 14336) -> None:
        self.d_model, self.d_ff = d_model, d_ff
        style = {"description_width": "110px"}
        layout = widgets.Layout(width="480px")
        self.num_experts = widgets.IntSlider(value=num_experts, min=1, max=256,
                                             description="experts E", style=style,
                                             layout=layout, continuous_update=False)
        self.top_k = widgets.IntSlider(value=top_k, min=1, max=num_experts, description="per token K",
                                       style=style, layout=layout, continuous_update=False)
        self.batch = widgets.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
                                             value=8, description="batch B", style=style,
                                             layout=layout, continuous_update=False)
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        for control in (self.num_experts, self.top_k, self.batch):
            control.observe(self._on_change, names="value")
        super().__init__([self.num_experts, self.top_k, self.batch, self.summary, self.output])
        self.update()

    def _on_change(self, change: dict) -> None:
        if change["owner"] is self.num_experts:
            self.top_k.max = self.num_experts.value  # clamps K (its change redraws too)
        self.update()

    def update(self) -> None:
        e, k, b = self.num_experts.value, min(self.top_k.value, self.num_experts.value), self.batch.value
        self.table = traffic_table(e, k, d_model=self.d_model, d_ff=self.d_ff)
        i = self.table.batch_sizes.index(b)
        distinct = expected_distinct_experts(e, k, b)
        rows = [("experts touched at B", f"{distinct:.2f} of {e}"),
                ("weights read (bf16)", f"{self.table.moe_mb[i]:,.0f} MB "
                 f"(dense of the same total: {self.table.dense_total_mb[i]:,.0f} MB)"),
                ("FLOPs", f"{self.table.moe_gflops[i]:,.1f} GFLOPs "
                 f"(dense of the same total: {self.table.dense_total_gflops[i]:,.1f})")]
        self.summary.value = "<table>" + "".join(
            f"<tr><td>{html.escape(a)}</td><td><b>{html.escape(v)}</b></td></tr>"
            for a, v in rows) + "</table>"
        self.figure = traffic_figure(self.table)
        show_in_output(self.output, self.figure)
