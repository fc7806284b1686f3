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
from moe_lab.checks.core import CheckFailed, checker, expect_close
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


GROUP_CASES = ((24, 16, 4, 4, 2), (32, 12, 3, 3, 1), (16, 32, 8, 8, 4), (9, 8, 2, 2, 1),
               (1, 8, 4, 2, 2), (10, 8, 1, 3, 1))  # (N, E, G, K, topk_groups); last: no limit


@checker("check_group_limited_topk")
def check_group_limited_topk(fn: Callable[[torch.Tensor, int, int, int], object]) -> None:
    gen = torch.Generator().manual_seed(9)
    for num_tokens, num_experts, num_groups, top_k, topk_groups in GROUP_CASES:
        # sigmoid scores plus a selection bias: some biased scores are negative
        scores = torch.sigmoid(torch.randn(num_tokens, num_experts, generator=gen)) \
            + torch.empty(num_experts).uniform_(-1.2, 0.2, generator=gen)  # (N, E)
        case = f"(N={num_tokens}, E={num_experts}, groups={num_groups}, K={top_k}, " \
               f"topk_groups={topk_groups})"
        scores_in = scores.clone()
        got = fn(scores_in, top_k, num_groups, topk_groups)
        if not torch.equal(scores_in, scores):
            raise CheckFailed(f"{case}: your function changed scores_for_choice in place; work on "
                              "a copy (masked_fill, not masked_fill_).")
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"return topk_idx, a (N, K) tensor, got {type(got).__name__}.")
        if got.is_floating_point():
            raise CheckFailed(f"{case}: you returned floats: return the expert indices "
                              "(torch.topk(...).indices), not the scores.")
        if got.shape != (num_tokens, top_k):
            raise CheckFailed(f"{case}: topk_idx should have shape (N, K) = {(num_tokens, top_k)}, "
                              f"got {tuple(got.shape)}.")
        expected = _as_sets(limit_to_top_groups(scores, num_groups, topk_groups).topk(top_k).indices)
        got = _as_sets(got.long())
        if torch.equal(got, expected):
            continue
        suspects = [
            (_as_sets(scores.topk(top_k).indices),
             "you chose among all experts: first keep only the topk_groups best groups."),
            (_grouped_choice(scores, top_k, num_groups, topk_groups, lambda g: g.max(-1).values,
                             float("-inf")),
             "a group's score is the sum of its TWO best scores, not its best one."),
            (_grouped_choice(scores, top_k, num_groups, topk_groups, lambda g: g.sum(-1),
                             float("-inf")),
             "a group's score is the sum of its two best scores, not of all its experts."),
            (_grouped_choice(scores, top_k, num_groups, topk_groups,
                             lambda g: g.topk(2, dim=-1).values.sum(-1), 0.0),
             "you masked the other groups with 0, but a biased score can be negative, so a "
             "masked expert beat it: mask with float('-inf')."),
        ]
        for candidate, hint in suspects:
            if torch.equal(got, candidate):
                raise CheckFailed(f"{case}: {hint}")
        raise CheckFailed(f"{case}: your choice differs from the reference for "
                          f"{int((got != expected).any(-1).sum())} of {num_tokens} tokens.")


# ----------------------------------------------------------------------------- Llama 4

INPUT_CASES = ((10, 8, 12, 4, 1), (12, 8, 16, 6, 2), (7, 4, 8, 4, 3), (1, 8, 12, 4, 2))  # (N, D, F, E, K)


@checker("check_input_weighted_combine")
def check_input_weighted_combine(fn: Callable[..., object]) -> None:
    for seed, (num_tokens, d_model, d_ff, num_experts, top_k) in enumerate(INPUT_CASES):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = SparseMoE(d_model, d_ff, num_experts, top_k, scoring="sigmoid", normalize=False,
                              weight_inputs=True)
            x = torch.randn(num_tokens, d_model) * 2  # (N, D)
        out = layer(x)
        routing, expected = out.router, out.y  # expected (N, D)
        case = f"(N={num_tokens}, E={num_experts}, K={top_k})"
        weights = routing.topk_weights.detach().clone().requires_grad_()  # (N, K)
        x_in = x.clone()
        got = fn(x_in, routing.topk_idx, weights, layer.experts)
        if not torch.equal(x_in, x):
            raise CheckFailed(f"{case}: your function changed x in place; build new tensors "
                              "(x * w, not x *= w).")
        if isinstance(got, torch.Tensor) and got.shape == expected.shape \
                and not torch.allclose(got.detach(), expected.detach(), atol=1e-5, rtol=1e-4):
            _diagnose_weighting(got.detach(), x, routing.topk_idx, routing.topk_weights.detach(),
                                layer.experts, case)
        expect_close(got.detach() if isinstance(got, torch.Tensor) else got, expected.detach(),
                     f"{case}: y")
        if got.requires_grad:
            got.square().sum().backward()
        if weights.grad is None:
            raise CheckFailed(f"{case}: y does not depend on topk_weights in autograd: the router "
                              "learns through them, so keep them in the graph (no .detach(), "
                              ".item() or torch.no_grad()).")
        expected_grad = torch.autograd.grad(expected.square().sum(), routing.topk_weights)[0]
        expect_close(weights.grad, expected_grad, f"{case}: the gradient of topk_weights",
                     hint="the weight multiplies the expert's input, inside the expert.")


def _diagnose_weighting(got: torch.Tensor, x: torch.Tensor, topk_idx: torch.Tensor,
                        weights: torch.Tensor, experts: Experts, case: str) -> None:
    with torch.no_grad():
        def run(scale_in: bool, scale_out: bool, slots: int) -> torch.Tensor:
            y = torch.zeros_like(x)
            for n in range(x.shape[0]):
                for k in range(slots):
                    w, e = weights[n, k], int(topk_idx[n, k])
                    h = experts.forward_expert((w if scale_in else 1.0) * x[n:n + 1], e)[0]
                    y[n] += (w if scale_out else 1.0) * h
            return y

        top_k = topk_idx.shape[1]
        suspects = [
            (run(False, True, top_k), "you weighted the expert's OUTPUT, w * E(x) (Mixtral's "
             "order); Llama 4 scales the input: E(w * x), and the outputs are summed as they are."),
            (run(True, True, top_k), "you scaled both the input and the output: Llama 4 scales "
             "only the input."),
            (run(False, False, top_k), "the weights are missing: scale each expert's input by "
             "its weight."),
            (run(True, False, 1), "only the first expert of each token counts: sum over all K."),
        ]
    for candidate, hint in suspects:
        if torch.allclose(got, candidate, atol=1e-5, rtol=1e-4):
            raise CheckFailed(f"{case}: {hint}")


# ----------------------------------------------------------------------------- Mixtral weights

CONVERT_CASES = ((4, 16, 24), (3, 8, 8), (2, 6, 10))  # (E, D, F); D == F hides a transpose


@checker("check_convert_mixtral_experts")
def check_convert_mixtral_experts(fn: Callable[[torch.Tensor, torch.Tensor], object]) -> None:
    gen = torch.Generator().manual_seed(4)
    for num_experts, d_model, d_ff in CONVERT_CASES:
        gate_up_proj = torch.randn(num_experts, 2 * d_ff, d_model, generator=gen)  # (E, 2F, D)
        down_proj = torch.randn(num_experts, d_model, d_ff, generator=gen)  # (E, D, F)
        case = f"(E={num_experts}, D={d_model}, F={d_ff})"
        got = fn(gate_up_proj.clone(), down_proj.clone())
        if not (isinstance(got, tuple | list) and len(got) == 3
                and all(isinstance(t, torch.Tensor) for t in got)):
            raise CheckFailed("return three tensors (w_gate, w_up, w_down), "
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
        for name, tensor, reference in zip(names, got, expected, strict=True):
            if torch.allclose(tensor, reference):
                continue
            other = expected[1] if name == "w_gate" else expected[0]
            if name != "w_down" and torch.allclose(tensor, other):
                raise CheckFailed(f"{case}: gate and up are swapped: the FIRST F rows of "
                                  "gate_up_proj are the gate (gate, up = ....chunk(2, dim=1)).")
            if name != "w_down" and torch.allclose(tensor, interleaved[names.index(name)]):
                raise CheckFailed(f"{case}: you took every other row (gpt-oss's interleaved "
                                  "layout); Mixtral stacks [gate; up]: the first F rows, then "
                                  "the next F.")
            untransposed = (gate_rows, up_rows, down_proj)[names.index(name)]
            if d_model == d_ff and torch.allclose(tensor, untransposed):
                raise CheckFailed(f"{case}: {name} is not transposed (D == F here, so the shape "
                                  "could not tell): F.linear(x, W) computes x @ W.T.")
            raise CheckFailed(f"{case}: {name} differs from the reference.")


# ----------------------------------------------------------------------------- placement

PACKING_CASES = ((torch.tensor([9.0, 1.0, 7.0, 3.0, 5.0, 2.0, 8.0, 4.0]), 2),
                 (torch.tensor([30.0, 2.0, 3.0, 11.0, 5.0, 7.0, 1.0, 13.0, 17.0]), 3),
                 (torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]), 4),
                 (torch.tensor([5.0, 5.0, 5.0, 5.0]), 4))


def _loads(devices: list[list[int]], load: torch.Tensor) -> list[float]:
    return sorted(float(load[list(d)].sum()) if d else 0.0 for d in devices)


@checker("check_greedy_packing")
def check_greedy_packing(fn: Callable[[torch.Tensor, int], object]) -> None:
    for load, num_devices in PACKING_CASES:
        num_experts = load.numel()
        case = f"(E={num_experts}, G={num_devices}, loads {[int(v) for v in load.tolist()]})"
        got = fn(load.clone(), num_devices)
        if isinstance(got, torch.Tensor) or not isinstance(got, list | tuple) \
                or not all(isinstance(d, list | tuple) for d in got):
            raise CheckFailed("return one list of expert ids per device (a list of G lists), "
                              f"got {type(got).__name__}.")
        devices = [[int(e) for e in d] for d in got]
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
        suspects = [
            (_loads(balanced_packing(load.max() - load, num_devices), load),
             "you placed the lightest experts first: sort by load, heaviest first."),
            (_loads([list(range(g * per_device, (g + 1) * per_device)) for g in range(num_devices)],
                    load), "that is the contiguous placement: put each expert on the "
             "least-loaded device that still has a free slot."),
            (_loads([list(range(g, num_experts, num_devices)) for g in range(num_devices)], load),
             "that is a round-robin placement: put each expert on the least-loaded device "
             "that still has a free slot."),
        ]
        for candidate, hint in suspects:
            if _loads(devices, load) == candidate:
                raise CheckFailed(f"{case}: {hint}")
        raise CheckFailed(f"{case}: expected device loads {expected}, got {_loads(devices, load)}.")
