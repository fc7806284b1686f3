"""Measured, not argued: one MoE layer against two dense FFNs, with this machine's roofline.
Lesson 10.

Three layers of one width D, timed forward (inference, no autograd) at batches of B tokens:

    moe           E experts of width F, K per token (SparseMoE, sorted dispatch)
    dense active  one SwiGLU FFN of width K * F: the MoE's active parameters (and FLOPs)
    dense total   one SwiGLU FFN of width E * F: the MoE's total parameters (and bytes)

The roofline (:func:`moe_lab.inference.traffic.roofline_seconds`) takes the machine's memory
bandwidth (a large tensor copy: read + write bytes / time) and matmul throughput (a square fp32
matmul: 2 n^3 / time), both measured here. Every timing is a sample of several repeats,
interleaved (each repeat runs every layer once, in turn, so a burst of load elsewhere hits them
alike); we report the median and the quartiles, and a ratio is a finding only when the two
layers' interquartile ranges do not overlap.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moe_lab.experts import Experts
from moe_lab.inference.traffic import StepCost, moe_step_cost, roofline_seconds
from moe_lab.layer import SparseMoE
from moe_lab.validation import check_positive_int

LAYERS = ("moe", "dense active", "dense total")


@dataclass(frozen=True)
class Spread:
    """Median and quartiles of repeated timings, in milliseconds."""

    median: float
    q1: float
    q3: float
    repeats: int

    @classmethod
    def of(cls, samples: list[float]) -> Spread:
        if len(samples) < 2:
            value = samples[0]
            return cls(value, value, value, 1)
        q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return cls(median, q1, q3, len(samples))

    @property
    def relative_iqr(self) -> float:
        """(q3 - q1) / median: how noisy the sample was."""
        return (self.q3 - self.q1) / self.median if self.median else 0.0

    def clearly_below(self, other: Spread) -> bool:
        """True when this sample's upper quartile lies below the other's lower quartile."""
        return self.q3 < other.q1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(num_bytes: int = 2**27, repeats: int = 7,
                      device: torch.device | str = "cpu") -> Spread:
    """Memory bandwidth in GB/s (median and quartiles): copying a ``num_bytes`` tensor reads and
    writes it, 2 * num_bytes per copy. Far larger than the CPU caches by default (128 MiB)."""
    check_positive_int("num_bytes", num_bytes)
    device = torch.device(device)
    source = torch.ones(num_bytes // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # first touch: page faults stay out of the timing
    rates = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        _synchronize(device)
        rates.append(2 * num_bytes / (time.perf_counter() - start) / 1e9)
    return Spread.of(rates)


def measure_matmul(size: int = 1024, repeats: int = 7, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Spread:
    """Matmul throughput in GFLOP/s: 2 n^3 FLOPs per (n x n) @ (n x n)."""
    check_positive_int("size", size)
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    rates = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        rates.append(2 * size**3 / (time.perf_counter() - start) / 1e9)
    return Spread.of(rates)


@dataclass(frozen=True)
class LayerShape:
    """D, F, E, K of the timed MoE layer, and the bytes of one weight (4: fp32, 2: bf16)."""

    d_model: int
    d_ff: int
    num_experts: int
    top_k: int
    bytes_per_param: float = 4.0

    def cost(self, layer: str, num_tokens: int, experts_touched: float | None = None) -> StepCost:
        if layer == "moe":
            return moe_step_cost(num_tokens, self.d_model, self.d_ff, self.num_experts,
                                 self.top_k, experts_touched=experts_touched,
                                 bytes_per_param=self.bytes_per_param)
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        width = self.top_k * self.d_ff if layer == "dense active" else self.num_experts * self.d_ff
        return moe_step_cost(num_tokens, self.d_model, width, 1, 1,
                             bytes_per_param=self.bytes_per_param)

    def weight_megabytes(self, layer: str) -> float:
        return self.cost(layer, 1, experts_touched=self.num_experts).bytes_read / 1e6


@dataclass(frozen=True)
class TimingRow:
    """One layer at one batch size: measured spread, the roofline bound and its cost."""

    layer: str
    num_tokens: int
    spread: Spread
    roofline_ms: float
    cost: StepCost


def build_layers(shape: LayerShape, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> dict[str, Callable[[torch.Tensor], object]]:
    """The three layers of :data:`LAYERS`, fresh weights, as functions of x (N, D)."""
    torch.manual_seed(seed)
    moe = SparseMoE(shape.d_model, shape.d_ff, shape.num_experts, shape.top_k).eval()
    active = Experts(1, shape.d_model, shape.top_k * shape.d_ff)
    total = Experts(1, shape.d_model, shape.num_experts * shape.d_ff)
    for module in (moe, active, total):
        module.requires_grad_(False).to(device, dtype)
    return {"moe": lambda x: moe(x).y,
            "dense active": lambda x: active.forward_expert(x, 0),
            "dense total": lambda x: total.forward_expert(x, 0)}


def time_layers(shape: LayerShape, batch_sizes: tuple[int, ...], *, bandwidth_gbs: float,
                matmul_gflops: float, repeats: int = 5, warmup: int = 1, seed: int = 0,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                flush_bytes: int = 2**27) -> list[TimingRow]:
    """Time the three layers at each batch size beside their roofline. Repeats are interleaved
    (each runs every layer once, in turn), and before every timed call a ``flush_bytes`` buffer
    is written: the weights leave the caches, as the other layers of a model would push them out
    between two calls of this one."""
    check_positive_int("repeats", repeats)
    device = torch.device(device)
    layers = build_layers(shape, seed, device, dtype)
    flush = torch.empty(flush_bytes // 4, device=device)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for num_tokens in batch_sizes:
        check_positive_int("batch size", num_tokens)
        x = torch.randn(num_tokens, shape.d_model, generator=generator).to(device, dtype)  # (B, D)
        samples: dict[str, list[float]] = {name: [] for name in layers}
        with torch.no_grad():
            for repeat in range(warmup + repeats):
                for name, layer in layers.items():
                    flush.fill_(float(repeat))
                    _synchronize(device)
                    start = time.perf_counter()
                    layer(x)
                    _synchronize(device)
                    if repeat >= warmup:
                        samples[name].append((time.perf_counter() - start) * 1e3)
        for name in LAYERS:
            cost = shape.cost(name, num_tokens)
            bound = roofline_seconds(cost, bandwidth=bandwidth_gbs * 1e9,
                                     flops_per_second=matmul_gflops * 1e9) * 1e3
            rows.append(TimingRow(name, num_tokens, Spread.of(samples[name]), bound, cost))
    return rows


def timing_findings(rows: list[TimingRow]) -> list[str]:
    """The conclusions the numbers support, one line per batch size: the MoE layer against each
    dense layer, a ratio stated only when the interquartile ranges do not overlap."""
    by_batch: dict[int, dict[str, TimingRow]] = {}
    for row in rows:
        by_batch.setdefault(row.num_tokens, {})[row.layer] = row
    lines = []
    for num_tokens, row in by_batch.items():
        moe = row["moe"].spread
        parts = []
        for other in ("dense active", "dense total"):
            theirs = row[other].spread
            ratio = moe.median / theirs.median
            if moe.clearly_below(theirs):
                parts.append(f"{1 / ratio:.1f}x faster than {other}")
            elif theirs.clearly_below(moe):
                parts.append(f"{ratio:.1f}x slower than {other}")
            else:
                parts.append(f"within noise of {other} (ratio {ratio:.2f})")
        lines.append(f"B={num_tokens:>4}: MoE " + ", ".join(parts))
    return lines


def bound_by(row: TimingRow, *, bandwidth_gbs: float, matmul_gflops: float) -> str:
    """"memory" when the roofline's byte term is the larger, else "compute"."""
    memory_s = row.cost.bytes_read / (bandwidth_gbs * 1e9)
    compute_s = row.cost.flops / (matmul_gflops * 1e9)
    return "memory" if memory_s >= compute_s else "compute"
