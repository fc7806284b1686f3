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
fp32 on the CPU, bf16 on CUDA. Lesson 06.
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
from moe_lab.layer import SparseMoE
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
    """bf16 on CUDA (what GPUs train in), fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


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
    """Time every strategy and the dense limit at each shape; fp32 on CPU, bf16 on CUDA."""
    device = torch.device(device) if device is not None else pick_device()
    if dtype is None:
        dtype = default_dtype(device)
    results = []
    for shape in shapes:
        workloads = make_workloads(shape, strategies, dtype, device)
        samples = interleaved_samples(workloads, device, repeats=repeats, warmup=warmup)
        medians = {name: statistics.median(times) for name, times in samples.items()}
        for name, ms in medians.items():
            results.append(BenchResult(shape, name, ms, ms / medians["dense_limit"],
                                       quartile_spread(samples[name])))
    return results


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
    """Where the numbers come from: the environment summary, the dtype and the date."""
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
        if r.shape in loop_ms:
            row["ratio_to_loop"] = r.median_ms / loop_ms[r.shape]
        rows.append(row)
    return {"environment": env, "command": command, "results": rows}


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
    if args.json:
        command = "python -m moe_lab.bench " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(args.json, "w") as f:
            json.dump(results_payload(results, env, command), f, indent=1)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
