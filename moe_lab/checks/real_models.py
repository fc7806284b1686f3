"""Checkers for lesson 09 (real models).

- :func:`check_group_limited_topk`: ``group_limited_topk(scores_for_choice, top_k, num_groups,
  topk_groups) -> topk_idx`` (N, K): DeepSeek-V3's choice within the best groups (compared, as
  sets, with :func:`moe_lab.routing.topk_routing`).
- :func:`check_input_weighted_combine`: ``input_weighted_combine(x, topk_idx, topk_weights,
  experts) -> y`` (N, D) = sum_k Expert_{i_k}(w_k x): Llama 4's order (compared with
  ``SparseMoE(..., weight_inputs=True)``), gradients reaching the weights.
- :func:`check_convert_mixtral_experts`: ``convert_mixtral_experts(gate_up_proj, down_proj) ->
  (w_gate, w_up, w_down)``: transformers' fused Mixtral tensors in moe_lab's layout (compared with
  :func:`moe_lab.interop.mixtral_expert_weights`).
- :func:`check_greedy_packing`: ``greedy_packing(expert_load, num_devices) -> list of G lists of
  expert ids``: heaviest first onto the least-loaded device with a free slot (compared by device
  loads with :func:`moe_lab.analysis.placement.balanced_packing`; ties may go either way).

Catalogued mistakes: no group limit, a group scored by its best expert or by all of them, masking
with 0 instead of -inf; weighting the output (or both, or neither), only the first slot,
detached weights, editing x in place; gate and up swapped, gpt-oss's interleaved split, a
missing transpose; lightest first, contiguous or round-robin placement, ignoring the slots.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.analysis.placement import balanced_packing
from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    diagnose,
    expect_same_grad,
    fresh,
    set_case,
    whole_number,
)
from moe_lab.experts import Experts
from moe_lab.interop import mixtral_expert_weights
from moe_lab.layer import SparseMoE
from moe_lab.routing import limit_to_top_groups


def _as_sets(topk_idx: torch.Tensor) -> torch.Tensor:
    return topk_idx.sort(dim=-1).values


# ----------------------------------------------------------------------------- DeepSeek-V3

def _grouped_choice(scores: torch.Tensor, top_k: int, num_groups: int, topk_groups: int,
                    group_score: Callable[[torch.Tensor], torch.Tensor], fill: float) -> torch.Tensor:
    """Group-limited top-k with a given group score and mask value: the reference and its
    catalogued variants."""
    num_tokens, num_experts = scores.shape
    grouped = scores.view(num_tokens, num_groups, num_experts // num_groups)  # (N, G, E/G)
    best = group_score(grouped).topk(topk_groups, dim=-1).indices  # (N, topk_groups)
    keep = torch.zeros(num_tokens, num_groups, dtype=torch.bool).scatter(1, best, True)  # (N, G)
    keep = keep.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)  # (N, E)
    return _as_sets(scores.masked_fill(~keep, fill).topk(top_k, dim=-1).indices)


_GROUP_CASES = ((24, 16, 4, 4, 2, 1.2), (32, 12, 3, 3, 1, 1.2), (16, 32, 8, 8, 4, 1.2),
               (9, 8, 2, 2, 1, 1.2), (1, 8, 4, 2, 2, 1.2), (16, 8, 4, 4, 2, 3.0),
               (10, 8, 1, 3, 1, 1.2))
# (N, E, G, K, topk_groups, largest selection bias below 0); the last has no limit. In the
# sixth, K is every expert the two kept groups hold and biased scores reach -3: an expert of a
# dropped group masked with a finite value (0, -1) beats a kept one.


@checker("check_group_limited_topk")
def check_group_limited_topk(fn: Callable[[torch.Tensor, int, int, int], object]) -> None:
    gen = torch.Generator().manual_seed(9)
    for num_tokens, num_experts, num_groups, top_k, topk_groups, depth in _GROUP_CASES:
        # sigmoid scores plus a selection bias: some biased scores are negative
        scores = torch.sigmoid(torch.randn(num_tokens, num_experts, generator=gen)) \
            + torch.empty(num_experts).uniform_(-depth, 0.2, generator=gen)  # (N, E)
        case = f"(N={num_tokens}, E={num_experts}, groups={num_groups}, K={top_k}, " \
               f"topk_groups={topk_groups})"
        set_case(case)
        got = call(fn, scores.clone(), top_k, num_groups, topk_groups,
                   names=("scores_for_choice",))
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"Return topk_idx, a (N, K) tensor, got {type(got).__name__}.")
        if got.is_floating_point():
            raise CheckFailed(f"{case}: you returned floats: return the expert indices "
                              "(torch.topk(...).indices), not the scores.")
        if got.shape != (num_tokens, top_k):
            raise CheckFailed(f"{case}: topk_idx should have shape (N, K) = {(num_tokens, top_k)}, "
                              f"got {tuple(got.shape)}.")
        kept = limit_to_top_groups(scores, num_groups, topk_groups)  # (N, E), -inf outside
        expected = _as_sets(kept.topk(top_k).indices)
        got = _as_sets(got.long())
        best_two = lambda g: g.topk(min(2, g.shape[-1]), dim=-1).values.sum(-1)  # noqa: E731
        suspects = [
            (_as_sets(scores.topk(top_k).indices),
             "You chose among all experts: first keep only the topk_groups best groups."),
            (_grouped_choice(scores, top_k, num_groups, topk_groups, lambda g: g.max(-1).values,
                             float("-inf")),
             "You scored each group by its best expert: a group's score is the sum of its TWO "
             "best scores."),
            (_grouped_choice(scores, top_k, num_groups, topk_groups, lambda g: g.sum(-1),
                             float("-inf")),
             "You scored each group by the sum of all its experts: a group's score is the sum "
             "of its two best scores."),
        ]
        outside = ~torch.isfinite(kept.gather(1, got.clamp(0, num_experts - 1)))  # (N, K)
        if bool(outside.any()) and _finite_mask_choice(got, kept, outside):
            masks = [fill for fill in (0.0, -1.0) if torch.equal(
                got, _grouped_choice(scores, top_k, num_groups, topk_groups, best_two, fill))]
            value = f"with {masks[0]:g}" if masks else "with a finite value"
            suspects.append((got, f"You masked the dropped groups {value}, but a biased score "
                             f"can be lower than that (here down to {float(scores.min()):.2f}), "
                             "so an expert of a dropped group beat a kept one: mask with "
                             "float('-inf')."))
        diagnose(got, expected, f"topk_idx {case}", suspects,
                 otherwise=f"{case}: your choice differs from the reference for "
                           f"{int((got != expected).any(-1).sum())} of {num_tokens} tokens.")


def _finite_mask_choice(got: torch.Tensor, kept: torch.Tensor, outside: torch.Tensor) -> bool:
    """Whether ``got`` (N, K) is what a finite mask value gives: each token's kept picks are its
    best experts of the kept groups, and the picks from dropped groups (tied at the mask value)
    fill the rest. ``kept`` (N, E) holds -inf outside the kept groups; ``outside`` (N, K) marks
    the picks from dropped groups."""
    for row, is_out, scores in zip(got, outside, kept, strict=True):
        inside = row[~is_out]  # (m,) the picks from the kept groups
        best = scores.topk(inside.numel()).indices  # (m,) the m best kept experts
        if not torch.equal(inside.sort().values, best.sort().values):
            return False
    return True


# ----------------------------------------------------------------------------- Llama 4

_INPUT_CASES = ((12, 8, 16, 6, 2), (10, 8, 12, 4, 1), (7, 4, 8, 4, 3), (1, 8, 12, 4, 2))  # (N, D, F, E, K)


@checker("check_input_weighted_combine")
def check_input_weighted_combine(fn: Callable[..., object]) -> None:
    for seed, (num_tokens, d_model, d_ff, num_experts, top_k) in enumerate(_INPUT_CASES):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = SparseMoE(d_model, d_ff, num_experts, top_k, scoring="sigmoid", normalize=False,
                              weight_inputs=True)
            x = torch.randn(num_tokens, d_model) * 2  # (N, D)
        routing = layer.router(x)
        x_ref, weights_ref = fresh(x, routing.topk_weights, grad=True)  # (N, D), (N, K)
        expected = _input_weighted_reference(x_ref, routing.topk_idx, weights_ref, layer.experts)
        case = f"(N={num_tokens}, E={num_experts}, K={top_k})"
        set_case(case)
        x_in, weights = fresh(x, routing.topk_weights, grad=True)
        got = call(fn, x_in, routing.topk_idx.clone(), weights, layer.experts,
                   names=("x", "topk_idx", "topk_weights"))
        diagnose(got, expected.detach(), f"{case}: y",
                 _weighting_suspects(x, routing.topk_idx, routing.topk_weights.detach(),
                                     layer.experts))
        expect_same_grad(got, expected, {"x": x_in, "topk_weights": weights},
                         {"x": x_ref, "topk_weights": weights_ref}, f"{case}: y")


def _input_weighted_reference(x: torch.Tensor, topk_idx: torch.Tensor, weights: torch.Tensor,
                              experts: Experts) -> torch.Tensor:
    """y_n = sum_k Expert_{i_nk}(w_nk x_n), differentiable in x and the weights (the router's
    decision given): the value of ``SparseMoE(..., weight_inputs=True)``."""
    y = torch.zeros_like(x)  # (N, D)
    for e in range(experts.num_experts):
        token, slot = (topk_idx == e).nonzero(as_tuple=True)  # (M_e,) each
        # y[token] += Expert_e(w[token, slot] * x[token])
        y = y.index_add(0, token, experts.forward_expert(weights[token, slot, None] * x[token], e))
    return y


def _weighting_suspects(x: torch.Tensor, topk_idx: torch.Tensor, weights: torch.Tensor,
                        experts: Experts) -> list[tuple[torch.Tensor, str]]:
    """y for each catalogued mistake of Llama 4's input weighting, with its hint."""
    top_k = topk_idx.shape[1]
    with torch.no_grad():
        def run(w: torch.Tensor, scale_in: bool, scale_out: bool, slots: int,
                x_scale: torch.Tensor | None = None) -> torch.Tensor:
            y = torch.zeros_like(x)  # (N, D)
            for n in range(x.shape[0]):
                x_n = x[n:n + 1] * (1.0 if x_scale is None else x_scale[n])  # (1, D)
                for k in range(slots):
                    h = experts.forward_expert((w[n, k] if scale_in else 1.0) * x_n,
                                               int(topk_idx[n, k]))[0]  # (D,)
                    y[n] += (w[n, k] if scale_out else 1.0) * h
            return y

        renormalised = weights / weights.sum(-1, keepdim=True)  # (N, K)
        suspects = [
            (run(weights, False, True, top_k), "You weighted the expert's OUTPUT, w * E(x) "
             "(Mixtral's order); Llama 4 scales the input: E(w * x), and the outputs are summed "
             "as they are."),
            (run(weights, True, True, top_k), "You scaled both the input and the output: Llama 4 "
             "scales only the input."),
            (run(weights, False, False, top_k, weights.sum(-1)), "You scaled x once by the sum "
             "of its weights and gave that to every expert: each expert gets x scaled by its "
             "own weight, E_k(w_k * x)."),
        ]
        if top_k > 1:
            suspects.append((run(renormalised, True, False, top_k), "You renormalised the "
                             "weights to sum to 1 over the K experts: Llama 4 uses the sigmoid "
                             "scores as they are (normalize=False)."))
        suspects += [
            (run(weights, False, False, top_k), "The weights are missing (each expert got x as "
             "it is" + (", which is also what renormalising over K = 1 expert gives" if top_k == 1
                        else "") + "): scale each expert's input by its own sigmoid score."),
            (run(weights, True, False, 1), "Only the first expert of each token counts: sum "
             "over all K."),
        ]
    return suspects


# ----------------------------------------------------------------------------- Mixtral weights

_CONVERT_CASES = ((4, 16, 24), (3, 8, 8), (2, 6, 10))  # (E, D, F); D == F hides a transpose


@checker("check_convert_mixtral_experts")
def check_convert_mixtral_experts(fn: Callable[[torch.Tensor, torch.Tensor], object]) -> None:
    gen = torch.Generator().manual_seed(4)
    for num_experts, d_model, d_ff in _CONVERT_CASES:
        gate_up_proj = torch.randn(num_experts, 2 * d_ff, d_model, generator=gen)  # (E, 2F, D)
        down_proj = torch.randn(num_experts, d_model, d_ff, generator=gen)  # (E, D, F)
        case = f"(E={num_experts}, D={d_model}, F={d_ff})"
        set_case(case)
        got = call(fn, *fresh(gate_up_proj, down_proj), names=("gate_up_proj", "down_proj"))
        if not (isinstance(got, tuple | list) and len(got) == 3
                and all(isinstance(t, torch.Tensor) for t in got)):
            raise CheckFailed("Return three tensors (w_gate, w_up, w_down), "
                              f"got {type(got).__name__}.")
        expected = mixtral_expert_weights(gate_up_proj, down_proj)
        names = ("w_gate", "w_up", "w_down")
        shapes = ((num_experts, d_model, d_ff),) * 2 + ((num_experts, d_ff, d_model),)
        for name, tensor, shape in zip(names, got, shapes, strict=True):
            if tensor.shape != shape:
                hint = (" F.linear(x, W) computes x @ W.T: transpose the last two dimensions."
                        if tensor.shape == (shape[0], shape[2], shape[1]) else "")
                raise CheckFailed(f"{case}: {name} should have shape {shape}, got "
                                  f"{tuple(tensor.shape)}.{hint}")
        gate_rows, up_rows = gate_up_proj.chunk(2, dim=1)  # (E, F, D)
        interleaved = (gate_up_proj[:, ::2].transpose(1, 2), gate_up_proj[:, 1::2].transpose(1, 2))
        for i, (name, tensor, reference) in enumerate(zip(names, got, expected, strict=True)):
            untransposed = (gate_rows, up_rows, down_proj)[i]  # (E, F, D) or (E, D, F)
            suspects = [(untransposed, f"{name} is not transposed (D == F here, so the shape "
                         "could not tell): F.linear(x, W) computes x @ W.T.")] \
                if d_model == d_ff else [
                (untransposed.reshape(reference.shape), f"You reshaped {name} to its new "
                 "shape: reshape keeps the numbers in memory order, so rows and columns get "
                 "mixed; transpose the last two dimensions (.transpose(1, 2)).")]
            if name != "w_down":
                suspects += [
                    (expected[1 - i], "Gate and up are swapped: the FIRST F rows of "
                     "gate_up_proj are the gate (gate, up = ....chunk(2, dim=1))."),
                    (interleaved[i], "You took every other row (gpt-oss's interleaved layout); "
                     "Mixtral stacks [gate; up]: the first F rows, then the next F."),
                ]
            diagnose(tensor, reference, f"{case}: {name}", suspects,
                     otherwise=f"{case}: {name} differs from the reference.")


# ----------------------------------------------------------------------------- placement

_PACKING_CASES = ((torch.tensor([9.0, 1.0, 7.0, 3.0, 5.0, 2.0, 8.0, 4.0]), 2),
                 (torch.tensor([30.0, 2.0, 3.0, 11.0, 5.0, 7.0, 1.0, 13.0, 17.0]), 3),
                 (torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]), 4),
                 (torch.tensor([5.0, 5.0, 5.0, 5.0]), 4),
                 # lightest-first and a snake placement differ here (they agree above)
                 (torch.tensor([8.0, 9, 24, 1, 29, 25, 15, 10, 29, 35, 18, 21]), 3))


def _loads(devices: list[list[int]], load: torch.Tensor) -> list[float]:
    return sorted(float(load[list(d)].sum()) if d else 0.0 for d in devices)


def _fill_in_order(order: list[int], load: torch.Tensor, num_devices: int) -> list[list[int]]:
    """Each expert of ``order`` onto the least-loaded device with a free slot (the greedy rule,
    for a mistaken order)."""
    slots = load.numel() // num_devices
    devices: list[list[int]] = [[] for _ in range(num_devices)]
    totals = [0.0] * num_devices
    for expert in order:
        device = min((g for g in range(num_devices) if len(devices[g]) < slots),
                     key=totals.__getitem__)
        devices[device].append(expert)
        totals[device] += float(load[expert])
    return devices


def _partition(devices: list[list[int]]) -> list[list[int]]:
    """A placement without its device order: each device's expert ids, sorted."""
    return sorted(sorted(int(e) for e in d) for d in devices)


@checker("check_greedy_packing")
def check_greedy_packing(fn: Callable[[torch.Tensor, int], object]) -> None:
    ambiguous = None  # the first hint of a case where two known mistakes place alike
    for load, num_devices in _PACKING_CASES:
        num_experts = load.numel()
        case = f"(E={num_experts}, G={num_devices}, loads {[int(v) for v in load.tolist()]})"
        set_case(case)
        got = call(fn, load.clone(), num_devices, names=("expert_load",))
        if isinstance(got, torch.Tensor) or not isinstance(got, list | tuple):
            raise CheckFailed("Return one list of expert ids per device (a list of G lists), "
                              f"got {type(got).__name__}.")
        odd = [d for d in got if not isinstance(d, list | tuple | torch.Tensor)
               or any(whole_number(e) is None for e in d)]
        if odd:
            raise CheckFailed(f"{case}: return one list of expert ids (ints) per device, a list "
                              f"of G lists; one device holds {odd[0]!r}.")
        devices = [[whole_number(e) for e in d] for d in got]
        if len(devices) != num_devices:
            raise CheckFailed(f"{case}: return {num_devices} lists (one per device), "
                              f"got {len(devices)}.")
        if sorted(e for d in devices for e in d) != list(range(num_experts)):
            raise CheckFailed(f"{case}: every expert must be placed exactly once.")
        if any(len(d) != num_experts // num_devices for d in devices):
            raise CheckFailed(f"{case}: each device has exactly E/G = {num_experts // num_devices} "
                              "slots (the memory for that many experts): a full device takes "
                              "no more.")
        expected = _loads(balanced_packing(load, num_devices), load)
        if _loads(devices, load) == expected:
            continue
        per_device = num_experts // num_devices
        heaviest = load.argsort(descending=True, stable=True).tolist()  # expert ids
        snake = [[] for _ in range(num_devices)]
        dealt = [[] for _ in range(num_devices)]
        for rank, expert in enumerate(heaviest):
            turn, step = divmod(rank, num_devices)
            snake[step if turn % 2 == 0 else num_devices - 1 - step].append(expert)
            dealt[step].append(expert)
        fix = "put each expert on the least-loaded device that still has a free slot."
        # (a known mistake's placement, what it is, what to do instead)
        suspects = [
            (snake, "a snake placement (heaviest first, dealt 0, 1, ..., G-1, then back G-1, "
             "..., 0)", "a fixed order ignores the loads already placed: " + fix),
            (dealt, "a round-robin deal of the sorted experts (the i-th heaviest to device "
             "i mod G)", "a fixed order ignores the loads already placed: " + fix),
            ([heaviest[g * per_device:(g + 1) * per_device] for g in range(num_devices)],
             "the sorted experts cut into contiguous runs (the E/G heaviest on device 0, ...)",
             "a fixed order ignores the loads already placed: " + fix),
            (_fill_in_order(load.argsort(stable=True).tolist(), load, num_devices),
             "the greedy rule with the lightest experts first", "sort by load, heaviest first."),
            (_fill_in_order(list(range(num_experts)), load, num_devices),
             "the greedy rule with the experts in id order", "sort by load, heaviest first "
             "(a heavy expert placed last can land on an already full device)."),
            ([list(range(g * per_device, (g + 1) * per_device)) for g in range(num_devices)],
             "the contiguous placement by expert id", fix),
            ([list(range(g, num_experts, num_devices)) for g in range(num_devices)],
             "a round-robin placement by expert id (expert e on device e mod G)", fix),
        ]
        same_placement = [f"That is {what}: {hint}" for placement, what, hint in suspects
                          if _partition(placement) == _partition(devices)]
        if len(set(same_placement)) > 1:  # two mistakes place alike here: a later case tells
            ambiguous = ambiguous or f"{case}: {same_placement[0]}"
            continue
        if same_placement:  # the very placement of a known mistake
            raise CheckFailed(f"{case}: {same_placement[0]}")
        # another placement with the loads of a known mistake: say so, not that it is one
        diagnose(_loads(devices, load), expected, f"{case}: the device loads",
                 [(_loads(placement, load), f"Your device loads equal those of {what}: {hint}")
                  for placement, what, hint in suspects],
                 otherwise=f"{case}: expected device loads {expected}, "
                           f"got {_loads(devices, load)}.")
    if ambiguous:
        raise CheckFailed(ambiguous)
