"""Expert-choice routing: every expert picks its tokens, not the other way round. Lesson 08.

Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing" (arXiv 2202.09368), section 3.2:
token choice sends each token to its K best experts, so the busiest expert can get far more than
N * K / E tokens (drops, or padding). Expert choice turns the score matrix around: each expert
takes its C best tokens, so every expert has exactly C tokens, and a token is taken by anything
from 0 to E experts.

    router_probs  S = softmax(x W_g^T)                      (N, E)   softmax over experts
    C             = ceil(capacity_factor * N / E)            tokens per expert (at most N)
    gates, token_idx = top_C over tokens of S^T              (E, C), (E, C)
    y_n           = sum_{(e, c) : token_idx[e, c] = n} gates[e, c] * Expert_e(x_n)

With capacity_factor = c, the E * C picks average c experts per token (the paper's c = 2 matches
top-2 token choice in compute). The choice of one token depends on every other token of the batch
(the top-C is over all of them): in a decoder a later token can change which experts an earlier
token gets, which breaks causality and makes autoregressive decoding inconsistent with training
(lesson 08 measures it). Zhou et al. name this as a limitation for auto-regressive generation;
expert choice suits encoders, where all tokens are known at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from moe_lab.experts import Experts
from moe_lab.routing import TopKRouter
from moe_lab.validation import (
    check_float_tensor,
    check_last_dim,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
)


def expert_choice_capacity(capacity_factor: float, num_tokens: int, num_experts: int) -> int:
    """C = ceil(capacity_factor * N / E), at most N (an expert cannot take a token twice)."""
    check_positive_float("capacity_factor", capacity_factor)
    check_nonnegative_int("num_tokens", num_tokens)
    check_positive_int("num_experts", num_experts)
    return min(math.ceil(capacity_factor * num_tokens / num_experts), num_tokens)


def expert_choice_routing(router_probs: torch.Tensor,
                          capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert's ``capacity`` best tokens: router_probs (N, E) -> (token_idx, gates), each
    (E, C); token_idx[e] lists expert e's tokens, best first, gates[e] their probabilities."""
    check_float_tensor("router_probs", router_probs)
    if router_probs.dim() != 2:
        raise ValueError(f"router_probs must have shape (N, E), got {tuple(router_probs.shape)}")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0 \
            or capacity > router_probs.shape[0]:
        raise ValueError(f"capacity must be an int in [0, N={router_probs.shape[0]}], "
                         f"got {capacity!r}")
    # G, I = TopK(S^T, C): along the token axis, one row per expert
    gates, token_idx = torch.topk(router_probs.transpose(0, 1), capacity, dim=-1)  # (E, C)
    return token_idx, gates


@dataclass(frozen=True)
class ExpertChoiceOutput:
    """y: same shape as x; router_probs (N, E); token_idx, gates (E, C): each expert's tokens and
    weights; tokens_per_expert (E,): all C; experts_per_token (N,): 0 to E."""

    y: torch.Tensor
    router_probs: torch.Tensor
    token_idx: torch.Tensor
    gates: torch.Tensor
    tokens_per_expert: torch.Tensor
    experts_per_token: torch.Tensor


class ExpertChoiceMoE(nn.Module):
    """An expert-choice MoE feed-forward layer (Zhou et al. 2022): every expert takes exactly
    C = ceil(capacity_factor * N / E) tokens of the batch.

    Args:
        d_model, d_ff, num_experts: D, F, E.
        capacity_factor: c, the average number of experts per token.
        activation: ``"swiglu"``, ``"gelu"`` or ``"relu"`` (:class:`Experts`).
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, *,
                 capacity_factor: float = 1.0, activation: str = "swiglu") -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        check_positive_int("num_experts", num_experts)
        self.capacity_factor = check_positive_float("capacity_factor", capacity_factor)
        self.d_model, self.d_ff, self.num_experts = d_model, d_ff, num_experts
        # the gate W_g (E, D); only its probabilities are used (its top-1 choice is ignored)
        self.router = TopKRouter(d_model, num_experts, 1)
        self.experts = Experts(num_experts, d_model, d_ff, activation=activation)

    def extra_repr(self) -> str:
        return f"capacity_factor={self.capacity_factor}"

    def capacity(self, num_tokens: int) -> int:
        return expert_choice_capacity(self.capacity_factor, num_tokens, self.num_experts)

    def forward(self, x: torch.Tensor) -> ExpertChoiceOutput:
        check_float_tensor("x", x)
        check_last_dim("x", x, self.d_model, "d_model")
        if x.dim() not in (2, 3):
            raise ValueError(f"x must have shape (B, T, D) or (N, D), got {tuple(x.shape)}")
        x_flat = x.reshape(-1, self.d_model)  # (N, D)
        num_tokens = x_flat.shape[0]
        router_probs = self.router(x_flat).probs  # (N, E)
        token_idx, gates = expert_choice_routing(router_probs, self.capacity(num_tokens))  # (E, C)
        # X_in[e, c] = x_{token_idx[e, c]}: every expert's C tokens, one (E, C, D) batch
        x_in = x_flat[token_idx]  # (E, C, D)
        h = self.experts.forward_padded(x_in)  # (E, C, D)
        # y_n = sum over the (e, c) that picked n of gates[e, c] * h[e, c]
        weighted = (gates.unsqueeze(-1) * h).reshape(-1, self.d_model)  # (E*C, D)
        y = x_flat.new_zeros(num_tokens, self.d_model, dtype=weighted.dtype)  # (N, D)
        y = y.index_add(0, token_idx.reshape(-1), weighted)  # (N, D)
        experts_per_token = torch.bincount(token_idx.reshape(-1), minlength=num_tokens)  # (N,)
        tokens_per_expert = torch.full((self.num_experts,), token_idx.shape[1],
                                       dtype=torch.long, device=x.device)  # (E,)
        return ExpertChoiceOutput(y=y.to(x.dtype).view(x.shape), router_probs=router_probs,
                                  token_idx=token_idx, gates=gates,
                                  tokens_per_expert=tokens_per_expert,
                                  experts_per_token=experts_per_token)
