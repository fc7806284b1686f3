"""Your layer inside a whole transformers model (lesson 09): every MoE block swapped, in place.

:func:`swap_moe_blocks` replaces each MoE block of the seven families (:mod:`moe_lab.interop.blocks`)
by a :class:`SwappedMoEBlock`: a moe_lab ``SparseMoE`` over the block's own parameters (views,
no copies), under the block's own names, so that

- gradients, ``requires_grad``, device and each parameter's dtype stay the model's;
- the model's ``state_dict`` keeps its names: ``save_pretrained`` then ``from_pretrained``
  round-trips (into an unswapped model, or a swapped one);
- every dtype routes as the family does (the router options of ``from_transformers``);
- the block answers what the family's decoder layer expects (a tensor; gpt-oss and Llama 4 a
  pair), and reports its router logits to transformers, so ``output_router_logits=True`` and
  the auxiliary loss work as in the unswapped model.

:func:`restore_moe_blocks` puts the original blocks back, holding the current parameters.

transformers initialises weights by module class (each family's ``_init_weights`` knows its own
router and experts): a swapped model's ``initialize_weights`` (``from_pretrained`` with missing
weights, a model built on the meta device) initialises each swapped block's parameters as the
family initialises its own block, through :class:`FamilyInit`.
Blocks with no routed experts (Qwen2-MoE's ``mlp_only_layers``, DeepSeek-V3's first dense
layers, Llama 4's dense layers) are plain MLPs and stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from moe_lab.interop.blocks import FAMILIES, build_family_layer, family_of
from moe_lab.interop.quirks import FamilyMoE


def _router_logits_collector() -> dict | None:
    """transformers' per-forward dict of recorded outputs (``output_router_logits=True`` and
    friends), or None when nothing is being recorded. transformers records a block's router
    logits with a hook on its router class, which a swapped block no longer has: the block
    appends its logits itself, at the same point of the forward pass."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # a transformers without output capturing returns router logits itself
        return None
    return _active_collector.get()


class SwappedMoEBlock(FamilyMoE):
    """A transformers MoE block, computed by moe_lab: the layer of :func:`from_transformers`
    answering as the block does (``forward(hidden_states)`` returns the family's output), and
    reporting its router logits (N, E) in the dtype the family computes them.

    ``moe_output(x)`` gives moe_lab's :class:`moe_lab.layer.MoEOutput` (``y``, ``router``, ...).

    Its ``dispatch`` follows the model's experts implementation, so that a bf16 model rounds as
    the unswapped one does, bit for bit: transformers' ``"eager"`` experts loop over the experts
    and ``index_add`` each one's weighted rows (moe_lab's ``"loop"``); its grouped kernels sort
    by expert and sum the K weighted rows of a token (``"sorted"``). Under ``torch.compile`` it
    is always ``"sorted"``: the loop's data-dependent shapes cannot be traced in one graph (nor
    can transformers' eager experts), the sorted dispatch can. Assigning ``dispatch`` pins one.
    """

    @property
    def dispatch(self) -> str:
        pinned = self.__dict__.get("_pinned_dispatch")
        if pinned is not None:
            return pinned
        implementation = getattr(self.__dict__.get("_experts_config"), "_experts_implementation",
                                 None)
        eager = implementation == "eager" and not torch.compiler.is_compiling()
        return "loop" if eager else "sorted"

    @dispatch.setter
    def dispatch(self, value: str) -> None:
        FamilyMoE.dispatch.fset(self, value)  # validated
        self.__dict__["_pinned_dispatch"] = value

    def moe_output(self, hidden_states: torch.Tensor):
        return FamilyMoE.forward(self, hidden_states)

    def forward(self, hidden_states: torch.Tensor):
        out = self.moe_output(hidden_states)
        router = self.router
        logit_dtype = hidden_states.dtype if router.router_dtype is None else router.router_dtype
        collected = _router_logits_collector()
        if collected is not None and "router_logits" in collected:
            collected["router_logits"].append(out.router.logits.to(logit_dtype))  # (N, E)
        output = _OUTPUTS[self.family]
        if output == "gpt-oss":  # (y, the K weights (N, K))
            return out.y, out.router.topk_weights.to(hidden_states.dtype)
        if output == "llama4":  # (y (N, D), router logits (N, E))
            return (out.y.reshape(-1, out.y.shape[-1]),
                    out.router.logits.to(logit_dtype))
        return out.y


_OUTPUTS = {family.name: family.output for family in FAMILIES}


def _is_family_block(module: nn.Module) -> bool:
    try:
        family_of(module)
    except TypeError:
        return False
    return True


def _parent_and_name(model: nn.Module, qualified_name: str) -> tuple[nn.Module, str]:
    parent_name, _, name = qualified_name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), name


def _rebind(layer: SwappedMoEBlock) -> nn.Module:
    """The layer's original block, holding the layer's current parameters and buffers (they may
    have been replaced since the swap: ``load_state_dict(..., assign=True)``, ``to_empty``,
    ``from_pretrained`` materialising them from the meta device)."""
    block = layer.__dict__["_original_block"]
    for tensor_name, tensor in [*layer.named_parameters(), *layer.named_buffers()]:
        owner, attribute = _parent_and_name(block, tensor_name)
        if isinstance(tensor, nn.Parameter):
            owner.register_parameter(attribute, tensor)
        else:
            owner.register_buffer(attribute, tensor, persistent=attribute
                                  not in owner._non_persistent_buffers_set)
    return block


def _post_order(module: nn.Module):
    """Children before their parent, as transformers walks a model to initialise it."""
    for child in module.children():
        yield from _post_order(child)
    yield module


class FamilyInit:
    """A transformers model's ``_init_weights`` once its blocks are swapped.

    transformers walks the model and initialises each module by its class; a swapped block's
    parts are moe_lab classes it does not know. Here a swapped block is initialised by walking its
    original block instead (which holds the same parameters), each module through the model's
    own ``_initialize_weights``, so every family rule, seed and "already loaded" flag applies as
    in the unswapped model, in the same order. The parts of a swapped block, met before the
    block itself, are left to the block."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.walking = False

    def __call__(self, module: nn.Module) -> None:
        model = self.model
        if isinstance(module, SwappedMoEBlock):
            custom = model.is_custom_code() if hasattr(model, "is_custom_code") else False
            self.walking = True
            try:
                for part in _post_order(_rebind(module)):
                    if part.__dict__.pop("_moe_lab_deferred", False):  # only our skip marked it
                        part.__dict__.pop("_is_hf_initialized", None)
                    model._initialize_weights(part, custom)
            finally:
                self.walking = False
        elif getattr(module, "_moe_lab_swapped_part", False) and not self.walking:
            module._moe_lab_deferred = True  # transformers marks it initialised: undone above
        else:
            type(model)._init_weights(model, module)


def _install_family_init(model: nn.Module) -> None:
    """Route every transformers model of the tree (the causal LM and its base model) through
    :class:`FamilyInit`."""
    for module in model.modules():
        if hasattr(type(module), "_initialize_weights") and hasattr(type(module), "_init_weights"):
            module.__dict__["_init_weights"] = FamilyInit(module)


def _remove_family_init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module.__dict__.get("_init_weights"), FamilyInit):
            del module.__dict__["_init_weights"]


def swap_moe_blocks(model: nn.Module) -> nn.Module:
    """Replace every MoE block of ``model`` (any of the seven families) by a
    :class:`SwappedMoEBlock` over the block's own parameters, in place; returns ``model``.

    Raises a ValueError when ``model`` holds no such block (and nothing is changed), and the
    TypeError of :func:`moe_lab.interop.from_transformers` when a block cannot be read
    (quantised experts, the 4.x module lists): then no block is swapped either.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, SwappedMoEBlock) or _is_family_block(model):
        raise ValueError("swap_moe_blocks swaps the blocks inside a model; for one block use "
                         "moe_lab.interop.from_transformers(block)")
    found = [(name, module) for name, module in model.named_modules() if _is_family_block(module)]
    if not found:
        swapped = sum(isinstance(m, SwappedMoEBlock) for m in model.modules())
        raise ValueError(f"{type(model).__name__} holds no MoE block of the seven families "
                         f"({swapped} already swapped)")
    # build every layer first, so a block that cannot be read leaves the model untouched
    layers = [(name, build_family_layer(block, SwappedMoEBlock), block) for name, block in found]
    for name, layer, block in layers:
        layer.__dict__["_original_block"] = block  # kept outside the module tree for the inverse
        # the model's config: its experts implementation decides the dispatch (SwappedMoEBlock)
        layer.__dict__["_experts_config"] = getattr(getattr(block, "experts", None), "config", None)
        for part in layer.modules():
            if part is not layer:
                part._moe_lab_swapped_part = True  # initialised with its block (FamilyInit)
        parent, attribute = _parent_and_name(model, name)
        setattr(parent, attribute, layer)
    _install_family_init(model)
    return model


def restore_moe_blocks(model: nn.Module) -> nn.Module:
    """The inverse of :func:`swap_moe_blocks`: every swapped block is replaced by its original
    transformers block, holding the swapped block's current parameters and buffers (also after
    ``load_state_dict(..., assign=True)`` or ``to_empty``). Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    swapped = [(name, m) for name, m in model.named_modules() if isinstance(m, SwappedMoEBlock)]
    if not swapped:
        raise ValueError(f"{type(model).__name__} holds no swapped MoE block")
    for name, layer in swapped:
        block = _rebind(layer)
        for part in block.modules():
            part.__dict__.pop("_moe_lab_swapped_part", None)
            part.__dict__.pop("_moe_lab_deferred", None)
        parent, attribute = _parent_and_name(model, name)
        setattr(parent, attribute, block.train(layer.training))
    _remove_family_init(model)
    return model
