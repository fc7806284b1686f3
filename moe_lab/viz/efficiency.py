"""Lesson 06 figures: timings as shapes grow, padding waste, where the time and memory go.

Pure functions turn bench results (:mod:`moe_lab.systems.bench`, live or from a recorded JSON), a routing
or a torch.profiler run into small tables (tested); the ``*_figure`` functions only draw them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import plotly.graph_objects as go
import torch

from moe_lab.validation import check_choice

RECORDED_GPU_RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench_gpu.json"
_STRATEGY_COLORS = {"dense_limit": "#7f7f7f", "dense": "#9467bd", "loop": "#d62728",
                   "padded": "#ff7f0e", "sorted": "#2ca02c"}


@dataclass(frozen=True)
class BenchRow:
    """One timing: shape (T tokens, D, F, E, K), strategy, median milliseconds of forward +
    backward, and the ratio to the dense limit (one FFN over N*K tokens) at the same shape."""

    tokens: int
    d_model: int
    d_ff: int
    num_experts: int
    top_k: int
    strategy: str
    median_ms: float
    ratio_to_dense_limit: float
    spread: float = 1.0  # upper / lower quartile of the repeats (1.0 when not recorded)

    @property
    def shape(self) -> str:
        return (f"T={self.tokens} D={self.d_model} F={self.d_ff} E={self.num_experts} "
                f"K={self.top_k}")


def bench_rows(results: Iterable[object]) -> list[BenchRow]:
    """Flatten :class:`moe_lab.systems.bench.BenchResult` objects or the dicts of a bench JSON."""
    rows = []
    for result in results:
        if isinstance(result, dict):
            row = {f.name: result[f.name] for f in fields(BenchRow) if f.name != "spread"}
            row["spread"] = float(result.get("spread", 1.0))
        elif hasattr(result, "shape") and hasattr(result, "strategy"):
            shape = result.shape
            row = {"tokens": shape.tokens, "d_model": shape.d_model, "d_ff": shape.d_ff,
                   "num_experts": shape.num_experts, "top_k": shape.top_k,
                   "strategy": result.strategy, "median_ms": result.median_ms,
                   "ratio_to_dense_limit": result.ratio_to_dense_limit,
                   "spread": float(getattr(result, "spread", 1.0))}
        else:
            raise TypeError(f"results must hold BenchResult objects or dicts, "
                            f"got {type(result).__name__}")
        rows.append(BenchRow(**row))
    return rows


@dataclass(frozen=True)
class RecordedBench:
    """A bench JSON written by ``python -m moe_lab.bench --json PATH``."""

    environment: dict[str, str]
    command: str
    rows: list[BenchRow]


def load_recorded_bench(path: str | Path = RECORDED_GPU_RESULTS) -> RecordedBench | None:
    """The recorded results at ``path``, or None when no such file exists."""
    path = Path(path)
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    return RecordedBench(environment=dict(payload.get("environment", {})),
                         command=str(payload.get("command", "")),
                         rows=bench_rows(payload["results"]))


def ratio_table(rows: Sequence[BenchRow]) -> list[dict[str, object]]:
    """One dict per shape: its strategies' ratios to the dense limit and sorted / loop."""
    table: dict[tuple[int, ...], dict[str, object]] = {}
    for row in rows:
        key = (row.tokens, row.d_model, row.d_ff, row.num_experts, row.top_k)
        entry = table.setdefault(key, {"shape": "T={} D={} F={} E={} K={}".format(*key)})
        entry[row.strategy] = round(row.ratio_to_dense_limit, 2)
        entry[f"{row.strategy}_ms"] = row.median_ms
    for entry in table.values():
        if "sorted_ms" in entry and "loop_ms" in entry:
            entry["sorted/loop"] = round(entry["sorted_ms"] / entry["loop_ms"], 2)
    return [{k: v for k, v in e.items() if not k.endswith("_ms")} for e in table.values()]


# A timing is not a finding when its middle repeats disagree this much (upper / lower quartile),
# or when a strategy beats the dense limit, which does the same matmul FLOPs with none of the
# routing work.
_SPREAD_LIMIT = 1.5
_FASTER_THAN_LIMIT = 0.9


def timing_flags(rows: Sequence[BenchRow]) -> dict[tuple[str, str], str]:
    """(shape, strategy) -> why that ratio is not to be read as a finding (unreliable timing).

    A ratio is flagged when the strategy's repeats or the dense limit's at that shape varied
    more than :data:`_SPREAD_LIMIT` times (the machine was busy), or when it is below
    :data:`_FASTER_THAN_LIMIT` (faster than the same FLOPs without routing: the limit was slowed).
    """
    limits = {r.shape: r for r in rows if r.strategy == "dense_limit"}
    flags = {}
    for row in rows:
        if row.strategy == "dense_limit":
            continue
        limit = limits.get(row.shape)
        if row.spread > _SPREAD_LIMIT:
            flags[row.shape, row.strategy] = (f"its middle repeats differ {row.spread:.1f}x: "
                                              "the machine was busy")
        elif limit is not None and limit.spread > _SPREAD_LIMIT:
            flags[row.shape, row.strategy] = (f"the dense limit's middle repeats differ "
                                              f"{limit.spread:.1f}x: the machine was busy")
        elif row.ratio_to_dense_limit < _FASTER_THAN_LIMIT:
            flags[row.shape, row.strategy] = ("faster than the dense limit, which does the same "
                                              "FLOPs with less work: the limit's timing was slowed")
    return flags


def bench_findings(rows: Sequence[BenchRow]) -> list[str]:
    """What these timings say, in sentences built from them: sorted against loop at each shape
    where both of their timings are steady (the dense limit does not enter that ratio), the
    unreliable ratios to the dense limit named (not read), and a tally."""
    flags = timing_flags(rows)
    by_shape: dict[str, dict[str, BenchRow]] = {}
    for row in rows:
        by_shape.setdefault(row.shape, {})[row.strategy] = row
    lines, faster, compared = [], 0, 0
    for shape, strategies in by_shape.items():
        sorted_row, loop_row = strategies.get("sorted"), strategies.get("loop")
        if sorted_row is None or loop_row is None:
            continue
        if max(sorted_row.spread, loop_row.spread) > _SPREAD_LIMIT:
            lines.append(f"{shape}: sorted vs loop not compared (unreliable timing)")
            continue
        ratio = sorted_row.median_ms / loop_row.median_ms
        compared += 1
        faster += ratio < 1
        lines.append(f"{shape}: sorted takes {ratio:.2f}x loop's time "
                     f"({'faster' if ratio < 1 else 'slower'})")
    for (shape, strategy), reason in flags.items():
        ratio = by_shape[shape][strategy].ratio_to_dense_limit
        lines.append(f"not a finding: {shape} {strategy} at {ratio:.2f}x the dense limit ({reason})")
    if compared:
        lines.append(f"sorted was faster than loop at {faster} of {compared} shapes with steady "
                     "timings")
    return lines


def log_axis(values: Iterable[float], title: str) -> dict[str, object]:
    """A readable log axis: ticks at 1, 2 and 5 times each power of ten that the values span,
    labelled in plain numbers, at a legible size (plotly's own log ticks are small and crowded)."""
    positive = [float(v) for v in values if v is not None and v > 0 and math.isfinite(v)]
    axis: dict[str, object] = {"title": title, "type": "log", "tickfont": {"size": 13}}
    if not positive:
        return axis
    low, high = min(positive), max(positive)
    ticks = [m * 10.0**p for p in range(math.floor(math.log10(low)) - 1,
                                        math.ceil(math.log10(high)) + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if low / 2.5 <= t <= high * 2.5]
    axis.update(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    return axis


def scaling_figure(rows: Sequence[BenchRow], *, x: str = "tokens", y: str = "median_ms",
                   title: str = "") -> go.Figure:
    """One line per strategy: ``y`` (median_ms or ratio_to_dense_limit) against ``x``
    (tokens or num_experts), log axes."""
    check_choice("x", x, ("tokens", "num_experts", "top_k"))
    check_choice("y", y, ("median_ms", "ratio_to_dense_limit"))
    figure = go.Figure()
    for strategy in dict.fromkeys(row.strategy for row in rows):
        points = sorted((getattr(r, x), getattr(r, y)) for r in rows if r.strategy == strategy)
        figure.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                           mode="lines+markers", name=strategy,
                           line=dict(color=_STRATEGY_COLORS.get(strategy)))
    labels = {"tokens": "tokens N", "num_experts": "experts E", "top_k": "experts per token K",
              "median_ms": "forward + backward (ms, median)",
              "ratio_to_dense_limit": "time / dense limit"}
    figure.update_layout(title=title, xaxis=log_axis((getattr(r, x) for r in rows), labels[x]),
                         yaxis=log_axis((getattr(r, y) for r in rows), labels[y]), height=380,
                         margin=dict(l=60, r=20, t=50, b=50))
    return figure


def ratio_figure(rows: Sequence[BenchRow], title: str = "") -> go.Figure:
    """Grouped bars: each strategy's time / dense limit, one group per shape (1 = free routing).
    A ratio :func:`timing_flags` flags is drawn hatched and faint, its reason in the hover."""
    figure = go.Figure()
    flags = timing_flags(rows)
    shapes = list(dict.fromkeys(r.shape for r in rows))
    for strategy in dict.fromkeys(r.strategy for r in rows if r.strategy != "dense_limit"):
        by_shape = {r.shape: r.ratio_to_dense_limit for r in rows if r.strategy == strategy}
        reasons = [flags.get((s, strategy), "") for s in shapes]
        figure.add_bar(x=shapes, y=[by_shape.get(s) for s in shapes], name=strategy,
                       marker=dict(color=_STRATEGY_COLORS.get(strategy),
                                   opacity=[0.35 if r else 1.0 for r in reasons],
                                   pattern=dict(shape=["/" if r else "" for r in reasons])),
                       hovertext=[f"unreliable: {r}" if r else "" for r in reasons],
                       hovertemplate="%{x}: %{y:.2f}x the dense limit<br>%{hovertext}"
                                     "<extra>" + strategy + "</extra>")
    figure.add_hline(y=1.0, line_dash="dot")
    # the label by hand: on a log axis an annotation's y is log10 of the value (add_hline's own
    # label landed at 10)
    figure.add_annotation(text="dense limit", x=1.0, xref="paper", xanchor="right", y=0.0,
                          yref="y", yanchor="bottom", showarrow=False)
    if flags:
        title = f"{title}<br><sup>hatched: unreliable timing (busy machine), not a finding</sup>"
    figure.update_layout(barmode="group", title=title, height=400,
                         yaxis=log_axis((r.ratio_to_dense_limit for r in rows), "time / dense limit"),
                         margin=dict(l=60, r=20, t=70, b=80))
    return figure


@dataclass(frozen=True)
class PaddingTable:
    """A capacity-padded (E, C, D) buffer: slots = E*C rows, used = kept assignments."""

    tokens_per_expert: list[int]
    capacity: int
    slots: int
    used: int
    dropped: int

    @property
    def waste(self) -> float:
        """Share of the E*C rows that hold padding (computed, then thrown away)."""
        return 1 - self.used / self.slots if self.slots else 0.0


def padding_table(demand: torch.Tensor, capacity: int) -> PaddingTable:
    """Padding of a (E, C, D) buffer for ``demand`` (E,) assignments per expert."""
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    kept = demand.clamp(max=capacity)  # (E,)
    return PaddingTable(tokens_per_expert=demand.tolist(), capacity=int(capacity),
                        slots=demand.shape[0] * int(capacity), used=int(kept.sum()),
                        dropped=int((demand - kept).sum()))


def padding_figure(table: PaddingTable, title: str = "capacity-padded buffer") -> go.Figure:
    """Bars: rows used, padding and dropped per expert, with the capacity line."""
    experts = list(range(len(table.tokens_per_expert)))
    used = [min(d, table.capacity) for d in table.tokens_per_expert]
    figure = go.Figure()
    figure.add_bar(x=experts, y=used, name="tokens (computed)", marker_color="#2ca02c")
    figure.add_bar(x=experts, y=[table.capacity - u for u in used], name="padding (wasted)",
                   marker_color="#c7c7c7")
    figure.add_bar(x=experts, y=[max(d - table.capacity, 0) for d in table.tokens_per_expert],
                   name="dropped", marker_color="#d62728")
    figure.update_layout(barmode="stack", height=340, margin=dict(l=60, r=20, t=50, b=50),
                         title=f"{title}: C = {table.capacity}, {100 * table.waste:.0f} % of "
                               f"{table.slots} rows are padding, {table.dropped} dropped",
                         xaxis=dict(title="expert", tickmode="array", tickvals=experts),
                         yaxis=dict(title="rows"))
    return figure


@dataclass(frozen=True)
class ProfileSummary:
    """From one torch.profiler run: calls of chosen ops, the top ops by self CPU time, and the
    bytes allocated (the sum of every allocation during the run, not the peak)."""

    op_calls: dict[str, int]
    top_ops: list[tuple[str, int, float]]  # (name, calls, self CPU ms)
    allocated_bytes: int


def profile_summary(key_averages: Iterable[object], ops: Sequence[str],
                    top: int = 8) -> ProfileSummary:
    """Summarise ``prof.key_averages()``: ``ops`` call counts, ``top`` ops by self CPU time."""
    events = list(key_averages)
    calls = {op: 0 for op in ops}
    for event in events:
        if event.key in calls:
            calls[event.key] += event.count
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    allocated = sum(max(int(getattr(e, "self_cpu_memory_usage", 0)), 0) for e in events)
    return ProfileSummary(op_calls=calls,
                          top_ops=[(e.key, e.count, e.self_cpu_time_total / 1e3) for e in ranked],
                          allocated_bytes=allocated)


def profile_figure(summaries: dict[str, ProfileSummary], title: str = "") -> go.Figure:
    """Grouped bars: calls per op for each strategy (launches on a GPU)."""
    figure = go.Figure()
    for name, summary in summaries.items():
        figure.add_bar(x=list(summary.op_calls), y=list(summary.op_calls.values()), name=name,
                       marker_color=_STRATEGY_COLORS.get(name))
    figure.update_layout(barmode="group", title=title, height=340,
                         yaxis=dict(title="calls in one forward + backward"),
                         margin=dict(l=60, r=20, t=50, b=50))
    return figure


def memory_figure(allocated_mb: dict[str, float], title: str = "") -> go.Figure:
    """Bars: megabytes allocated per strategy in one forward + backward."""
    names = list(allocated_mb)
    figure = go.Figure(go.Bar(x=names, y=[allocated_mb[n] for n in names],
                              marker_color=[_STRATEGY_COLORS.get(n, "#1f77b4") for n in names]))
    figure.update_layout(title=title, height=320, yaxis=dict(title="MB allocated"),
                         margin=dict(l=60, r=20, t=50, b=50))
    return figure


def profile_reading(summaries: dict[str, ProfileSummary], num_experts: int) -> list[str]:
    """The profiler's counts in words, from the counts: which grouped-GEMM path ``sorted`` ran
    (torch's ``F.grouped_mm``, or moe_lab's segment loop, one ``mm`` per expert segment, where
    :func:`moe_lab.grouped_gemm.path_for` finds no kernel for this torch, device, dtype or
    width: e.g. a CPU with torch < 2.10, or widths not 16-byte aligned), and the per-expert
    work of ``loop``."""
    lines = []
    if "sorted" in summaries:
        calls = summaries["sorted"].op_calls
        grouped, mm = calls.get("aten::_grouped_mm", 0), calls.get("aten::mm", 0)
        if grouped:
            lines.append(f"sorted ran torch's grouped GEMM (F.grouped_mm): {grouped} _grouped_mm "
                         f"calls in one forward + backward, whatever E (on a CPU each is a C++ "
                         f"loop over the groups, whose {mm} mm calls the profiler also counts)")
        else:
            lines.append(f"sorted ran the segment loop, one mm per expert segment (no grouped-GEMM "
                         f"kernel for this torch, device, dtype or width): {mm} mm calls, "
                         f"{mm / num_experts:.1f} per expert")
    if "loop" in summaries:
        calls = summaries["loop"].op_calls
        lines.append(f"loop: {calls.get('aten::mm', 0) / num_experts:.1f} mm and "
                     f"{calls.get('aten::nonzero', 0) / num_experts:.1f} nonzero (a host sync on a "
                     f"GPU) per expert, E = {num_experts}")
    return lines


def memory_order(allocated_mb: dict[str, float]) -> str:
    """The strategies from least to most allocated, with their megabytes (measured, not assumed:
    which keeps least depends on the shape, the padding and the allocator)."""
    ranked = sorted(allocated_mb.items(), key=lambda item: item[1])
    return "least allocated first: " + ", ".join(f"{name} {mb:.1f} MB" for name, mb in ranked)
