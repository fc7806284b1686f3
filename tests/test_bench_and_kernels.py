"""The grouped GEMM and its fallback agree; the bench command runs, prints ratios and saves JSON."""

import json

import pytest
import torch

from moe_lab.experts import Experts
from moe_lab.grouped_gemm import grouped_matmul, grouped_mm_path, path_for
from moe_lab.systems import bench


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("counts", [[3, 0, 5, 2], [0, 0, 10, 0], [1, 1, 1, 1]])
def test_every_grouped_gemm_path_agrees_with_a_plain_loop(counts, dtype):
    """Forward and both gradients of each path this machine can run, against split + mm."""
    x = torch.randn(sum(counts), 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(4, 16, 8, dtype=dtype, requires_grad=True)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    grad = torch.randn(sum(counts), 8, dtype=dtype)
    reference_x = x.detach().clone().requires_grad_(True)
    reference_w = weight.detach().clone().requires_grad_(True)
    reference = torch.cat([seg @ reference_w[e]
                           for e, seg in enumerate(torch.split(reference_x, counts))])
    reference.backward(grad)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else \
        {"atol": 3e-2, "rtol": 2e-2}
    paths = ["segment_loop"] + ([path_for(x, weight)] if path_for(x, weight) != "segment_loop"
                                else [])
    for path in paths:
        x.grad, weight.grad = None, None
        out = grouped_matmul(x, weight, offsets, path)
        out.backward(grad)
        torch.testing.assert_close(out, reference, **tolerance)
        torch.testing.assert_close(x.grad, reference_x.grad, **tolerance)
        torch.testing.assert_close(weight.grad, reference_w.grad, **tolerance)


def test_the_path_taken_is_the_path_decided():
    """The profiler sees torch's grouped GEMM exactly when path_for says it runs."""
    from torch.profiler import ProfilerActivity, profile

    experts = Experts(4, 16, 32)
    x = torch.randn(10, 16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        experts.forward_grouped(x, [3, 0, 5, 2])
    ran_kernel = any(event.key == "aten::_grouped_mm" for event in prof.key_averages())
    assert ran_kernel == (path_for(x, experts.w_up) != "segment_loop")
    assert path_for(x, experts.w_up) == grouped_mm_path("cpu", None, torch.__version__,
                                                        torch.float32)


def test_grouped_matmul_rejects_an_unknown_path():
    x, weight = torch.randn(2, 4), torch.randn(1, 4, 4)
    with pytest.raises(ValueError, match="path must be one of"):
        grouped_matmul(x, weight, torch.tensor([2], dtype=torch.int32), "warp")


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


@pytest.mark.parametrize(("a", "b", "strided"), [(1, 8, False), (7, 5, False), (16, 8, True)])
def test_a_kernel_path_given_unaligned_or_strided_operands_pads_them_exactly(a, b, strided):
    """A path chosen for the layer's widths may meet a family's own product (gpt-oss's bias as a
    product with a column of ones: A = 1) or a strided weight view: the kernel path zero-pads the
    widths and copies the view, and equals the loop in output and both gradients."""
    counts = [3, 0, 5]
    x = torch.randn(8, a, requires_grad=True)
    full = torch.randn(3, a, 2 * b, requires_grad=True)
    weight = full[..., ::2] if strided else full[..., :b]  # (E, A, B), strided or a plain slice
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    kernel = grouped_mm_path("cpu", None, torch.__version__, torch.float32)
    if kernel == "segment_loop":
        pytest.skip("this torch has no CPU grouped GEMM (torch < 2.10)")
    grad = torch.randn(8, b)
    results = []
    for path in ("segment_loop", kernel):
        x.grad, full.grad = None, None
        out = grouped_matmul(x, weight, offsets, path)
        out.backward(grad)
        results.append((out.detach(), x.grad.clone(), full.grad.clone()))
    for loop, padded in zip(*results, strict=True):
        torch.testing.assert_close(padded, loop)
