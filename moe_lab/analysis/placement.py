"""Expert placement: which device holds which experts, given each expert's load. Lesson 09.

With expert parallelism (lesson 07) every device runs the experts it holds; the layer waits for
the busiest device, so what matters is

    busiest / mean = max_g load_g / mean_g load_g        (1.0 = perfectly balanced)

where load_g sums the tokens of the experts (or expert replicas) on device g. Three placements of
E experts on G devices, E/G slots each (S/G with S >= E slots when replicating):

- contiguous: experts [g E/G, (g+1) E/G) on device g (what an unaware launcher does);
- greedy packing: experts by decreasing load, each to the least-loaded device that still has a
  free slot (DeepSeek's EPLB ``balanced_packing``, github.com/deepseek-ai/EPLB);
- replicated: first give the S - E spare slots to the experts with the highest load per replica,
  one at a time (an expert's tokens split evenly across its replicas), then pack the replicas
  greedily (EPLB ``replicate_experts`` + ``balanced_packing``; DeepSeek-V3, arXiv:2412.19437,
  section 3.4, "redundant experts").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from moe_lab.lm.stats import max_over_mean_load
from moe_lab.validation import check_positive_int


@dataclass(frozen=True)
class Placement:
    """experts: for each device, the (logical) experts of its slots; replicas: (E,) copies of
    each expert; device_load: (G,) tokens per device, an expert's load split over its copies."""

    experts: tuple[tuple[int, ...], ...]
    replicas: torch.Tensor
    device_load: torch.Tensor

    @property
    def busiest_over_mean(self) -> float:
        return max_over_mean_load(self.device_load)  # 1.0 for an empty load


def _check_load(expert_load: object) -> torch.Tensor:
    if not isinstance(expert_load, torch.Tensor):
        raise TypeError(f"expert_load must be a torch.Tensor, got {type(expert_load).__name__}")
    if expert_load.dim() != 1 or expert_load.numel() == 0:
        raise ValueError(f"expert_load must have shape (E,) with E >= 1, got {tuple(expert_load.shape)}")
    load = expert_load.double()
    if not bool(torch.isfinite(load).all()) or bool((load < 0).any()):
        raise ValueError("expert_load must be finite and >= 0")
    return load


def _check_slots(name: str, num_slots: int, num_devices: int) -> int:
    check_positive_int("num_devices", num_devices)
    if num_slots % num_devices:
        raise ValueError(f"{name}={num_slots} must be a multiple of num_devices={num_devices}")
    return num_slots // num_devices


def device_loads(experts: Sequence[Sequence[int]], replicas: torch.Tensor,
                 expert_load: torch.Tensor) -> torch.Tensor:
    """(G,) load of each device for a placement and any load vector (E,): each slot of expert e
    takes load_e / replicas_e. Use it to test a placement made from one domain on another."""
    load = _check_load(expert_load)
    if not isinstance(replicas, torch.Tensor) or replicas.shape != load.shape:
        shape = tuple(replicas.shape) if isinstance(replicas, torch.Tensor) else type(replicas).__name__
        raise ValueError(f"replicas must have the shape of expert_load, (E={load.numel()},), "
                         f"got {shape}: is expert_load from another model?")
    placed = sorted({int(e) for slots in experts for e in slots})
    if placed and (placed[0] < 0 or placed[-1] >= load.numel()):
        raise ValueError(f"the placement holds expert ids {placed[0]}..{placed[-1]}, but "
                         f"expert_load has E={load.numel()} experts: is it from another model?")
    per_copy = load / replicas.double()  # (E,)
    return torch.stack([per_copy[list(slots)].sum() for slots in experts])  # (G,)


def _placement(experts: list[list[int]], replicas: torch.Tensor, load: torch.Tensor) -> Placement:
    frozen = tuple(tuple(slots) for slots in experts)
    return Placement(frozen, replicas, device_loads(frozen, replicas, load))


def contiguous_placement(expert_load: torch.Tensor, num_devices: int) -> Placement:
    """Experts [g E/G, (g+1) E/G) on device g."""
    load = _check_load(expert_load)
    per_device = _check_slots("num_experts", load.numel(), num_devices)
    experts = [list(range(g * per_device, (g + 1) * per_device)) for g in range(num_devices)]
    return _placement(experts, torch.ones_like(load, dtype=torch.int64), load)


def balanced_packing(item_load: torch.Tensor, num_devices: int) -> list[list[int]]:
    """Items by decreasing load, each to the least-loaded device with a free slot (ties: the
    lower device); every device gets exactly len(items) / G items. Returns item ids per device."""
    load = _check_load(item_load)
    per_device = _check_slots("number of items", load.numel(), num_devices)
    devices: list[list[int]] = [[] for _ in range(num_devices)]
    totals = [0.0] * num_devices
    order = sorted(range(load.numel()), key=lambda i: (-float(load[i]), i))  # stable, heaviest first
    for item in order:
        open_devices = [g for g in range(num_devices) if len(devices[g]) < per_device]
        g = min(open_devices, key=lambda d: (totals[d], d))
        devices[g].append(item)
        totals[g] += float(load[item])
    return devices


def greedy_placement(expert_load: torch.Tensor, num_devices: int) -> Placement:
    """Greedy packing of the E experts, E/G per device."""
    load = _check_load(expert_load)
    experts = balanced_packing(load, num_devices)
    return _placement(experts, torch.ones_like(load, dtype=torch.int64), load)


def replicate_hottest(expert_load: torch.Tensor, num_slots: int) -> torch.Tensor:
    """(E,) copies per expert, S in all: each spare slot goes to the expert with the highest load
    per copy (ties: the lower id). Minimises the largest load per copy, one slot at a time."""
    load = _check_load(expert_load)
    check_positive_int("num_slots", num_slots)
    if num_slots < load.numel():
        raise ValueError(f"num_slots={num_slots} must be >= num_experts={load.numel()}")
    replicas = torch.ones_like(load, dtype=torch.int64)
    for _ in range(num_slots - load.numel()):
        # the expert whose copies are busiest gets one more: argmax_e load_e / replicas_e
        replicas[int(torch.argmax(load / replicas))] += 1
    return replicas


def replicated_placement(expert_load: torch.Tensor, num_devices: int, num_slots: int) -> Placement:
    """EPLB: replicate the hottest experts into S slots, then pack the copies greedily."""
    load = _check_load(expert_load)
    _check_slots("num_slots", num_slots, num_devices)
    replicas = replicate_hottest(load, num_slots)  # (E,)
    copy_of = torch.repeat_interleave(torch.arange(load.numel()), replicas)  # (S,) expert of each copy
    copies = balanced_packing(load[copy_of] / replicas[copy_of], num_devices)
    experts = [[int(copy_of[c]) for c in slots] for slots in copies]
    return _placement(experts, replicas, load)
