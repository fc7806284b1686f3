"""Dispatch: send each token to its K experts, run them, and combine the weighted results.

    y_n = sum_{k : (n, k) kept} topk_weights[n, k] * Expert_{topk_idx[n, k]}(x_n)

Four strategies compute this same sum (lessons 03 and 06):

- ``"dense"``: every expert on every token, then a (N, E) combine matrix zeroes the unchosen ones.
  E/K times the FLOPs: the reference that the others are tested against.
- ``"loop"``: a Python loop over experts, gather that expert's tokens, ``index_add_`` the result
  (Hugging Face's Mixtral code). One small matmul per expert: many launches on a GPU.
- ``"sorted"``: sort the N*K assignments by expert so each expert's tokens are a contiguous
  segment, run all experts with a grouped GEMM (``moe_lab.grouped_gemm``: torch's fused kernel
  where the GPU has one, else a loop of ``mm``), then put each row back to its (token, slot) and
  sum over K (megablocks, transformers' grouped_mm experts). Dropless, it reads nothing on the
  host (counts and offsets stay on the device; only the loop fallback copies the offsets once),
  so ``torch.compile(fullgraph=True)`` compiles it. The unsort is an
  ``index_copy`` with distinct indices and a batched matmul, so the forward pass has no atomic
  adds and its results are deterministic (the backward of the gather is an ``index_add``, which
  uses atomics on a GPU: set ``torch.use_deterministic_algorithms(True)`` for bit-exact grads).
- ``"padded"``: copy tokens into a (E, C, D) buffer, C slots per expert, and run one ``bmm``
  (GShard, Switch). Fixed shapes, but empty slots cost FLOPs.

Capacity. With ``capacity_factor`` set, each expert takes at most

    C = ceil(capacity_factor * N * K / E)

assignments; the rest are dropped and contribute nothing (the residual stream carries the token
on). We drop in token order: assignments are ranked within their expert by (token, slot), so
later tokens in the batch lose. Other systems differ: Switch (top-1) also drops in token order;
GShard ranks all first choices before any second choice, so a token's top-1 expert wins over
other tokens' top-2; DeepSpeed-MoE follows GShard and can instead keep a random subset of tokens
("random token selection"). Every dropped (token, slot) is reported, never silently lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe_lab.experts import Experts
from moe_lab.validation import (
    check_bool,
    check_float_tensor,
    check_index_tensor,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_top_k,
)

DISPATCH_STRATEGIES = ("dense", "loop", "sorted", "padded")


def compute_capacity(capacity_factor: float, num_tokens: int, top_k: int, num_experts: int) -> int:
    """C = ceil(capacity_factor * N * K / E): the most assignments one expert accepts.

    capacity_factor is a finite number > 0, N >= 0, 1 <= K <= E."""
    check_positive_float("capacity_factor", capacity_factor)
    check_nonnegative_int("num_tokens", num_tokens)
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    mean_load = capacity_factor * num_tokens * top_k / num_experts
    if not math.isfinite(mean_load):
        raise ValueError(f"capacity_factor={capacity_factor} is too large: "
                         f"capacity_factor * N * K / E overflows")
    return math.ceil(mean_load)


@dataclass(frozen=True)
class RoutingPlan:
    """Where every (token, slot) assignment goes, after capacity.

    topk_idx:          (N, K) int64 expert of each assignment
    topk_weights:      (N, K) combine weight of each assignment
    keep:              (N, K) bool, False where the assignment was dropped
    position:          (N, K) int64 rank of the assignment among its expert's, in token order
    sort_order:        (M,) flat (token * K + slot) ids of the kept assignments, sorted by expert
    tokens_per_expert: (E,) int64 kept assignments per expert
    capacity:          C, or None when dropless
    """

    topk_idx: torch.Tensor
    topk_weights: torch.Tensor
    keep: torch.Tensor
    position: torch.Tensor
    sort_order: torch.Tensor
    tokens_per_expert: torch.Tensor
    capacity: int | None

    @property
    def num_experts(self) -> int:
        return self.tokens_per_expert.shape[0]


def make_routing_plan(topk_idx: torch.Tensor, topk_weights: torch.Tensor, num_experts: int,
                      capacity: int | None = None, *, check_range: bool = True) -> RoutingPlan:
    """Rank each assignment within its expert (stable sort = token order) and apply capacity.

    topk_idx (N, K): int64 (int32 is converted) expert ids in [0, E); topk_weights (N, K)
    float; capacity: None (dropless) or an int >= 0. ``check_range=False`` skips reading the
    ids' min and max on the host (two syncs on a GPU), for ids straight from a router."""
    check_positive_int("num_experts", num_experts)
    check_bool("check_range", check_range)
    topk_idx = check_index_tensor("topk_idx", topk_idx, None,
                                  num_experts if check_range else None)
    check_float_tensor("topk_weights", topk_weights)
    if topk_weights.shape != topk_idx.shape:
        raise ValueError(f"topk_weights must have the shape of topk_idx {tuple(topk_idx.shape)}, "
                         f"got {tuple(topk_weights.shape)}")
    if capacity is not None:
        check_nonnegative_int("capacity", capacity)
    num_tokens, top_k = topk_idx.shape
    flat_expert = topk_idx.reshape(-1)  # (N*K,)
    sort_order = torch.argsort(flat_expert, stable=True)  # (N*K,)
    # counts[e] = #{assignments to e}: a scatter_add of ones, computed on the device (bincount
    # reads the ids' max on the host first: a sync on a GPU)
    counts = torch.zeros(num_experts, dtype=torch.long, device=topk_idx.device) \
        .scatter_add_(0, flat_expert, torch.ones_like(flat_expert))  # (E,)
    # rank within expert = index in the sorted list - start of the expert's segment
    segment_start = counts.cumsum(0) - counts  # (E,)
    rank_sorted = torch.arange(flat_expert.numel(), device=topk_idx.device) \
        - segment_start[flat_expert[sort_order]]  # (N*K,)
    position = torch.empty_like(flat_expert).index_copy_(0, sort_order, rank_sorted)  # (N*K,)
    if capacity is None:
        keep = torch.ones_like(flat_expert, dtype=torch.bool)  # (N*K,)
        tokens_per_expert = counts
    else:
        keep = position < capacity  # (N*K,)
        sort_order = sort_order[keep[sort_order]]  # (M,) kept, still grouped by expert
        tokens_per_expert = counts.clamp(max=capacity)
    return RoutingPlan(
        topk_idx=topk_idx,
        topk_weights=topk_weights,
        keep=keep.view(num_tokens, top_k),
        position=position.view(num_tokens, top_k),
        sort_order=sort_order,
        tokens_per_expert=tokens_per_expert,
        capacity=capacity,
    )


def combine_kept(h_kept: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
    """The weighted sum back in token order: kept rows (M, D), in ``plan.sort_order`` -> y (N, D).

    Each row goes back to its (token, slot) with an ``index_copy`` (distinct indices: no atomic
    adds, deterministic on every device); dropped slots stay zero; then the K slots of every token
    are weighted and summed in the weights' precision (float32 from the router, whatever the
    experts' dtype: a bf16 layer does not round its weights to bf16), and the sum is rounded
    once to the experts' dtype. transformers' grouped experts combine the same way.
    """
    num_tokens, top_k = plan.topk_idx.shape
    d_model = h_kept.shape[-1]
    slots = h_kept.new_zeros(num_tokens * top_k, d_model)  # (N*K, D)
    slots = slots.index_copy(0, plan.sort_order, h_kept)  # (N*K, D)
    weights = plan.topk_weights * plan.keep  # (N, K), 0 where dropped
    # y_n = sum_k w_{n,k} h_{n,k}:  (N, K, D) * (N, K, 1), summed over k
    weighted = slots.view(num_tokens, top_k, d_model) * weights.unsqueeze(-1)  # (N, K, D)
    return weighted.sum(dim=1).to(h_kept.dtype)  # (N, D)


def dispatch_dense(x: torch.Tensor, plan: RoutingPlan, experts: Experts) -> torch.Tensor:
    """Reference: all E experts on all N tokens, combined by a sparse (N, E) weight matrix."""
    kept_weights = plan.topk_weights * plan.keep  # (N, K)
    # combine[n, e] = sum_k kept_weights[n, k] * [topk_idx[n, k] == e]
    combine = kept_weights.new_zeros(x.shape[0], plan.num_experts)  # (N, E)
    combine = combine.scatter_add(1, plan.topk_idx, kept_weights)  # (N, E)
    h_all = experts.forward_all(x)  # (E, N, D)
    return torch.einsum("ne,end->nd", combine.to(h_all.dtype), h_all)  # (N, D)


def dispatch_loop(x: torch.Tensor, plan: RoutingPlan, experts: Experts) -> torch.Tensor:
    """One expert at a time: gather its tokens, run it, ``index_add_`` the weighted result."""
    y = torch.zeros_like(x)  # (N, D)
    for e in range(plan.num_experts):
        token_idx, slot = torch.where((plan.topk_idx == e) & plan.keep)  # (n,), (n,)
        if token_idx.numel() == 0:
            continue
        h = experts.forward_expert(x[token_idx], e)  # (n, D)
        weight = plan.topk_weights[token_idx, slot].unsqueeze(-1)  # (n, 1)
        y.index_add_(0, token_idx, (h * weight).to(y.dtype))
    return y


def dispatch_sorted(x: torch.Tensor, plan: RoutingPlan, experts: Experts) -> torch.Tensor:
    """Sort by expert -> contiguous segments -> grouped GEMM -> unsort -> weighted sum."""
    top_k = plan.topk_idx.shape[1]
    token_of = plan.sort_order // top_k  # (M,)
    # index_select, not x[token_of]: its backward (an index_add) is several times faster on CPU
    x_sorted = x.index_select(0, token_of)  # (M, D)
    # the counts stay on the device: the grouped GEMM's offsets are their cumulative sum
    # (moe_lab.grouped_gemm says where a kernel without device offsets copies them to the host)
    h_sorted = experts.forward_grouped(x_sorted, plan.tokens_per_expert)  # (M, D)
    return combine_kept(h_sorted, plan)  # (N, D)


def dispatch_padded(x: torch.Tensor, plan: RoutingPlan, experts: Experts) -> torch.Tensor:
    """Copy tokens into an (E, C, D) buffer (C = capacity, or the busiest expert's load when
    dropless), one bmm for all experts, then read each kept row back out of its slot."""
    num_tokens, top_k = plan.topk_idx.shape
    num_experts, d_model = plan.num_experts, x.shape[-1]
    # C slots per expert, but never more than N*K, the most one expert can receive: a huge
    # capacity_factor must not allocate rows that no assignment can fill
    capacity = min(plan.capacity, num_tokens * top_k) if plan.capacity is not None else \
        int(plan.tokens_per_expert.max().item()) if num_tokens else 0
    flat_kept = plan.sort_order  # (M,)
    # buffer row of an assignment = expert * C + its position within the expert
    buffer_row = (plan.topk_idx.reshape(-1) * capacity + plan.position.reshape(-1))[flat_kept]  # (M,)
    buffer = x.new_zeros(num_experts * capacity, d_model)  # (E*C, D)
    buffer = buffer.index_copy(0, buffer_row, x.index_select(0, flat_kept // top_k))  # (E*C, D)
    h = experts.forward_padded(buffer.view(num_experts, capacity, d_model))  # (E, C, D)
    h_kept = h.reshape(num_experts * capacity, d_model).index_select(0, buffer_row)  # (M, D)
    return combine_kept(h_kept, plan)  # (N, D)


DISPATCH_FUNCTIONS = {
    "dense": dispatch_dense,
    "loop": dispatch_loop,
    "sorted": dispatch_sorted,
    "padded": dispatch_padded,
}
