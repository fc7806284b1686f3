"""The sparse MoE layer: tokens -> router -> routing plan -> experts -> combine. Lesson 03.

    y_n = sum_k topk_weights[n, k] * Expert_{topk_idx[n, k]}(x_n)      (kept assignments only)

With shared experts (DeepSeekMoE, Dai et al. 2024, arXiv 2401.06066, section 3.2, the equation
for h_t), K_s more experts run on every token, unweighted, and their outputs are added to the
routed sum:

    y_n = sum_{s < K_s} Shared_s(x_n) + sum_k topk_weights[n, k] * Expert_{topk_idx[n, k]}(x_n)

(the residual u_t of the paper's equation is added by the transformer block, not here). One
shared expert of width m * F computes exactly what m shared experts of width F compute together
(split its hidden units), so Qwen2-MoE's single wide shared expert is ``num_shared_experts=m``.

The layer returns the routing alongside the output so that the caller (the model, a lesson, a
widget) can compute the auxiliary losses (:mod:`moe_lab.losses`) and see what was dropped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from moe_lab.dispatch import DISPATCH_FUNCTIONS, compute_capacity, make_routing_plan
from moe_lab.experts import Experts
from moe_lab.routing import RouterOutput, TopKRouter
from moe_lab.validation import (
    check_choice,
    check_float_tensor,
    check_last_dim,
    check_matches_weights,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_top_k,
)


@dataclass(frozen=True)
class MoEOutput:
    """y: same shape as x; router: the RouterOutput over N = B*T tokens;
    tokens_per_expert: (E,) assignments computed, after drops; dropped: (N, K) bool."""

    y: torch.Tensor
    router: RouterOutput
    tokens_per_expert: torch.Tensor
    dropped: torch.Tensor

    @property
    def num_dropped(self) -> int:
        return int(self.dropped.sum())


@dataclass(frozen=True)
class SparseMoEConfig:
    """SparseMoE's constructor arguments, stored by the layer: ``SparseMoE.from_config(moe.config)``
    builds the same layer (then ``load_state_dict`` copies its weights), e.g. on every rank of
    :mod:`moe_lab.parallel`. ``dispatch`` and ``capacity_factor`` follow the layer's attributes
    of those names when they are changed (lesson 03 does)."""

    d_model: int
    d_ff: int
    num_experts: int
    top_k: int
    dispatch: str = "sorted"
    capacity_factor: float | None = None
    activation: str = "swiglu"
    normalize: bool = True
    noise: str | None = None
    router_dtype: torch.dtype = torch.float32
    scoring: str = "softmax"
    num_shared_experts: int = 0

    def to_dict(self) -> dict[str, object]:
        """The keyword arguments of ``SparseMoE(**config.to_dict())`` (plain values: saves and
        loads with ``torch.load(weights_only=True)``)."""
        return asdict(self)


class SparseMoE(nn.Module):
    """A top-k Mixture-of-Experts feed-forward layer.

    Args:
        d_model, d_ff, num_experts, top_k: D, F, E, K.
        dispatch: ``"dense"`` (reference), ``"loop"``, ``"sorted"`` (default) or ``"padded"``.
        capacity_factor: None for dropless; otherwise C = ceil(capacity_factor * N * K / E).
        activation: ``"swiglu"``, ``"gelu"`` or ``"relu"``.
        normalize, noise, router_dtype, scoring: passed to :class:`TopKRouter`.
        num_shared_experts: K_s experts of width F that run on every token (DeepSeekMoE), stored
            as an :class:`Experts` bank ``shared_experts`` (None when K_s = 0).

    ``dispatch``, ``capacity_factor`` and ``top_k`` may be reassigned after construction; each
    assignment is validated like the constructor argument.

    x must be on the weights' device and, outside ``torch.autocast``, in the weights' dtype:
    a float64, float16 or bfloat16 x into a float32 layer raises one TypeError naming both
    dtypes, the same for every dispatch (cast x or the layer; nothing is cast silently). Under
    autocast the experts compute in the autocast dtype and y comes back in x's dtype. A meta
    tensor is refused (ValueError): routing needs values.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        num_experts: int,
        top_k: int,
        *,
        dispatch: str = "sorted",
        capacity_factor: float | None = None,
        activation: str = "swiglu",
        normalize: bool = True,
        noise: str | None = None,
        router_dtype: torch.dtype = torch.float32,
        scoring: str = "softmax",
        num_shared_experts: int = 0,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        check_positive_int("num_experts", num_experts)
        check_top_k(top_k, num_experts)
        check_choice("dispatch", dispatch, DISPATCH_FUNCTIONS)
        capacity_factor = check_positive_float("capacity_factor", capacity_factor, allow_none=True)
        check_nonnegative_int("num_shared_experts", num_shared_experts)
        self.d_model, self.d_ff, self.num_experts = d_model, d_ff, num_experts
        self.router = TopKRouter(d_model, num_experts, top_k, normalize=normalize, noise=noise,
                                 router_dtype=router_dtype, scoring=scoring)
        self.experts = Experts(num_experts, d_model, d_ff, activation=activation)
        self.num_shared_experts = num_shared_experts
        self.shared_experts = (Experts(num_shared_experts, d_model, d_ff, activation=activation)
                               if num_shared_experts else None)
        self.config = SparseMoEConfig(
            d_model=d_model, d_ff=d_ff, num_experts=num_experts, top_k=top_k, dispatch=dispatch,
            capacity_factor=capacity_factor, activation=activation, normalize=normalize,
            noise=noise, router_dtype=router_dtype, scoring=scoring,
            num_shared_experts=num_shared_experts)

    @classmethod
    def from_config(cls, config: SparseMoEConfig) -> SparseMoE:
        """A new layer with ``config``'s arguments (fresh weights)."""
        if not isinstance(config, SparseMoEConfig):
            raise TypeError(f"config must be a SparseMoEConfig, got {type(config).__name__}")
        return cls(**config.to_dict())

    @property
    def dispatch(self) -> str:
        return self.config.dispatch

    @dispatch.setter
    def dispatch(self, dispatch: str) -> None:
        check_choice("dispatch", dispatch, DISPATCH_FUNCTIONS)
        self.config = replace(self.config, dispatch=dispatch)

    @property
    def capacity_factor(self) -> float | None:
        return self.config.capacity_factor

    @capacity_factor.setter
    def capacity_factor(self, capacity_factor: float | None) -> None:
        capacity_factor = check_positive_float("capacity_factor", capacity_factor, allow_none=True)
        self.config = replace(self.config, capacity_factor=capacity_factor)

    def extra_repr(self) -> str:
        return (f"dispatch={self.dispatch!r}, capacity_factor={self.capacity_factor}, "
                f"num_shared_experts={self.num_shared_experts}")

    @property
    def top_k(self) -> int:
        """K, held by the router (one value for the routing and the capacity)."""
        return self.router.top_k

    @top_k.setter
    def top_k(self, value: int) -> None:
        self.router.top_k = value  # validated by the router
        self.config = replace(self.config, top_k=value)

    def capacity(self, num_tokens: int) -> int | None:
        """C for a batch of N tokens, or None when dropless."""
        if self.capacity_factor is None:
            return None
        return compute_capacity(self.capacity_factor, num_tokens, self.top_k, self.num_experts)

    def forward(self, x: torch.Tensor) -> MoEOutput:
        check_float_tensor("x", x)
        check_last_dim("x", x, self.d_model, "d_model")
        if x.dim() not in (2, 3):
            raise ValueError(f"x must have shape (B, T, D) or (N, D), got {tuple(x.shape)}")
        check_matches_weights("x", x, self.experts.w_up)
        x_flat = x.reshape(-1, self.d_model)  # (N, D)
        routing = self.router(x_flat)
        plan = make_routing_plan(routing.topk_idx, routing.topk_weights, self.num_experts,
                                 self.capacity(x_flat.shape[0]), check_range=False)
        y = DISPATCH_FUNCTIONS[self.dispatch](x_flat, plan, self.experts)  # (N, D)
        if self.shared_experts is not None:
            # y_n += sum_s Shared_s(x_n): every shared expert on every token, unweighted
            y = y + self.shared_experts.forward_all(x_flat).sum(0).to(y.dtype)  # (N, D)
        # under autocast the experts compute in bf16/fp16; the layer answers in x's dtype
        return MoEOutput(y=y.to(x.dtype).view(x.shape), router=routing,
                         tokens_per_expert=plan.tokens_per_expert, dropped=~plan.keep)
