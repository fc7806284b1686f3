"""Lesson 06 on a busy machine (issue 15): each timing's spread is measured, an unreliable ratio
is flagged (not plotted as a finding), the conclusions are worded from the numbers, the profiler's
native "USDT" lines are silenced, the grouped-GEMM path that ran is named, log ticks are legible."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from moe_lab.systems.bench import (
    BenchShape,
    interleaved_samples,
    native_stderr_silenced,
    quartile_spread,
    run_bench,
)
from moe_lab.viz.efficiency import (
    BenchRow,
    ProfileSummary,
    bench_findings,
    bench_rows,
    log_axis,
    memory_order,
    profile_reading,
    ratio_figure,
    scaling_figure,
    timing_flags,
)

A, B = (64, 8, 16, 4, 2), (128, 8, 16, 4, 2)


def _row(shape, strategy, ms, ratio, spread=1.1):
    return BenchRow(*shape, strategy, ms, ratio, spread)


STEADY = [_row(A, "dense_limit", 1.0, 1.0), _row(A, "loop", 4.0, 4.0), _row(A, "sorted", 2.0, 2.0),
          _row(A, "padded", 3.0, 3.0)]


def test_steady_timings_are_findings_worded_from_the_numbers():
    assert timing_flags(STEADY) == {}
    lines = bench_findings(STEADY)
    assert lines == ["T=64 D=8 F=16 E=4 K=2: sorted takes 0.50x loop's time (faster)",
                     "sorted was faster than loop at 1 of 1 shapes with steady timings"]
    slower = [_row(A, "dense_limit", 1.0, 1.0), _row(A, "loop", 2.0, 2.0),
              _row(A, "sorted", 7.6, 7.6)]
    assert "sorted takes 3.80x loop's time (slower)" in bench_findings(slower)[0]
    assert bench_findings(slower)[-1] == "sorted was faster than loop at 0 of 1 shapes with steady timings"


def test_busy_or_impossible_ratios_are_flagged_not_read():
    busy = [_row(B, "dense_limit", 1.0, 1.0), _row(B, "padded", 261.0, 261.0, spread=3.4),
            _row(B, "loop", 0.5, 0.5), _row(B, "sorted", 2.0, 2.0, spread=1.6)]
    flags = timing_flags(STEADY + busy)
    assert set(flags) == {("T=128 D=8 F=16 E=4 K=2", s) for s in ("padded", "loop", "sorted")}
    assert "differ 3.4x" in flags["T=128 D=8 F=16 E=4 K=2", "padded"]
    assert "faster than the dense limit" in flags["T=128 D=8 F=16 E=4 K=2", "loop"]
    lines = bench_findings(STEADY + busy)
    assert "T=128 D=8 F=16 E=4 K=2: sorted vs loop not compared (unreliable timing)" in lines
    assert any(line.startswith("not a finding: T=128 D=8 F=16 E=4 K=2 padded at 261.00x")
               for line in lines)
    assert lines[-1] == "sorted was faster than loop at 1 of 1 shapes with steady timings"
    # a busy dense limit makes every ratio to it unreliable, but not sorted / loop
    noisy_limit = [_row(B, "dense_limit", 1.0, 1.0, spread=2.5), _row(B, "sorted", 2.0, 2.0),
                   _row(B, "loop", 3.0, 3.0)]
    assert "dense limit's middle repeats differ 2.5x" in \
        timing_flags(noisy_limit)["T=128 D=8 F=16 E=4 K=2", "sorted"]
    assert bench_findings(noisy_limit)[0] == \
        "T=128 D=8 F=16 E=4 K=2: sorted takes 0.67x loop's time (faster)"


def test_ratio_figure_hatches_flagged_bars():
    busy = [_row(B, "dense_limit", 1.0, 1.0), _row(B, "padded", 261.0, 261.0, spread=3.4)]
    figure = ratio_figure(STEADY + busy, title="t")
    padded = next(t for t in figure.data if t.name == "padded")
    assert list(padded.marker.pattern.shape) == ["", "/"]
    assert list(padded.marker.opacity) == [1.0, 0.35]
    assert "unreliable" in figure.layout.title.text
    assert "unreliable" not in ratio_figure(STEADY, title="t").layout.title.text
    [label] = figure.layout.annotations
    assert label.text == "dense limit" and label.y == 0.0  # log10(1): on the line, not at 10


def test_log_axis_ticks_are_few_and_plain():
    axis = log_axis([0.8, 3.0, 261.0], "ratio")
    assert axis["type"] == "log" and axis["tickfont"]["size"] >= 12
    assert axis["ticktext"] == [f"{t:g}" for t in axis["tickvals"]]
    assert {1, 2, 5, 10, 100, 200} <= set(axis["tickvals"]) and len(axis["tickvals"]) <= 12
    assert all(0.8 / 2.5 <= t <= 261 * 2.5 for t in axis["tickvals"])
    assert "tickvals" not in log_axis([], "empty") and "tickvals" not in log_axis([0, None], "x")
    figure = scaling_figure(STEADY, x="tokens", y="median_ms")
    assert list(figure.layout.yaxis.tickvals) == log_axis([1.0, 4.0, 2.0, 3.0], "")["tickvals"]


def test_run_bench_measures_spread_and_reads_old_json():
    results = run_bench([BenchShape(16, 8, 16, 2, 1)], ("sorted",), device="cpu", repeats=3)
    assert all(r.spread >= 1.0 for r in results)
    assert quartile_spread([1.0, 1.0, 1.0, 1.0, 9.0]) == 1.0  # one stray repeat does not count
    assert quartile_spread([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0 and quartile_spread([3.0]) == 1.0
    rows = bench_rows(results)
    assert [r.spread for r in rows] == [r.spread for r in results]
    old = {"tokens": 1, "d_model": 2, "d_ff": 3, "num_experts": 4, "top_k": 1,
           "strategy": "loop", "median_ms": 1.0, "ratio_to_dense_limit": 2.0}  # no "spread" key
    assert bench_rows([old])[0].spread == 1.0
    samples = interleaved_samples({"a": lambda: None}, torch.device("cpu"), repeats=4, warmup=0)
    assert len(samples["a"]) == 4
    with pytest.raises(ValueError, match="repeats"):
        interleaved_samples({"a": lambda: None}, torch.device("cpu"), repeats=0, warmup=0)


def test_profiler_usdt_lines_are_silenced():
    code = textwrap.dedent("""
        import os, torch
        from torch.profiler import ProfilerActivity, profile
        from moe_lab.systems.bench import native_stderr_silenced
        with native_stderr_silenced():
            os.write(2, b"inside\\n")
            with profile(activities=[ProfilerActivity.CPU]):
                torch.ones(3).sum()
        os.write(2, b"after\\n")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert "USDT" not in result.stderr and "profiler_st" not in result.stderr
    assert "inside" not in result.stderr and "after" in result.stderr  # fd 2 restored
    with native_stderr_silenced():
        pass  # nests and returns cleanly in the test process too


def _summary(**calls):
    return ProfileSummary(op_calls=calls, top_ops=[], allocated_bytes=0)


def test_profile_reading_names_the_path_that_ran():
    with_grouped = {"sorted": _summary(**{"aten::_grouped_mm": 9, "aten::mm": 72}),
                    "loop": _summary(**{"aten::mm": 72, "aten::nonzero": 8})}
    lines = profile_reading(with_grouped, num_experts=8)
    assert lines[0].startswith("sorted ran torch's grouped GEMM (F.grouped_mm): 9 _grouped_mm")
    assert lines[1] == "loop: 9.0 mm and 1.0 nonzero (a host sync on a GPU) per expert, E = 8"
    fallback = {"sorted": _summary(**{"aten::_grouped_mm": 0, "aten::mm": 72})}
    assert profile_reading(fallback, num_experts=8) == [
        "sorted ran the segment loop, one mm per expert segment (no grouped-GEMM kernel for "
        "this torch, device, dtype or width): 72 mm calls, 9.0 per expert"]


def test_memory_order_is_measured():
    assert memory_order({"loop": 14.3, "padded": 9.5, "sorted": 9.5}) == \
        "least allocated first: padded 9.5 MB, sorted 9.5 MB, loop 14.3 MB"
