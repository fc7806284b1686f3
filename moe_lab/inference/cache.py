"""Experts kept in slow memory, cached in fast memory: a cache simulator. Lesson 10.

Offloading (Eliseev & Mazur 2023, arXiv:2312.17238; llama.cpp's ``--n-cpu-moe``) keeps the expert
weights in CPU memory and copies the ones a token needs to the GPU. With room for C experts of a
layer on the GPU, a token's K lookups are hits (resident) or misses (copied in). The trace of
one layer is a (T, K) tensor of expert ids in token order; for each token, each of its K experts
is looked up in turn (a hit if resident, else a miss that loads it); after the token, its K
experts are resident (so C >= K). A load into a full cache evicts:

    "lru"  the least recently used resident expert the current token does not need
    "lfu"  the one used least often so far (lookups counted), ties: the least recently used

and, for comparison, :func:`static_cache_hits` keeps a fixed set of the C most used experts, and
:func:`prefetch_hits` guesses a layer's experts from the previous layer's routing.

    hit rate = hits / (hits + misses) = hits / (T * K)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from moe_lab.validation import check_positive_int

CACHE_POLICIES = ("lru", "lfu")


@dataclass(frozen=True)
class CacheResult:
    """Lookups of one layer's trace: ``hits`` + ``misses`` = T * K; ``hit_rate`` = hits / lookups
    (0.0 for an empty trace: no lookup, no hit)."""

    hits: int
    misses: int

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


def check_trace(trace: object, name: str = "trace") -> torch.Tensor:
    """A (T, K) tensor of integer expert ids >= 0, returned as int64."""
    if not isinstance(trace, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of expert ids (T, K), got "
                        f"{type(trace).__name__}")
    if trace.is_floating_point() or trace.is_complex() or trace.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer expert ids, got {trace.dtype}")
    if trace.dim() != 2 or trace.shape[1] < 1:
        raise ValueError(f"{name} must have shape (T, K) with K >= 1, got {tuple(trace.shape)}")
    if trace.numel() and int(trace.min()) < 0:
        raise ValueError(f"{name} holds a negative expert id ({int(trace.min())})")
    return trace.long()


def simulate_expert_cache(trace: torch.Tensor, cache_size: int, policy: str = "lru") -> CacheResult:
    """Replay one layer's routing ``trace`` (T, K) through a cache of ``cache_size`` experts
    (>= K) with eviction ``policy`` "lru" or "lfu"; returns hits and misses."""
    trace = check_trace(trace)
    top_k = trace.shape[1]
    check_positive_int("cache_size", cache_size)
    if cache_size < top_k:
        raise ValueError(f"cache_size must be >= top_k={top_k} (a token's K experts must fit), "
                         f"got {cache_size}")
    if policy not in CACHE_POLICIES:
        raise ValueError(f"policy must be one of {CACHE_POLICIES}, got {policy!r}")
    resident: OrderedDict[int, None] = OrderedDict()  # least recently used first
    uses: dict[int, int] = {}  # lookups so far, per expert (for "lfu")
    hits = misses = 0
    for token in trace.tolist():
        needed = set(token)
        for expert in token:
            uses[expert] = uses.get(expert, 0) + 1
            if expert in resident:
                hits += 1
            else:
                misses += 1
                if len(resident) >= cache_size:
                    del resident[_victim(resident, needed, uses, policy)]
                resident[expert] = None
            resident.move_to_end(expert)  # most recently used
    return CacheResult(hits, misses)


def _victim(resident: OrderedDict[int, None], needed: set[int], uses: dict[int, int],
            policy: str) -> int:
    candidates = [e for e in resident if e not in needed]  # in LRU order, oldest first
    if policy == "lru":
        return candidates[0]
    # fewest uses; min keeps the first (least recently used) of equal counts
    return min(candidates, key=lambda e: uses[e])


def static_cache_hits(trace: torch.Tensor, cache_size: int,
                      expert_counts: torch.Tensor | None = None) -> CacheResult:
    """A cache that never changes: the ``cache_size`` experts with the largest
    ``expert_counts`` (E,) (default: counted on the trace itself, an oracle) stay resident; a
    lookup of any other expert is a miss that is streamed and not kept."""
    trace = check_trace(trace)
    check_positive_int("cache_size", cache_size)
    if expert_counts is None:
        expert_counts = torch.bincount(trace.reshape(-1), minlength=int(trace.max()) + 1
                                       if trace.numel() else 1)
    if not isinstance(expert_counts, torch.Tensor) or expert_counts.dim() != 1:
        raise TypeError("expert_counts must be a 1-D tensor (E,)")
    # stable: of equal counts, the lower expert id is kept
    order = torch.sort(expert_counts.double(), descending=True, stable=True).indices
    kept = order[:cache_size]  # (C,)
    hits = int(torch.isin(trace, kept).sum())
    return CacheResult(hits, trace.numel() - hits)


def cooccurrence(previous: torch.Tensor, current: torch.Tensor, num_experts: int) -> torch.Tensor:
    """counts[i, j] (E, E): how often a token chose expert i at the previous layer and expert j
    at the current one (every pair of its K x K choices). ``previous``, ``current``: (T, K)."""
    previous, current = check_trace(previous, "previous"), check_trace(current, "current")
    check_positive_int("num_experts", num_experts)
    if previous.shape[0] != current.shape[0]:
        raise ValueError(f"previous and current must route the same tokens, got "
                         f"{previous.shape[0]} and {current.shape[0]} rows")
    if previous.numel() and max(int(previous.max()), int(current.max())) >= num_experts:
        raise ValueError(f"expert ids must be < num_experts={num_experts}")
    pairs = previous.unsqueeze(2) * num_experts + current.unsqueeze(1)  # (T, K, K)
    return torch.bincount(pairs.reshape(-1), minlength=num_experts ** 2).view(num_experts,
                                                                              num_experts)


def prefetch_hits(previous: torch.Tensor, current: torch.Tensor, table: torch.Tensor,
                  num_prefetched: int) -> CacheResult:
    """Prefetch by the previous layer's routing: for each token, guess the ``num_prefetched``
    experts j with the largest sum_i table[i, j] over its previous-layer experts i (a
    :func:`cooccurrence` table counted on other tokens); a current-layer lookup is a hit when
    the guess holds it."""
    previous, current = check_trace(previous, "previous"), check_trace(current, "current")
    check_positive_int("num_prefetched", num_prefetched)
    num_experts = table.shape[0]
    if table.dim() != 2 or table.shape[1] != num_experts or num_prefetched > num_experts:
        raise ValueError("table must be (E, E) and num_prefetched <= E")
    if previous.shape[0] != current.shape[0]:
        raise ValueError("previous and current must route the same tokens")
    scores = table.double()[previous].sum(dim=1)  # (T, E): sum over the K previous experts
    guess = torch.topk(scores, num_prefetched, dim=-1).indices  # (T, P)
    hits = int((current.unsqueeze(-1) == guess.unsqueeze(1)).any(-1).sum())
    return CacheResult(hits, current.numel() - hits)
