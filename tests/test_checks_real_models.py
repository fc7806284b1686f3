"""Lesson 09 checkers: each solution (read from the lesson source) passes, correct alternatives
written differently pass, and each catalogued mistake fails with its hint."""

import torch
from lesson_sources import lesson_solution

from moe_lab.analysis.placement import balanced_packing, greedy_placement
from moe_lab.checks.real_models import (
    check_convert_mixtral_experts,
    check_greedy_packing,
    check_group_limited_topk,
    check_input_weighted_combine,
)
from moe_lab.interop import mixtral_expert_weights
from moe_lab.routing import limit_to_top_groups


def passes(check, fn):
    result = check(fn, verbose=False)
    assert result.status == "passed", result.message


def fails(check, fn, *hint_words):
    result = check(fn, verbose=False)
    assert result.status in ("failed", "error"), result
    for word in hint_words:
        assert word in result.message, result.message
    return result


def stub(*args):
    raise NotImplementedError("your code here")


def test_stubs_are_not_implemented():
    for check in (check_group_limited_topk, check_input_weighted_combine, check_convert_mixtral_experts,
                  check_greedy_packing):
        assert check(stub, verbose=False).status == "not implemented"


# ----------------------------------------------------------------------------- group-limited top-k

def test_group_limited_topk_solution_and_alternatives():
    passes(check_group_limited_topk, lesson_solution("09", "group_limited_topk"))
    # the package's mask, then topk
    passes(check_group_limited_topk,
           lambda s, k, g, m: limit_to_top_groups(s, g, m).topk(k).indices)
    # a per-token loop in plain Python, sorted by score (its own order)

    def loop(scores, top_k, num_groups, topk_groups):
        size = scores.shape[1] // num_groups
        rows = []
        for row in scores.tolist():
            group_score = [sum(sorted(row[g * size:(g + 1) * size])[-2:]) for g in range(num_groups)]
            best = sorted(range(num_groups), key=lambda g: -group_score[g])[:topk_groups]
            eligible = [e for e in range(len(row)) if e // size in best]
            rows.append(sorted(eligible, key=lambda e: -row[e])[:top_k][::-1])  # worst first
        return torch.tensor(rows)

    passes(check_group_limited_topk, loop)


def test_group_limited_topk_mistakes():
    fails(check_group_limited_topk, lambda s, k, g, m: s.topk(k).indices, "all experts")

    def by_best(s, k, g, m):
        grouped = s.view(s.shape[0], g, -1)
        keep = torch.zeros(s.shape[0], g, dtype=torch.bool).scatter(1, grouped.max(-1).values.topk(m).indices,
                                                                    True)
        return s.masked_fill(~keep.repeat_interleave(s.shape[1] // g, 1), float("-inf")).topk(k).indices

    fails(check_group_limited_topk, by_best, "TWO best")

    def by_sum(s, k, g, m):
        grouped = s.view(s.shape[0], g, -1)
        keep = torch.zeros(s.shape[0], g, dtype=torch.bool).scatter(1, grouped.sum(-1).topk(m).indices, True)
        return s.masked_fill(~keep.repeat_interleave(s.shape[1] // g, 1), float("-inf")).topk(k).indices

    fails(check_group_limited_topk, by_sum, "sum of all its experts")

    def zero_mask(s, k, g, m):
        return (limit_to_top_groups(s, g, m).nan_to_num(neginf=0.0)).topk(k).indices

    fails(check_group_limited_topk, zero_mask, "-inf")
    fails(check_group_limited_topk, lambda s, k, g, m: limit_to_top_groups(s, g, m).topk(k).values,
          "floats")
    fails(check_group_limited_topk, lambda s, k, g, m: limit_to_top_groups(s, g, m).topk(k).indices[:, :1],
          "shape")

    def in_place(s, k, g, m):
        s.masked_fill_(limit_to_top_groups(s, g, m) == float("-inf"), float("-inf"))
        return s.topk(k).indices

    fails(check_group_limited_topk, in_place, "in place")
    fails(check_group_limited_topk, lambda s, k, g, m: [0] * k, "tensor")


# ----------------------------------------------------------------------------- input weighting

def _loop(x, topk_idx, topk_weights, experts, *, scale_in=True, scale_out=False, slots=None):
    y = []
    for n in range(x.shape[0]):
        total = torch.zeros(x.shape[1])
        for k in range(slots or topk_idx.shape[1]):
            w, e = topk_weights[n, k], int(topk_idx[n, k])
            h = experts.forward_expert((w if scale_in else 1.0) * x[n:n + 1], e)[0]
            total = total + (w if scale_out else 1.0) * h
        y.append(total)
    return torch.stack(y)


def test_input_weighted_combine_solution_and_alternatives():
    passes(check_input_weighted_combine, lesson_solution("09", "input_weighted_combine"))
    passes(check_input_weighted_combine, _loop)

    def through_slots(x, topk_idx, topk_weights, experts):  # K rows per token, then a sum
        rows = (x.unsqueeze(1) * topk_weights.unsqueeze(-1)).reshape(-1, x.shape[1])
        flat = topk_idx.reshape(-1)
        out = torch.zeros_like(rows)
        for e in range(experts.num_experts):
            picked = (flat == e).nonzero().flatten()
            out = out.index_copy(0, picked, experts.forward_expert(rows[picked], e))
        return out.view(*topk_idx.shape, -1).sum(1)

    passes(check_input_weighted_combine, through_slots)


def test_input_weighted_combine_mistakes():
    fails(check_input_weighted_combine, lambda *a: _loop(*a, scale_in=False, scale_out=True), "OUTPUT")
    fails(check_input_weighted_combine, lambda *a: _loop(*a, scale_in=True, scale_out=True), "both")
    fails(check_input_weighted_combine, lambda *a: _loop(*a, scale_in=False), "missing")
    fails(check_input_weighted_combine, lambda *a: _loop(*a, slots=1), "all K")
    fails(check_input_weighted_combine,
          lambda x, i, w, e: _loop(x, i, w.detach(), e), "graph")

    def in_place(x, topk_idx, topk_weights, experts):
        y = _loop(x, topk_idx, topk_weights, experts)
        x.mul_(2)
        return y

    fails(check_input_weighted_combine, in_place, "in place")
    fails(check_input_weighted_combine, lambda x, *a: _loop(x, *a)[:-1], "shape")


# ----------------------------------------------------------------------------- Mixtral conversion

def test_convert_solution_and_alternatives():
    passes(check_convert_mixtral_experts, lesson_solution("09", "convert_mixtral_experts"))
    passes(check_convert_mixtral_experts, mixtral_expert_weights)

    def by_slicing(gate_up_proj, down_proj):
        f = gate_up_proj.shape[1] // 2
        return (gate_up_proj[:, :f].permute(0, 2, 1).contiguous(),
                gate_up_proj[:, f:].mT.clone(), down_proj.permute(0, 2, 1))

    passes(check_convert_mixtral_experts, by_slicing)


def test_convert_mistakes():
    def swapped(gu, d):
        g, u, w = mixtral_expert_weights(gu, d)
        return u, g, w

    fails(check_convert_mixtral_experts, swapped, "swapped")
    fails(check_convert_mixtral_experts,
          lambda gu, d: (gu[:, ::2].mT, gu[:, 1::2].mT, d.mT), "interleaved")
    fails(check_convert_mixtral_experts, lambda gu, d: (*gu.chunk(2, dim=1), d.mT), "transpose")

    def forgot_down(gu, d):
        g, u, _ = mixtral_expert_weights(gu, d)
        return g, u, d

    fails(check_convert_mixtral_experts, forgot_down, "transpose")

    def square_no_transpose(gu, d):  # right shapes whenever D == F, wrong values
        g, u, w = mixtral_expert_weights(gu, d)
        return (gu.chunk(2, dim=1)[0], u, w) if gu.shape[-1] * 2 == gu.shape[1] else (g, u, w)

    fails(check_convert_mixtral_experts, square_no_transpose, "not transposed")
    fails(check_convert_mixtral_experts, lambda gu, d: mixtral_expert_weights(gu, d)[:2], "three")


# ----------------------------------------------------------------------------- greedy packing

def test_packing_solution_and_alternatives():
    passes(check_greedy_packing, lesson_solution("09", "greedy_packing"))
    passes(check_greedy_packing, balanced_packing)
    passes(check_greedy_packing, lambda load, g: [list(d) for d in greedy_placement(load, g).experts])

    def with_heap(load, num_devices):  # the same rule through a heap of (load, device)
        import heapq
        slots = load.numel() // num_devices
        heap = [(0.0, g) for g in range(num_devices)]
        devices = [[] for _ in range(num_devices)]
        for e in sorted(range(load.numel()), key=lambda i: -float(load[i])):
            total, g = heapq.heappop(heap)
            devices[g].append(e)
            if len(devices[g]) < slots:
                heapq.heappush(heap, (total + float(load[e]), g))
        return devices

    passes(check_greedy_packing, with_heap)


def greedy_in_order(order):
    """A learner's greedy packing (least-loaded device with a free slot) that takes the experts
    in ``order(load)`` instead of heaviest first."""
    def packing(load, num_devices):
        devices, totals = [[] for _ in range(num_devices)], [0.0] * num_devices
        for e in order(load):
            g = min((g for g in range(num_devices) if len(devices[g]) < len(load) // num_devices),
                    key=totals.__getitem__)
            devices[g].append(e)
            totals[g] += float(load[e])
        return devices
    return packing


def test_packing_mistakes():
    lightest_first = greedy_in_order(lambda load: torch.argsort(load, stable=True).tolist())
    fails(check_greedy_packing, lightest_first, "lightest")
    # packing by the complements max - load, heaviest first, places like a snake
    fails(check_greedy_packing, lambda load, g: balanced_packing(load.max() - load, g), "snake")
    fails(check_greedy_packing,
          lambda load, g: [list(range(d * (len(load) // g), (d + 1) * (len(load) // g))) for d in range(g)],
          "contiguous")
    fails(check_greedy_packing, lambda load, g: [list(range(d, len(load), g)) for d in range(g)],
          "round-robin")

    def sorted_then_chunked(load, num_devices):  # heaviest first, cut into E/G runs
        order, per = torch.argsort(load, descending=True, stable=True).tolist(), len(load) // num_devices
        return [order[d * per:(d + 1) * per] for d in range(num_devices)]

    fails(check_greedy_packing, sorted_then_chunked, "contiguous runs")
    fails(check_greedy_packing, greedy_in_order(lambda load: range(len(load))), "id order")

    def round_robin_with_a_tie_swapped(load, num_devices):
        """Right on the first cases; on the one with two experts of load 29 (4 and 8), the
        round-robin by id with those two swapped: its loads, not its placement."""
        if len(load) != 12:
            return balanced_packing(load, num_devices)
        devices = [list(range(d, len(load), num_devices)) for d in range(num_devices)]
        devices[1][devices[1].index(4)], devices[2][devices[2].index(8)] = 8, 4
        return devices

    fails(check_greedy_packing, round_robin_with_a_tie_swapped,
          "device loads equal those of a round-robin placement by expert id")

    def no_slot_limit(load, num_devices):
        devices, totals = [[] for _ in range(num_devices)], [0.0] * num_devices
        for e in torch.argsort(load, descending=True).tolist():
            g = min(range(num_devices), key=lambda d: totals[d])
            devices[g].append(e)
            totals[g] += float(load[e])
        return devices

    fails(check_greedy_packing, no_slot_limit, "slots")
    fails(check_greedy_packing, lambda load, g: torch.arange(len(load)) % g, "one list")
    fails(check_greedy_packing, lambda load, g: balanced_packing(load, g)[:-1], "one per device")
    fails(check_greedy_packing, lambda load, g: [d[:1] * len(d) for d in balanced_packing(load, g)],
          "exactly once")
