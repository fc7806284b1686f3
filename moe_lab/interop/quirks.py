"""The families' own ways, kept out of the core (lesson 09): moe_lab's router, experts and layer
over the parameters of a transformers MoE block, under the block's own names.

    FamilyRouter     a TopKRouter over the block's router weight (gpt-oss: plus its logit bias)
    DeepseekRouter   ... whose selection bias is DeepSeek-V3's ``e_score_correction_bias``
    FusedExperts     Experts whose w_gate, w_up, w_down are views of the fused ``gate_up_proj``
                     and ``down_proj`` (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V3, Llama 4)
    GptOssExperts    gpt-oss's clamped SwiGLU with biases, over its interleaved tensors
    MLPExperts       shared experts as views of an MLP's ``gate_proj``, ``up_proj``, ``down_proj``
    FamilyMoE        a SparseMoE assembled from these, each part under the block's name

Nothing is copied: each module holds the block's own ``nn.Parameter`` objects (so gradients,
``requires_grad``, device and each parameter's dtype stay the model's) and computes the core's
layouts as views at every call. The routing itself is the core's (:mod:`moe_lab.routing`); only
what no lesson builds lives here: gpt-oss's logit bias, expert biases and clamped SwiGLU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.experts import GATED_ACTIVATIONS, Experts
from moe_lab.layer import SparseMoE, SparseMoEConfig
from moe_lab.routing import RouterOutput, TopKRouter


def mixtral_expert_weights(gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused expert tensors of Mixtral, Qwen-MoE, OLMoE and DeepSeek-V3 -> ``Experts``'
    ``(w_gate, w_up, w_down)``, as views.

    transformers computes ``gate, up = F.linear(x, gate_up_proj[e]).chunk(2, -1)`` and
    ``F.linear(h, down_proj[e])``, i.e. x @ W^T with [gate; up] stacked along the rows:
    gate_up_proj (E, 2F, D) -> w_gate, w_up (E, D, F); down_proj (E, D, F) -> w_down (E, F, D).
    """
    for name, weight in (("gate_up_proj", gate_up_proj), ("down_proj", down_proj)):
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 3:
            raise ValueError(f"{name} must be 3-D (one matrix per expert), got shape "
                             f"{tuple(weight.shape)}")
    num_experts, rows, d_model = gate_up_proj.shape
    if rows % 2 or down_proj.shape != (num_experts, d_model, rows // 2):
        raise ValueError(f"gate_up_proj (E, 2F, D) and down_proj (E, D, F) do not fit: got "
                         f"{tuple(gate_up_proj.shape)} and {tuple(down_proj.shape)}")
    gate, up = gate_up_proj.chunk(2, dim=1)  # (E, F, D) each: the first F rows are the gate
    return gate.transpose(1, 2), up.transpose(1, 2), down_proj.transpose(1, 2)


class FamilyRouter(TopKRouter):
    """A :class:`TopKRouter` over a block's router weight (E, D), with gpt-oss's logit bias
    (E,) when ``bias`` is given: router_logits = x W^T + b. No selection bias.

    ``weights_in_logits_dtype``: the combine weights are handed to the experts in the logits'
    dtype (Qwen-MoE, OLMoE, gpt-oss and Llama 4 round them to bf16 in a bf16 model; Mixtral and
    DeepSeek-V3 keep them in float32), so that the experts' products round as the family's do."""

    score_correction_bias = None

    def __init__(self, weight: nn.Parameter, top_k: int, *, bias: nn.Parameter | None = None,
                 normalize: bool = True, router_dtype: torch.dtype | None = None,
                 scoring: str = "softmax", scaling_factor: float = 1.0, num_groups: int = 1,
                 topk_groups: int = 1, weights_in_logits_dtype: bool = False) -> None:
        nn.Module.__init__(self)
        self.weights_in_logits_dtype = bool(weights_in_logits_dtype)
        num_experts, d_model = weight.shape
        self._configure(d_model, num_experts, top_k, normalize=normalize, noise=None,
                        router_dtype=router_dtype, scoring=scoring, jitter_eps=1e-2,
                        scaling_factor=scaling_factor, num_groups=num_groups,
                        topk_groups=topk_groups)
        self.weight = weight
        self.register_parameter("noise_weight", None)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = bias

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        # router_logits = x W^T + b  (gpt-oss)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)  # (N, E)

    def _route(self, x: torch.Tensor) -> RouterOutput:
        routing = super()._route(x)  # x: the logits' dtype (router_dtype, or the input's)
        if not self.weights_in_logits_dtype:
            return routing
        return replace(routing, topk_weights=routing.topk_weights.to(x.dtype))  # (N, K)


class DeepseekRouter(FamilyRouter):
    """DeepSeek-V3's router: its ``e_score_correction_bias`` buffer is the selection bias."""

    def __init__(self, weight: nn.Parameter, top_k: int, *, e_score_correction_bias: torch.Tensor,
                 **options: object) -> None:
        super().__init__(weight, top_k, **options)
        self.register_buffer("e_score_correction_bias", e_score_correction_bias)

    @property
    def score_correction_bias(self) -> torch.Tensor:
        return self.e_score_correction_bias


class FusedExperts(Experts):
    """Gated experts over fused tensors, as views.

    ``transposed=True`` (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V3: used as x W^T): gate_up_proj
    (E, 2F, D), the first F rows the gate; down_proj (E, D, F). ``transposed=False`` (Llama 4:
    used as x W): gate_up_proj (E, D, 2F), the first F columns the gate; down_proj (E, F, D).
    """

    def __init__(self, gate_up_proj: nn.Parameter, down_proj: nn.Parameter, *, activation: str,
                 transposed: bool) -> None:
        nn.Module.__init__(self)
        if activation not in GATED_ACTIVATIONS:
            raise ValueError(f"activation must be gated {tuple(GATED_ACTIVATIONS)}, got {activation!r}")
        if transposed:
            num_experts, two_f, d_model = gate_up_proj.shape
        else:
            num_experts, d_model, two_f = gate_up_proj.shape
        self._configure(num_experts, d_model, two_f // 2, activation)
        self.transposed = transposed
        self.gate_up_proj, self.down_proj = gate_up_proj, down_proj

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.transposed:
            return mixtral_expert_weights(self.gate_up_proj, self.down_proj)
        gate, up = self.gate_up_proj.chunk(2, dim=-1)  # (E, D, F) each: [gate | up]
        return gate, up, self.down_proj

    w_gate = property(lambda self: self._weights()[0])  # (E, D, F)
    w_up = property(lambda self: self._weights()[1])  # (E, D, F)
    w_down = property(lambda self: self._weights()[2])  # (E, F, D)


class GptOssExperts(Experts):
    """gpt-oss's experts (OpenAI 2025, model card and reference code): a clamped SwiGLU with
    biases, gate and up interleaved in ``gate_up_proj`` (E, D, 2F) (gate = columns 0, 2, 4, ...),
    ``gate_up_proj_bias`` (E, 2F), ``down_proj`` (E, F, D), ``down_proj_bias`` (E, D). With
    g = min(x W_gate + b_gate, limit) and u = clamp(x W_up + b_up, -limit, limit):

        h = ((u + 1) * g * sigmoid(alpha * g)) W_down + b_down        (alpha 1.702, limit 7)
    """

    def __init__(self, gate_up_proj: nn.Parameter, gate_up_proj_bias: nn.Parameter,
                 down_proj: nn.Parameter, down_proj_bias: nn.Parameter, *, alpha: float,
                 limit: float) -> None:
        nn.Module.__init__(self)
        num_experts, d_model, two_f = gate_up_proj.shape
        self._configure(num_experts, d_model, two_f // 2, "swiglu")
        self.alpha, self.limit = float(alpha), float(limit)
        self.gate_up_proj, self.gate_up_proj_bias = gate_up_proj, gate_up_proj_bias
        self.down_proj, self.down_proj_bias = down_proj, down_proj_bias

    activation = property(lambda self: "clamped_swiglu")
    w_gate = property(lambda self: self.gate_up_proj[..., ::2])  # (E, D, F)
    w_up = property(lambda self: self.gate_up_proj[..., 1::2])  # (E, D, F)
    w_down = property(lambda self: self.down_proj)  # (E, F, D)

    def _ffn(self, x: torch.Tensor, matmul) -> torch.Tensor:
        def biased(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            # h W + b_e: a column of ones times the (E, 1, A) biases gives each row its expert's
            # bias in any layout, exactly (one product with 1.0)
            ones = torch.ones_like(h[..., :1])  # (.., 1)
            return matmul(h, weight) + matmul(ones, bias.unsqueeze(-2).to(h.dtype))

        # one product for both halves, as gpt-oss does; gate = columns 0, 2, ..., up = 1, 3, ...
        gate_up = biased(x, self.gate_up_proj, self.gate_up_proj_bias)  # (.., 2F)
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]  # (.., F) each
        # g = min(gate, limit), u = clamp(up, -limit, limit):  (u + 1) * g * sigmoid(alpha * g)
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        h = (up + 1) * (gate * torch.sigmoid(gate * self.alpha))  # (.., F)
        return biased(h, self.w_down, self.down_proj_bias)  # (.., D)


class MLPExperts(Experts):
    """``parts`` shared experts as views of one gated MLP of ``nn.Linear`` layers ``gate_proj``,
    ``up_proj`` (parts*F, D) and ``down_proj`` (D, parts*F) (the MLP's own modules). Splitting the
    hidden units in groups splits the sum exactly: DeepSeek-V3 stores its ``n_shared_experts``
    as one MLP of width m*F."""

    def __init__(self, mlp: nn.Module, *, activation: str, parts: int = 1) -> None:
        nn.Module.__init__(self)
        for name in ("gate_proj", "up_proj", "down_proj"):
            if getattr(mlp, name).bias is not None:
                raise ValueError(f"{type(mlp).__name__}.{name} has a bias; shared experts have none")
        width, d_model = mlp.gate_proj.weight.shape
        self._configure(parts, d_model, width // parts, activation)
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def _split(self, linear: nn.Linear) -> torch.Tensor:  # (parts*F, D) -> (parts, D, F)
        return linear.weight.view(self.num_experts, self.d_ff, self.d_model).transpose(1, 2)

    def forward_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of the ``parts`` experts on every token, as the family computes it: its one
        MLP of width parts*F, x (N, D) -> (N, D). Equal to ``forward_all(x).sum(0)``, but summed
        inside one matmul and rounded once (in bf16, ``parts`` rounded outputs summed differ)."""
        self._check_rows("x", x, 2)
        # down(act(x W_gate^T) * (x W_up^T))  over all parts*F hidden units
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))  # (N, D)

    w_gate = property(lambda self: self._split(self.gate_proj))
    w_up = property(lambda self: self._split(self.up_proj))
    # (D, parts*F) -> (parts, F, D)
    w_down = property(lambda self: self.down_proj.weight.view(self.d_model, self.num_experts,
                                                              self.d_ff).permute(1, 2, 0))


@dataclass(frozen=True)
class BlockNames:
    """The names a family's block gives its parts (its state dict's names)."""

    router: str = "gate"               # "gate" or "router"
    shared: str | None = None          # "shared_expert", "shared_experts" or None


class FamilyMoE(SparseMoE):
    """A :class:`SparseMoE` made of a block's parts: ``router``, ``experts``, ``shared_experts``
    and ``shared_expert_gate`` are the modules above (or the block's own ``nn.Linear`` gate),
    registered under the block's names, so the state dict is the block's.

    ``config`` holds the core's options; a family's own (gpt-oss's biases and clamp) live in
    its modules, so ``SparseMoE.from_config(layer.config)`` is not this layer (the
    expert-parallel launcher refuses it by name). ``input_jitter`` is Mixtral's
    ``router_jitter_noise``: in training the whole input is multiplied by U(1 - j, 1 + j).
    """

    def __init__(self, config: SparseMoEConfig, names: BlockNames, router: TopKRouter,
                 experts: Experts, shared_experts: Experts | None = None,
                 shared_expert_gate: nn.Linear | None = None, *, input_jitter: float = 0.0,
                 family: str = "", idle: dict[str, nn.Module] | None = None) -> None:
        nn.Module.__init__(self)
        self._config, self._names = config, names
        self.family, self.input_jitter = family, float(input_jitter)
        # registered directly: "router" is also the name of the property below
        self._modules[names.router] = router
        self._modules["experts"] = experts
        if shared_experts is not None:
            self._modules[names.shared] = shared_experts
        self._modules["shared_expert_gate"] = shared_expert_gate
        # a block's modules that compute nothing (DeepSeek-V3's shared experts of width 0 when
        # n_shared_experts = 0), kept under their names so that the state dict is the block's
        for name, module in (idle or {}).items():
            self._modules[name] = module

    @property
    def router(self) -> TopKRouter:
        return self._modules[self._names.router]

    @property
    def shared_experts(self) -> Experts | None:
        return self._modules[self._names.shared] if self._names.shared else None

    def extra_repr(self) -> str:
        return f"family={self.family!r}, " + super().extra_repr()

    def _shared(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared_experts
        if isinstance(shared, MLPExperts) and self.shared_expert_gate is None:
            return shared.forward_mlp(x)  # (N, D): DeepSeek-V3's n_shared_experts in one MLP
        return super()._shared(x)

    def forward(self, x: torch.Tensor):
        if self.training and self.input_jitter > 0:
            # x <- x * u,  u ~ U(1 - j, 1 + j)  (Mixtral's router_jitter_noise, the whole input)
            x = x * torch.empty_like(x).uniform_(1.0 - self.input_jitter, 1.0 + self.input_jitter)
        return super().forward(x)
