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

With ``gate_shared_experts=True`` (Qwen2-MoE), the shared sum is scaled by sigmoid(x_n w_sg),
one scalar per token, ``w_sg`` the layer's ``shared_expert_gate`` (an ``nn.Linear(D, 1)``). The
shared experts are built like the routed ones (the same activation).

With ``weight_inputs=True`` (Llama 4: the router's score scales what the
expert reads) the routed sum is

    y_n = sum_k Expert_{topk_idx[n, k]}(topk_weights[n, k] * x_n)

which differs for any non-linear expert (lesson 09 shows by how much for SwiGLU).

The layer returns the routing alongside the output so that the caller (the model, a lesson, a
widget) can compute the auxiliary losses (:mod:`moe_lab.losses`) and see what was dropped.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from moe_lab.dispatch import DISPATCH_FUNCTIONS, compute_capacity, make_routing_plan
from moe_lab.experts import ACTIVATIONS, Experts
from moe_lab.routing import NOISE_TYPES, SCORING_TYPES, RouterOutput, TopKRouter
from moe_lab.validation import (
    check_bool,
    check_choice,
    check_float_tensor,
    check_groups,
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
    """Every option of :class:`SparseMoE`, declared once: the constructor, ``from_config`` and
    the expert-parallel ranks (:mod:`moe_lab.systems.parallel`) all read this object, and
    ``moe.config`` gives it back as the layer stands now (options changed after construction
    included). Validated on creation: a bad value raises a ValueError/TypeError naming it."""

    d_model: int                              # D
    d_ff: int                                 # F, each expert's hidden width
    num_experts: int                          # E
    top_k: int                                # K, experts per token
    dispatch: str = "sorted"                  # "dense" (reference), "loop", "sorted", "padded"
    capacity_factor: float | None = None      # None: dropless; else C = ceil(cf * N * K / E)
    activation: str = "swiglu"                # experts' FFN: "swiglu", "geglu", "gelu", "relu"
    normalize: bool = True                    # the K weights renormalised to sum to 1
    noise: str | None = None                  # None, "noisy_topk", "jitter" (training only)
    router_dtype: torch.dtype | None = torch.float32  # None: logits in the input's dtype
    scoring: str = "softmax"                  # "softmax" or "sigmoid" (DeepSeek-V3)
    scaling_factor: float = 1.0               # the K weights times this (DeepSeek-V3)
    num_groups: int = 1                       # group-limited selection (DeepSeek-V3's n_group)
    topk_groups: int = 1                      # groups kept per token (topk_group)
    weight_inputs: bool = False               # the K weights scale the inputs (Llama 4)
    num_shared_experts: int = 0               # K_s experts on every token (DeepSeekMoE)
    shared_d_ff: int | None = None            # their width; None: d_ff
    gate_shared_experts: bool = False         # shared sum times sigmoid(x w_sg) (Qwen2-MoE)

    def __post_init__(self) -> None:
        check_positive_int("d_model", self.d_model)
        check_positive_int("d_ff", self.d_ff)
        check_positive_int("num_experts", self.num_experts)
        check_top_k(self.top_k, self.num_experts)
        check_choice("dispatch", self.dispatch, DISPATCH_FUNCTIONS)
        object.__setattr__(self, "capacity_factor",  # stored as a float
                           check_positive_float("capacity_factor", self.capacity_factor,
                                                allow_none=True))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_bool("normalize", self.normalize)
        check_choice("noise", self.noise, NOISE_TYPES)
        if self.router_dtype is not None and (not isinstance(self.router_dtype, torch.dtype)
                                              or not self.router_dtype.is_floating_point):
            raise TypeError(f"router_dtype must be a floating torch.dtype or None, got "
                            f"{self.router_dtype!r}")
        check_choice("scoring", self.scoring, SCORING_TYPES)
        object.__setattr__(self, "scaling_factor",
                           check_positive_float("scaling_factor", self.scaling_factor))
        check_groups(self.num_groups, self.topk_groups, self.num_experts, self.top_k)
        check_bool("weight_inputs", self.weight_inputs)
        check_nonnegative_int("num_shared_experts", self.num_shared_experts)
        if self.shared_d_ff is not None:
            check_positive_int("shared_d_ff", self.shared_d_ff)
            if not self.num_shared_experts:  # a width for experts that do not exist: refused
                raise ValueError(f"shared_d_ff={self.shared_d_ff} needs num_shared_experts >= 1, got 0")
        check_bool("gate_shared_experts", self.gate_shared_experts)
        if self.gate_shared_experts and not self.num_shared_experts:
            raise ValueError("gate_shared_experts=True needs num_shared_experts >= 1, got 0")

    def to_dict(self) -> dict[str, object]:
        """The keyword arguments of ``SparseMoE(**config.to_dict())`` (plain values: saves and
        loads with ``torch.load(weights_only=True)``)."""
        return asdict(self)


# where each option lives once the layer is built: the router holds these (and may change them,
# validated); the layer holds dispatch, capacity_factor and weight_inputs; the rest is fixed
ROUTER_OPTIONS = ("top_k", "normalize", "noise", "router_dtype", "scoring", "scaling_factor",
                  "num_groups", "topk_groups")
LAYER_OPTIONS = ("dispatch", "capacity_factor", "weight_inputs")
OPTIONS = tuple(f.name for f in fields(SparseMoEConfig))
# options of earlier versions that now belong to one family (gpt-oss): say where they went
_MOVED_TO_INTEROP = ("router_bias", "expert_bias", "swiglu_alpha", "swiglu_limit")


def _fixed(name: str):
    def setter(self: SparseMoE, value: object) -> None:
        raise AttributeError(f"{name} is fixed at construction: build a new layer, "
                             f"SparseMoE.from_config(dataclasses.replace(moe.config, {name}={value!r}))")
    return property(lambda self: getattr(self._config, name), setter)


def _layer_option(name: str):
    def setter(self: SparseMoE, value: object) -> None:
        self._config = replace(self._config, **{name: value})  # validated by the config
    return property(lambda self: getattr(self._config, name), setter)


class SparseMoE(nn.Module):
    """A top-k Mixture-of-Experts feed-forward layer.

    ``SparseMoE(d_model, d_ff, num_experts, top_k, **options)``: the options and their defaults
    are the fields of :class:`SparseMoEConfig` (dispatch, capacity_factor, activation, the
    router's normalize, noise, router_dtype, scoring, scaling_factor, num_groups, topk_groups,
    weight_inputs, num_shared_experts, shared_d_ff, gate_shared_experts).

    Attributes: ``router`` (:class:`TopKRouter`), ``experts`` (:class:`Experts`),
    ``shared_experts`` (an :class:`Experts` bank of K_s experts, None when K_s = 0) and
    ``shared_expert_gate`` (``nn.Linear(D, 1)``, None unless ``gate_shared_experts``).

    After construction, ``dispatch``, ``capacity_factor``, ``weight_inputs`` and ``top_k`` may be
    reassigned on the layer, and the router's options on ``moe.router``; each assignment is
    validated like the constructor argument, and ``moe.config`` reads them back, so
    ``SparseMoE.from_config(moe.config)`` (and every expert-parallel rank) rebuilds the layer as
    it is now. The shapes, the activation and the shared experts are fixed: assigning them raises
    an AttributeError naming the option.

    x must be on the weights' device and, outside ``torch.autocast``, in the weights' dtype:
    a float64, float16 or bfloat16 x into a float32 layer raises one TypeError naming both
    dtypes, the same for every dispatch (cast x or the layer; nothing is cast silently). Under
    autocast the experts compute in the autocast dtype and y comes back in x's dtype. A meta
    tensor is refused (ValueError): routing needs values.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, top_k: int,
                 **options: object) -> None:
        super().__init__()
        config = SparseMoEConfig(d_model, d_ff, num_experts, top_k, **_check_option_names(options))
        self._config = config
        self.router = TopKRouter(config.d_model, config.num_experts,
                                 **{name: getattr(config, name) for name in ROUTER_OPTIONS})
        self.experts = Experts(config.num_experts, config.d_model, config.d_ff,
                               activation=config.activation)
        # the shared experts are built as the routed ones, with the layer's activation
        self.shared_experts = (Experts(config.num_shared_experts, config.d_model, self.shared_d_ff,
                                       activation=config.activation)
                               if config.num_shared_experts else None)
        self.shared_expert_gate = (nn.Linear(config.d_model, 1, bias=False)
                                   if config.gate_shared_experts else None)

    @classmethod
    def from_config(cls, config: SparseMoEConfig) -> SparseMoE:
        """A new layer with ``config``'s options (fresh weights)."""
        if not isinstance(config, SparseMoEConfig):
            raise TypeError(f"config must be a SparseMoEConfig, got {type(config).__name__}")
        return SparseMoE(**config.to_dict())

    @property
    def config(self) -> SparseMoEConfig:
        """The layer's options as they are now (the router's read from ``self.router``)."""
        return replace(self._config, **{name: getattr(self.router, name) for name in ROUTER_OPTIONS})

    d_model = _fixed("d_model")
    d_ff = _fixed("d_ff")
    num_experts = _fixed("num_experts")
    num_shared_experts = _fixed("num_shared_experts")
    dispatch = _layer_option("dispatch")
    capacity_factor = _layer_option("capacity_factor")
    weight_inputs = _layer_option("weight_inputs")

    @property
    def shared_d_ff(self) -> int:
        """F_s, the shared experts' width (``d_ff`` unless ``shared_d_ff`` was given)."""
        return self._config.shared_d_ff or self._config.d_ff

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
        if self.shared_expert_gate is not None:
            # s_n <- sigmoid(x_n w_sg) * s_n   (Qwen2-MoE)
            shared = torch.sigmoid(self.shared_expert_gate(x)) * shared  # (N, 1) * (N, D)
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
                                 self.capacity(num_tokens), check_range=False)
        h = DISPATCH_FUNCTIONS[self.dispatch](rows, plan, self.experts)  # (N*K, D)
        # y_n = sum_k Expert_{i_k}(w_{n,k} x_n)
        return h.view(num_tokens, top_k, self.d_model).sum(dim=1), plan  # (N, D)


def _check_option_names(options: dict[str, object]) -> dict[str, object]:
    """Unknown option names raise one TypeError listing the known ones (and where the gpt-oss
    options of earlier versions went)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        moved = [name for name in unknown if name in _MOVED_TO_INTEROP]
        hint = (f" ({', '.join(moved)}: gpt-oss's own, see moe_lab.interop.quirks)" if moved else "")
        raise TypeError(f"SparseMoE got unknown option(s) {', '.join(unknown)}{hint}; the options "
                        f"are {', '.join(OPTIONS[4:])}")
    if options.get("activation") == "clamped_swiglu":
        raise ValueError("activation='clamped_swiglu' is gpt-oss's own: "
                         "moe_lab.interop.quirks.GptOssExperts")
    return options


# help(SparseMoE) shows every option with its default, read from the one declaration above
SparseMoE.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
       for f in fields(SparseMoEConfig)[:4]]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
       for f in fields(SparseMoEConfig)[4:]])
