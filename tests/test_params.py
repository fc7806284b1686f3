"""moe_lab.systems.params: Mixtral 8x7B's published totals, agreement with the real modules, FLOPs."""

from __future__ import annotations

import dataclasses

import pytest

from moe_lab import Experts, SparseMoE, TopKRouter
from moe_lab.systems.params import (
    MIXTRAL_8X7B,
    TransformerConfig,
    attention_params,
    count_parameters,
    dense_equivalent,
    ffn_params,
    flops_per_token,
)


def test_mixtral_8x7b_published_totals() -> None:
    counts = count_parameters(MIXTRAL_8X7B)
    # Mistral AI: 46.7B total, 12.9B active (Jiang et al. 2024)
    assert round(counts.total / 1e9, 1) == 46.7
    assert round(counts.active / 1e9, 1) == 12.9
    # exact, from the config by hand: 32 * (attn 41,943,040 + 8 experts * 176,160,768
    # + router 32,768 + norms 8,192) + embedding and lm_head 2 * 131,072,000 + final norm 4,096
    assert counts.total == 46_702_792_704
    assert counts.active == 12_879_925_248


def test_components_match_the_real_modules() -> None:
    d_model, d_ff, num_experts = 16, 24, 4
    experts = Experts(num_experts, d_model, d_ff)
    assert sum(p.numel() for p in experts.parameters()) == num_experts * ffn_params(d_model, d_ff)
    gelu = Experts(num_experts, d_model, d_ff, activation="gelu")
    assert sum(p.numel() for p in gelu.parameters()) == num_experts * ffn_params(d_model, d_ff, 2)
    config = TransformerConfig(vocab_size=10, d_model=d_model, num_layers=1, d_ff=d_ff,
                               num_heads=4, num_kv_heads=4, head_dim=4, num_experts=num_experts,
                               top_k=2)
    counts = count_parameters(config)
    layer = SparseMoE(d_model, d_ff, num_experts, 2)
    assert counts["router"].total == sum(p.numel() for p in layer.router.parameters())
    assert counts["experts"].total == sum(p.numel() for p in layer.experts.parameters())
    assert counts["router"].total == TopKRouter(d_model, num_experts, 2).weight.numel()


@pytest.mark.parametrize(("heads", "kv_heads", "expected"), [
    (4, 4, 4 * 16 * 16),  # multi-head: W_q, W_k, W_v, W_o all D x D
    (4, 1, 2 * 16 * 16 + 2 * 16 * 4),  # multi-query: K and V one head wide
    (4, 2, 2 * 16 * 16 + 2 * 16 * 8),
])
def test_attention_params(heads: int, kv_heads: int, expected: int) -> None:
    config = TransformerConfig(vocab_size=10, d_model=16, num_layers=1, d_ff=8,
                               num_heads=heads, num_kv_heads=kv_heads, head_dim=4)
    assert attention_params(config) == expected


def test_dense_model_has_everything_active_and_no_router() -> None:
    counts = count_parameters(dense_equivalent(MIXTRAL_8X7B))
    assert counts.total == counts.active
    assert counts["router"].total == 0
    moe = count_parameters(MIXTRAL_8X7B)
    assert moe.active - counts.active == moe["router"].active


def test_tied_embeddings_drop_the_lm_head_but_not_its_flops() -> None:
    tied = dataclasses.replace(MIXTRAL_8X7B, tie_embeddings=True)
    assert count_parameters(MIXTRAL_8X7B).total - count_parameters(tied).total == 32000 * 4096
    assert flops_per_token(tied).forward == flops_per_token(MIXTRAL_8X7B).forward


def test_flops_per_token() -> None:
    counts = count_parameters(MIXTRAL_8X7B)
    flops = flops_per_token(MIXTRAL_8X7B)
    # 2 FLOPs per active weight, except the embedding (a gather) and the norms (not matmuls)
    expected = 2 * (counts.active - counts["embedding"].active - counts["norms"].active)
    assert flops.matmul == expected and flops.attention == 0
    with_context = flops_per_token(MIXTRAL_8X7B, context_length=4096)
    assert with_context.attention == 4 * 32 * 4096 * 32 * 128
    assert with_context.training == 3 * with_context.forward
    # more experts at the same K: more parameters, the same FLOPs
    wide = dataclasses.replace(MIXTRAL_8X7B, num_experts=64)
    assert count_parameters(wide).total > counts.total
    assert flops_per_token(wide).matmul - flops.matmul == 2 * 32 * (64 - 8) * 4096


@pytest.mark.parametrize(("change", "error", "name"), [
    ({"top_k": 9}, ValueError, "top_k"),
    ({"top_k": 0}, ValueError, "top_k"),
    ({"d_model": 0}, ValueError, "d_model"),
    ({"num_layers": 2.5}, TypeError, "num_layers"),
    ({"num_kv_heads": 5}, ValueError, "num_kv_heads"),
    ({"ffn_matrices": 4}, ValueError, "ffn_matrices"),
])
def test_bad_config_names_the_argument(change: dict, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        dataclasses.replace(MIXTRAL_8X7B, **change)


@pytest.mark.parametrize("context_length", [-1, 1.5, True])
def test_bad_context_length(context_length: object) -> None:
    with pytest.raises(ValueError, match="context_length"):
        flops_per_token(MIXTRAL_8X7B, context_length)  # type: ignore[arg-type]


def test_unknown_component() -> None:
    with pytest.raises(KeyError, match="experts"):
        count_parameters(MIXTRAL_8X7B)["expert"]
