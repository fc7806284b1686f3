"""The experts: E independent feed-forward networks with stacked weights. Lesson 00 and 03.

For SwiGLU (Shazeer 2020; Mixtral, Qwen-MoE, DeepSeek) expert e computes

    h = (silu(x W_gate[e]) * (x W_up[e])) W_down[e]        x (n, D) -> (n, D)

with W_gate, W_up of shape (E, D, F) and W_down of shape (E, F, D). GELU and ReLU experts use
only W_up and W_down: h = act(x W_up[e]) W_down[e].

gpt-oss (OpenAI 2025, its model card and reference code) uses a clamped SwiGLU with biases
(``activation="clamped_swiglu", bias=True``): with g = min(x W_gate + b_gate, limit) and
u = clamp(x W_up + b_up, -limit, limit),

    h = ((u + 1) * g * sigmoid(alpha * g)) W_down[e] + b_down[e]        (alpha 1.702, limit 7)

The weights are stacked along a leading expert axis so that one kernel can run many experts:
:meth:`Experts.forward_grouped` (contiguous segments, grouped GEMM), :meth:`Experts.forward_padded`
(a (E, C, D) batch, bmm) and :meth:`Experts.forward_all` (every expert on every token).
"""

from __future__ import annotations

import math
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.grouped_gemm import grouped_matmul, path_for
from moe_lab.validation import (
    check_choice,
    check_count_tensor,
    check_counts,
    check_float_tensor,
    check_last_dim,
    check_matches_weights,
    check_positive_float,
    check_positive_int,
)

ACTIVATIONS = ("swiglu", "gelu", "relu", "clamped_swiglu")
GATED_ACTIVATIONS = ("swiglu", "clamped_swiglu")  # those with a W_gate


def _activate(activation: str, gate: torch.Tensor | None, up: torch.Tensor, *,
              alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    if activation == "swiglu":
        # silu(x W_gate) * (x W_up)
        return F.silu(gate) * up
    if activation == "clamped_swiglu":
        # g = min(gate, limit), u = clamp(up, -limit, limit):  (u + 1) * g * sigmoid(alpha * g)
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return (up + 1) * (gate * torch.sigmoid(alpha * gate))
    if activation == "gelu":
        return F.gelu(up)
    return F.relu(up)


class Experts(nn.Module):
    """E feed-forward experts with stacked weights.

    SwiGLU: ``w_gate`` (E, D, F), ``w_up`` (E, D, F), ``w_down`` (E, F, D). GELU/ReLU: no ``w_gate``.
    With ``bias=True`` also ``b_gate`` (E, F) (gated activations), ``b_up`` (E, F), ``b_down`` (E, D).
    ``swiglu_alpha`` and ``swiglu_limit`` are the constants of ``"clamped_swiglu"`` (gpt-oss).

    Not called directly: use one of the ``forward_*`` methods below (or :class:`SparseMoE`).
    Each checks its input first: a float tensor with last dimension D, on the weights' device,
    and (outside autocast) in the weights' dtype; x is never cast silently.
    """

    def __init__(self, num_experts: int, d_model: int, d_ff: int, *,
                 activation: str = "swiglu", bias: bool = False,
                 swiglu_alpha: float = 1.702, swiglu_limit: float = 7.0) -> None:
        super().__init__()
        check_positive_int("num_experts", num_experts)
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        check_choice("activation", activation, ACTIVATIONS)
        check_positive_float("swiglu_alpha", swiglu_alpha)
        check_positive_float("swiglu_limit", swiglu_limit)
        self.num_experts, self.d_model, self.d_ff = num_experts, d_model, d_ff
        self.activation = activation
        self.swiglu_alpha, self.swiglu_limit = float(swiglu_alpha), float(swiglu_limit)

        def init(fan_in: int, *shape: int) -> nn.Parameter:  # nn.Linear's default bound
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        gated = activation in GATED_ACTIVATIONS
        if gated:
            self.w_gate = init(d_model, num_experts, d_model, d_ff)
        else:
            self.register_parameter("w_gate", None)
        self.w_up = init(d_model, num_experts, d_model, d_ff)
        self.w_down = init(d_ff, num_experts, d_ff, d_model)
        self.register_parameter("b_gate", init(d_model, num_experts, d_ff) if bias and gated else None)
        self.register_parameter("b_up", init(d_model, num_experts, d_ff) if bias else None)
        self.register_parameter("b_down", init(d_ff, num_experts, d_model) if bias else None)

    def extra_repr(self) -> str:
        text = (f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
                f"activation={self.activation!r}")
        return text + (", bias=True" if self.b_up is not None else "")

    def _ffn(self, x: torch.Tensor, matmul, pick_bias) -> torch.Tensor:
        """h = act(x W_gate + b_gate, x W_up + b_up) W_down + b_down, with ``matmul(h, W)`` doing
        the stacked-weight product of a layout and ``pick_bias(b)`` giving each row its expert's
        bias (never called without biases)."""
        def project(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            out = matmul(h, weight)
            return out if bias is None else out + pick_bias(bias).to(out.dtype)

        gate = project(x, self.w_gate, self.b_gate) if self.w_gate is not None else None  # (.., F)
        up = project(x, self.w_up, self.b_up)  # (.., F)
        h = _activate(self.activation, gate, up, alpha=self.swiglu_alpha, limit=self.swiglu_limit)
        return project(h, self.w_down, self.b_down)  # (.., D)

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise TypeError("Experts is not called directly: it needs to know which expert gets "
                        "which rows. Use forward_expert(x, e), forward_grouped(x_sorted, counts), "
                        "forward_padded(x_padded) or forward_all(x), or the whole layer "
                        "moe_lab.SparseMoE.")

    def _check_rows(self, name: str, x: object, dims: int | None) -> torch.Tensor:
        """x: a float tensor of ``dims`` dimensions (any number >= 1 when None), last one D."""
        check_float_tensor(name, x)
        if dims is not None and x.dim() != dims:
            shape = "(M, D)" if dims == 2 else "(E, C, D)"
            raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
        check_last_dim(name, x, self.d_model, "d_model")
        check_matches_weights(name, x, self.w_up)
        return x

    def forward_expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert e on its tokens: x (..., D) -> (..., D)."""
        self._check_rows("x", x, None)
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < self.num_experts:
            raise ValueError(f"e must be an expert id in [0, {self.num_experts}), got {e!r}")
        return self._ffn(x, lambda h, w: h @ w[e], lambda b: b[e])  # (..., D)

    def forward_grouped(self, x_sorted: torch.Tensor,
                        counts: list[int] | torch.Tensor) -> torch.Tensor:
        """All experts at once on rows sorted by expert: x_sorted (M, D), counts (E,) -> (M, D).

        ``counts``: E ints summing to M (checked), or an (E,) integer tensor on x's device, such
        as a routing plan's ``tokens_per_expert``: its values stay on the device (only its shape
        and dtype are checked; reading them would be a host sync), so they must sum to M.
        The grouped GEMM's kernel is :func:`moe_lab.grouped_gemm.path_for`'s choice."""
        self._check_rows("x_sorted", x_sorted, 2)
        path = path_for(x_sorted, self.w_up)
        if isinstance(counts, torch.Tensor):
            counts = check_count_tensor("counts", counts, self.num_experts, x_sorted.device)
            offsets = counts.cumsum(0).to(torch.int32)  # (E,) segment ends, on the device
            if path == "segment_loop":  # a loop of mm needs the ends on the host: one copy
                offsets = offsets.cpu()  # (the one host sync of this path)
        else:  # host ints: the ends are computed on the host, copied to the device if needed
            counts = check_counts("counts", counts, self.num_experts, x_sorted.shape[0])
            offsets = torch.tensor(list(accumulate(counts)), dtype=torch.int32)  # (E,)
            counts = torch.tensor(counts, device=x_sorted.device)  # (E,)
            if path != "segment_loop":
                offsets = offsets.to(x_sorted.device)

        def bias_of_rows(bias: torch.Tensor) -> torch.Tensor:  # (E, A) -> (M, A): b[expert of row]
            return torch.repeat_interleave(bias, counts, dim=0, output_size=x_sorted.shape[0])

        return self._ffn(x_sorted, lambda h, w: grouped_matmul(h, w, offsets, path),
                         bias_of_rows)  # (M, D)

    def forward_padded(self, x_padded: torch.Tensor) -> torch.Tensor:
        """A capacity-padded batch, one row block per expert: (E, C, D) -> (E, C, D) with bmm."""
        self._check_rows("x_padded", x_padded, 3)
        if x_padded.shape[0] != self.num_experts:
            raise ValueError(f"x_padded must have shape (E={self.num_experts}, C, D), got "
                             f"{tuple(x_padded.shape)}")
        return self._ffn(x_padded, torch.bmm, lambda b: b.unsqueeze(1))  # (E, C, D)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on every token (the dense reference): x (N, D) -> (E, N, D)."""
        self._check_rows("x", x, 2)
        return self.forward_padded(x.unsqueeze(0).expand(self.num_experts, -1, -1))  # (E, N, D)
