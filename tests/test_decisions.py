"""Every GPU decision is a pure function of the device's capabilities: the README's table, one
row per device class, each row a case here (issue 18). Plus the compile of the sorted layer."""

import pytest
import torch

from moe_lab import SparseMoE
from moe_lab.grouped_gemm import grouped_mm_path
from moe_lab.systems.decisions import (
    DEVICE_CLASSES,
    compile_decision,
    decide,
    decisions_for,
)

# device class -> (dtype, loss scaling, grouped-GEMM path, compile worth it) under torch 2.13
# (the README's table: "Which decision on which device")
EXPECTED = {
    "CPU": (torch.float32, False, "cpu_grouped_mm", False),
    "Apple MPS": (torch.float32, False, "segment_loop", False),
    "T4 (sm_75)": (torch.float16, True, "segment_loop", True),
    "A100 (sm_80)": (torch.bfloat16, False, "segment_loop", True),
    "H100 (sm_90)": (torch.bfloat16, False, "fused", True),
}


@pytest.mark.parametrize("name, device_type, capability", DEVICE_CLASSES,
                         ids=[name for name, *_ in DEVICE_CLASSES])
def test_device_class_decisions(name, device_type, capability):
    decisions = decide(device_type, capability, "2.13.0")
    dtype, loss_scaling, path, compile_worth_it = EXPECTED[name]
    assert decisions.dtype == dtype
    assert decisions.loss_scaling == loss_scaling
    assert decisions.grouped_mm_path == path
    assert decisions.compile.worth_it == compile_worth_it
    assert decisions.tf32 is False  # torch's default, and moe_lab never turns it on
    record = decisions.as_record()
    assert record["grouped_mm_path"] == path and record["dtype"] == str(dtype)[6:]


@pytest.mark.parametrize("version, cpu_path, h100_path", [
    ("2.4.1", "segment_loop", "segment_loop"),  # no grouped GEMM in torch yet
    ("2.8.0", "segment_loop", "fused"),  # torch._grouped_mm: CUDA only
    ("2.9.1+cpu", "segment_loop", "fused"),  # Binder's pin
    ("2.10.0", "cpu_grouped_mm", "fused"),  # F.grouped_mm public, with a CPU kernel
    ("2.14.1+cu130", "cpu_grouped_mm", "fused"),
])
def test_grouped_gemm_path_follows_the_torch_version(version, cpu_path, h100_path):
    assert grouped_mm_path("cpu", None, version, torch.float32) == cpu_path
    assert grouped_mm_path("cuda", (9, 0), version, torch.bfloat16) == h100_path


@pytest.mark.parametrize("capability, dtype, path", [
    ((9, 0), torch.float32, "segment_loop"),  # the fused kernel is bf16 only
    ((9, 0), torch.float16, "segment_loop"),
    ((10, 0), torch.bfloat16, "fused"),  # B200
    ((12, 0), torch.bfloat16, "segment_loop"),  # consumer Blackwell: not in torch's list
    ((8, 6), torch.bfloat16, "segment_loop"),
])
def test_fused_kernel_only_on_sm90_and_sm100_in_bf16(capability, dtype, path):
    assert grouped_mm_path("cuda", capability, "2.13.0", dtype) == path


def test_compile_is_not_worth_it_for_bf16_on_a_t4_but_is_for_fp16():
    assert not compile_decision("cuda", (7, 5), "2.13.0", torch.bfloat16).worth_it
    assert compile_decision("cuda", (7, 5), "2.13.0", torch.float16).worth_it
    assert not compile_decision("cuda", (6, 0), "2.13.0", torch.float16).worth_it  # P100


@pytest.mark.parametrize("bad, error", [
    (("cuda", None, "2.13.0"), ValueError),  # a CUDA device needs its capability
    (("cuda", (8,), "2.13.0"), ValueError),
    (("", None, "2.13.0"), TypeError),
    ((None, None, "2.13.0"), TypeError),
])
def test_decide_rejects_bad_devices(bad, error):
    with pytest.raises(error, match="capability|device_type"):
        decide(*bad)


def test_this_machine_is_decided_from_its_own_torch():
    decisions = decisions_for("cpu")
    assert decisions.torch_version == torch.__version__
    assert decisions.dtype == torch.float32 and decisions.capability is None


def test_grouped_counts_tensor_is_checked_without_reading_it():
    from moe_lab import Experts

    experts = Experts(4, 8, 16)
    x = torch.randn(5, 8)
    with pytest.raises(ValueError, match="counts.*E=4"):
        experts.forward_grouped(x, torch.tensor([2, 3]))
    with pytest.raises(TypeError, match="counts"):
        experts.forward_grouped(x, torch.tensor([True, False, True, True]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropless_sorted_layer_compiles_with_fullgraph(dtype):
    """No graph break: the grouped GEMM is one custom op, counts and offsets stay tensors.
    (aot_eager traces exactly what inductor would get, without the C++ build.)"""
    import torch._dynamo

    torch.manual_seed(0)
    layer = SparseMoE(16, 32, 8, 2).to(dtype)
    x = torch.randn(2, 12, 16, dtype=dtype)
    grad_y = torch.randn(2, 12, 16, dtype=dtype)
    x_eager = x.clone().requires_grad_(True)
    eager = layer(x_eager)
    eager.y.backward(grad_y)
    eager_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x_compiled = x.clone().requires_grad_(True)
    out = compiled(x_compiled)
    out.y.backward(grad_y)
    assert not torch._dynamo.utils.counters["graph_break"]
    tolerance = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out.y, eager.y, **tolerance)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, **tolerance)
    for p, want in zip(layer.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, want, **tolerance)
    assert torch.equal(out.router.topk_idx, eager.router.topk_idx)
