"""Where the course runs: pick a device, seed everything, print an environment summary. Lesson 00."""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """cuda if present, else mps (Apple), else cpu. ``prefer`` forces one (``"cpu"`` ...)."""
    if prefer is not None:
        return _as_device("prefer", prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _as_device(name: str, value: object) -> torch.device:
    if not isinstance(value, str | torch.device):
        raise TypeError(f"{name} must be a device name such as 'cpu' or 'cuda', or a "
                        f"torch.device, got {type(value).__name__} ({value!r})")
    try:
        return torch.device(value)
    except RuntimeError as error:
        raise ValueError(f"{name} must be a device name such as 'cpu', 'cuda' or 'cuda:0', "
                         f"got {value!r}") from error


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
    device = pick_device() if device is None else _as_device("device", device)
    summary = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu_threads": str(torch.get_num_threads()),
        "cpu_count": str(os.cpu_count()),
        "grouped_mm": str(hasattr(torch.nn.functional, "grouped_mm")),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        summary["gpu"] = props.name
        summary["gpu_memory_gb"] = f"{props.total_memory / 2**30:.1f}"
        summary["bf16_supported"] = str(torch.cuda.is_bf16_supported())
    return summary


def print_environment() -> None:
    for key, value in environment_summary().items():
        print(f"{key:>14}: {value}")
