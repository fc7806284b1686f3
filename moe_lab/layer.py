"""The sparse MoE layer: tokens -> router -> routing plan -> experts -> combine. Lesson 03.

    y_n = sum_k topk_weights[n, k] * Expert_{topk_idx[n, k]}(x_n)      (kept assignments only)

With shared experts (DeepSeekMoE, Dai et al. 2024, arXiv 2401.06066, section 3.2, the equation
for h_t), K_s more experts run on every token, unweighted, and their outputs are added to the
routed sum:

    y_n = sum_{s < K_s} Shared_s(x_n) + sum_k topk_weights[n, k] * Expert_{topk_idx[n, k]}(x_n)

(the residual u_t of the paper's equation is added by the transformer block, not here). One
shared expert of width m * F computes exactly what m shared experts of width F compute together
(split its hidden units), so a single wide shared expert is ``num_shared_experts=m`` (DeepSeek-V3),
or one expert with ``shared_d_ff=m * F``, any width (Qwen2-MoE).

With a shared expert gate (Qwen2-MoE), the shared sum is scaled by sigmoid(x_n w_sg), one
scalar per token. With ``weight_inputs=True`` (Llama 4: the router's score scales what the
expert reads) the routed sum is

    y_n = sum_k Expert_{topk_idx[n, k]}(topk_weights[n, k] * x_n)

which differs for any non-linear expert (lesson 09 shows by how much for SwiGLU).

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
    :mod:`moe_lab.systems.parallel`. ``dispatch``, ``capacity_factor`` and ``weight_inputs`` follow the
    layer's attributes of those names when they are changed (lesson 03 does)."""

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
    router_bias: bool = False
    scaling_factor: float = 1.0
    num_groups: int = 1
    topk_groups: int = 1
    expert_bias: bool = False
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    weight_inputs: bool = False
    num_shared_experts: int = 0
    shared_d_ff: int | None = None
    shared_gate: bool = False

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
        router_bias, scaling_factor, num_groups, topk_groups: the router's ``bias``,
            ``scaling_factor`` and group limit (:class:`TopKRouter`; gpt-oss, DeepSeek-V3).
        expert_bias: biases in the experts (:class:`Experts`, gpt-oss).
        swiglu_alpha, swiglu_limit: the constants of ``activation="clamped_swiglu"`` (gpt-oss).
        weight_inputs: the K weights scale the experts' inputs instead of their outputs (Llama 4).
        num_shared_experts: K_s experts of width F (or ``shared_d_ff``) that run on every token
            (DeepSeekMoE), stored as an :class:`Experts` bank ``shared_experts`` (None when K_s = 0).
        shared_gate: scale the shared sum by sigmoid(x w_sg), ``shared_gate`` an ``nn.Linear(D, 1)``
            (Qwen2-MoE's ``shared_expert_gate``).

    ``dispatch``, ``capacity_factor``, ``top_k`` and ``weight_inputs`` may be reassigned after
    construction; each assignment is validated like the constructor argument. ``config`` holds
    every constructor argument (:class:`SparseMoEConfig`), so ``SparseMoE.from_config`` rebuilds
    the layer.

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
        router_bias: bool = False,
        scaling_factor: float = 1.0,
        num_groups: int = 1,
        topk_groups: int = 1,
        expert_bias: bool = False,
        weight_inputs: bool = False,
        swiglu_alpha: float = 1.702,
        swiglu_limit: float = 7.0,
        num_shared_experts: int = 0,
        shared_d_ff: int | None = None,
        shared_gate: bool = False,
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
                                 router_dtype=router_dtype, scoring=scoring, bias=router_bias,
                                 scaling_factor=scaling_factor, num_groups=num_groups,
                                 topk_groups=topk_groups)
        self.experts = Experts(num_experts, d_model, d_ff, activation=activation, bias=expert_bias,
                               swiglu_alpha=swiglu_alpha, swiglu_limit=swiglu_limit)
        self.num_shared_experts = num_shared_experts
        self.shared_d_ff = d_ff if shared_d_ff is None else check_positive_int("shared_d_ff",
                                                                               shared_d_ff)
        self.shared_experts = (Experts(num_shared_experts, d_model, self.shared_d_ff,
                                       activation=activation) if num_shared_experts else None)
        if shared_d_ff is not None and not num_shared_experts:
            raise ValueError(f"shared_d_ff={shared_d_ff} needs num_shared_experts >= 1, got 0")
        if shared_gate and not num_shared_experts:
            raise ValueError("shared_gate=True needs num_shared_experts >= 1, got 0")
        self.shared_gate = nn.Linear(d_model, 1, bias=False) if shared_gate else None
        self.config = SparseMoEConfig(
            d_model=d_model, d_ff=d_ff, num_experts=num_experts, top_k=top_k, dispatch=dispatch,
            capacity_factor=capacity_factor, activation=activation, normalize=normalize,
            noise=noise, router_dtype=router_dtype, scoring=scoring, router_bias=bool(router_bias),
            scaling_factor=float(scaling_factor), num_groups=num_groups, topk_groups=topk_groups,
            expert_bias=bool(expert_bias), swiglu_alpha=float(swiglu_alpha),
            swiglu_limit=float(swiglu_limit), weight_inputs=bool(weight_inputs),
            num_shared_experts=num_shared_experts, shared_d_ff=shared_d_ff,
            shared_gate=bool(shared_gate))

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

    @property
    def weight_inputs(self) -> bool:
        return self.config.weight_inputs

    @weight_inputs.setter
    def weight_inputs(self, weight_inputs: bool) -> None:
        self.config = replace(self.config, weight_inputs=bool(weight_inputs))

    def extra_repr(self) -> str:
        text = (f"dispatch={self.dispatch!r}, capacity_factor={self.capacity_factor}, "
                f"num_shared_experts={self.num_shared_experts}")
        return text + (", weight_inputs=True" if self.weight_inputs else "")

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
        if self.weight_inputs:
            y, plan = self._route_weighted_inputs(x_flat, routing)  # (N, D)
        else:
            plan = make_routing_plan(routing.topk_idx, routing.topk_weights, self.num_experts,
                                     self.capacity(x_flat.shape[0]), check_range=False)
            y = DISPATCH_FUNCTIONS[self.dispatch](x_flat, plan, self.experts)  # (N, D)
        if self.shared_experts is not None:
            y = y + self._shared(x_flat).to(y.dtype)  # (N, D)
        # under autocast the experts compute in bf16/fp16; the layer answers in x's dtype
        return MoEOutput(y=y.to(x.dtype).view(x.shape), router=routing,
                         tokens_per_expert=plan.tokens_per_expert,
                         dropped=~plan.keep.view(routing.topk_idx.shape))

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        """The shared experts on every token: x (N, D) -> (N, D)."""
        # s_n = sum_s Shared_s(x_n): every shared expert on every token, unweighted
        shared = self.shared_experts.forward_all(x).sum(0)  # (N, D)
        if self.shared_gate is not None:
            # s_n <- sigmoid(x_n w_sg) * s_n   (Qwen2-MoE)
            shared = torch.sigmoid(self.shared_gate(x)) * shared  # (N, 1) * (N, D)
        return shared

    def _route_weighted_inputs(self, x: torch.Tensor, routing: RouterOutput):
        """Llama 4's order: every (token, slot) becomes its own row w_{n,k} x_n with weight 1 and
        one expert, run by the same dispatch; the K outputs of a token are then summed. Capacity
        ranks the rows in (token, slot) order, as the ordinary path does."""
        num_tokens, top_k = routing.topk_idx.shape
        # row (n, k) = w_{n,k} * x_n
        rows = (x.unsqueeze(1) * routing.topk_weights.to(x.dtype).unsqueeze(-1))  # (N, K, D)
        rows = rows.reshape(num_tokens * top_k, self.d_model)  # (N*K, D)
        plan = make_routing_plan(routing.topk_idx.reshape(-1, 1),
                                 rows.new_ones(num_tokens * top_k, 1), self.num_experts,
                                 self.capacity(num_tokens))
        h = DISPATCH_FUNCTIONS[self.dispatch](rows, plan, self.experts)  # (N*K, D)
        # y_n = sum_k Expert_{i_k}(w_{n,k} x_n)
        return h.view(num_tokens, top_k, self.d_model).sum(dim=1), plan  # (N, D)
