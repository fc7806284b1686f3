"""Fine-grained and shared experts in the parameter count (DeepSeekMoE): the layout helper keeps
total and active expert parameters and FLOPs, the calculator reproduces Qwen3-30B-A3B."""

import pytest

from moe_lab import SparseMoE
from moe_lab.systems.params import (
    MIXTRAL_8X7B,
    QWEN3_30B_A3B,
    count_parameters,
    fine_grained,
    fine_grained_config,
    flops_per_token,
)
from moe_lab.widgets.params import ParamsCalculator


def test_qwen3_30b_a3b_published_totals():
    counts = count_parameters(QWEN3_30B_A3B)
    # model card: 30.5B total, 3.3B activated
    assert round(counts.total / 1e9, 1) == 30.5
    assert round(counts.active / 1e9, 2) == 3.35  # published as 3.3B
    # by hand: embedding + lm_head 2 * 151936 * 2048; per layer attention 2048*4096*2
    # + 2*2048*512, router 128*2048, 128 experts of 3*2048*768, norms 2*2048; final norm 2048
    per_layer_attention = 2 * 2048 * 4096 + 2 * 2048 * 512
    expert = 3 * 2048 * 768
    total = (2 * 151936 * 2048 + 48 * (per_layer_attention + 128 * 2048 + 128 * expert
                                       + 2 * 2048) + 2048)
    assert counts.total == total
    assert counts.active == total - 48 * 120 * expert


@pytest.mark.parametrize(("e", "k", "f", "m", "s", "expected"), [
    (8, 2, 64, 4, 0, (32, 8, 16, 0)),  # lesson 08's fine-grained run
    (8, 2, 64, 4, 1, (31, 7, 16, 1)),  # lesson 08's shared run
    (16, 2, 1408 * 4, 4, 4, (60, 4, 1408, 4)),  # DeepSeekMoE 2B-like: m = 4, 4 shared
    (8, 2, 64, 1, 1, (7, 1, 64, 1)),  # no cut, one of the two active experts made shared
    (4, 1, 12, 1, 0, (4, 1, 12, 0)),  # m = 1, S = 0: unchanged
])
def test_fine_grained_layout(e, k, f, m, s, expected):
    layout = fine_grained(e, k, f, m, s)
    assert (layout.num_experts, layout.top_k, layout.d_ff, layout.num_shared_experts) == expected
    # same hidden units stored and run per token
    assert layout.total_width == e * f
    assert layout.active_width == k * f


@pytest.mark.parametrize("layout_args", [(4, 0), (4, 1), (2, 3)])
def test_fine_grained_keeps_expert_params_and_flops(layout_args):
    coarse = MIXTRAL_8X7B
    fine = fine_grained_config(coarse, *layout_args)
    before, after = count_parameters(coarse), count_parameters(fine)
    shared = after["shared experts"] if fine.num_shared_experts else None
    assert after["experts"].total + (shared.total if shared else 0) == before["experts"].total
    assert after["experts"].active + (shared.active if shared else 0) == before["experts"].active
    # only the router grows: D * m * E per layer instead of D * E
    assert after["router"].total == layout_args[0] * before["router"].total \
        - fine.num_layers * fine.d_model * fine.num_shared_experts
    flops_before, flops_after = flops_per_token(coarse), flops_per_token(fine)
    assert flops_after.matmul - flops_before.matmul == 2 * (after["router"].active
                                                            - before["router"].active)


def test_counts_match_a_layer_with_shared_experts():
    layout = fine_grained(8, 2, 64, 4, 1)
    layer = SparseMoE(16, layout.d_ff, layout.num_experts, layout.top_k,
                      num_shared_experts=layout.num_shared_experts)
    stored = sum(p.numel() for p in layer.experts.parameters()) \
        + sum(p.numel() for p in layer.shared_experts.parameters())
    assert stored == 3 * 16 * layout.total_width


@pytest.mark.parametrize(("args", "error", "name"), [
    ((8, 2, 64, 3, 0), ValueError, "granularity"),  # 3 does not divide 64
    ((8, 2, 64, 0, 0), ValueError, "granularity"),
    ((8, 2, 64, 4, 8), ValueError, "num_shared_experts"),  # no routed expert left per token
    ((8, 2, 64, 4, -1), ValueError, "num_shared_experts"),
    ((8, 9, 64, 4, 0), ValueError, "top_k"),
    ((8, 2, 64.0, 4, 0), TypeError, "d_ff"),
])
def test_fine_grained_bad_input(args, error, name):
    with pytest.raises(error, match=name):
        fine_grained(*args)


def test_fine_grained_config_refuses_a_config_that_has_shared_experts():
    with pytest.raises(ValueError, match="num_shared_experts"):
        fine_grained_config(fine_grained_config(MIXTRAL_8X7B, 2, 1), 2)


def test_calculator_loads_qwen3_and_cuts_experts():
    calc = ParamsCalculator()
    calc.qwen3.click()
    rows = dict(calc.rows)
    assert rows["total parameters"] == "30.53 B"
    assert rows["active parameters per token"] == "3.35 B"
    assert calc.config == QWEN3_30B_A3B
    calc.granularity.value = 2
    assert (calc.config.num_experts, calc.config.top_k, calc.config.d_ff) == (256, 16, 384)
    calc.num_shared.value = 2
    assert (calc.config.num_experts, calc.config.top_k, calc.config.num_shared_experts) == (254, 14, 2)
    assert dict(calc.rows)["experts (E) / per token (K)"] == "254 / 14 + 2 shared"
    # same expert parameters: only the router changed
    delta = count_parameters(calc.config).total - count_parameters(QWEN3_30B_A3B).total
    assert delta == 48 * 2048 * (254 - 128)
    calc.mixtral.click()  # a preset resets m and S
    assert calc.config == MIXTRAL_8X7B
    assert calc.granularity.value == 1 and calc.num_shared.value == 0


def test_calculator_clamps_shared_below_the_routed_budget():
    calc = ParamsCalculator()  # Mixtral: K = 2, m = 1
    calc.num_shared.value = 8
    assert calc.config.num_shared_experts == 1 and calc.config.top_k == 1


def test_tiny_lm_with_shared_experts_counts_them_active():
    from moe_lab.lm.model import ModelConfig, TinyLM

    config = ModelConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=16, d_ff=8,
                         num_experts=7, top_k=3, num_shared_experts=1)
    model = TinyLM(config)
    expert = 3 * 16 * 8
    assert model.num_active_parameters() == model.num_parameters() - 2 * (7 - 3) * expert
    assert model.blocks[0].ffn.shared_experts.num_experts == 1
    with pytest.raises(ValueError, match="num_shared_experts"):
        ModelConfig(num_shared_experts=-1)
