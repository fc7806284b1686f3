"""Checkers for lesson 10 (MoE at inference): the distinct-experts formula and an LRU expert cache.

- :func:`check_expected_distinct_experts`: ``expected_distinct_experts(num_experts, top_k,
  num_tokens) -> float``, E * (1 - (1 - K/E)^B), compared with
  :func:`moe_lab.inference.expected_distinct_experts` from B = 0 (no expert) and B = 1 (K
  experts) to B = 4096 (all of them), K = E included.
  Catalogued mistakes: K draws with replacement ((1 - 1/E)^(B K)), no collisions (min(B K, E)),
  the chance that an expert is untouched ((1 - K/E)^B), the share instead of the count,
  B and K swapped, a rounded (integer) answer.
- :func:`check_lru_cache`: ``lru_cache(trace, cache_size) -> (hits, misses)`` for a (T, K) trace
  of one layer's expert ids, compared with :func:`moe_lab.inference.simulate_expert_cache`
  (policy "lru") on hand-made traces (cold start, the oldest expert needed later in the same
  token, an expert that comes back) and random ones.
  Catalogued mistakes: evicting an expert the current token still needs (plain LRU), FIFO (a hit
  does not refresh the expert), evicting the most recently used,
  a cache that never evicts, room for cache_size + 1, counting tokens instead of lookups, the
  first use of an expert not counted as a miss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from moe_lab.checks.core import CheckFailed, call, checker, fresh, set_case, whole_number
from moe_lab.inference.cache import simulate_expert_cache
from moe_lab.inference.traffic import expected_distinct_experts

# (E, K, B): one token, none, every expert per token, a Mixtral layer, OLMoE layers, big batches
DISTINCT_CASES = ((8, 2, 1), (8, 2, 0), (8, 8, 3), (8, 2, 8), (64, 8, 1), (64, 8, 16),
                  (64, 8, 512), (16, 2, 64), (128, 8, 4096), (256, 8, 7))


def _distinct_suspects(e: int, k: int, b: int) -> list[tuple[float, str]]:
    """(what a usual mistake returns, the hint naming it)."""
    return [
        (e * (1 - (1 - 1 / e) ** (b * k)),
         "This is B*K draws *with replacement* (1 - 1/E)^(B K): a token's K experts are distinct, "
         "so an expert is in one token's set with probability K/E. Use (1 - K/E)^B."),
        (min(b * k, e), "min(B*K, E) counts every choice as a new expert: two tokens often pick "
                        "the same expert. Use the chance that an expert is untouched, (1 - K/E)^B."),
        ((1 - k / e) ** b, "That is the chance that one expert is untouched by all B tokens; the "
                           "expected number touched is E * (1 - that)."),
        (1 - (1 - k / e) ** b, "That is the chance that one expert is touched (a share); multiply "
                               "by E for the expected number of experts."),
        (e * (1 - (1 - b / e) ** k),
         "B and K are swapped: each of the B tokens picks K experts, so the exponent is B."),
    ]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


@checker("check_expected_distinct_experts")
def check_expected_distinct_experts(fn: Callable[[int, int, int], object]) -> None:
    answers = []
    for e, k, b in DISTINCT_CASES:
        set_case(f"E={e}, K={k}, B={b}")
        got = call(fn, e, k, b, names=())
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, int | float):
            raise CheckFailed(f"Return a number (a Python float), got {type(got).__name__}.")
        answers.append(float(got))
    for (e, k, b), got in zip(DISTINCT_CASES, answers, strict=True):
        expected = expected_distinct_experts(e, k, b)
        if _close(got, expected):
            continue
        where = f"For E={e}, K={k}, B={b} the expected number is {expected:.4f}, got {got:.4f}."
        # the mistake that explains every case, not only this one
        for i, (_, hint) in enumerate(_distinct_suspects(e, k, b)):
            if all(_close(answer, _distinct_suspects(*case)[i][0])
                   for case, answer in zip(DISTINCT_CASES, answers, strict=True)):
                raise CheckFailed(f"{where} {hint}")
        if all(answer == round(expected_distinct_experts(*case))
               for case, answer in zip(DISTINCT_CASES, answers, strict=True)):
            raise CheckFailed(f"{where} The answer was rounded to an integer: an expectation "
                              "need not be a whole number.")
        raise CheckFailed(f"{where} Build it from the chance that one expert is untouched by all "
                          "B tokens, (1 - K/E)^B.")


# ---------------------------------------------------------------- the LRU cache

def _variant(trace: torch.Tensor, cache_size: int, mistake: str,
             protect: bool = True) -> tuple[int, int]:
    """What a usual mistake returns: (hits, misses). ``protect``: the eviction skips the experts
    the current token needs (as it should); False is plain LRU (the "unprotected" mistake)."""
    resident: OrderedDict[int, None] = OrderedDict()
    hits = misses = 0
    room = cache_size + 1 if mistake == "room+1" else cache_size
    for token in trace.tolist():
        for expert in token:
            if expert in resident:
                hits += 1
                if mistake != "fifo":
                    resident.move_to_end(expert)
                continue
            misses += 1
            if mistake != "unbounded" and len(resident) >= room:
                order = list(reversed(resident)) if mistake == "mru" else list(resident)
                victim = next(e for e in order if not protect or e not in token)
                del resident[victim]
            resident[expert] = None
    if mistake == "cold":
        misses -= len(set(trace.reshape(-1).tolist()))
    return hits, misses


def _per_token(trace: torch.Tensor, cache_size: int) -> tuple[int, int]:
    """Counting tokens: a token is a hit when all its K experts were resident."""
    resident: OrderedDict[int, None] = OrderedDict()
    hits = misses = 0
    for token in trace.tolist():
        all_in = all(e in resident for e in token)
        hits, misses = hits + all_in, misses + (not all_in)
        for expert in token:
            if expert not in resident and len(resident) >= cache_size:
                del resident[next(e for e in resident if e not in token)]
            resident[expert] = None
            resident.move_to_end(expert)
    return hits, misses


LRU_HINTS = {
    "unprotected": "You evicted an expert the current token still needs (it is looked up later in "
                   "the same token): evict the least recently used expert *not* in the current "
                   "token, e.g. next(e for e in resident if e not in token).",
    "fifo": "A hit must refresh the expert (mark it most recently used, e.g. "
            "OrderedDict.move_to_end): yours evicts the expert loaded first (FIFO), not the one "
            "used longest ago.",
    "mru": "You evict the most recently used expert: evict the *least* recently used one (the "
           "first of an OrderedDict kept in use order).",
    "unbounded": "Your cache never evicts: it holds more than cache_size experts. When it is full, "
                 "evict one before loading.",
    "room+1": "Your cache holds cache_size + 1 experts: evict when len(resident) >= cache_size, "
              "before loading the new one.",
    "cold": "The first use of an expert is a miss too (the cache starts empty): count it.",
}


def _lru_traces() -> list[tuple[str, torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(0)
    cases = [
        ("cold start: every expert new", torch.tensor([[0, 1], [2, 3], [4, 5]]), 2),
        ("the oldest expert is needed later in the token", torch.tensor([[0, 1], [2, 0]]), 2),
        ("an expert that comes back", torch.tensor([[0, 1], [0, 2], [0, 3], [1, 0]]), 3),
        ("hits refresh the expert", torch.tensor([[0], [1], [0], [2], [0], [1]]), 2),
        ("one expert per token, a loop", torch.tensor([[0], [1], [2], [0], [1], [2]]), 2),
        ("the cache holds everything", torch.tensor([[3, 1], [1, 3], [0, 2], [2, 3]]), 4),
    ]
    for t, e, k, c in ((40, 8, 2, 3), (60, 8, 2, 5), (50, 16, 4, 6), (30, 6, 1, 2)):
        scores = torch.rand(t, e, generator=generator) ** 3 + torch.linspace(0, 0.5, e)
        cases.append((f"random T={t}, E={e}, K={k}, cache_size={c}",
                      torch.topk(scores, k, dim=-1).indices, c))
    return cases


@checker("check_lru_cache")
def check_lru_cache(fn: Callable[[torch.Tensor, int], object]) -> None:
    cases = _lru_traces()
    answers = []
    for name, trace, cache_size in cases:
        set_case(f"{name} (cache_size={cache_size})")
        out = call(fn, *fresh(trace), cache_size, names=("trace",))
        counts = [whole_number(v) for v in out] if isinstance(out, tuple | list) else []
        if len(counts) != 2:
            raise CheckFailed(f"Return a pair (hits, misses), got {type(out).__name__}.")
        if None in counts:
            raise CheckFailed(f"Return hits and misses as two ints (counts of lookups), got "
                              f"{out!r} (on the case {name}, cache_size={cache_size}).")
        answers.append(tuple(counts))
    for (name, trace, cache_size), (hits, misses) in zip(cases, answers, strict=True):
        expected = simulate_expert_cache(trace, cache_size, "lru")
        if (hits, misses) == (expected.hits, expected.misses):
            continue
        where = (f"On the trace '{name}' {trace.tolist()[:6]}{'...' if len(trace) > 6 else ''} "
                 f"with cache_size={cache_size} the reference counts (hits, misses) = "
                 f"({expected.hits}, {expected.misses}), got ({hits}, {misses}).")
        if (misses, hits) == (expected.hits, expected.misses):
            raise CheckFailed(f"{where} Return (hits, misses) in that order.")
        if all(answer == _per_token(t, c) for (_, t, c), answer in zip(cases, answers, strict=True)):
            raise CheckFailed(f"{where} You counted tokens: count every lookup, each of a "
                              "token's K experts (hits + misses = T * K).")
        # the mistake that explains every case, not only this one
        for mistake in ("unprotected", "cold", "fifo", "mru", "unbounded", "room+1"):
            for protect in (True, False):  # each mistake with or without the token's protection
                if mistake == "unprotected" and protect:
                    continue
                if all(answer == _variant(t, c, "none" if mistake == "unprotected" else mistake,
                                          protect)
                       for (_, t, c), answer in zip(cases, answers, strict=True)):
                    raise CheckFailed(f"{where} {LRU_HINTS[mistake]}")
        if hits + misses != trace.numel():
            raise CheckFailed(f"{where} hits + misses should be T * K = {trace.numel()}: one "
                              "lookup per (token, expert).")
        raise CheckFailed(where)
