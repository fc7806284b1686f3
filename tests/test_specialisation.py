"""Specialisation maths at known points: counts, entropy, mutual information, baselines."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_lab.lm.data import Batch
from moe_lab.lm.model import ModelConfig, TinyLM
from moe_lab.lm.specialisation import (
    BYTE_CLASSES,
    RoutingTrace,
    byte_class,
    collect_routing,
    conditional_mutual_information,
    entropy_bits,
    label_expert_counts,
    mutual_information,
    shuffled_router,
    specialisation_report,
)


def test_byte_classes():
    ids = torch.tensor(list(b"aZ7 \n!.~") + list("한".encode()) + [0])
    assert byte_class(ids).tolist() == [0, 0, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4]
    assert BYTE_CLASSES[4] == "other/multibyte"
    with pytest.raises(ValueError, match="token_ids"):
        byte_class(torch.tensor([256]))
    with pytest.raises(TypeError, match="token_ids"):
        byte_class(torch.tensor([1.0]))


def test_label_expert_counts():
    labels = torch.tensor([0, 0, 1])
    topk_idx = torch.tensor([[0, 1], [1, 2], [2, 0]])
    counts = label_expert_counts(labels, topk_idx, num_labels=2, num_experts=3)
    assert counts.tolist() == [[1, 2, 1], [1, 0, 1]]
    with pytest.raises(ValueError, match="labels"):
        label_expert_counts(torch.tensor([0, 0, 2]), topk_idx, 2, 3)
    with pytest.raises(ValueError, match="topk_idx"):
        label_expert_counts(labels, topk_idx, 2, 2)


def test_mi_is_zero_for_independent_labels_and_experts():
    counts = torch.outer(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([3.0, 1.0, 1.0, 7.0]))
    assert mutual_information(counts) == pytest.approx(0.0, abs=1e-12)


def test_mi_equals_h_language_for_a_deterministic_mapping():
    sizes = torch.tensor([10.0, 30.0, 60.0])
    counts = torch.diag(sizes)  # language l always goes to expert l
    h = -sum(p * math.log2(p) for p in (0.1, 0.3, 0.6))
    assert entropy_bits(sizes / sizes.sum()) == pytest.approx(h)
    assert mutual_information(counts) == pytest.approx(h)
    # two languages sharing an expert lose exactly their distinction
    merged = torch.tensor([[10.0, 0.0], [30.0, 0.0], [0.0, 60.0]])
    assert mutual_information(merged) == pytest.approx(-(0.4 * math.log2(0.4)
                                                         + 0.6 * math.log2(0.6)))


def test_mi_edge_cases():
    assert mutual_information(torch.zeros(3, 4)) == 0.0
    with pytest.raises(ValueError, match="counts"):
        mutual_information(torch.ones(3))
    with pytest.raises(ValueError, match="counts"):
        mutual_information(-torch.ones(2, 2))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000))
def test_mi_bounds(num_labels, num_experts, seed):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 9, (num_labels, num_experts), generator=generator).double()
    if counts.sum() == 0:
        counts[0, 0] = 1
    p = counts / counts.sum()
    mi = mutual_information(counts)
    assert -1e-12 <= mi <= min(entropy_bits(p.sum(1)), entropy_bits(p.sum(0))) + 1e-9
    # I(L; E) = H(L) + H(E) - H(L, E)
    assert mi == pytest.approx(entropy_bits(p.sum(1)) + entropy_bits(p.sum(0)) - entropy_bits(p),
                               abs=1e-9)


def test_conditional_mi():
    # the expert depends only on the class: no information from the language once the class is known
    counts = torch.zeros(2, 3, 2)
    counts[0, :, 0] = torch.tensor([4.0, 5.0, 6.0])
    counts[1, :, 1] = torch.tensor([1.0, 2.0, 3.0])
    assert conditional_mutual_information(counts) == pytest.approx(0.0, abs=1e-12)
    # within each class the language fixes the expert: I(L; E | C) = H(L | C)
    within = torch.zeros(2, 2, 2)
    within[0] = torch.diag(torch.tensor([5.0, 5.0]))
    within[1] = torch.diag(torch.tensor([5.0, 5.0]))
    assert conditional_mutual_information(within) == pytest.approx(1.0)


def test_shuffled_router_keeps_loads_and_breaks_dependence():
    languages = torch.arange(4).repeat_interleave(500)  # (2000,)
    topk_idx = torch.stack([languages, (languages + 1) % 4], dim=1)  # language -> experts
    shuffled = shuffled_router(topk_idx, seed=0)
    assert torch.equal(torch.bincount(shuffled.reshape(-1)), torch.bincount(topk_idx.reshape(-1)))
    assert mutual_information(label_expert_counts(languages, topk_idx, 4, 4)) == \
        pytest.approx(1.0)  # two experts per language out of 4, each 1/2 -> H(E|L) = 1 bit
    assert mutual_information(label_expert_counts(languages, shuffled, 4, 4)) < 0.01


def test_report_on_a_language_router():
    languages = torch.arange(4).repeat_interleave(300)
    tokens = torch.tensor(list(b"ab 1") * 300)  # byte class cycles, independent of language
    trace = RoutingTrace(tokens, languages, [languages.unsqueeze(1), torch.zeros(1200, 1).long()])
    report = specialisation_report(trace, ["a", "b", "c", "d"], num_experts=4,
                                   scripts={"a": "S", "b": "S", "c": "T", "d": "T"})
    assert report.h_language == pytest.approx(2.0)
    by_language, constant = report.layers
    assert by_language.mi_language == pytest.approx(2.0)
    assert by_language.mi_byte_class == pytest.approx(0.0, abs=1e-9)
    assert by_language.mi_language_given_class == pytest.approx(2.0)
    assert by_language.baseline_mi_language < 0.05
    assert by_language.mi_script == pytest.approx(1.0)  # 2 scripts, each 2 experts
    assert by_language.mi_language_given_script == pytest.approx(1.0)
    assert constant.mi_language == 0.0 and constant.mi_byte_class == 0.0
    latin = trace.subset(languages < 2)
    assert latin.token_ids.shape == (600,) and latin.topk_idx[0].shape == (600, 1)
    with pytest.raises(ValueError, match="keep"):
        trace.subset(torch.ones(3, dtype=torch.bool))
    assert by_language.language_counts.sum() == 1200
    assert len(report.table()) == 2


def test_collect_routing_keeps_only_real_tokens():
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=8, d_ff=8,
                               num_experts=4, top_k=2))
    mask = torch.tensor([[True] * 8, [True] * 3 + [False] * 5])
    ids = torch.randint(0, 256, (2, 8))
    batch = Batch(ids, ids, mask, torch.tensor([0, 5]))
    trace = collect_routing(model, [batch, batch])
    assert trace.token_ids.shape == (22,)
    assert trace.language_ids.tolist().count(5) == 6
    assert [t.shape for t in trace.topk_idx] == [(22, 2), (22, 2)]
    assert torch.equal(trace.token_ids[8:11], ids[1, :3])
