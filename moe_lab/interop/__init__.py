"""Interop with real models (lesson 09): transformers MoE blocks as moe_lab layers.

    blocks   from_transformers: one block of seven families -> a SparseMoE over its parameters,
             with its conventions; tiny_block / tiny_model build a block / a whole causal LM
             from a config (random weights, offline)
    quirks   the families' own ways, out of the core: views of fused tensors under the block's
             names, gpt-oss's logit bias, expert biases and clamped SwiGLU
    swap     swap_moe_blocks / restore_moe_blocks: every MoE block of a whole model, in place

Layering: imports the core; the only part of the package that imports transformers.
"""

from moe_lab.interop.blocks import (
    FAMILIES,
    SUPPORTED_BLOCKS,
    Conventions,
    Family,
    block_output,
    block_topk_idx,
    conventions,
    family_of,
    from_transformers,
    tiny_block,
    tiny_model,
)
from moe_lab.interop.quirks import FamilyMoE, mixtral_expert_weights
from moe_lab.interop.swap import SwappedMoEBlock, restore_moe_blocks, swap_moe_blocks

__all__ = [
    "FAMILIES",
    "SUPPORTED_BLOCKS",
    "Conventions",
    "Family",
    "FamilyMoE",
    "SwappedMoEBlock",
    "block_output",
    "block_topk_idx",
    "conventions",
    "family_of",
    "from_transformers",
    "mixtral_expert_weights",
    "restore_moe_blocks",
    "swap_moe_blocks",
    "tiny_block",
    "tiny_model",
]
