"""Lesson 10 checkers: each solution passes, correct alternatives pass, each catalogued mistake
fails with its hint."""

import math
from collections import OrderedDict

import pytest
import torch
from lesson_sources import lesson_solution

from moe_lab.checks.inference import check_expected_distinct_experts, check_lru_cache

# --- expected_distinct_experts(num_experts, top_k, num_tokens) -> float --------------------------

distinct_solution = lesson_solution("10", "expected_distinct_experts_mine")


def distinct_by_log(num_experts, top_k, num_tokens):  # also correct: through log1p and expm1
    return -num_experts * math.expm1(num_tokens * math.log1p(-top_k / num_experts)) \
        if top_k < num_experts else float(num_experts if num_tokens else 0)


def distinct_as_tensor(num_experts, top_k, num_tokens):  # also correct: a 0-d tensor
    return num_experts * (1 - torch.tensor(1 - top_k / num_experts, dtype=torch.float64) ** num_tokens)


def distinct_with_replacement(num_experts, top_k, num_tokens):
    return num_experts * (1 - (1 - 1 / num_experts) ** (num_tokens * top_k))


def distinct_no_collisions(num_experts, top_k, num_tokens):
    return float(min(num_tokens * top_k, num_experts))


def distinct_untouched(num_experts, top_k, num_tokens):
    return (1 - top_k / num_experts) ** num_tokens


def distinct_share(num_experts, top_k, num_tokens):
    return 1 - (1 - top_k / num_experts) ** num_tokens


def distinct_rounded(num_experts, top_k, num_tokens):
    return float(round(num_experts * (1 - (1 - top_k / num_experts) ** num_tokens)))


def distinct_swapped(num_experts, top_k, num_tokens):
    return num_experts * (1 - (1 - num_tokens / num_experts) ** top_k)


def distinct_stub(num_experts, top_k, num_tokens):
    raise NotImplementedError


# --- lru_cache(trace, cache_size) -> (hits, misses) ----------------------------------------------

lru_solution = lesson_solution("10", "lru_cache")


def lru_with_list(trace, cache_size):  # also correct: a plain list in use order
    resident, hits, misses = [], 0, 0
    for token in trace.tolist():
        for expert in token:
            if expert in resident:
                hits += 1
                resident.remove(expert)
            else:
                misses += 1
                if len(resident) >= cache_size:
                    resident.remove(next(e for e in resident if e not in token))
            resident.append(expert)
    return hits, misses


def lru_with_timestamps(trace, cache_size):  # also correct: last-use times, evict the oldest
    last_use, hits, misses, clock = {}, 0, 0, 0
    for token in trace.tolist():
        for expert in token:
            clock += 1
            if expert in last_use:
                hits += 1
            else:
                misses += 1
                if len(last_use) >= cache_size:
                    spare = {e: t for e, t in last_use.items() if e not in token}
                    del last_use[min(spare, key=spare.get)]
            last_use[expert] = clock
    return torch.tensor(hits), torch.tensor(misses)


def _lru(trace, cache_size, *, refresh=True, evict_last=False, room=None, limit=True,
         protect=True):
    resident, hits, misses = OrderedDict(), 0, 0
    room = cache_size if room is None else room
    for token in trace.tolist():
        for expert in token:
            if expert in resident:
                hits += 1
                if refresh:
                    resident.move_to_end(expert)
                continue
            misses += 1
            if limit and len(resident) >= room:
                order = list(reversed(resident)) if evict_last else list(resident)
                del resident[next(e for e in order if not protect or e not in token)]
            resident[expert] = None
    return hits, misses


def lru_plain(trace, cache_size):  # textbook LRU: may evict an expert the token still needs
    return _lru(trace, cache_size, protect=False)


def lru_fifo(trace, cache_size):
    return _lru(trace, cache_size, refresh=False)


def lru_fifo_plain(trace, cache_size):
    return _lru(trace, cache_size, refresh=False, protect=False)


def lru_mru(trace, cache_size):
    return _lru(trace, cache_size, evict_last=True)


def lru_unbounded(trace, cache_size):
    return _lru(trace, cache_size, limit=False)


def lru_room_plus_one(trace, cache_size):
    return _lru(trace, cache_size, room=cache_size + 1)


def lru_swapped(trace, cache_size):
    hits, misses = _lru(trace, cache_size)
    return misses, hits


def lru_counts_tokens(trace, cache_size):
    resident, hits, misses = OrderedDict(), 0, 0
    for token in trace.tolist():
        all_in = all(e in resident for e in token)
        hits, misses = hits + all_in, misses + (not all_in)
        for expert in token:
            if expert not in resident and len(resident) >= cache_size:
                del resident[next(e for e in resident if e not in token)]
            resident[expert] = None
            resident.move_to_end(expert)
    return hits, misses


def lru_no_cold_misses(trace, cache_size):
    hits, misses = _lru(trace, cache_size)
    return hits, misses - len(set(trace.reshape(-1).tolist()))


def lru_in_place(trace, cache_size):
    out = _lru(trace, cache_size)
    trace[0, 0] = -1
    return out


def lru_stub(trace, cache_size):
    raise NotImplementedError


CASES = [
    (check_expected_distinct_experts, distinct_solution, "passed", "all cases match"),
    (check_expected_distinct_experts, distinct_by_log, "passed", "all cases match"),
    (check_expected_distinct_experts, distinct_as_tensor, "passed", "all cases match"),
    (check_expected_distinct_experts, distinct_with_replacement, "failed", "with replacement"),
    (check_expected_distinct_experts, distinct_no_collisions, "failed", "min(B*K, E)"),
    (check_expected_distinct_experts, distinct_untouched, "failed", "untouched by all B tokens"),
    (check_expected_distinct_experts, distinct_share, "failed", "multiply by E"),
    (check_expected_distinct_experts, distinct_rounded, "failed", "rounded"),
    (check_expected_distinct_experts, distinct_swapped, "failed", "swapped"),
    (check_expected_distinct_experts, distinct_stub, "not implemented", "not implemented yet"),
    (check_lru_cache, lru_solution, "passed", "all cases match"),
    (check_lru_cache, lru_with_list, "passed", "all cases match"),
    (check_lru_cache, lru_with_timestamps, "passed", "all cases match"),
    (check_lru_cache, lru_plain, "failed", "still needs"),
    (check_lru_cache, lru_fifo, "failed", "FIFO"),
    (check_lru_cache, lru_fifo_plain, "failed", "FIFO"),
    (check_lru_cache, lru_mru, "failed", "most recently used"),
    (check_lru_cache, lru_unbounded, "failed", "never evicts"),
    (check_lru_cache, lru_room_plus_one, "failed", "cache_size + 1"),
    (check_lru_cache, lru_swapped, "failed", "in that order"),
    (check_lru_cache, lru_counts_tokens, "failed", "counted tokens"),
    (check_lru_cache, lru_no_cold_misses, "failed", "first use"),
    (check_lru_cache, lru_in_place, "failed", "in place"),
    (check_lru_cache, lru_stub, "not implemented", "not implemented yet"),
]


@pytest.mark.parametrize("check, fn, status, message", CASES,
                         ids=[f"{c.__name__}-{f.__name__}" for c, f, _, _ in CASES])
def test_checker_verdicts(check, fn, status, message, capsys):
    result = check(fn)
    assert result.status == status, result.message
    assert message in result.message
    assert str(result) in capsys.readouterr().out  # one line printed for the learner
