"""Your layer inside real models: Hugging Face transformers MoE blocks -> :class:`moe_lab.SparseMoE`.
Lesson 09.

:func:`from_transformers` takes one MoE block of a transformers model and returns a ``SparseMoE``
(a :class:`moe_lab.interop.quirks.FamilyMoE`) over the block's own parameters (no copies: it
follows the block's device and each parameter's dtype, and gradients reach the block) with the
same routing conventions, in every dtype: its output's ``y`` equals the block's output and its
``router.topk_idx`` holds the routed experts each token chose (as a set: DeepSeek-V3 picks them
with ``sorted=False``, so only the order differs). The conventions are options of the core
(:mod:`moe_lab.routing`, :mod:`moe_lab.experts`, :mod:`moe_lab.layer`) plus the family quirks of
:mod:`moe_lab.interop.quirks`; nothing here routes. :func:`moe_lab.interop.swap_moe_blocks` puts
such layers into a whole model.

Supported transformers: 5.x (``transformers>=5.0,<6``), read and tested with 5.25.0. The
converter reads the fused expert tensors of the 5.x blocks (``experts.gate_up_proj`` and
``experts.down_proj``); 4.x blocks (a ModuleList of per-expert MLPs) and quantised experts
(gpt-oss's MXFP4) are refused with a TypeError naming what was found.

The seven families, as read in transformers 5.25.0 (``models/<name>/modeling_<name>.py``):

- Mixtral (``MixtralSparseMoeBlock``): softmax, top-k, renormalise; SwiGLU experts.
- Qwen2-MoE (``Qwen2MoeSparseMoeBlock``): softmax, top-k, renormalise iff ``norm_topk_prob``;
  plus one shared expert of its own width scaled by sigmoid(x w_sg).
- Qwen3-MoE (``Qwen3MoeSparseMoeBlock``): as Qwen2-MoE, without the shared expert.
- OLMoE (``OlmoeSparseMoeBlock``): softmax, top-k, ``norm_topk_prob`` (False by default in ``OlmoeConfig``).
- DeepSeek-V3 (``DeepseekV3MoE``): sigmoid scores; ``e_score_correction_bias`` for the choice
  only; group-limited top-k (``n_group``, ``topk_group``; a group scores the sum of its top-2);
  renormalise; times ``routed_scaling_factor``; plus ``n_shared_experts`` ungated shared experts.
  Its router computes in float32 whatever the model's dtype (and keeps its weight in float32).
- gpt-oss (``GptOssMLP``): logits with a bias; top-k of the logits, softmax over the K (= softmax,
  top-k, renormalise); clamped SwiGLU with biases, gate and up interleaved in ``gate_up_proj``.
- Llama 4 (``Llama4TextMoe``): top-k of the logits, sigmoid of those (no renormalising); the score
  scales the expert's INPUT; plus one ungated shared expert.

All but DeepSeek-V3 compute the router logits in the model's dtype and the scores from them in
float32 (gpt-oss its softmax over the K chosen logits in the model's dtype): the converted router
does the same (``router_dtype=None``), so a bfloat16 model routes every token as its family does
(the course's float32 router would send some elsewhere: lesson 09).
The experts' gate activation is the config's ``hidden_act``: SiLU (SwiGLU) or GELU (GeGLU).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.experts import Experts
from moe_lab.interop.quirks import (
    BlockNames,
    DeepseekRouter,
    FamilyMoE,
    FamilyRouter,
    FusedExperts,
    GptOssExperts,
    MLPExperts,
)
from moe_lab.layer import SparseMoEConfig
from moe_lab.validation import check_nonnegative_int, check_positive_float, check_positive_int


@dataclass(frozen=True)
class Family:
    """One model family: where its block class lives and how to build a layer over it."""

    name: str                                   # "Mixtral"
    module: str                                 # transformers.models.mixtral.modeling_mixtral
    block: str                                  # the MoE block's class name
    parts: Callable[[nn.Module], dict]          # block -> FamilyMoE's arguments (shared tensors)
    selection_bias: bool = False                # a bias that changes the choice only
    output: str = "tensor"                      # what the block returns: "tensor", "gpt-oss", "llama4"


# ----------------------------------------------------------------------------- reading a block

def _activation_of(act_fn: nn.Module, where: str) -> str:
    """The gated activation a block's ``act_fn`` computes: "swiglu" (SiLU) or "geglu" (GELU)."""
    probe = torch.linspace(-4, 4, 17, device="cpu")  # also inside a torch.device("meta") context
    for name, fn in (("swiglu", F.silu), ("geglu", F.gelu)):
        if torch.equal(act_fn(probe), fn(probe)):
            return name
    raise ValueError(f"{where}: the experts' activation must be SiLU (SwiGLU) or GELU (GeGLU) "
                     f"(hidden_act 'silu' or 'gelu'), got {act_fn!r}")


def _fused(experts: nn.Module, names: tuple[str, ...], where: str) -> list[nn.Parameter]:
    """The block's fused expert tensors, refused by name when they are not plain float tensors
    (4.x: a ModuleList of per-expert MLPs; quantised: MXFP4 blocks and scales)."""
    if isinstance(experts, nn.ModuleList):
        raise TypeError(f"{where}.experts is a ModuleList of {len(experts)} per-expert MLPs "
                        "(the transformers 4.x layout); moe_lab.interop reads the fused 5.x "
                        "tensors experts.gate_up_proj / experts.down_proj")
    tensors = [getattr(experts, name, None) for name in names]
    if any(not isinstance(t, torch.Tensor) or not t.is_floating_point() for t in tensors):
        found = sorted(name for name, _ in experts.named_parameters(recurse=False))
        raise TypeError(f"{where}.experts is a {type(experts).__name__} with parameters "
                        f"{found}: moe_lab.interop needs float tensors {list(names)} "
                        "(quantised experts, such as gpt-oss's MXFP4, are not supported; "
                        "load the model dequantised)")
    return tensors


# ----------------------------------------------------------------------------- the families

def _softmax_family(block: nn.Module, *, normalize: bool, shared: bool = False,
                    weights_in_logits_dtype: bool = True) -> dict:
    """Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE: softmax, top-k, (renormalise), gated experts;
    Qwen2-MoE adds one shared expert of its own width scaled by sigmoid(x w_sg). All but Mixtral
    hand the weights to the experts in the logits' dtype."""
    where = type(block).__name__
    gate_up_proj, down_proj = _fused(block.experts, ("gate_up_proj", "down_proj"), where)
    activation = _activation_of(block.experts.act_fn, where)
    num_experts, two_f, d_model = gate_up_proj.shape
    parts = dict(
        names=BlockNames(router="gate", shared="shared_expert" if shared else None),
        router=FamilyRouter(block.gate.weight, block.gate.top_k, normalize=normalize,
                            weights_in_logits_dtype=weights_in_logits_dtype),
        experts=FusedExperts(gate_up_proj, down_proj, activation=activation, transposed=True),
        input_jitter=getattr(block, "jitter_noise", 0.0),
    )
    shared_kwargs = {}
    if shared:
        parts["shared_experts"] = MLPExperts(block.shared_expert, activation=_activation_of(
            block.shared_expert.act_fn, "shared_expert"))
        parts["shared_expert_gate"] = block.shared_expert_gate
        shared_kwargs = dict(num_shared_experts=1, gate_shared_experts=True,
                             shared_d_ff=parts["shared_experts"].d_ff)
    parts["config"] = SparseMoEConfig(d_model, two_f // 2, num_experts, block.gate.top_k,
                                      normalize=normalize, activation=activation,
                                      router_dtype=None, **shared_kwargs)
    return parts


def _mixtral(block: nn.Module) -> dict:
    return _softmax_family(block, normalize=True, weights_in_logits_dtype=False)


def _qwen2_moe(block: nn.Module) -> dict:
    return _softmax_family(block, normalize=block.gate.norm_topk_prob, shared=True)


def _qwen3_moe_or_olmoe(block: nn.Module) -> dict:
    return _softmax_family(block, normalize=block.gate.norm_topk_prob)


def _deepseek_v3(block: nn.Module) -> dict:
    """Sigmoid scores in float32, selection bias, group-limited top-k, renormalise,
    x routed_scaling_factor, n_shared_experts ungated shared experts (one MLP of width m*F)."""
    gate, where = block.gate, "DeepseekV3MoE"
    gate_up_proj, down_proj = _fused(block.experts, ("gate_up_proj", "down_proj"), where)
    activation = _activation_of(block.experts.act_fn, where)
    num_experts, two_f, d_model = gate_up_proj.shape
    num_shared = block.config.n_shared_experts
    options = dict(scoring="sigmoid", normalize=gate.norm_topk_prob,
                   scaling_factor=float(gate.routed_scaling_factor), num_groups=gate.num_group,
                   topk_groups=gate.topk_group, router_dtype=torch.float32)
    parts = dict(
        names=BlockNames(router="gate", shared="shared_experts" if num_shared else None),
        router=DeepseekRouter(gate.weight, gate.top_k,
                              e_score_correction_bias=gate.e_score_correction_bias, **options),
        experts=FusedExperts(gate_up_proj, down_proj, activation=activation, transposed=True),
        config=SparseMoEConfig(d_model, two_f // 2, num_experts, gate.top_k, activation=activation,
                               num_shared_experts=num_shared, **options),
    )
    if num_shared:
        parts["shared_experts"] = MLPExperts(block.shared_experts, parts=num_shared,
                                             activation=_activation_of(block.shared_experts.act_fn,
                                                                       "shared_experts"))
    elif getattr(block, "shared_experts", None) is not None:  # an MLP of width 0: adds nothing
        parts["idle"] = {"shared_experts": block.shared_experts}
    return parts


def _gpt_oss(block: nn.Module) -> dict:
    """Router with a bias; top-k of the logits then softmax over the K, which equals softmax,
    top-k, renormalise; clamped SwiGLU experts with biases, gate and up interleaved."""
    router, experts = block.router, block.experts
    tensors = _fused(experts, ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"),
                     "GptOssMLP")
    num_experts, d_model, two_f = tensors[0].shape
    return dict(
        names=BlockNames(router="router"),
        router=FamilyRouter(router.weight, router.top_k, bias=router.bias, normalize=True,
                            weights_in_logits_dtype=True),
        experts=GptOssExperts(*tensors, alpha=experts.alpha, limit=experts.limit),
        config=SparseMoEConfig(d_model, two_f // 2, num_experts, router.top_k, router_dtype=None),
    )


def _llama4(block: nn.Module) -> dict:
    """Top-k of the logits, sigmoid of those (= sigmoid scoring, no renormalising); the score
    scales the expert's input; one ungated shared expert."""
    where = "Llama4TextMoe"
    gate_up_proj, down_proj = _fused(block.experts, ("gate_up_proj", "down_proj"), where)
    activation = _activation_of(block.experts.act_fn, where)
    shared = MLPExperts(block.shared_expert, activation=_activation_of(
        block.shared_expert.activation_fn, "shared_expert"))
    num_experts, d_model, two_f = gate_up_proj.shape
    options = dict(scoring="sigmoid", normalize=False, router_dtype=None)
    return dict(
        names=BlockNames(router="router", shared="shared_expert"),
        router=FamilyRouter(block.router.weight, block.router.top_k, weights_in_logits_dtype=True,
                            **options),
        experts=FusedExperts(gate_up_proj, down_proj, activation=activation, transposed=False),
        shared_experts=shared,
        config=SparseMoEConfig(d_model, two_f // 2, num_experts, block.router.top_k,
                               activation=activation, weight_inputs=True, num_shared_experts=1,
                               shared_d_ff=shared.d_ff, **options),
    )


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
    Family("gpt-oss", "transformers.models.gpt_oss.modeling_gpt_oss", "GptOssMLP", _gpt_oss,
           output="gpt-oss"),
    Family("Llama 4", "transformers.models.llama4.modeling_llama4", "Llama4TextMoe", _llama4,
           output="llama4"),
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


def build_family_layer(block: nn.Module, cls: type[FamilyMoE] = FamilyMoE) -> FamilyMoE:
    """A ``cls`` over ``block``'s own parameters, in the block's mode (train or eval)."""
    family = family_of(block)
    _require_supported_transformers()
    layer = cls(family=family.name, **family.parts(block))
    # the block's order of parts, so that the state dict lists its keys as the block's does
    order = [name for name in block._modules if name in layer._modules]
    layer._modules = {name: layer._modules[name] for name in order} | layer._modules
    return layer.train(block.training)


def from_transformers(block: nn.Module) -> FamilyMoE:
    """A :class:`SparseMoE` over a transformers MoE block's parameters, with its conventions.

    Nothing is copied or allocated: the layer's router, experts and shared experts are views of
    the block's tensors (an edit of one is seen by the other, gradients reach the block's
    parameters, and each parameter keeps its device and dtype: DeepSeek-V3's float32 router in a
    bfloat16 model stays float32). The layer is in the block's mode; ``layer(x).y`` equals the
    block's output on x of shape (B, T, D), ``layer(x).router.topk_idx`` the experts it chose.
    """
    return build_family_layer(block)


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
    if isinstance(experts, GptOssExperts):
        return f"clamped SwiGLU (limit {experts.limit:g}) + biases"
    return {"swiglu": "SwiGLU", "geglu": "GeGLU"}.get(experts.activation, experts.activation)


def conventions(block: nn.Module) -> Conventions:
    """The conventions of a block, read off the options of its converted layer."""
    family, layer = family_of(block), from_transformers(block)
    router, experts = layer.router, layer.experts
    biases = [name for name, present in (("logit bias", getattr(router, "bias", None) is not None),
                                         ("selection bias", family.selection_bias)) if present]
    shared = "-"
    if layer.num_shared_experts:
        shared = f"{layer.num_shared_experts} x F={layer.shared_d_ff}"
        shared += ", sigmoid gate" if layer.shared_expert_gate is not None else ""
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
    check_positive_int("d_model", d_model)
    check_nonnegative_int("seed", seed)
    check_positive_float("scale", scale)
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


# tiny causal LMs, one per family: 2 layers, 20-wide, odd E, K = 1 or K = E in some, dense layers
# between MoE layers in others; vocabulary 256 (moe_lab.lm.tokenizer.ByteTokenizer's bytes)
_TINY_MODEL_COMMON = dict(vocab_size=256, hidden_size=20, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=10,
                          max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2)
_TINY_MODELS = {
    "Mixtral": ("MixtralForCausalLM", "MixtralConfig",
                dict(num_local_experts=5, num_experts_per_tok=2, intermediate_size=12)),
    "Qwen2-MoE": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig",
                  dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=12,
                       shared_expert_intermediate_size=28, intermediate_size=24,
                       mlp_only_layers=[0])),  # layer 0 dense, layer 1 MoE
    "Qwen3-MoE": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig",
                  dict(num_experts=7, num_experts_per_tok=7, moe_intermediate_size=12,
                       norm_topk_prob=True)),  # K = E
    "OLMoE": ("OlmoeForCausalLM", "OlmoeConfig",
              dict(num_experts=5, num_experts_per_tok=1, intermediate_size=12)),  # K = 1
    "DeepSeek-V3": ("DeepseekV3ForCausalLM", "DeepseekV3Config",
                    dict(n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=12,
                         intermediate_size=24, n_group=4, topk_group=2, n_shared_experts=2,
                         routed_scaling_factor=2.5, first_k_dense_replace=1, q_lora_rank=None,
                         kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=6, v_head_dim=10,
                         num_key_value_heads=2, head_dim=4)),
    "gpt-oss": ("GptOssForCausalLM", "GptOssConfig",
                dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=12,
                     sliding_window=4, layer_types=["sliding_attention", "full_attention"])),
    "Llama 4": ("Llama4ForCausalLM", "Llama4TextConfig",
                dict(num_local_experts=3, num_experts_per_tok=1, intermediate_size=12,
                     intermediate_size_mlp=24, moe_layers=[1], attention_chunk_size=16)),
}


def tiny_model(family: str, *, seed: int = 0, **config: object) -> nn.Module:
    """A tiny causal language model of one family (random weights, transformers' own
    initialisation under ``torch.manual_seed(seed)``), in eval mode; ``config`` overrides the
    tiny defaults. Nothing is downloaded."""
    if family not in _TINY_MODELS:
        raise ValueError(f"family must be one of {tuple(_TINY_MODELS)}, got {family!r}")
    check_nonnegative_int("seed", seed)
    _require_supported_transformers()
    import transformers

    model_name, config_name, keywords = _TINY_MODELS[family]
    model_config = getattr(transformers, config_name)(**(_TINY_MODEL_COMMON | keywords | config))
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(model_config).eval()
