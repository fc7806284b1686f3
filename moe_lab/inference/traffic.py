"""FLOPs against bytes: what one forward step of an MoE layer computes and what it reads. Lesson 10.

A batch of B tokens, each routed to K of E experts. If every token picks its K experts
independently and uniformly (K distinct ones, each expert in a token's set with probability K/E),
an expert is untouched by all B tokens with probability (1 - K/E)^B, so the expected number of
distinct experts the batch touches is

    E_distinct(B) = E * (1 - (1 - K/E)^B)                                  (uniform routing)

and with a skewed load, expert i in a token's set with probability p_i (sum_i p_i = K),

    E_distinct(B) = sum_i (1 - (1 - p_i)^B)                                (tokens independent)

(the formula used, for example, in serving cost models; each term is the chance that expert i
is touched at least once). Per step, the matmul FLOPs follow the *active* parameters and the bytes
read follow the experts *touched*:

    FLOPs  = 2 * B * (K * P_expert + P_router)         P_expert = 3 * D * F (SwiGLU)
    bytes  = (E_distinct * P_expert + P_router) * bytes_per_param

A roofline (Williams et al. 2009) bounds the time from below by whichever is slower:

    t >= max(FLOPs / peak FLOP/s,  bytes / memory bandwidth)

so at B = 1 an MoE layer reads K experts (memory-bound, like a dense FFN of its *active* size)
and at large B it reads all E (like a dense FFN of its *total* size) while computing only K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_lab.validation import check_nonnegative_int, check_positive_int, check_top_k


def _check_num_tokens(num_tokens: object) -> int | float:
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int | float):
        raise TypeError(f"num_tokens must be a number, got {type(num_tokens).__name__}")
    if not num_tokens >= 0 or num_tokens == float("inf"):  # also refuses NaN
        raise ValueError(f"num_tokens must be a finite number >= 0, got {num_tokens}")
    return num_tokens


def expected_distinct_experts(num_experts: int, top_k: int, num_tokens: int | float) -> float:
    """E * (1 - (1 - K/E)^B): the expected number of distinct experts that B tokens, each routed
    to K of E experts independently and uniformly, touch. 0 tokens touch none, 1 token K."""
    check_positive_int("num_experts", num_experts)
    check_top_k(top_k, num_experts)
    num_tokens = _check_num_tokens(num_tokens)
    # E_distinct = E * (1 - (1 - K/E)^B)
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** num_tokens)


def expected_distinct_from_probs(expert_probs: torch.Tensor, num_tokens: int | float) -> float:
    """sum_i (1 - (1 - p_i)^B) for a skewed load: ``expert_probs`` (E,) holds p_i, the chance that
    a token's K experts include expert i (so sum_i p_i = K); tokens independent. With
    p_i = K/E this is :func:`expected_distinct_experts`."""
    if not isinstance(expert_probs, torch.Tensor) or not expert_probs.is_floating_point() \
            or expert_probs.dim() != 1:
        raise TypeError("expert_probs must be a 1-D float tensor (E,)")
    if not bool(((expert_probs >= 0) & (expert_probs <= 1)).all()):
        raise ValueError("expert_probs must lie in [0, 1]: p_i is a probability")
    num_tokens = _check_num_tokens(num_tokens)
    # E_distinct = sum_i 1 - (1 - p_i)^B
    return float((1.0 - (1.0 - expert_probs.double()) ** num_tokens).sum())


def token_probs_from_counts(counts: torch.Tensor, top_k: int) -> torch.Tensor:
    """p_i = c_i / tokens from assignment counts (E,) that sum to tokens * K (every slot counted):
    the share of tokens whose K experts include expert i (sum_i p_i = K)."""
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1 or counts.is_floating_point():
        raise TypeError("counts must be a 1-D integer tensor (E,)")
    check_top_k(top_k, counts.numel())
    total = int(counts.sum())
    if total <= 0 or total % top_k:
        raise ValueError(f"counts must sum to tokens x top_k={top_k} > 0, got {total}")
    return counts.double() / (total // top_k)  # (E,)


@dataclass(frozen=True)
class StepCost:
    """One forward step of one FFN layer over B tokens: matmul FLOPs and weight bytes read."""

    num_tokens: int
    experts_touched: float
    flops: float
    bytes_read: float

    @property
    def intensity(self) -> float:
        """FLOPs per byte read (arithmetic intensity)."""
        return self.flops / self.bytes_read if self.bytes_read else 0.0


def moe_step_cost(num_tokens: int, d_model: int, d_ff: int, num_experts: int, top_k: int, *,
                  bytes_per_param: float = 4.0, experts_touched: float | None = None) -> StepCost:
    """FLOPs and bytes of a SwiGLU MoE layer (router included) at B tokens. ``experts_touched``
    defaults to the uniform expectation :func:`expected_distinct_experts`; pass a measured count
    to cost a real trace. A dense FFN of width F is ``num_experts = top_k = 1``."""
    check_nonnegative_int("num_tokens", num_tokens)
    for name, value in (("d_model", d_model), ("d_ff", d_ff), ("num_experts", num_experts)):
        check_positive_int(name, value)
    check_top_k(top_k, num_experts)
    if not bytes_per_param > 0:
        raise ValueError(f"bytes_per_param must be > 0, got {bytes_per_param}")
    if experts_touched is None:
        experts_touched = expected_distinct_experts(num_experts, top_k, num_tokens)
    elif not 0 <= experts_touched <= num_experts:
        raise ValueError(f"experts_touched must lie in [0, {num_experts}], got {experts_touched}")
    per_expert = 3 * d_model * d_ff  # W_gate, W_up (D x F), W_down (F x D)
    router = d_model * num_experts if num_experts > 1 else 0
    # FLOPs = 2 B (K P_expert + P_router)
    flops = 2.0 * num_tokens * (top_k * per_expert + router)
    # bytes = (E_distinct P_expert + P_router) * bytes_per_param
    bytes_read = (experts_touched * per_expert + router) * bytes_per_param if num_tokens else 0.0
    return StepCost(num_tokens, float(experts_touched), flops, float(bytes_read))


def roofline_seconds(cost: StepCost, *, bandwidth: float, flops_per_second: float) -> float:
    """max(FLOPs / peak, bytes / bandwidth): the least time the step can take on a machine that
    reads ``bandwidth`` bytes/s and computes ``flops_per_second``."""
    if not bandwidth > 0 or not flops_per_second > 0:
        raise ValueError("bandwidth and flops_per_second must be > 0")
    return max(cost.flops / flops_per_second, cost.bytes_read / bandwidth)


def offload_tokens_per_second(misses_per_token: float, expert_bytes: float,
                              link_bandwidth: float) -> float:
    """The transfer bound on decoding speed with experts offloaded to slow memory: every miss
    copies one expert (``expert_bytes``) over a link of ``link_bandwidth`` bytes/s, so a token
    takes at least misses * bytes / bandwidth seconds (compute and overlap left out)."""
    if not misses_per_token >= 0:
        raise ValueError(f"misses_per_token must be >= 0, got {misses_per_token}")
    if not expert_bytes > 0 or not link_bandwidth > 0:
        raise ValueError("expert_bytes and link_bandwidth must be > 0")
    seconds = misses_per_token * expert_bytes / link_bandwidth
    return float("inf") if seconds == 0 else 1.0 / seconds
