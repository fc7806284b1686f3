"""Interop with real models (lesson 09): transformers MoE blocks as moe_lab layers.

    blocks   from_transformers: one block of seven families -> SparseMoE with its weights and
             conventions; tiny_block builds one from a config (random weights, offline)

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
    mixtral_expert_weights,
    tiny_block,
)

__all__ = [
    "FAMILIES",
    "SUPPORTED_BLOCKS",
    "Conventions",
    "Family",
    "block_output",
    "block_topk_idx",
    "conventions",
    "family_of",
    "from_transformers",
    "mixtral_expert_weights",
    "tiny_block",
]
