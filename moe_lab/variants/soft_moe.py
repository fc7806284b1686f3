"""Soft MoE: experts see weighted averages of tokens ("slots"), never tokens. Lesson 08.

Puigcerver et al. 2023, "From Sparse to Soft Mixtures of Experts" (arXiv 2308.00951), section 2.1.
A sequence X (T, D) and learned slot parameters Phi (D, E * S) give the slot logits X Phi (T, E*S);

    dispatch_weights  D[t, j] = exp((X Phi)[t, j]) / sum_t' exp((X Phi)[t', j])   softmax over tokens
    slots             X~ = D^T X                                                     (E*S, D)
    expert outputs    Y~[j] = Expert_{j // S}(X~[j])                                 (E*S, D)
    combine_weights   C[t, j] = exp((X Phi)[t, j]) / sum_j' exp((X Phi)[t, j'])    softmax over slots
    y                 = C Y~                                                         (T, D)

Every slot is a convex mix of the tokens of one sequence and every output a convex mix of the
slots: nothing is dropped and everything is differentiable, but every output depends on every
token of its sequence (not causal, so Soft MoE is used in encoders such as ViTs), and "sparse" only
in that each expert runs on S slots rather than on T tokens: the E * S slots cost a fixed
compute whatever T is, while every token still touches every expert through the mix.
(The paper also L2-normalises X and Phi with a learned scale at large widths; left out here.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moe_lab.experts import Experts
from moe_lab.validation import check_float_tensor, check_last_dim, check_positive_int


def soft_moe_weights(slot_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """slot_logits (..., T, E*S) -> (dispatch_weights, combine_weights), same shape: a softmax
    over the tokens of each sequence (dim -2) and over the slots of each token (dim -1)."""
    check_float_tensor("slot_logits", slot_logits)
    if slot_logits.dim() < 2:
        raise ValueError(f"slot_logits must have shape (..., T, E*S), got {tuple(slot_logits.shape)}")
    logits = slot_logits.float()
    # D = softmax over tokens, C = softmax over slots
    return torch.softmax(logits, dim=-2), torch.softmax(logits, dim=-1)


@dataclass(frozen=True)
class SoftMoEOutput:
    """y: same shape as x; dispatch_weights and combine_weights: x.shape[:-1] + (E*S,);
    slots: the expert inputs, (B, E*S, D) (B = 1 for x of shape (N, D))."""

    y: torch.Tensor
    dispatch_weights: torch.Tensor
    combine_weights: torch.Tensor
    slots: torch.Tensor


class SoftMoE(nn.Module):
    """A Soft MoE feed-forward layer (Puigcerver et al. 2023): E experts, S slots each.

    x of shape (B, T, D): every sequence mixed on its own; (N, D): one sequence.

    Args:
        d_model, d_ff, num_experts: D, F, E.
        slots_per_expert: S.
        activation: ``"swiglu"``, ``"gelu"`` or ``"relu"`` (:class:`Experts`).
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, *, slots_per_expert: int = 1,
                 activation: str = "swiglu") -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        check_positive_int("num_experts", num_experts)
        check_positive_int("slots_per_expert", slots_per_expert)
        self.d_model, self.d_ff, self.num_experts = d_model, d_ff, num_experts
        self.slots_per_expert = slots_per_expert
        num_slots = num_experts * slots_per_expert
        # Phi (D, E*S), initialised like a linear layer from D inputs
        self.slot_embeds = nn.Parameter(torch.randn(d_model, num_slots) / d_model ** 0.5)
        self.experts = Experts(num_experts, d_model, d_ff, activation=activation)

    @property
    def num_slots(self) -> int:
        return self.num_experts * self.slots_per_expert

    def extra_repr(self) -> str:
        return f"slots_per_expert={self.slots_per_expert}"

    def forward(self, x: torch.Tensor) -> SoftMoEOutput:
        check_float_tensor("x", x)
        check_last_dim("x", x, self.d_model, "d_model")
        if x.dim() not in (2, 3):
            raise ValueError(f"x must have shape (B, T, D) or (N, D), got {tuple(x.shape)}")
        seqs = x if x.dim() == 3 else x.unsqueeze(0)  # (B, T, D)
        batch, d_model = seqs.shape[0], self.d_model
        slot_logits = seqs.float() @ self.slot_embeds.float()  # (B, T, E*S)
        dispatch_weights, combine_weights = soft_moe_weights(slot_logits)  # (B, T, E*S) each
        # X~ = D^T X: slot j of sequence b mixes that sequence's tokens
        slots = torch.einsum("btj,btd->bjd", dispatch_weights, seqs.float())  # (B, E*S, D)
        # expert e runs on its S slots of every sequence: (E, B*S, D)
        per_expert = slots.view(batch, self.num_experts, self.slots_per_expert, d_model) \
            .transpose(0, 1).reshape(self.num_experts, batch * self.slots_per_expert, d_model)
        h = self.experts.forward_padded(per_expert.to(x.dtype))  # (E, B*S, D)
        slot_out = h.view(self.num_experts, batch, self.slots_per_expert, d_model) \
            .transpose(0, 1).reshape(batch, self.num_slots, d_model)  # (B, E*S, D)
        # y = C Y~
        y = torch.einsum("btj,bjd->btd", combine_weights, slot_out.float())  # (B, T, D)
        shape = x.shape[:-1] + (self.num_slots,)
        return SoftMoEOutput(y=y.to(x.dtype).view(x.shape),
                             dispatch_weights=dispatch_weights.view(shape),
                             combine_weights=combine_weights.view(shape), slots=slots)
