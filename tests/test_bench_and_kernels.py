"""The grouped GEMM and its fallback agree; the bench command runs, prints ratios and saves JSON."""

import json

import pytest
import torch

from moe_lab.experts import Experts, grouped_matmul, grouped_mm_supported
from moe_lab.systems import bench


@pytest.mark.parametrize("counts", [[3, 0, 5, 2], [0, 0, 10, 0], [1, 1, 1, 1]])
def test_grouped_mm_and_fallback_agree(counts, monkeypatch):
    x = torch.randn(sum(counts), 16, requires_grad=True)
    weight = torch.randn(4, 16, 8, requires_grad=True)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    grad = torch.randn(sum(counts), 8)

    def run():
        x.grad, weight.grad = None, None
        out = grouped_matmul(x, weight, counts, offsets)
        out.backward(grad)
        return out.detach(), x.grad.clone(), weight.grad.clone()

    kernel = run()
    monkeypatch.setattr("moe_lab.experts.grouped_mm_supported", lambda *_: False)
    fallback = run()
    reference = torch.cat([seg @ weight[e] for e, seg in enumerate(torch.split(x, counts))])
    for a, b in zip(kernel, fallback, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernel[0], reference.detach(), atol=1e-5, rtol=1e-5)


def test_grouped_mm_probe_is_honest():
    assert grouped_mm_supported("cpu", torch.float64) is False  # no float64 kernel: fallback
    assert isinstance(grouped_mm_supported("cpu", torch.float32), bool)


def test_unaligned_widths_take_the_fallback():
    experts = Experts(3, 7, 5)  # 7 * 4 bytes is not a multiple of 16
    x = torch.randn(9, 7)
    out = experts.forward_grouped(x, [4, 0, 5])
    expected = torch.cat([experts.forward_expert(x[:4], 0), experts.forward_expert(x[4:], 2)])
    torch.testing.assert_close(out, expected)


def test_bench_cli_prints_ratios_and_saves_json(tmp_path, monkeypatch, capsys):
    tiny = (bench.BenchShape(64, 16, 32, 8, 2), bench.BenchShape(32, 16, 16, 4, 1))
    monkeypatch.setattr(bench, "QUICK_SHAPES", tiny)
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "/ dense limit" in printed and "/ loop" in printed
    payload = json.loads(out.read_text())
    assert payload["environment"]["device"] == "cpu"
    assert payload["command"].startswith("python -m moe_lab.bench --quick")
    rows = payload["results"]
    assert {r["strategy"] for r in rows} == {"dense_limit", "sorted", "loop", "padded"}
    assert len(rows) == 4 * len(tiny)
    for row in rows:
        if row["strategy"] == "dense_limit":
            assert row["ratio_to_dense_limit"] == 1.0
        assert row["median_ms"] > 0


def test_bench_rejects_unknown_strategy():
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--strategies", "sorted,warp"])


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_grouped_mm_probe_ignores_the_callers_grad_mode(context):
    """The answer is cached: a first call under no_grad must not switch the kernel off for good."""
    grouped_mm_supported.cache_clear()
    try:
        with context():
            inside = grouped_mm_supported("cpu", torch.float32)
        grouped_mm_supported.cache_clear()
        assert inside == grouped_mm_supported("cpu", torch.float32)
    finally:
        grouped_mm_supported.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_mm_probe_leaves_the_random_state_alone(dtype):
    """A learner's seeded cell gives the same numbers whether or not the probe ran first."""
    grouped_mm_supported.cache_clear()
    try:
        torch.manual_seed(0)
        before = torch.random.get_rng_state()
        grouped_mm_supported("cpu", dtype)  # the first call: the probe runs
        assert torch.equal(torch.random.get_rng_state(), before)
    finally:
        grouped_mm_supported.cache_clear()
