"""Your layer inside real models: Hugging Face transformers MoE blocks -> :class:`moe_lab.SparseMoE`.
Lesson 09.

:func:`from_transformers` takes one MoE block of a transformers model, built from a config (random
weights; nothing is ever downloaded), and returns a ``SparseMoE`` with the same weights and the
same routing conventions: its output's ``y`` equals the block's output and its
``router.topk_idx`` holds the routed experts each token chose (as a set: DeepSeek-V3 picks them
with ``sorted=False``, so only the order differs). The conventions are options of the core
(:mod:`moe_lab.routing`, :mod:`moe_lab.experts`, :mod:`moe_lab.layer`); nothing here routes.

Supported transformers: 5.x (``transformers>=5.0,<6``), read and tested with 5.24.0. The
converter reads the fused expert tensors of the 5.x blocks (``experts.gate_up_proj`` and
``experts.down_proj``); 4.x blocks (a ModuleList of per-expert MLPs) are not supported.

The seven families, as read in transformers 5.24.0 (``models/<name>/modeling_<name>.py``):

- Mixtral (``MixtralSparseMoeBlock``): softmax, top-k, renormalise; SwiGLU experts.
- Qwen2-MoE (``Qwen2MoeSparseMoeBlock``): softmax, top-k, renormalise iff ``norm_topk_prob``;
  plus one shared expert of its own width scaled by sigmoid(x w_sg).
- Qwen3-MoE (``Qwen3MoeSparseMoeBlock``): as Qwen2-MoE, without the shared expert.
- OLMoE (``OlmoeSparseMoeBlock``): softmax, top-k, ``norm_topk_prob`` (False by default in ``OlmoeConfig``).
- DeepSeek-V3 (``DeepseekV3MoE``): sigmoid scores; ``e_score_correction_bias`` for the choice
  only; group-limited top-k (``n_group``, ``topk_group``; a group scores the sum of its top-2);
  renormalise; times ``routed_scaling_factor``; plus ``n_shared_experts`` ungated shared experts.
- gpt-oss (``GptOssMLP``): logits with a bias; top-k of the logits, softmax over the K (= softmax,
  top-k, renormalise); clamped SwiGLU with biases, gate and up interleaved in ``gate_up_proj``.
- Llama 4 (``Llama4TextMoe``): top-k of the logits, sigmoid of those (no renormalising); the score
  scales the expert's INPUT; plus one ungated shared expert.

Not converted (say so rather than guess): training-time noise (Mixtral's ``router_jitter_noise``
multiplies the whole block input; our jitter touches the router only), so parity is in
``eval()``; activations other than SiLU (refused with a ValueError).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from moe_lab.experts import Experts
from moe_lab.layer import SparseMoE


@dataclass(frozen=True)
class Family:
    """One model family: where its block class lives and how to convert it."""

    name: str                                   # "Mixtral"
    module: str                                 # transformers.models.mixtral.modeling_mixtral
    block: str                                  # the MoE block's class name
    convert: Callable[[nn.Module], SparseMoE]   # block -> SparseMoE with the same weights
    selection_bias: bool = False                # a bias that changes the choice only


# ----------------------------------------------------------------------------- weight layouts

def mixtral_expert_weights(gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused expert tensors of Mixtral, Qwen-MoE, OLMoE and DeepSeek-V3 -> ``Experts``'
    ``(w_gate, w_up, w_down)``.

    transformers computes ``gate, up = F.linear(x, gate_up_proj[e]).chunk(2, -1)`` and
    ``F.linear(h, down_proj[e])``, i.e. x @ W^T with [gate; up] stacked along the rows:
    gate_up_proj (E, 2F, D) -> w_gate, w_up (E, D, F); down_proj (E, D, F) -> w_down (E, F, D).
    """
    gate, up = gate_up_proj.chunk(2, dim=1)  # (E, F, D) each: the first F rows are the gate
    return gate.transpose(1, 2), up.transpose(1, 2), down_proj.transpose(1, 2)


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    if param.shape != value.shape:
        raise ValueError(f"weight shape {tuple(value.shape)} does not fit {tuple(param.shape)}")
    param.copy_(value)


def _check_silu(act_fn: nn.Module, where: str) -> None:
    probe = torch.linspace(-4, 4, 9)
    if not torch.allclose(act_fn(probe), nn.functional.silu(probe)):
        raise ValueError(f"{where}: only SiLU (SwiGLU) experts are supported, got {act_fn!r}")


def _copy_shared(bank: Experts, mlp: nn.Module, parts: int = 1) -> None:
    """A SwiGLU MLP of nn.Linear gate_proj, up_proj (F_s, D) and down_proj (D, F_s) -> ``parts``
    shared experts of width F_s / parts: splitting the hidden units in groups splits the sum
    exactly (DeepSeek-V3 stores its ``n_shared_experts`` as one MLP of width m*F)."""
    gate = mlp.gate_proj.weight.chunk(parts, dim=0)  # parts x (F, D)
    up = mlp.up_proj.weight.chunk(parts, dim=0)  # parts x (F, D)
    down = mlp.down_proj.weight.chunk(parts, dim=1)  # parts x (D, F)
    for s in range(parts):
        _copy(bank.w_gate[s], gate[s].T)
        _copy(bank.w_up[s], up[s].T)
        _copy(bank.w_down[s], down[s].T)


# ----------------------------------------------------------------------------- the families

def _softmax_family(block: nn.Module, *, normalize: bool, shared: bool = False) -> SparseMoE:
    """Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE: softmax, top-k, (renormalise), SwiGLU experts."""
    experts = block.experts
    _check_silu(experts.act_fn, type(block).__name__)
    num_experts, two_f, d_model = experts.gate_up_proj.shape
    shared_kwargs = {}
    if shared:  # Qwen2-MoE: one shared expert of its own width, scaled by sigmoid(x w_sg)
        _check_silu(block.shared_expert.act_fn, "shared_expert")
        shared_kwargs = dict(num_shared_experts=1, shared_gate=True,
                             shared_d_ff=block.shared_expert.gate_proj.out_features)
    layer = SparseMoE(d_model, two_f // 2, num_experts, block.gate.top_k, normalize=normalize,
                      **shared_kwargs)
    w_gate, w_up, w_down = mixtral_expert_weights(experts.gate_up_proj, experts.down_proj)
    _copy(layer.router.weight, block.gate.weight)
    _copy(layer.experts.w_gate, w_gate)
    _copy(layer.experts.w_up, w_up)
    _copy(layer.experts.w_down, w_down)
    if shared:
        _copy_shared(layer.shared_experts, block.shared_expert)
        _copy(layer.shared_gate.weight, block.shared_expert_gate.weight)
    return layer


def _mixtral(block: nn.Module) -> SparseMoE:
    return _softmax_family(block, normalize=True)


def _qwen2_moe(block: nn.Module) -> SparseMoE:
    return _softmax_family(block, normalize=block.gate.norm_topk_prob, shared=True)


def _qwen3_moe_or_olmoe(block: nn.Module) -> SparseMoE:
    return _softmax_family(block, normalize=block.gate.norm_topk_prob)


def _deepseek_v3(block: nn.Module) -> SparseMoE:
    """Sigmoid scores, selection bias, group-limited top-k, renormalise, x routed_scaling_factor,
    n_shared_experts ungated shared experts (stored by transformers as one MLP of width m*F)."""
    gate, experts = block.gate, block.experts
    _check_silu(experts.act_fn, "DeepseekV3MoE")
    num_experts, two_f, d_model = experts.gate_up_proj.shape
    d_ff, num_shared = two_f // 2, block.config.n_shared_experts
    layer = SparseMoE(d_model, d_ff, num_experts, gate.top_k, scoring="sigmoid",
                      normalize=gate.norm_topk_prob, scaling_factor=gate.routed_scaling_factor,
                      num_groups=gate.num_group, topk_groups=gate.topk_group,
                      num_shared_experts=num_shared)
    w_gate, w_up, w_down = mixtral_expert_weights(experts.gate_up_proj, experts.down_proj)
    _copy(layer.router.weight, gate.weight)
    _copy(layer.router.score_correction_bias, gate.e_score_correction_bias)
    _copy(layer.experts.w_gate, w_gate)
    _copy(layer.experts.w_up, w_up)
    _copy(layer.experts.w_down, w_down)
    if num_shared:
        _copy_shared(layer.shared_experts, block.shared_experts, parts=num_shared)
    return layer


def _gpt_oss(block: nn.Module) -> SparseMoE:
    """Router with a bias; top-k of the logits then softmax over the K, which equals softmax,
    top-k, renormalise; clamped SwiGLU experts with biases, gate and up interleaved."""
    router, experts = block.router, block.experts
    num_experts, d_model, two_f = experts.gate_up_proj.shape
    layer = SparseMoE(d_model, two_f // 2, num_experts, router.top_k, normalize=True,
                      router_bias=True, activation="clamped_swiglu", expert_bias=True,
                      swiglu_alpha=experts.alpha, swiglu_limit=experts.limit)
    _copy(layer.router.weight, router.weight)
    _copy(layer.router.bias, router.bias)
    # gate_up_proj (E, D, 2F) is used as x @ W: gate = columns 0, 2, 4, ..., up = 1, 3, 5, ...
    _copy(layer.experts.w_gate, experts.gate_up_proj[..., ::2])
    _copy(layer.experts.w_up, experts.gate_up_proj[..., 1::2])
    _copy(layer.experts.b_gate, experts.gate_up_proj_bias[..., ::2])
    _copy(layer.experts.b_up, experts.gate_up_proj_bias[..., 1::2])
    _copy(layer.experts.w_down, experts.down_proj)  # (E, F, D), used as h @ W
    _copy(layer.experts.b_down, experts.down_proj_bias)
    return layer


def _llama4(block: nn.Module) -> SparseMoE:
    """Top-k of the logits, sigmoid of those (= sigmoid scoring, no renormalising); the score
    scales the expert's input; one ungated shared expert."""
    experts = block.experts
    _check_silu(experts.act_fn, "Llama4TextMoe")
    _check_silu(block.shared_expert.activation_fn, "shared_expert")
    num_experts, d_model, two_f = experts.gate_up_proj.shape
    layer = SparseMoE(d_model, two_f // 2, num_experts, block.router.top_k, scoring="sigmoid",
                      normalize=False, weight_inputs=True, num_shared_experts=1,
                      shared_d_ff=block.shared_expert.gate_proj.out_features)
    gate, up = experts.gate_up_proj.chunk(2, dim=-1)  # (E, D, 2F) used as x @ W: [gate | up]
    _copy(layer.router.weight, block.router.weight)
    _copy(layer.experts.w_gate, gate)
    _copy(layer.experts.w_up, up)
    _copy(layer.experts.w_down, experts.down_proj)  # (E, F, D)
    _copy_shared(layer.shared_experts, block.shared_expert)
    return layer


FAMILIES = (
    Family("Mixtral", "transformers.models.mixtral.modeling_mixtral", "MixtralSparseMoeBlock", _mixtral),
    Family("Qwen2-MoE", "transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeSparseMoeBlock",
           _qwen2_moe),
    Family("Qwen3-MoE", "transformers.models.qwen3_moe.modeling_qwen3_moe", "Qwen3MoeSparseMoeBlock",
           _qwen3_moe_or_olmoe),
    Family("OLMoE", "transformers.models.olmoe.modeling_olmoe", "OlmoeSparseMoeBlock",
           _qwen3_moe_or_olmoe),
    Family("DeepSeek-V3", "transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3MoE",
           _deepseek_v3, selection_bias=True),
    Family("gpt-oss", "transformers.models.gpt_oss.modeling_gpt_oss", "GptOssMLP", _gpt_oss),
    Family("Llama 4", "transformers.models.llama4.modeling_llama4", "Llama4TextMoe", _llama4),
)
SUPPORTED_BLOCKS = tuple(f.block for f in FAMILIES)


SUPPORTED_MAJOR = 5  # transformers>=5.0,<6: the fused expert tensors read below


def _require_supported_transformers() -> None:
    """A clear error on a transformers whose blocks store experts differently (4.x: a ModuleList)."""
    import transformers  # lesson 09 only

    major = int(transformers.__version__.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise ImportError(f"moe_lab.interop reads transformers {SUPPORTED_MAJOR}.x blocks, found "
                          f"transformers {transformers.__version__}: pip install 'transformers>=5,<6'")


def family_of(block: object) -> Family:
    """The family of a transformers MoE block; a TypeError naming what was given otherwise."""
    for family in FAMILIES:
        if type(block).__name__ == family.block and type(block).__module__ == family.module:
            return family
    what = type(block)
    raise TypeError(
        f"from_transformers takes a transformers MoE block ({', '.join(SUPPORTED_BLOCKS)}), "
        f"got {what.__module__}.{what.__qualname__}")


def from_transformers(block: nn.Module) -> SparseMoE:
    """A :class:`SparseMoE` with the weights and routing conventions of a transformers MoE block.

    The returned layer is in the block's mode (train or eval) and dtype; ``layer(x).y`` equals the
    block's output on x of shape (B, T, D), ``layer(x).router.topk_idx`` the experts it chose.
    """
    family = family_of(block)
    _require_supported_transformers()
    with torch.no_grad():
        layer = family.convert(block)
    dtype = next(block.parameters()).dtype
    return layer.to(dtype).train(block.training)


# ----------------------------------------------------------------------------- helpers for lesson 09

def block_output(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's output tensor in x's shape (gpt-oss and Llama 4 also return router scores or
    logits; Llama 4 answers (N, D))."""
    family_of(block)
    out = block(x)
    return (out[0] if isinstance(out, tuple) else out).reshape(x.shape)


def block_topk_idx(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The routed experts the block chooses for each token, sorted: (N, K) int64."""
    family = family_of(block)
    x = x.reshape(-1, x.shape[-1])  # (N, D)
    if family.name == "Llama 4":
        router_logits = block.router(x)[1]  # (N, E); its experts: torch.topk of these
        topk_idx = torch.topk(router_logits, block.router.top_k, dim=1).indices
    else:
        router = block.router if family.name == "gpt-oss" else block.gate
        topk_idx = router(x)[2]  # (logits, weights, indices)
    return topk_idx.sort(dim=-1).values


@dataclass(frozen=True)
class Conventions:
    """What a converted layer does, in words: one row of lesson 09's table."""

    family: str
    scoring: str
    normalisation: str
    scaling: str
    bias: str
    group_limit: str
    shared_expert: str
    activation: str
    weights_on: str


def _activation_name(experts: Experts) -> str:
    name = {"swiglu": "SwiGLU", "clamped_swiglu": f"clamped SwiGLU (limit {experts.swiglu_limit:g})"}
    biases = " + biases" if experts.b_up is not None else ""
    return name.get(experts.activation, experts.activation) + biases


def conventions(block: nn.Module) -> Conventions:
    """The conventions of a block, read off the options of its converted layer."""
    family, layer = family_of(block), from_transformers(block)
    router, experts = layer.router, layer.experts
    biases = [name for name, present in (("logit bias", router.bias is not None),
                                         ("selection bias", family.selection_bias)) if present]
    shared = "-"
    if layer.num_shared_experts:
        shared = f"{layer.num_shared_experts} x F={layer.shared_d_ff}"
        shared += ", sigmoid gate" if layer.shared_gate is not None else ""
    return Conventions(
        family=family.name,
        scoring=router.scoring,
        normalisation="top-k sum to 1" if router.normalize else "none",
        scaling=f"x {router.scaling_factor:g}" if router.scaling_factor != 1.0 else "-",
        bias=", ".join(biases) or "-",
        group_limit=(f"best {router.topk_groups} of {router.num_groups} groups"
                     if router.num_groups > 1 else "-"),
        shared_expert=shared,
        activation=_activation_name(experts),
        weights_on="expert input" if layer.weight_inputs else "expert output",
    )


# tiny configurations, one per family: (config class, block class, config keywords)
_TINY = {
    "Mixtral": ("MixtralConfig", dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=24)),
    "Qwen2-MoE": ("Qwen2MoeConfig", dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
                                         shared_expert_intermediate_size=40, norm_topk_prob=False)),
    "Qwen3-MoE": ("Qwen3MoeConfig", dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
                                         norm_topk_prob=True)),
    "OLMoE": ("OlmoeConfig", dict(num_experts=8, num_experts_per_tok=2, intermediate_size=24,
                                  norm_topk_prob=False)),
    "DeepSeek-V3": ("DeepseekV3Config", dict(n_routed_experts=8, num_experts_per_tok=2,
                                             moe_intermediate_size=24, n_group=4, topk_group=2,
                                             n_shared_experts=2, routed_scaling_factor=2.5,
                                             norm_topk_prob=True)),
    "gpt-oss": ("GptOssConfig", dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=24,
                                     swiglu_limit=7.0)),
    "Llama 4": ("Llama4TextConfig", dict(num_local_experts=8, num_experts_per_tok=1, intermediate_size=24)),
}


def tiny_block(family: str, *, d_model: int = 16, seed: int = 0, scale: float = 1.0,
               **config: object) -> nn.Module:
    """A small MoE block of one family, built from a transformers config with random weights.

    Every parameter and buffer (the DeepSeek-V3 selection bias included) is drawn from
    N(0, (scale / sqrt(D))^2), so that routing is not uniform and gpt-oss's clamps bite at
    ``scale`` of about 4 and more. ``config`` overrides the tiny defaults (E, K, F, ...).
    """
    names = {f.name: f for f in FAMILIES}
    if family not in names:
        raise ValueError(f"family must be one of {tuple(names)}, got {family!r}")
    _require_supported_transformers()
    import transformers

    config_name, defaults = _TINY[family]
    # the eager experts (the per-expert loop read in the sources) unless the caller picks another
    kwargs = {"experts_implementation": "eager"} | dict(defaults) | dict(config) | {"hidden_size": d_model}
    block_class = getattr(importlib.import_module(names[family].module), names[family].block)
    block = block_class(getattr(transformers, config_name)(**kwargs))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*block.parameters(), *block.buffers()]:
            std = scale / (d_model ** 0.5)
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)
    return block.eval()
