"""The experts: E independent feed-forward networks with stacked weights. Lesson 00 and 03.

For SwiGLU (Shazeer 2020; Mixtral, Qwen-MoE, DeepSeek) expert e computes

    h = (silu(x W_gate[e]) * (x W_up[e])) W_down[e]        x (n, D) -> (n, D)

with W_gate, W_up of shape (E, D, F) and W_down of shape (E, F, D). The gate's activation is an
option: ``"swiglu"`` (SiLU) or ``"geglu"`` (GELU, Shazeer 2020 compares both), the one word a
model's config names (``hidden_act``). ``"gelu"`` and ``"relu"`` experts are ungated and use only
W_up and W_down: h = act(x W_up[e]) W_down[e]. (gpt-oss's clamped SwiGLU with biases is a
family quirk: :class:`moe_lab.interop.quirks.GptOssExperts`.)

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
    check_positive_int,
)

# act(x W_gate) * (x W_up): the gated FFNs (Shazeer 2020, "GLU Variants Improve Transformer")
GATED_ACTIVATIONS = {"swiglu": F.silu, "geglu": F.gelu}
# act(x W_up): the ungated ones
PLAIN_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
ACTIVATIONS = (*GATED_ACTIVATIONS, *PLAIN_ACTIVATIONS)


class Experts(nn.Module):
    """E feed-forward experts with stacked weights.

    Gated (``"swiglu"``, ``"geglu"``): ``w_gate`` (E, D, F), ``w_up`` (E, D, F), ``w_down``
    (E, F, D). ``"gelu"``/``"relu"``: no ``w_gate``.

    Not called directly: use one of the ``forward_*`` methods below (or :class:`SparseMoE`).
    Each checks its input first: a float tensor with last dimension D, on the weights' device,
    and (outside autocast) in the weights' dtype; x is never cast silently.
    """

    def __init__(self, num_experts: int, d_model: int, d_ff: int, *,
                 activation: str = "swiglu") -> None:
        super().__init__()
        self._configure(num_experts, d_model, d_ff, activation)

        def init(fan_in: int, *shape: int) -> nn.Parameter:  # nn.Linear's default bound
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))

        if activation in GATED_ACTIVATIONS:
            self.w_gate = init(d_model, num_experts, d_model, d_ff)
        else:
            self.register_parameter("w_gate", None)
        self.w_up = init(d_model, num_experts, d_model, d_ff)
        self.w_down = init(d_ff, num_experts, d_ff, d_model)

    def _configure(self, num_experts: int, d_model: int, d_ff: int, activation: str) -> None:
        """Validate and store the shape and activation (no weights: :mod:`moe_lab.interop`'s
        experts are views of a real model's own tensors)."""
        check_positive_int("num_experts", num_experts)
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        check_choice("activation", activation, ACTIVATIONS)
        self.num_experts, self.d_model, self.d_ff = num_experts, d_model, d_ff
        self._activation = activation
        self.act = GATED_ACTIVATIONS.get(activation) or PLAIN_ACTIVATIONS[activation]

    @property
    def activation(self) -> str:
        """Fixed at construction: a gated activation has a ``w_gate``, the others none."""
        return self._activation

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, d_model={self.d_model}, d_ff={self.d_ff}, "
                f"activation={self.activation!r}")

    def _ffn(self, x: torch.Tensor, matmul) -> torch.Tensor:
        """The expert FFN, with ``matmul(h, W)`` the stacked-weight product of a layout."""
        if self.w_gate is None:  # GELU / ReLU experts: act(x W_up) W_down
            return matmul(self.act(matmul(x, self.w_up)), self.w_down)  # (.., D)
        # SwiGLU (lesson 00): silu(x W_gate) * (x W_up), then W_down   (GeGLU: gelu for silu)
        h = self.act(matmul(x, self.w_gate)) * matmul(x, self.w_up)  # (.., F)
        return matmul(h, self.w_down)  # (.., D)

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
        if isinstance(e, bool) or not isinstance(e, int):
            raise TypeError(f"e must be an int (an expert id), got {type(e).__name__} ({e!r})")
        if not 0 <= e < self.num_experts:
            raise ValueError(f"e must be an expert id in [0, {self.num_experts}), got {e!r}")
        return self._ffn(x, lambda h, w: h @ w[e])  # (..., D)

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
            if path != "segment_loop":
                offsets = offsets.to(x_sorted.device)
        return self._ffn(x_sorted, lambda h, w: grouped_matmul(h, w, offsets, path))  # (M, D)

    def forward_padded(self, x_padded: torch.Tensor) -> torch.Tensor:
        """A capacity-padded batch, one row block per expert: (E, C, D) -> (E, C, D) with bmm."""
        self._check_rows("x_padded", x_padded, 3)
        if x_padded.shape[0] != self.num_experts:
            raise ValueError(f"x_padded must have shape (E={self.num_experts}, C, D), got "
                             f"{tuple(x_padded.shape)}")
        return self._ffn(x_padded, torch.bmm)  # (E, C, D)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on every token (the dense reference): x (N, D) -> (E, N, D)."""
        self._check_rows("x", x, 2)
        return self.forward_padded(x.unsqueeze(0).expand(self.num_experts, -1, -1))  # (E, N, D)
