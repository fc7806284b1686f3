"""Argument checks shared by the public API: each raises a clear error naming the argument.

Every public constructor and function of the core calls these before doing any work, so a
learner who passes a wrong value reads what was wrong and what is allowed, not a shape error
from deep inside a matmul.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_nonnegative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_top_k(top_k: object, num_experts: int) -> int:
    check_positive_int("top_k", top_k)
    if top_k > num_experts:
        raise ValueError(
            f"top_k must be between 1 and num_experts={num_experts}, got top_k={top_k}"
        )
    return top_k  # type: ignore[return-value]


def check_groups(num_groups: object, topk_groups: object, num_experts: int, top_k: int) -> None:
    """Group-limited routing: E splits into num_groups equal groups, 1 <= topk_groups <= num_groups,
    and the K experts fit in the topk_groups chosen groups."""
    check_positive_int("num_groups", num_groups)
    check_positive_int("topk_groups", topk_groups)
    if num_experts % num_groups:
        raise ValueError(f"num_groups must divide num_experts={num_experts}, got num_groups={num_groups}")
    if topk_groups > num_groups:
        raise ValueError(f"topk_groups must be between 1 and num_groups={num_groups}, got {topk_groups}")
    eligible = topk_groups * (num_experts // num_groups)
    if num_groups > 1 and top_k > eligible:
        raise ValueError(f"top_k={top_k} does not fit in topk_groups={topk_groups} of the "
                         f"num_groups={num_groups} groups of {num_experts // num_groups} experts "
                         f"({eligible} eligible)")


def check_choice(name: str, value: object, allowed: Iterable[object]) -> object:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_positive_float(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be > 0 and finite, got {value}")
    return float(value)


def check_fraction(name: str, value: object) -> float:
    """A number strictly between 0 and 1 (a jitter half-width, a drop rate ...)."""
    value = check_positive_float(name, value)
    if not value < 1:
        raise ValueError(f"{name} must lie in (0, 1), got {value}")
    return value


def check_float_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, bfloat16, ...), got {x.dtype}"
        )
    check_has_values(name, x)
    return x


def check_last_dim(name: str, x: torch.Tensor, size: int, what: str) -> None:
    if x.dim() < 1 or x.shape[-1] != size:
        raise ValueError(
            f"{name} must have last dimension {what}={size}, got shape {tuple(x.shape)}"
        )


def check_index_tensor(name: str, idx: object, num_rows: int | None,
                       num_experts: int | None) -> torch.Tensor:
    """Expert ids (N, K): int64, or int32 (returned converted to int64), each in [0, E)."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(idx).__name__}")
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer tensor (int64), got {idx.dtype}")
    if idx.dim() != 2 or (num_rows is not None and idx.shape[0] != num_rows):
        rows = "N" if num_rows is None else f"N={num_rows}"
        raise ValueError(f"{name} must have shape ({rows}, K), got {tuple(idx.shape)}")
    check_has_values(name, idx)
    if num_experts is not None and idx.numel() and (idx.min() < 0 or idx.max() >= num_experts):
        raise ValueError(f"{name} values must lie in [0, {num_experts}), got ids from "
                         f"{int(idx.min())} to {int(idx.max())}")
    return idx.long()


def check_has_values(name: str, x: torch.Tensor) -> None:
    """Routing depends on the values (which experts win): a meta tensor has none."""
    if x.is_meta:
        raise ValueError(f"{name} is on the meta device: it has a shape but no values, and "
                         f"routing depends on the values. Materialise it on a real device "
                         f"(cpu, cuda) first.")


def check_matches_weights(name: str, x: torch.Tensor, weight: torch.Tensor) -> None:
    """x must share the weights' device and, outside autocast, their dtype.

    The layer does not cast x silently: a float64 x would be computed in float32 (losing the
    precision asked for), a bfloat16 x in float32 (costing what bf16 was meant to save). Cast x,
    cast the layer (``module.to(dtype)``), or run under ``torch.autocast``. (A meta x is
    refused before this, by :func:`check_float_tensor`.)"""
    if x.device != weight.device:
        raise ValueError(f"{name} is on device {x.device} but the weights are on "
                         f"{weight.device}: move one of them (x.to(...) or module.to(...)).")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} has dtype {x.dtype} but the weights have dtype {weight.dtype}: "
                        f"cast x ({name}.to({weight.dtype})), cast the module "
                        f"(module.to({x.dtype})), or run under torch.autocast.")


def check_counts(name: str, counts: object, num_experts: int, num_rows: int) -> list[int]:
    """Segment lengths: E non-negative ints (list, tuple or 1-D integer tensor) summing to M."""
    if isinstance(counts, torch.Tensor):
        if counts.dim() != 1 or counts.is_floating_point() or counts.is_complex():
            raise TypeError(f"{name} must be E ints or a 1-D integer tensor, got a tensor of "
                            f"dtype {counts.dtype} and shape {tuple(counts.shape)}")
        counts = counts.tolist()
    if not isinstance(counts, Sequence) or isinstance(counts, str) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise TypeError(f"{name} must be a list of E ints, got {counts!r}")
    if len(counts) != num_experts:
        raise ValueError(f"{name} must hold one count per expert (E={num_experts}), "
                         f"got {len(counts)}")
    if any(c < 0 for c in counts):
        raise ValueError(f"{name} must be >= 0, got {list(counts)}")
    if sum(counts) != num_rows:
        raise ValueError(f"{name} must sum to the number of rows M={num_rows}, got "
                         f"sum({list(counts)}) = {sum(counts)}")
    return list(counts)


def check_count_tensor(name: str, counts: torch.Tensor, num_experts: int,
                       device: torch.device) -> torch.Tensor:
    """Segment lengths kept on the device: a 1-D integer tensor of E entries on ``device``. Its
    values are not read (that would be a host sync): the caller vouches that they are >= 0 and
    sum to the number of rows, as a routing plan's ``tokens_per_expert`` does."""
    if counts.dim() != 1 or counts.is_floating_point() or counts.is_complex() \
            or counts.dtype == torch.bool:
        raise TypeError(f"{name} must be E ints or a 1-D integer tensor, got a tensor of "
                        f"dtype {counts.dtype} and shape {tuple(counts.shape)}")
    if counts.shape[0] != num_experts:
        raise ValueError(f"{name} must hold one count per expert (E={num_experts}), "
                         f"got {counts.shape[0]}")
    if counts.device != device:
        raise ValueError(f"{name} is on device {counts.device} but the rows are on {device}")
    return counts


def check_mask(mask: object, num_tokens: int) -> torch.Tensor | None:
    """A padding mask (N,): True (or 1) for real tokens, False (or 0) for padding."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dim() != 1 or mask.shape[0] != num_tokens:
        raise ValueError(
            f"mask must have shape (N={num_tokens},) with one entry per token, "
            f"got {tuple(mask.shape)}"
        )
    check_has_values("mask", mask)
    if mask.dtype != torch.bool and mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold True/False (or 1/0) per token, got other values "
                         f"such as {mask[(mask != 0) & (mask != 1)][0].item()}")
    return mask.to(torch.bool)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} ({value!r})")
    return value


def check_device(name: str, value: object) -> torch.device:
    """A device name ('cpu', 'cuda:0', ...) or a torch.device, one this machine has when it asks
    for CUDA (a later step would fail far from the cause)."""
    if not isinstance(value, str | torch.device):
        raise TypeError(f"{name} must be a device name such as 'cpu' or 'cuda', or a "
                        f"torch.device, got {type(value).__name__} ({value!r})")
    try:
        device = torch.device(value)
    except RuntimeError as error:
        raise ValueError(f"{name} must be a device name such as 'cpu', 'cuda' or 'cuda:0', "
                         f"got {value!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={value!r} asks for CUDA, which this machine does not have; "
                         f"use 'cpu' (or unset it)")
    return device
