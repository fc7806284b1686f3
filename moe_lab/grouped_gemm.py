"""The grouped GEMM of the sorted dispatch, and which kernel runs it. Lesson 06.

Rows sorted by expert form E contiguous segments; segment e is multiplied by its expert's weight:

    out[offsets[e-1]:offsets[e]] = x_sorted[offsets[e-1]:offsets[e]] @ weight[e]

with ``offsets`` (E,) the cumulative ends of the segments. Which kernel computes this depends on
the device, its compute capability, the torch version and the dtype, read from torch's own
sources (``aten/src/ATen/native/cuda/GroupedBlas.cpp`` and the CPU kernel):

- ``"fused"``: torch's grouped GEMM kernel (CUTLASS), one launch for all segments, offsets read
  on the device: no host sync. Only CUDA GPUs of compute capability 9.x and 10.x (H100, H200,
  B200), only bf16, torch >= 2.8 (``torch._grouped_mm``; public as ``F.grouped_mm`` from 2.10).
- ``"cpu_grouped_mm"``: ``F.grouped_mm`` on the CPU (torch >= 2.10, fp32 or bf16): a C++ loop of
  one ``mm`` per segment. The offsets are in host memory already: nothing to sync.
- ``"segment_loop"``: one ``mm`` per segment, from offsets copied to the host *once per layer*.
  Everywhere else: a T4 (sm_75) or an A100 (sm_80) in any dtype, an H100 in fp32 or fp16, Apple
  MPS, torch < 2.10 on a CPU. On such GPUs torch's ``F.grouped_mm`` would not fail: it falls
  back to the same loop, but copies the offsets to the host inside every call (three matmuls
  forward, six backward: nine syncs per layer, against one here).

The matmul is a custom operator (``torch.library.custom_op``, ``moe_lab::segment_mm``) with its
own backward: ``torch.compile`` sees one opaque node of known output shape (M, B) in any dtype,
so a dropless sorted layer compiles with ``fullgraph=True``; Dynamo never traces the kernel
choice, and the host read of the loop happens inside the operator at run time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GROUPED_MM_PATHS = ("fused", "cpu_grouped_mm", "segment_loop")

#: torch.Tensor.tolist itself: the loop reads offsets that are in host memory by contract (the
#: one device-to-host copy is the caller's, and is what moe_lab.systems.syncs counts)
_host_ints = torch.Tensor.tolist


def _version_tuple(torch_version: str) -> tuple[int, int]:
    """'2.13.0+cpu' -> (2, 13)."""
    major, minor = torch_version.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def grouped_mm_path(device_type: str, capability: tuple[int, int] | None, torch_version: str,
                    dtype: torch.dtype) -> str:
    """Which kernel the sorted dispatch's grouped GEMM runs on (see the module docstring).

    device_type: ``"cpu"``, ``"cuda"``, ``"mps"``, ...; capability: a CUDA GPU's (major, minor)
    compute capability (None elsewhere); torch_version: ``torch.__version__``; dtype: the
    matmul's dtype (the autocast dtype under autocast). A pure function: tested on every device
    class without the device."""
    version = _version_tuple(torch_version)
    if device_type == "cuda":
        if (capability is not None and capability[0] in (9, 10) and dtype == torch.bfloat16
                and version >= (2, 8)):
            return "fused"
        return "segment_loop"
    if device_type == "cpu" and version >= (2, 10) and dtype in (torch.float32, torch.bfloat16):
        return "cpu_grouped_mm"
    return "segment_loop"


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """A CUDA device's compute capability (major, minor); None for other devices."""
    if device.type != "cuda":
        return None
    return _cuda_capability(device.index if device.index is not None else -1)


@torch.compiler.assume_constant_result  # torch.compile reads it once, as a constant
def _cuda_capability(index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(None if index < 0 else index))


def path_for(x_sorted: torch.Tensor, weight: torch.Tensor) -> str:
    """The path :func:`grouped_matmul` takes for these operands on this machine: the device's
    path, or ``"segment_loop"`` for no rows or rows not aligned to 16 bytes (what the kernels
    need: D and F multiples of 8 in bf16, of 4 in fp32)."""
    device_type = x_sorted.device.type
    dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
             else x_sorted.dtype)
    path = grouped_mm_path(device_type, device_capability(x_sorted.device), torch.__version__,
                           dtype)
    aligned = all(n * dtype.itemsize % 16 == 0 for n in weight.shape[1:])
    if path != "segment_loop" and (x_sorted.shape[0] == 0 or not aligned):
        return "segment_loop"
    return path


def _segment_ends(offsets: torch.Tensor) -> list[int]:
    """The E segment ends as ints; offsets on a device are copied to the host first (a sync:
    :meth:`moe_lab.Experts.forward_grouped` makes that copy once per layer instead)."""
    if offsets.device.type != "cpu":
        offsets = offsets.cpu()
    return _host_ints(offsets)


def _torch_grouped_mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm  # public from torch 2.10
    return grouped_mm(a, b, offs=offsets)


# The schemas are spelled out: torch < 2.5 cannot read the string annotations of
# `from __future__ import annotations`.
@torch.library.custom_op("moe_lab::segment_mm", mutates_args=(),
                         schema="(Tensor a, Tensor b, Tensor offsets, str path) -> Tensor")
def segment_mm(a: torch.Tensor, b: torch.Tensor, offsets: torch.Tensor, path: str) -> torch.Tensor:
    """a (M, A) sorted by segment, b (E, A, B), offsets (E,) int32 ends -> (M, B)."""
    if path != "segment_loop":
        return _torch_grouped_mm(a, b, offsets)
    out = a.new_empty(a.shape[0], b.shape[-1])  # (M, B)
    start = 0
    for e, end in enumerate(_segment_ends(offsets)):
        torch.mm(a[start:end], b[e], out=out[start:end])
        start = end
    return out


@segment_mm.register_fake
def _(a, b, offsets, path):
    return a.new_empty(a.shape[0], b.shape[-1])


@torch.library.custom_op("moe_lab::segment_mm_weight_grad", mutates_args=(),
                         schema="(Tensor a, Tensor grad, Tensor offsets, str path) -> Tensor")
def segment_mm_weight_grad(a: torch.Tensor, grad: torch.Tensor, offsets: torch.Tensor,
                           path: str) -> torch.Tensor:
    """The weight gradient of :func:`segment_mm`: grad_b[e] = a_e^T grad_e -> (E, A, B)."""
    if path != "segment_loop":
        return _torch_grouped_mm(a.t(), grad, offsets)
    out = a.new_zeros(offsets.shape[0], a.shape[1], grad.shape[1])  # (E, A, B)
    start = 0
    for e, end in enumerate(_segment_ends(offsets)):
        torch.mm(a[start:end].t(), grad[start:end], out=out[e])
        start = end
    return out


@segment_mm_weight_grad.register_fake
def _(a, grad, offsets, path):
    return a.new_empty(offsets.shape[0], a.shape[1], grad.shape[1])


def _setup_context(ctx, inputs, output) -> None:
    a, b, offsets, path = inputs
    ctx.save_for_backward(a, b, offsets)
    ctx.path = path


def _backward(ctx, grad: torch.Tensor):
    a, b, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    # grad_a = grad @ b[e]^T per segment; grad_b[e] = a_e^T @ grad_e
    grad_a = segment_mm(grad, b.transpose(1, 2), offsets, ctx.path) if ctx.needs_input_grad[0] \
        else None
    grad_b = segment_mm_weight_grad(a, grad, offsets, ctx.path) if ctx.needs_input_grad[1] \
        else None
    return grad_a, grad_b, None, None


segment_mm.register_autograd(_backward, setup_context=_setup_context)


def grouped_matmul(x_sorted: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor,
                   path: str | None = None) -> torch.Tensor:
    """Segment-wise matmul: rows of segment e are multiplied by weight[e].

    x_sorted: (M, A) rows sorted by expert; weight: (E, A, B); offsets: (E,) int32 cumulative
    ends of the segments, on the device for the kernels, in host memory for ``"segment_loop"``
    (a device tensor there is copied to the host: one sync). path: one of
    :data:`GROUPED_MM_PATHS`, default :func:`path_for`. Returns (M, B).
    Autocast does not cover a custom operator: under autocast both operands are cast here.
    Shapes and dtypes are checked; the offsets' values are not read (a host sync on a GPU)."""
    _check_operands(x_sorted, weight, offsets)
    device_type = x_sorted.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x_sorted, weight = x_sorted.to(dtype), weight.to(dtype)
    if path is None:
        path = path_for(x_sorted, weight)
    if path not in GROUPED_MM_PATHS:
        raise ValueError(f"path must be one of {GROUPED_MM_PATHS}, got {path!r}")
    if path == "segment_loop":
        return segment_mm(x_sorted, weight, offsets, path)  # (M, B)
    width = weight.shape[-1]
    x_sorted, weight = _kernel_ready(x_sorted, weight)
    return segment_mm(x_sorted, weight, offsets, path)[:, :width]  # (M, B)


def _check_operands(x_sorted: object, weight: object, offsets: object) -> None:
    for name, value, dims in (("x_sorted", x_sorted, 2), ("weight", weight, 3)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{getattr(value, 'dtype', type(value).__name__)}")
        if value.dim() != dims:
            raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(value.shape)}")
    if x_sorted.shape[1] != weight.shape[1]:
        raise ValueError(f"x_sorted's width {x_sorted.shape[1]} must be weight's contraction "
                         f"width A={weight.shape[1]} (weight is (E, A, B))")
    if not isinstance(offsets, torch.Tensor) or offsets.dtype != torch.int32:
        raise TypeError(f"offsets must be an int32 tensor of segment ends (the kernels take "
                        f"int32: .to(torch.int32)), got "
                        f"{getattr(offsets, 'dtype', type(offsets).__name__)}")
    if offsets.shape != (weight.shape[0],):
        raise ValueError(f"offsets must hold one segment end per expert (E={weight.shape[0]},), "
                         f"got shape {tuple(offsets.shape)}")


def _kernel_ready(x_sorted: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The grouped-GEMM kernels need every row 16 bytes apart and a row- or column-major weight.
    A layer's own widths pass (:func:`path_for`), but a family's products may not (gpt-oss adds
    its expert biases as a product with a column of ones: A = 1). Zeros change no product, so the
    contraction width A and the output width B are zero-padded up to the alignment (the output's
    padded columns are cut off by the caller) and a strided weight view is made contiguous."""
    align = 16 // x_sorted.dtype.itemsize
    pad_a, pad_b = -weight.shape[1] % align, -weight.shape[2] % align
    if not (weight.is_contiguous() or weight.transpose(-1, -2).is_contiguous()):
        weight = weight.contiguous()
    if pad_a:
        x_sorted = F.pad(x_sorted, (0, pad_a))  # (M, A + pad_a)
        weight = F.pad(weight, (0, 0, 0, pad_a))  # (E, A + pad_a, B)
    if pad_b:
        weight = F.pad(weight, (0, pad_b))  # (E, A', B + pad_b)
    return x_sorted.contiguous(), weight


__all__ = ["GROUPED_MM_PATHS", "device_capability", "grouped_matmul", "grouped_mm_path",
           "path_for", "segment_mm"]
