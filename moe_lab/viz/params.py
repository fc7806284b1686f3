"""Total vs active parameters, drawn. Lesson 00.

:func:`params_summary` is the table (plain strings, tested); :func:`params_figure` draws the
component breakdown of :func:`moe_lab.systems.params.count_parameters` as grouped bars.
"""

from __future__ import annotations

import plotly.graph_objects as go

from moe_lab.systems.params import (
    ParamCount,
    TransformerConfig,
    count_parameters,
    dense_equivalent,
    flops_per_token,
)

_BYTES_PER_BF16 = 2


def format_count(value: float) -> str:
    """1234 -> '1.23 K', 46.7e9 -> '46.70 B' (the units papers use for parameters)."""
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f}"


def params_summary(config: TransformerConfig, context_length: int = 4096) -> list[tuple[str, str]]:
    """(quantity, value) rows: what the model stores, what one token runs, and what it costs."""
    counts = count_parameters(config)
    flops = flops_per_token(config, context_length)
    dense = count_parameters(dense_equivalent(config))
    return [
        ("experts (E) / per token (K)", f"{config.num_experts} / {config.top_k}"
         + (f" + {config.num_shared_experts} shared" if config.num_shared_experts else "")),
        ("total parameters", format_count(counts.total)),
        ("active parameters per token", format_count(counts.active)),
        ("active / total", f"{100 * counts.active_fraction:.1f} %"),
        ("weights in bf16 (memory)", f"{counts.total * _BYTES_PER_BF16 / 2**30:.1f} GiB"),
        (f"forward FLOPs per token (context {context_length})", format_count(flops.forward)),
        ("training FLOPs per token (3x forward)", format_count(flops.training)),
        ("dense model with the same active params", format_count(dense.total)),
    ]


def params_figure(counts: ParamCount, title: str = "parameters by component") -> go.Figure:
    """Grouped bars, billions of parameters: stored (total) vs run per token (active)."""
    names = [c.name for c in counts.components]
    figure = go.Figure([
        go.Bar(name="total (stored)", x=names, y=[c.total / 1e9 for c in counts.components]),
        go.Bar(name="active (per token)", x=names,
               y=[c.active / 1e9 for c in counts.components]),
    ])
    figure.update_layout(
        title=f"{title}: total {format_count(counts.total)}, active {format_count(counts.active)}",
        barmode="group", yaxis_title="parameters (billions)", height=340,
        margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=1.0, x=0.5,
                                                         xanchor="center", yanchor="bottom"))
    return figure
