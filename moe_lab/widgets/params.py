"""The parameter calculator of lesson 00: sliders for E, K, D, F and L -> total vs active
parameters, FLOPs per token and memory, with buttons that load Mixtral 8x7B and Qwen3-30B-A3B.
Lesson 08 adds two settings: fine-grained experts (cut each expert into m, route to m * K) and
shared experts (S of them always on, taken out of the routed budget), both by
:func:`moe_lab.systems.params.fine_grained`."""

from __future__ import annotations

import html
import math

import ipywidgets as widgets

from moe_lab.systems.params import (
    MIXTRAL_8X7B,
    QWEN3_30B_A3B,
    TransformerConfig,
    count_parameters,
    fine_grained_config,
)
from moe_lab.viz.params import params_figure, params_summary
from moe_lab.widgets._output import StaticFallback, show_in_output

_HEAD_DIM = 128
_GRANULARITIES = (1, 2, 4, 8)  # divide every d_ff the slider offers (multiples of 128)


def config_from_sliders(num_experts: int, top_k: int, d_model: int, d_ff: int, num_layers: int,
                        *, vocab_size: int = MIXTRAL_8X7B.vocab_size, granularity: int = 1,
                        num_shared_experts: int = 0,
                        preset: TransformerConfig | None = None) -> TransformerConfig:
    """A Mixtral-shaped config for the slider values: heads of width 128 (or D when D < 128),
    a quarter as many KV heads (grouped-query attention), top_k clamped to [1, E]; then the
    experts cut into ``granularity`` finer ones with ``num_shared_experts`` of them shared
    (clamped below granularity * K). A ``preset`` of the same D lends its vocabulary and heads
    (Qwen3's query heads are wider than D)."""
    top_k = min(max(1, top_k), num_experts)
    if preset is not None and preset.d_model == d_model:
        vocab_size, head_dim = preset.vocab_size, preset.head_dim
        num_heads, num_kv_heads = preset.num_heads, preset.num_kv_heads
    else:
        vocab_size = preset.vocab_size if preset is not None else vocab_size
        head_dim = min(_HEAD_DIM, d_model)
        num_heads = max(1, d_model // head_dim)
        # H_kv divides H: the largest divisor of H not above H / 4
        num_kv_heads = math.gcd(num_heads, max(1, num_heads // 4))
    config = TransformerConfig(vocab_size=vocab_size, d_model=d_model, num_layers=num_layers,
                               d_ff=d_ff, num_heads=num_heads, num_kv_heads=num_kv_heads,
                               head_dim=head_dim, num_experts=num_experts, top_k=top_k)
    if granularity == 1 and num_shared_experts == 0:
        return config
    return fine_grained_config(config, granularity,
                               min(num_shared_experts, granularity * top_k - 1))


def _summary_html(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td><b>{html.escape(v)}</b></td></tr>"
                    for k, v in rows)
    return f"<table>{cells}</table>"


class ParamsCalculator(StaticFallback, widgets.VBox):
    """Total vs active parameters of an MoE transformer, live. ``config`` and ``rows`` hold the
    last values drawn, ``figure`` the last figure (a ``go.Figure``), which ``output`` shows."""

    def __init__(self, context_length: int = 4096) -> None:
        self.context_length = context_length
        style = {"description_width": "110px"}
        layout = widgets.Layout(width="480px")

        def slider(description: str, lo: int, hi: int, step: int, value: int) -> widgets.IntSlider:
            return widgets.IntSlider(value=value, min=lo, max=hi, step=step,
                                     description=description, style=style, layout=layout,
                                     continuous_update=False)

        m = MIXTRAL_8X7B
        self.num_experts = slider("experts E", 1, 256, 1, m.num_experts)
        self.top_k = slider("per token K", 1, m.num_experts, 1, m.top_k)
        self.d_model = slider("d_model D", 128, 16384, 128, m.d_model)
        self.d_ff = slider("d_ff F", 128, 65536, 128, m.d_ff)
        self.num_layers = slider("layers L", 1, 128, 1, m.num_layers)
        # lesson 08: E, K, F above describe the coarse experts; these cut them finer
        self.granularity = widgets.SelectionSlider(
            options=_GRANULARITIES, value=1, description="fine-grained m", style=style,
            layout=layout, continuous_update=False)
        self.num_shared = slider("shared S", 0, 8, 1, 0)
        self.mixtral = widgets.Button(description="Mixtral 8x7B")
        self.qwen3 = widgets.Button(description="Qwen3-30B-A3B")
        self.preset: TransformerConfig = MIXTRAL_8X7B
        self.summary = widgets.HTML()
        self.output = widgets.Output()  # shows the figure as plotly JSON (no FigureWidget)
        self.output.add_class("moe-params-plot")
        self._quiet = False
        for control in (self.num_experts, self.top_k, self.d_model, self.d_ff, self.num_layers,
                        self.granularity, self.num_shared):
            control.observe(self._on_change, names="value")
        self.mixtral.on_click(lambda _: self.load(MIXTRAL_8X7B))
        self.qwen3.on_click(lambda _: self.load(QWEN3_30B_A3B))
        super().__init__([self.num_experts, self.top_k, self.d_model, self.d_ff,
                          self.num_layers, self.granularity, self.num_shared,
                          widgets.HBox([self.mixtral, self.qwen3]), self.summary, self.output])
        self.update()

    def load(self, config: TransformerConfig) -> None:
        """Set every slider from ``config`` (coarse experts: m = 1, S = 0) and redraw once; its
        vocabulary and heads hold while D stays."""
        if config.num_shared_experts:
            raise ValueError("load takes a config without shared experts (set S with its slider)")
        self.preset = config
        self._quiet = True
        try:
            self.granularity.value = 1
            self.num_shared.value = 0
            self.num_experts.value = config.num_experts  # _on_change sets top_k.max
            self.top_k.value = config.top_k
            self.d_model.value = config.d_model
            self.d_ff.value = config.d_ff
            self.num_layers.value = config.num_layers
        finally:
            self._quiet = False
        self.update()

    def _on_change(self, change: dict) -> None:
        if change["owner"] is self.num_experts:
            quiet, self._quiet = self._quiet, True  # clamping K fires its own change: one redraw
            try:
                self.top_k.max = self.num_experts.value  # ipywidgets clamps the value
            finally:
                self._quiet = quiet
        if not self._quiet:
            self.update()

    def update(self) -> None:
        self.config = config_from_sliders(self.num_experts.value, self.top_k.value,
                                          self.d_model.value, self.d_ff.value,
                                          self.num_layers.value,
                                          granularity=self.granularity.value,
                                          num_shared_experts=self.num_shared.value,
                                          preset=self.preset)
        self.rows = params_summary(self.config, self.context_length)
        self.summary.value = _summary_html(self.rows)
        self.figure = params_figure(count_parameters(self.config))  # a go.Figure
        show_in_output(self.output, self.figure)
