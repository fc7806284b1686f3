"""Auxiliary losses that keep the router balanced and stable. Lesson 04.

Each is a pure function of tensors. ``mask`` (N,) marks real tokens (True or 1) against padding
(False or 0); padding is left out of every mean. With several MoE layers, average the per-layer
losses (:func:`average_over_layers`), so the coefficient does not grow with depth.

Shared rules, the same for every loss here:

- No token to balance (N = 0, or a mask that is all padding): the loss is 0, a tensor still
  connected to the input's graph (its gradient is 0). Never NaN from finite input.
- Computed in the input's dtype when it is float32 or float64 (so ``torch.autograd.gradcheck``
  passes in float64); float16 and bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from moe_lab.validation import (
    check_bool,
    check_float_tensor,
    check_index_tensor,
    check_mask,
    check_positive_float,
    check_positive_int,
)


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least: float64 stays float64, bf16 and fp16 go up to float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the first axis (tokens), counting only rows where mask is True; 0 when no row
    counts (N = 0 or all padding)."""
    if mask is None:
        return values.sum(dim=0) / max(values.shape[0], 1)
    weights = mask.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))
    return (values * weights).sum(dim=0) / weights.sum().clamp_min(1.0)


def _check_probs(router_probs: object) -> torch.Tensor:
    check_float_tensor("router_probs", router_probs)
    if router_probs.dim() != 2:
        raise ValueError(f"router_probs must have shape (N, E), got {tuple(router_probs.shape)}")
    return router_probs


def _expert_mask(router_probs: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
    """expert_mask[n, i] = number of token n's K choices that are expert i, in the probs' dtype."""
    return torch.zeros_like(router_probs).scatter_add(
        -1, topk_idx, torch.ones_like(topk_idx, dtype=router_probs.dtype))  # (..., E)


def load_balancing_loss(router_probs: torch.Tensor, topk_idx: torch.Tensor,
                        mask: torch.Tensor | None = None, *,
                        check_range: bool = True,
                        expert_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4), for any K.

        loss = E * sum_i f_i * P_i
        f_i  = share of the N*K assignments routed to expert i   (counts: not differentiable)
        P_i  = mean router probability of expert i                (differentiable)

    Exactly 1.0 when routing is uniform, whatever K; E when every token goes to one expert with
    probability 1. Hugging Face's Mixtral ``load_balancing_loss_func`` sums f over the K slots
    separately, which is K times this value.

    **Global batch** (Qiu et al. 2025, arXiv:2501.11873, "global-batch" balance; lesson 11):
    ``expert_counts`` (E,) are the assignments per expert counted over a larger batch than the
    one in hand, e.g. :func:`count_assignments` summed over the micro-batches of one optimizer
    step (gradient accumulation) or all-reduced over the data-parallel ranks. Then
    f_i = expert_counts_i / sum_j expert_counts_j, while P_i stays the mean over this batch
    (the only differentiable part). Every micro-batch's loss then pulls towards balance over the
    global batch, not within itself: a batch of one language may use few experts. Without
    ``expert_counts`` f is this batch's own share (the micro-batch loss).

    ``check_range=False`` skips the check that every id lies in [0, E), which reads the ids'
    min and max on the host (two syncs on a GPU): for ids straight from a router, as in
    :class:`moe_lab.lm.model.TinyLM`. Types and shapes are checked either way.
    """
    router_probs = _compute_dtype(_check_probs(router_probs))
    num_tokens, num_experts = router_probs.shape
    topk_idx = check_index_tensor("topk_idx", topk_idx, num_tokens, None)
    check_bool("check_range", check_range)
    counts = None if expert_counts is None else _check_counts(expert_counts, num_experts)
    if check_range and topk_idx.numel():  # the ids', probabilities' and counts' ranges: one sync
        ranges = [topk_idx.min(), topk_idx.max(), router_probs.detach().min(),
                  router_probs.detach().max()]
        if counts is not None:
            ranges += [counts.min(), counts.sum()]
        low_id, high_id, low, high, *count_range = torch.stack(
            [r.double().to(router_probs.device) for r in ranges]).tolist()
        if low_id < 0 or high_id >= num_experts:
            raise ValueError(f"topk_idx values must lie in [0, {num_experts}), got ids from "
                             f"{int(low_id)} to {int(high_id)}")
        if not 0 <= low <= high <= 1:  # also NaN; logits passed for probabilities give a loss < 0
            raise ValueError(f"router_probs must be probabilities in [0, 1] (the softmax of the "
                             f"router logits), got values in [{low:.3g}, {high:.3g}]"
                             + (": did you pass the logits?" if math.isfinite(low + high)
                                else ": NaN or inf"))
        if count_range and not (count_range[0] >= 0 and math.isfinite(count_range[1])):
            raise ValueError(f"expert_counts must be finite counts >= 0, got {counts.tolist()}")
    mask = check_mask(mask, num_tokens)
    if counts is None:
        f = _masked_mean(_expert_mask(router_probs, topk_idx), mask) / topk_idx.shape[1]  # (E,)
    else:
        counts = counts.to(router_probs)  # (E,)
        # f_i = c_i / sum_j c_j  over the global batch (0 when it holds no assignment)
        f = counts / counts.sum().clamp_min(1.0)  # (E,)
    p = _masked_mean(router_probs, mask)  # (E,)
    # loss = E * sum_i f_i P_i
    return num_experts * torch.sum(f * p)


def _check_counts(expert_counts: object, num_experts: int) -> torch.Tensor:
    if not isinstance(expert_counts, torch.Tensor):
        raise TypeError(f"expert_counts must be a torch.Tensor (E,) or None, got "
                        f"{type(expert_counts).__name__}")
    if expert_counts.shape != (num_experts,):
        raise ValueError(f"expert_counts must have shape (E={num_experts},), got "
                         f"{tuple(expert_counts.shape)}")
    if expert_counts.dtype == torch.bool or expert_counts.is_complex():
        raise TypeError(f"expert_counts must hold numbers, got {expert_counts.dtype}")
    return expert_counts.detach()


def count_assignments(topk_idx: torch.Tensor, num_experts: int,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """c_i = number of (token, slot) assignments to expert i (E,), int64, padding left out.

    Sum these over the micro-batches of an optimizer step (or all-reduce them over data-parallel
    ranks) and pass the sum as ``expert_counts`` to :func:`load_balancing_loss`: the
    global-batch balance loss."""
    check_positive_int("num_experts", num_experts)
    topk_idx = check_index_tensor("topk_idx", topk_idx, None, num_experts)
    mask = check_mask(mask, topk_idx.shape[0])
    if mask is not None:
        topk_idx = topk_idx[mask]  # (real tokens, K)
    return torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)


def sequence_load_balancing_loss(router_probs: torch.Tensor, topk_idx: torch.Tensor,
                                 seq_len: int, mask: torch.Tensor | None = None, *,
                                 check_range: bool = True) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (arXiv:2412.19437, section 2.1.2,
    eqs. 17-20), averaged over the sequences of the batch. Lesson 11.

    router_probs (N, E): each token's scores normalised to sum 1, in sequence-major order
    (N = B * seq_len: tokens 0..T-1 are sequence 0, ...). DeepSeek-V3 normalises its sigmoid
    scores, s'_{i,t} = s_{i,t} / sum_j s_{j,t}; softmax probabilities already sum to 1. For one
    sequence of T real tokens:

        f_i  = E / (K T) * (number of its tokens that chose expert i)   (not differentiable)
        P_i  = (1 / T) * sum_t s'_{i,t}                                 (differentiable)
        L    = sum_i f_i P_i

    and the loss is the mean of L over the sequences. Per sequence this is
    :func:`load_balancing_loss` on that sequence alone (E f_i^Switch = f_i here): 1.0 at uniform
    routing, E when every token of a sequence puts score 1 on one expert. ``mask`` (N,) excludes
    padding: T counts a sequence's real tokens, a sequence with none is left out of the mean, and
    the loss is 0 (still connected to the graph) when every token is masked.

    The scores must sum to 1 per (real) token: raw sigmoid scores would let the router lower
    the loss by shrinking every score (lesson 11's bug hunt). ``check_range=False`` skips that
    check and the ids' range check (host syncs on a GPU).
    """
    router_probs = _compute_dtype(_check_probs(router_probs))
    num_tokens, num_experts = router_probs.shape
    seq_len = check_positive_int("seq_len", seq_len)
    if num_tokens % seq_len:
        raise ValueError(f"seq_len={seq_len} must divide the number of tokens N={num_tokens} "
                         f"(router_probs holds B sequences of seq_len tokens, sequence-major)")
    topk_idx = check_index_tensor("topk_idx", topk_idx, num_tokens,
                                  num_experts if check_range else None)
    mask = check_mask(mask, num_tokens)
    real = (torch.ones(num_tokens, dtype=router_probs.dtype, device=router_probs.device)
            if mask is None else mask.to(router_probs.dtype))  # (N,)
    check_bool("check_range", check_range)
    if check_range and num_tokens:
        row_sums = router_probs.detach().sum(dim=-1)  # (N,)
        bad = ~(row_sums - 1).abs().le(1e-3) & real.bool()  # NaN is bad too
        if bool(bad.any()):
            raise ValueError(f"router_probs must hold each token's scores normalised to sum 1 "
                             f"(s / s.sum(-1)); token {int(bad.nonzero()[0])} sums to "
                             f"{float(row_sums[bad][0]):.4g}")
    num_seqs = num_tokens // seq_len
    top_k = topk_idx.shape[1]
    real = real.view(num_seqs, seq_len, 1)  # (B, T, 1)
    probs = router_probs.view(num_seqs, seq_len, num_experts)  # (B, T, E)
    chosen = _expert_mask(router_probs, topk_idx).view(num_seqs, seq_len, num_experts)  # (B, T, E)
    tokens = real.sum(dim=1)  # (B, 1) real tokens per sequence
    # f_i = E / (K T) * count_i ;  P_i = (1 / T) sum_t s'_{i,t}   (T >= 1 where it is used)
    f = num_experts / (top_k * tokens.clamp_min(1.0)) * (chosen * real).sum(dim=1)  # (B, E)
    p = (probs * real).sum(dim=1) / tokens.clamp_min(1.0)  # (B, E)
    per_sequence = (f * p).sum(dim=-1)  # (B,)
    # loss = mean over sequences with T >= 1 of sum_i f_i P_i   (0 when none has a real token)
    counted = tokens.squeeze(1).gt(0).to(per_sequence.dtype)  # (B,)
    return (per_sequence * counted).sum() / counted.sum().clamp_min(1.0)


def router_z_loss(router_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss (Zoph et al. 2022, eq. 5): mean over tokens of logsumexp(logits)^2.

    Penalises large logits, which keeps the router's softmax out of the range where float
    round-off changes the choice."""
    check_float_tensor("router_logits", router_logits)
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must have shape (N, E), got {tuple(router_logits.shape)}")
    mask = check_mask(mask, router_logits.shape[0])
    # z_n = log sum_i exp(logit_{n,i})
    z = torch.logsumexp(_compute_dtype(router_logits), dim=-1)  # (N,)
    return _masked_mean(z.square(), mask)


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation, Var(x) / (Mean(x)^2 + eps), of a 1-D tensor.

    Uses the population variance (divide by n, as tf.nn.moments in Shazeer et al. 2017's code);
    some PyTorch ports use the unbiased variance (divide by n - 1) instead. 0 for zero or one
    element. Stable for large values: x is divided by s = max|x| first, which leaves the ratio
    unchanged (Var(x) / (Mean(x)^2 + eps) = Var(x/s) / (Mean(x/s)^2 + eps/s^2)), so values
    near 1e20 give the right answer instead of inf / inf = NaN.
    """
    check_float_tensor("x", x)
    if x.dim() != 1:
        raise ValueError(f"x must be 1-D (one value per expert), got shape {tuple(x.shape)}")
    check_positive_float("eps", eps)
    x = _compute_dtype(x)
    if x.numel() <= 1:
        return x.sum() * 0  # 0, still connected to the graph
    scale = x.detach().abs().max().clamp_min(torch.finfo(x.dtype).tiny)  # s = max|x|
    x_scaled = x / scale  # (E,), in [-1, 1]
    # CV^2 = Var(x/s) / (Mean(x/s)^2 + eps / s^2)
    return x_scaled.var(unbiased=False) / (x_scaled.mean().square() + eps / scale.square())


def importance_loss(router_probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shazeer et al. 2017, eq. (6)-(7): CV^2 of the per-expert importance sum_n G(x_n).

    Shazeer sums the sparse top-k gate values G(x); passing the full router probabilities (the
    default in this course) gives the same signal with a gradient to every expert. Multiply by
    w_importance (0.1 in the paper) when adding it to the task loss."""
    router_probs = _compute_dtype(_check_probs(router_probs))
    mask = check_mask(mask, router_probs.shape[0])
    if mask is not None:
        router_probs = router_probs * mask.to(router_probs.dtype).unsqueeze(-1)
    importance = router_probs.sum(dim=0)  # (E,)
    return cv_squared(importance)


def average_over_layers(per_layer_losses: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of one auxiliary loss over the MoE layers of a model (not their sum).

    per_layer_losses: one or more tensors of the same shape (usually 0-d), one per layer."""
    if isinstance(per_layer_losses, torch.Tensor) or not isinstance(per_layer_losses,
                                                                    Sequence | Iterable):
        raise TypeError("per_layer_losses must be a list of tensors (one per layer), got "
                        f"{type(per_layer_losses).__name__}")
    losses = list(per_layer_losses)
    if len(losses) == 0:
        raise ValueError("per_layer_losses must hold at least one loss, got none")
    for i, loss in enumerate(losses):
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"per_layer_losses[{i}] must be a torch.Tensor, got "
                            f"{type(loss).__name__}")
        check_float_tensor(f"per_layer_losses[{i}]", loss)
    shapes = {tuple(loss.shape) for loss in losses}
    if len(shapes) > 1:
        raise ValueError(f"per_layer_losses must all have the same shape, got shapes "
                         f"{sorted(shapes)}")
    return torch.stack(losses).mean(dim=0)
