"""Figures of MoE at inference. Lesson 10.

:func:`traffic_table` is the plain table the widget and :func:`traffic_figure` draw (tested): for
each batch size B, the expected distinct experts, the weight bytes read and the FLOPs of one MoE
layer, against a dense FFN of the same total parameters. :func:`hit_rate_figure` draws hit rate
against cache size per policy; :func:`timing_figure` draws the measured times beside the
roofline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from moe_lab.inference.timing import LAYERS, TimingRow
from moe_lab.inference.traffic import moe_step_cost

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class TrafficTable:
    """Per batch size: distinct experts touched, MB of weights read, GFLOPs (MoE), and the MB
    and GFLOPs of the dense FFN with the MoE's total parameters."""

    batch_sizes: list[int]
    distinct: list[float]
    moe_mb: list[float]
    moe_gflops: list[float]
    dense_total_mb: list[float]
    dense_total_gflops: list[float]
    num_experts: int
    top_k: int


def traffic_table(num_experts: int, top_k: int, *, d_model: int = 4096, d_ff: int = 14336,
                  bytes_per_param: float = 2.0,
                  batch_sizes: Sequence[int] = BATCH_SIZES) -> TrafficTable:
    """The table for E experts, K per token, of width (D, F) (default: a Mixtral-8x7B layer in
    bf16), uniform routing."""
    moe = [moe_step_cost(b, d_model, d_ff, num_experts, top_k, bytes_per_param=bytes_per_param)
           for b in batch_sizes]
    dense = [moe_step_cost(b, d_model, num_experts * d_ff, 1, 1, bytes_per_param=bytes_per_param)
             for b in batch_sizes]
    return TrafficTable(list(batch_sizes), [round(c.experts_touched, 3) for c in moe],
                        [round(c.bytes_read / 1e6, 1) for c in moe],
                        [round(c.flops / 1e9, 3) for c in moe],
                        [round(c.bytes_read / 1e6, 1) for c in dense],
                        [round(c.flops / 1e9, 3) for c in dense], num_experts, top_k)


def traffic_figure(table: TrafficTable, title: str = "") -> go.Figure:
    """Two panels side by side over batch size (log axis): distinct experts touched (with E
    dashed), and weights read per FLOP, MoE against the dense FFN of the same total size."""
    figure = go.Figure()
    x = table.batch_sizes
    figure.add_trace(go.Scatter(x=x, y=table.distinct, mode="lines+markers",
                                name="experts touched (expected)", yaxis="y"))
    figure.add_trace(go.Scatter(x=x, y=[table.num_experts] * len(x), mode="lines",
                                line=dict(dash="dash"), name=f"all E = {table.num_experts}",
                                yaxis="y"))
    moe_intensity = [f / (m / 1e3) if m else 0 for f, m in zip(table.moe_gflops, table.moe_mb,
                                                               strict=True)]
    dense_intensity = [f / (m / 1e3) if m else 0 for f, m in zip(table.dense_total_gflops,
                                                                 table.dense_total_mb, strict=True)]
    figure.add_trace(go.Scatter(x=x, y=moe_intensity, mode="lines+markers", xaxis="x2",
                                yaxis="y2", name="MoE FLOPs per byte"))
    figure.add_trace(go.Scatter(x=x, y=dense_intensity, mode="lines+markers", xaxis="x2",
                                yaxis="y2", name="dense (same total) FLOPs per byte"))
    figure.update_layout(
        title=title or f"E = {table.num_experts}, K = {table.top_k}: what a batch of B tokens "
                       "touches", height=360, margin=dict(l=50, r=20, t=50, b=40),
        xaxis=dict(type="log", title="batch size B (tokens)", domain=[0, 0.45]),
        yaxis=dict(title="distinct experts", rangemode="tozero"),
        xaxis2=dict(type="log", title="batch size B (tokens)", domain=[0.55, 1]),
        yaxis2=dict(type="log", title="FLOPs per byte of weights", anchor="x2"),
        legend=dict(orientation="h", y=-0.25))
    return figure


def hit_rate_figure(hit_rates: Mapping[str, Sequence[float]], cache_sizes: Sequence[int],
                    title: str = "") -> go.Figure:
    """Hit rate (%) against cache size, one line per policy (``hit_rates[policy]``)."""
    figure = go.Figure([go.Scatter(x=list(cache_sizes), y=[100 * h for h in rates],
                                   mode="lines+markers", name=policy)
                        for policy, rates in hit_rates.items()])
    figure.update_layout(title=title, height=340, margin=dict(l=50, r=20, t=50, b=40),
                         xaxis_title="experts the cache holds (per layer)",
                         yaxis=dict(title="hit rate (%)", range=[0, 100]))
    return figure


def timing_figure(rows: Sequence[TimingRow], title: str = "") -> go.Figure:
    """Measured median time (error bars: quartiles) and the roofline bound (dashed) of each
    layer against batch size, log-log."""
    figure = go.Figure()
    for layer in LAYERS:
        mine = [r for r in rows if r.layer == layer]
        x = [r.num_tokens for r in mine]
        figure.add_trace(go.Scatter(
            x=x, y=[r.spread.median for r in mine], mode="lines+markers", name=f"{layer}",
            error_y=dict(type="data", symmetric=False,
                         array=[r.spread.q3 - r.spread.median for r in mine],
                         arrayminus=[r.spread.median - r.spread.q1 for r in mine])))
        figure.add_trace(go.Scatter(x=x, y=[r.roofline_ms for r in mine], mode="lines",
                                    line=dict(dash="dot"), name=f"{layer}: roofline"))
    figure.update_layout(title=title, height=380, margin=dict(l=50, r=20, t=50, b=40),
                         xaxis=dict(type="log", title="batch size B (tokens)"),
                         yaxis=dict(type="log", title="ms per forward"))
    return figure
