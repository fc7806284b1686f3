"""What to run on which device: each GPU decision a pure function of the device's capabilities.

Every function here takes (device type, compute capability, torch version[, dtype]) and reads
nothing from the machine, so the whole table (CPU, Apple MPS, T4, A100, H100) is tested on a
CPU; :func:`decisions_for` fills the arguments in for a real device. The bench, the training
command, gpu_check and the environment summary record these decisions beside their results.

- **dtype** (:func:`compute_dtype`): bf16 only where the GPU has bf16 tensor cores (compute
  capability >= 8.0: A100, H100). A T4 (sm_75) answers ``torch.cuda.is_bf16_supported()`` with
  True through emulation, several times slower than fp16: fp16 there, and a training step then
  needs loss scaling (:func:`needs_loss_scaling`: fp16's 5 exponent bits underflow small
  gradients; ``torch.amp.GradScaler`` multiplies the loss before backward and unscales the
  gradients before the step). fp32 on the CPU (the lessons' precision) and on Apple MPS (bf16 there
  depends on the macOS version, older ones raise "BFloat16 is not supported on MPS"; the
  course's layers are small, and fp32 gives the CPU's numbers).
- **grouped GEMM path** (:func:`moe_lab.grouped_gemm.grouped_mm_path`): torch's fused kernel
  on sm_90/sm_100 in bf16; the CPU's C++ loop (torch >= 2.10); elsewhere one ``mm`` per expert
  from offsets copied to the host once per layer.
- **compile** (:func:`compile_decision`): whether ``torch.compile`` (inductor) is worth running.
  Inductor generates Triton kernels for sm_70 and newer; on sm_75 it does not compile bf16
  graphs (no bf16 there: it falls back to eager, so a "compiled" time would equal eager's). On a
  CPU inductor builds C++ (minutes on 2 cores: worth it for long runs, not for a lesson cell).
  MPS: inductor's Metal backend is a prototype; eager.
- **TF32** (:func:`tf32_matmul`): torch keeps fp32 matmuls in full fp32 by default
  (``torch.backends.cuda.matmul.allow_tf32`` is False since torch 1.12); nothing in moe_lab
  turns TF32 on, so an "fp32" timing on an A100 or H100 is true fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_lab.grouped_gemm import device_capability, grouped_mm_path
from moe_lab.validation import check_device

#: The device classes of the README's table: (name, device type, compute capability).
DEVICE_CLASSES = (
    ("CPU", "cpu", None),
    ("Apple MPS", "mps", None),
    ("T4 (sm_75)", "cuda", (7, 5)),
    ("A100 (sm_80)", "cuda", (8, 0)),
    ("H100 (sm_90)", "cuda", (9, 0)),
)


def _check_device(device_type: str, capability: tuple[int, int] | None) -> None:
    if not isinstance(device_type, str) or not device_type:
        raise TypeError(f"device_type must be a device type such as 'cpu' or 'cuda', "
                        f"got {device_type!r}")
    try:  # a type torch knows, this machine need not have it (the decisions are pure)
        known = torch.device(device_type).type == device_type
    except RuntimeError:
        known = False
    if not known:
        raise ValueError(f"device_type must be a device type such as 'cpu', 'cuda' or 'mps' "
                         f"(no index), got {device_type!r}")
    if device_type == "cuda" and (not isinstance(capability, tuple) or len(capability) != 2
            or not all(isinstance(c, int) and c >= 0 for c in capability)):
        raise ValueError(f"capability must be a CUDA GPU's (major, minor), e.g. (8, 0), "
                         f"got {capability!r}")


def has_native_bf16(device_type: str, capability: tuple[int, int] | None) -> bool:
    """bf16 tensor cores: CUDA compute capability >= 8.0 (Ampere and newer)."""
    _check_device(device_type, capability)
    return device_type == "cuda" and capability >= (8, 0)


def compute_dtype(device_type: str, capability: tuple[int, int] | None) -> torch.dtype:
    """The dtype the bench times and a GPU training run autocasts to (see the docstring)."""
    _check_device(device_type, capability)
    if device_type != "cuda":
        return torch.float32
    return torch.bfloat16 if has_native_bf16(device_type, capability) else torch.float16


def needs_loss_scaling(dtype: torch.dtype) -> bool:
    """fp16 training needs a loss scaler (GradScaler); bf16 has fp32's exponent range."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16, got "
                        f"{type(dtype).__name__} ({dtype!r})")
    return dtype == torch.float16


@dataclass(frozen=True)
class CompileDecision:
    worth_it: bool
    reason: str


def compile_decision(device_type: str, capability: tuple[int, int] | None, torch_version: str,
                     dtype: torch.dtype) -> CompileDecision:
    """Whether ``torch.compile`` (inductor) speeds this device and dtype up, and why."""
    _check_device(device_type, capability)
    del torch_version  # the rules below hold for every torch the course supports (>= 2.4)
    if device_type == "cuda":
        if capability < (7, 0):
            return CompileDecision(False, "inductor's Triton kernels need sm_70 or newer")
        if dtype == torch.bfloat16 and capability < (8, 0):
            return CompileDecision(False, "inductor does not compile bf16 below sm_80: it "
                                          "would run eagerly")
        return CompileDecision(True, "inductor fuses the elementwise work around the matmuls")
    if device_type == "cpu":
        return CompileDecision(False, "inductor builds C++ for every graph: minutes on a small "
                                      "CPU, more than a lesson's layer gains")
    return CompileDecision(False, f"inductor's {device_type} backend is a prototype: eager")


def tf32_matmul(device_type: str, capability: tuple[int, int] | None) -> bool:
    """Whether fp32 matmuls run in TF32 here under torch's defaults (they never do: moe_lab
    leaves ``allow_tf32`` off, its default; TF32 exists from sm_80)."""
    _check_device(device_type, capability)
    return False


@dataclass(frozen=True)
class Decisions:
    """Every decision for one device, as recorded beside results."""

    device_type: str
    capability: tuple[int, int] | None
    torch_version: str
    dtype: torch.dtype
    native_bf16: bool
    loss_scaling: bool
    grouped_mm_path: str
    compile: CompileDecision
    tf32: bool

    def as_record(self) -> dict[str, str]:
        """Strings for a JSON record or a summary row."""
        return {
            "compute_capability": ("n/a" if self.capability is None
                                   else f"sm_{self.capability[0]}{self.capability[1]}"),
            "native_bf16": str(self.native_bf16),
            "dtype": str(self.dtype).removeprefix("torch."),
            "loss_scaling": str(self.loss_scaling),
            "grouped_mm_path": self.grouped_mm_path,
            "compile": "yes" if self.compile.worth_it else f"no ({self.compile.reason})",
            "tf32": str(self.tf32),
        }


def decide(device_type: str, capability: tuple[int, int] | None,
           torch_version: str) -> Decisions:
    """All decisions for a device class and torch version (pure: no device needed)."""
    if not isinstance(torch_version, str):
        raise TypeError(f"torch_version must be a version string such as '2.5.1', got "
                        f"{type(torch_version).__name__} ({torch_version!r})")
    dtype = compute_dtype(device_type, capability)
    return Decisions(device_type, capability, torch_version, dtype,
                     has_native_bf16(device_type, capability), needs_loss_scaling(dtype),
                     grouped_mm_path(device_type, capability, torch_version, dtype),
                     compile_decision(device_type, capability, torch_version, dtype),
                     tf32_matmul(device_type, capability))


def decisions_for(device: torch.device | str) -> Decisions:
    """:func:`decide` for a real device of this machine and the installed torch."""
    device = check_device("device", device)
    return decide(device.type, device_capability(device), torch.__version__)


__all__ = ["DEVICE_CLASSES", "CompileDecision", "Decisions", "compile_decision",
           "compute_dtype", "decide", "decisions_for", "has_native_bf16", "needs_loss_scaling",
           "tf32_matmul"]
