"""The shipped routing counts of OLMoE-1B-7B and Mixtral-8x7B: the loader (safe JSON, shapes, sums),
the licence and README ship with the package, and the statistics at exact small points."""

import copy
import fnmatch
import json
import math
import re
from pathlib import Path

import pytest
import torch

from moe_lab.analysis.real_routing import (
    COMMON_DOMAINS,
    DATA_DIR,
    DATA_FILE,
    LICENCE_FILE,
    ModelRouting,
    coactivation,
    domain_specialisation,
    load_entropy_bits,
    load_imbalance,
    load_real_routing,
    specialisation_summary,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return load_real_routing()


def test_models_shapes_and_token_counts(data):
    assert set(data) == {"olmoe", "mistral"}
    for key, (num_experts, top_k, domains) in {
            "olmoe": (64, 8, COMMON_DOMAINS + ("tulu",)), "mistral": (8, 2, COMMON_DOMAINS)}.items():
        m = data[key]
        assert (m.num_experts, m.top_k, m.layers, m.crosslayer_pairs) == (num_experts, top_k, (0, 7, 15),
                                                                         ((0, 7), (7, 15)))
        assert m.domains == domains
        for domain in COMMON_DOMAINS:
            assert m.tokens[domain] == 208_896  # the README's number
            assert m.expert_counts[domain].shape == (3, num_experts)
            assert m.expert_counts_top1[domain].shape == (3, num_experts)
            assert m.crosslayer[domain].shape == (2, num_experts, num_experts)
            assert m.crosslayer_top1[domain].shape == (2, num_experts, num_experts)
            assert m.expert_counts[domain].dtype == torch.int64
    assert data["olmoe"].tokens["tulu"] == 205_243
    assert set(data["olmoe"].variants) == {"olmoe-sft", "olmoe-dpo"}
    assert data["olmoe"].variants["olmoe-sft"]["tulu"].shape == (3, 64)


def test_counts_sum_to_tokens_times_k_per_layer(data):
    for m in data.values():
        for domain in m.domains:
            total = m.tokens[domain] * m.top_k
            assert m.expert_counts[domain].sum(dim=1).tolist() == [total] * 3
            if domain in m.expert_counts_top1:
                assert m.expert_counts_top1[domain].sum(dim=1).tolist() == [m.tokens[domain]] * 3
                assert m.crosslayer[domain].sum(dim=(1, 2)).tolist() == [total] * 2
                # the co-occurrence of layers (a, b) has layer a's counts as its row sums
                a = m.layers.index(m.crosslayer_pairs[0][0])
                assert torch.equal(m.crosslayer[domain][0].sum(dim=1), m.expert_counts[domain][a])


def test_licence_and_readme_ship_with_the_package():
    assert LICENCE_FILE.is_file() and "Apache License" in LICENCE_FILE.read_text()
    assert "Version 2.0" in LICENCE_FILE.read_text()
    readme = (DATA_DIR / "README.md").read_text()
    assert "allenai/OLMoE" in readme and "Apache" in readme
    # pyproject's package-data globs cover every file of the folder
    line = re.search(r"^moe_lab = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    patterns = re.findall(r'"([^"]+)"', line)
    for path in DATA_DIR.iterdir():
        relative = path.relative_to(ROOT / "moe_lab").as_posix()
        assert any(fnmatch.fnmatch(relative, p) and relative.count("/") == p.count("/")
                   for p in patterns), relative


def test_loader_reads_json_only():
    assert DATA_FILE.suffix == ".json"
    source = (ROOT / "moe_lab" / "analysis" / "real_routing.py").read_text()
    assert "pickle" not in source.replace("never pickle", "").replace("no pickle", "")


def _write(tmp_path, raw):
    path = tmp_path / "counts.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def raw():
    return json.loads(DATA_FILE.read_text())


def test_damaged_files_are_refused_naming_the_field(tmp_path, raw):
    broken = copy.deepcopy(raw)
    broken["models"]["mistral"]["domains"]["c4"]["expert_counts"][1][0] += 1  # one count too many
    with pytest.raises(ValueError, match="mistral/c4/expert_counts"):
        load_real_routing(_write(tmp_path, broken))

    broken = copy.deepcopy(raw)
    broken["models"]["olmoe"]["domains"]["arxiv"]["expert_counts_top1"][0].pop()  # 63 experts
    with pytest.raises(ValueError, match="olmoe/arxiv/expert_counts_top1"):
        load_real_routing(_write(tmp_path, broken))

    broken = copy.deepcopy(raw)
    broken["models"]["mistral"]["domains"]["book"]["expert_counts"][0][0] = 1.5
    with pytest.raises(ValueError, match="integers"):
        load_real_routing(_write(tmp_path, broken))

    broken = copy.deepcopy(raw)
    del broken["models"]["mistral"]["top_k"]
    with pytest.raises(ValueError, match="top_k"):
        load_real_routing(_write(tmp_path, broken))

    path = tmp_path / "nan.json"
    path.write_text(DATA_FILE.read_text().replace("[[", "[[NaN, ", 1))
    with pytest.raises(ValueError, match="NaN"):
        load_real_routing(path)


def _toy_routing(counts_by_domain, top_k):
    counts = {d: torch.tensor(c) for d, c in counts_by_domain.items()}
    num_experts = next(iter(counts.values())).shape[1]
    tokens = {d: int(c[0].sum()) // top_k for d, c in counts.items()}
    return ModelRouting("toy", "Toy", num_experts, top_k, (0,), (), tuple(counts), tokens, counts,
                        {}, {}, {}, {})


def test_statistics_at_known_points():
    # balanced: max/mean 1, entropy log2 E; all on one expert: max/mean E, entropy 0
    assert load_entropy_bits(torch.tensor([5, 5, 5, 5])) == pytest.approx(2.0)
    assert load_entropy_bits(torch.tensor([0, 12, 0, 0])) == 0.0
    toy = _toy_routing({"a": [[2, 2, 2, 2]], "b": [[8, 0, 0, 0]]}, top_k=2)
    rows = load_imbalance(toy, domains=("a", "b"))
    assert [(r.max_over_mean, r.entropy_bits, r.max_entropy_bits) for r in rows] == [
        (1.0, 2.0, 2.0), (4.0, 0.0, 2.0)]
    # specialisation: % of the domain's tokens per expert; a row sums to 100 K
    share = domain_specialisation(toy, 0, domains=("a", "b"))
    assert share.tolist() == [[50.0] * 4, [200.0, 0.0, 0.0, 0.0]]
    # independent of the domain: I = 0; one expert per domain: I = H(domain) = 1 bit
    same = specialisation_summary(_toy_routing({"a": [[3, 1, 0, 0]], "b": [[6, 2, 0, 0]]}, 1), ("a", "b"))[0]
    assert same.mutual_information_bits == pytest.approx(0.0, abs=1e-12)
    split = specialisation_summary(_toy_routing({"a": [[4, 0]], "b": [[0, 4]]}, 1), ("a", "b"))[0]
    assert split.mutual_information_bits == pytest.approx(1.0)
    assert split.domain_entropy_bits == pytest.approx(1.0)
    assert (split.max_specialisation, split.uniform, split.experts_over_twice_uniform) == (100.0, 50.0, 0)


def test_real_numbers_agree_with_the_paper(data):
    """OLMoE's experts depend on the domain far more than Mixtral's (OLMoE paper, section 5)."""
    olmoe = specialisation_summary(data["olmoe"])
    mixtral = specialisation_summary(data["mistral"])
    for a, b in zip(olmoe, mixtral, strict=True):
        assert a.mutual_information_bits > 10 * b.mutual_information_bits
    assert all(r.experts_over_twice_uniform == 0 for r in mixtral)
    assert max(r.max_over_mean for r in load_imbalance(data["mistral"])) < 1.4
    assert max(r.max_over_mean for r in load_imbalance(data["olmoe"])) > 5


def test_coactivation_rows_are_distributions(data):
    for m in data.values():
        for pair in range(2):
            table = coactivation(m, pair)
            assert table.shape == (m.num_experts, m.num_experts)
            used = m.crosslayer["c4"][pair].sum(1) > 0
            torch.testing.assert_close(table.sum(1)[used], torch.ones(int(used.sum()), dtype=torch.float64))
    assert not math.isnan(float(coactivation(data["olmoe"], 0).sum()))


def test_layer_must_exist(data):
    with pytest.raises(ValueError, match="layer"):
        domain_specialisation(data["olmoe"], 3)
