"""Benchmark: forward + backward of SparseMoE per dispatch strategy against the dense limit.

    python -m moe_lab.bench                 # the full set of shapes (minutes on 2 CPU cores)
    python -m moe_lab.bench --quick         # small shapes, seconds
    python -m moe_lab.bench --json out.json # also save the results (with device, torch, date)

The *dense limit* is one SwiGLU FFN of width F over N*K tokens: exactly the active FLOPs of the
MoE layer, with none of the routing work (router, sort, gather, scatter, per-expert launches).
A strategy's ratio to it is the price of routing. Every strategy is timed in the same run,
interleaved repeat by repeat, so a noisy machine slows them alike; we report medians and the
ratios (strategy / dense limit, sorted / loop), and each timing's spread (upper / lower quartile
of its repeats, which one stray repeat does not move), which says how busy the machine was.
The dtype is :func:`moe_lab.systems.decisions.compute_dtype`'s: fp32 on the CPU, bf16 on GPUs
with bf16 tensor cores (sm_80+), fp16 on older ones (a T4). Every result records the device's
decisions and, per shape, the grouped-GEMM path the sorted strategy ran; :func:`judge_targets`
holds the ratios against DESIGN.md's targets. Lesson 06.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

from moe_lab.experts import Experts
from moe_lab.grouped_gemm import path_for
from moe_lab.layer import SparseMoE
from moe_lab.systems.decisions import decisions_for
from moe_lab.systems.device import environment_summary, pick_device


@dataclass(frozen=True)
class BenchShape:
    """T tokens (one sequence: N = T), D model width, F expert width, E experts, K per token."""

    tokens: int
    d_model: int
    d_ff: int
    num_experts: int
    top_k: int

    def __str__(self) -> str:
        return (f"T={self.tokens} D={self.d_model} F={self.d_ff} "
                f"E={self.num_experts} K={self.top_k}")


@dataclass(frozen=True)
class BenchResult:
    shape: BenchShape
    strategy: str  # "dense_limit" or a dispatch strategy
    median_ms: float
    ratio_to_dense_limit: float
    spread: float = 1.0  # upper / lower quartile of the repeats: near 1 on a quiet machine
    grouped_mm_path: str = ""  # sorted only: the grouped GEMM's kernel (moe_lab.grouped_gemm)


# The three target shapes (README, Benchmark) first, then E from 4 to 64 and K from 1 to 8.
FULL_SHAPES = (
    BenchShape(4096, 512, 1024, 8, 2),
    BenchShape(4096, 512, 256, 64, 8),
    BenchShape(1024, 256, 512, 8, 2),
    BenchShape(2048, 256, 512, 4, 1),
    BenchShape(2048, 256, 256, 16, 4),
    BenchShape(2048, 256, 128, 32, 4),
)
QUICK_SHAPES = (
    BenchShape(1024, 256, 512, 8, 2),
    BenchShape(512, 128, 64, 64, 8),
    BenchShape(512, 128, 256, 4, 1),
)
STRATEGIES = ("sorted", "loop", "padded")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def default_dtype(device: torch.device) -> torch.dtype:
    """The device's compute dtype: bf16 where native (sm_80+), fp16 on older GPUs, fp32 on the
    CPU and MPS (:func:`moe_lab.systems.decisions.compute_dtype`)."""
    return decisions_for(device).dtype


def sorted_path(shape: BenchShape, dtype: torch.dtype, device: torch.device) -> str:
    """The grouped-GEMM path the sorted strategy takes at this shape (kernel, or loop when the
    widths are not 16-byte aligned)."""
    rows = torch.empty(shape.tokens * shape.top_k, shape.d_model, dtype=dtype, device=device)
    weight = torch.empty(shape.num_experts, shape.d_model, shape.d_ff, dtype=dtype, device=device)
    return path_for(rows, weight)


def make_workloads(shape: BenchShape, strategies: Sequence[str], dtype: torch.dtype,
                   device: torch.device, seed: int = 0) -> dict[str, Callable[[], None]]:
    """One closure per strategy that runs forward + backward once (same x and incoming grad)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.tokens, shape.d_model, generator=generator)  # (N, D)
    x = x.to(device=device, dtype=dtype).requires_grad_(True)
    grad_y = torch.randn(x.shape, generator=generator).to(device=device, dtype=dtype)  # (N, D)
    x_limit = torch.randn(shape.tokens * shape.top_k, shape.d_model, generator=generator)
    x_limit = x_limit.to(device=device, dtype=dtype).requires_grad_(True)  # (N*K, D)
    grad_limit = torch.randn(x_limit.shape, generator=generator).to(device, dtype)  # (N*K, D)

    dense_ffn = Experts(1, shape.d_model, shape.d_ff).to(device=device, dtype=dtype)

    def dense_limit() -> None:
        dense_ffn.forward_expert(x_limit, 0).backward(grad_limit)

    workloads: dict[str, Callable[[], None]] = {"dense_limit": dense_limit}
    for strategy in strategies:
        torch.manual_seed(seed)
        layer = SparseMoE(shape.d_model, shape.d_ff, shape.num_experts, shape.top_k,
                          dispatch=strategy).to(device=device, dtype=dtype)

        def run(layer: SparseMoE = layer) -> None:
            layer(x).y.backward(grad_y)

        workloads[strategy] = run
    return workloads


def time_interleaved(workloads: dict[str, Callable[[], None]], device: torch.device, *,
                     repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per workload; each repeat runs every workload once, in turn."""
    samples = interleaved_samples(workloads, device, repeats=repeats, warmup=warmup)
    return {name: statistics.median(times) for name, times in samples.items()}


def interleaved_samples(workloads: dict[str, Callable[[], None]], device: torch.device, *,
                        repeats: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of every repeat of every workload; each repeat runs each workload once, in
    turn, so a burst of load elsewhere slows every workload of that repeat."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for work in workloads.values():
            work()
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, work in workloads.items():
            _synchronize(device)
            start = time.perf_counter()
            work()
            _synchronize(device)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def run_bench(shapes: Sequence[BenchShape] = QUICK_SHAPES,
              strategies: Sequence[str] = STRATEGIES, *, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None, repeats: int = 5,
              warmup: int = 1) -> list[BenchResult]:
    """Time every strategy and the dense limit at each shape, in the device's dtype by default
    (fp32 on the CPU, bf16 on sm_80+, fp16 on older GPUs: :func:`default_dtype`)."""
    device = torch.device(device) if device is not None else pick_device()
    if dtype is None:
        dtype = default_dtype(device)
    results = []
    for shape in shapes:
        workloads = make_workloads(shape, strategies, dtype, device)
        samples = interleaved_samples(workloads, device, repeats=repeats, warmup=warmup)
        medians = {name: statistics.median(times) for name, times in samples.items()}
        for name, ms in medians.items():
            path = sorted_path(shape, dtype, device) if name == "sorted" else ""
            results.append(BenchResult(shape, name, ms, ms / medians["dense_limit"],
                                       quartile_spread(samples[name]), path))
    return results


#: DESIGN.md, section 5: sorted / dense limit at most this, forward + backward (fp32 on the CPU,
#: the device's dtype on a GPU); and sorted faster than loop at every shape with E >= 8.
TARGETS = {
    BenchShape(4096, 512, 1024, 8, 2): 1.2,
    BenchShape(4096, 512, 256, 64, 8): 1.8,
    BenchShape(1024, 256, 512, 8, 2): 1.5,
}


@dataclass(frozen=True)
class TargetCheck:
    shape: BenchShape
    what: str  # "sorted / dense limit" or "sorted / loop"
    ratio: float
    target: float
    met: bool

    def __str__(self) -> str:
        return (f"{self.what} {self.ratio:.2f} at {self.shape} (target <= {self.target:g}): "
                + ("met" if self.met else "MISSED"))


def judge_targets(results: Sequence[BenchResult]) -> list[TargetCheck]:
    """Each measured ratio that DESIGN.md sets a target for, against its target."""
    by_key = {(r.shape, r.strategy): r for r in results}
    checks = []
    for (shape, strategy), result in by_key.items():
        if strategy != "sorted":
            continue
        if shape in TARGETS:
            target = TARGETS[shape]
            checks.append(TargetCheck(shape, "sorted / dense limit", result.ratio_to_dense_limit,
                                      target, result.ratio_to_dense_limit <= target))
        loop = by_key.get((shape, "loop"))
        if loop is not None and shape.num_experts >= 8:
            ratio = result.median_ms / loop.median_ms
            checks.append(TargetCheck(shape, "sorted / loop", ratio, 1.0, ratio <= 1.0))
    return checks


def quartile_spread(times: Sequence[float]) -> float:
    """Upper / lower quartile of ``times`` (1.0 for fewer than two): how far apart the middle
    repeats are, which is what the median's reliability depends on."""
    if len(times) < 2:
        return 1.0
    lower, _, upper = statistics.quantiles(times, n=4, method="inclusive")
    return upper / max(lower, 1e-9)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to /dev/null while the block runs.

    torch's profiler (kineto) prints "USDT: ... profiler_start" and "profiler_stop" lines there
    (not through Python's ``sys.stderr``, so no logging setting reaches them); in a notebook they
    land in the cell's output. Python's own ``sys.stderr`` (warnings, tracebacks) is untouched in
    a kernel, where it is not fd 2.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def format_results(results: Sequence[BenchResult]) -> str:
    """A table: one row per shape and strategy, with ratios to the dense limit and to loop."""
    lines = [f"{'shape':<36} {'strategy':<12} {'median ms':>10} {'/ dense limit':>14} "
             f"{'/ loop':>8} {'spread':>7}"]
    loop_ms = {r.shape: r.median_ms for r in results if r.strategy == "loop"}
    for r in results:
        vs_loop = f"{r.median_ms / loop_ms[r.shape]:8.2f}" if r.shape in loop_ms else f"{'-':>8}"
        lines.append(f"{str(r.shape):<36} {r.strategy:<12} {r.median_ms:10.2f} "
                     f"{r.ratio_to_dense_limit:14.2f} {vs_loop} {r.spread:6.1f}x")
    return "\n".join(lines)


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """Where the numbers come from: the environment summary (with the device's decisions), the
    dtype that ran and the date."""
    return {
        **environment_summary(device),
        "dtype": str(dtype).replace("torch.", ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }


def results_payload(results: Sequence[BenchResult], env: dict[str, str],
                    command: str) -> dict[str, object]:
    """The JSON of a bench run: where it ran, the command that made it, one row per timing
    (with its ratio to the dense limit and, where the shape has a loop timing, to loop)."""
    loop_ms = {r.shape: r.median_ms for r in results if r.strategy == "loop"}
    rows = []
    for r in results:
        row = {**asdict(r.shape), "strategy": r.strategy, "median_ms": r.median_ms,
               "ratio_to_dense_limit": r.ratio_to_dense_limit, "spread": r.spread}
        if r.grouped_mm_path:
            row["grouped_mm_path"] = r.grouped_mm_path
        if r.shape in loop_ms:
            row["ratio_to_loop"] = r.median_ms / loop_ms[r.shape]
        rows.append(row)
    targets = [{**asdict(c.shape), "what": c.what, "ratio": c.ratio, "target": c.target,
                "met": c.met} for c in judge_targets(results)]
    return {"environment": env, "command": command, "results": rows, "targets": targets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, a run of seconds")
    parser.add_argument("--json", metavar="PATH", help="save the results as JSON")
    parser.add_argument("--device", help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per strategy")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated, from {STRATEGIES}")
    args = parser.parse_args(argv)
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(STRATEGIES) - {"dense"})
    if unknown:
        parser.error(f"--strategies: unknown {unknown}; choose from {STRATEGIES + ('dense',)}")
    device = torch.device(args.device) if args.device else pick_device()
    dtype = default_dtype(device)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    repeats = args.repeats or (5 if args.quick else 7)
    env = environment(device, dtype)
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    results = run_bench(shapes, strategies, dtype=dtype, device=device, repeats=repeats)
    print(format_results(results))
    for check in judge_targets(results):
        print(check)
    if args.json:
        command = "python -m moe_lab.bench " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.json, "w") as f:
            json.dump(results_payload(results, env, command), f, indent=1)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
