"""Where the course runs: pick a device, seed everything, print an environment summary. Lesson 00.

Two environment variables, for running the lessons somewhere on purpose (``python -m
moe_lab.course.gpu_check`` sets them for each lesson it executes):

- ``MOE_LAB_DEVICE`` (``cpu``, ``cuda``, ...): the device :func:`pick_device` answers when not
  told otherwise, so every lesson that asks it runs there.
- ``MOE_LAB_PEAK_MEMORY_FILE``: a path; after every notebook cell, the kernel writes its peak
  memory there as JSON (``torch.cuda.max_memory_allocated`` can only be read inside the process
  that allocated, so the kernel has to report it itself).
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys

import numpy as np
import torch

from moe_lab.systems.decisions import decisions_for
from moe_lab.validation import check_device

DEVICE_ENV = "MOE_LAB_DEVICE"
PEAK_MEMORY_ENV = "MOE_LAB_PEAK_MEMORY_FILE"


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given, else ``$MOE_LAB_DEVICE`` if set, else cuda if present, else mps
    (Apple), else cpu."""
    if prefer is not None:
        return check_device("prefer", prefer)
    if os.environ.get(DEVICE_ENV):
        return check_device(DEVICE_ENV, os.environ[DEVICE_ENV])
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU). seed: an int in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
    if not 0 <= seed < 2**32:  # NumPy's range
        raise ValueError(f"seed must lie in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def environment_summary(device: torch.device | str | None = None) -> dict[str, str]:
    """Versions and hardware, as a dict of strings (``device``: the one in use, default the
    best available)."""
    device = pick_device() if device is None else check_device("device", device)
    summary = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu_threads": str(torch.get_num_threads()),
        "cpu_count": str(os.cpu_count()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        summary["gpu"] = props.name
        summary["gpu_memory_gb"] = f"{props.total_memory / 2**30:.1f}"
        # True on a T4 too (emulated): native_bf16 below is what the decisions use
        summary["bf16_supported"] = str(torch.cuda.is_bf16_supported())
        summary["cuda"] = str(torch.version.cuda)
    # what moe_lab decides for this device (moe_lab.systems.decisions): compute capability,
    # native bf16, dtype, loss scaling, grouped-GEMM path, compile, TF32
    summary.update(decisions_for(device).as_record())
    return summary


def print_environment() -> None:
    for key, value in environment_summary().items():
        print(f"{key:>18}: {value}")


def peak_memory() -> dict[str, float | None]:
    """This process's peak memory so far, in MB: ``cuda_max_allocated_mb`` (None when CUDA was
    never used here) and ``max_rss_mb`` (resident set size, None where not measurable)."""
    cuda_mb = (torch.cuda.max_memory_allocated() / 2**20
               if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    try:
        import resource  # POSIX only

        max_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
        rss_mb = max_rss_kb / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS
    except ImportError:
        rss_mb = None
    return {"cuda_max_allocated_mb": cuda_mb, "max_rss_mb": rss_mb}


def _report_peak_memory_after_each_cell() -> None:
    """When ``$MOE_LAB_PEAK_MEMORY_FILE`` is set inside a Jupyter kernel, write
    :func:`peak_memory` to it after every cell (the last write is the lesson's peak)."""
    path = os.environ.get(PEAK_MEMORY_ENV)
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if not path or shell is None:
        return

    def write(*_: object) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(peak_memory(), f)

    shell.events.register("post_run_cell", write)


_report_peak_memory_after_each_cell()
