"""Host syncs: the places where the CPU stops and waits for the GPU to finish. Issue 14.

A GPU runs kernels asynchronously: Python queues them and moves on. Reading a result back on the
host (``.item()``, ``.tolist()``, ``.cpu()``, ``if tensor:``) or an op whose output size depends
on the data (``nonzero``, boolean-mask indexing, ``bincount``, ``repeat_interleave`` without
``output_size``) makes the host wait for every queued kernel: the queue drains and the GPU idles
while Python catches up. A training step should have as few as it can.

:func:`count_host_syncs` counts them on any device, the CPU included, so a test can pin the
count of a forward pass: an interceptor (a ``TorchDispatchMode``) sees every aten op, forward
and backward, and counts the ops that read device data back on a GPU; ``Tensor.tolist``,
``.cpu`` and ``.numpy`` are wrapped too, because on a CPU tensor they never reach the
dispatcher. It counts what *would* sync on CUDA. Not counted: host-to-device copies of Python
data (``torch.tensor(list, device="cuda")``), which PyTorch also makes blocking, because on the
CPU there is no copy to see. On a GPU, :func:`count_cuda_syncs` asks CUDA itself
(``torch.cuda.set_sync_debug_mode``), which counts both kinds.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops that read device data on the host, or whose output size depends on the data
SYNCING_OPS = {
    "aten._local_scalar_dense.default": "item",  # .item(), int(t), float(t), bool(t)
    "aten.nonzero.default": "nonzero",  # torch.where(cond), torch.nonzero
    "aten.bincount.default": "bincount",  # CUDA reads min and max to size the output
    "aten.masked_select.default": "masked_select",
    "aten._unique2.default": "unique",
    "aten.unique_consecutive.default": "unique",
    "aten.unique_dim.default": "unique",
    "aten.equal.default": "equal",
}


class SyncCount(Counter):
    """What caused each host sync, by kind (``item``, ``tolist``, ``nonzero``, ...)."""

    @property
    def total(self) -> int:
        return sum(self.values())


class _SyncingOps(TorchDispatchMode):
    def __init__(self, count: SyncCount) -> None:
        super().__init__()
        self.count = count
        self.inside_wrapped_method = False  # .tolist() of a CUDA tensor copies: count it once

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if self.inside_wrapped_method:
            pass
        elif name in SYNCING_OPS:
            self.count[SYNCING_OPS[name]] += 1
        elif name == "aten.repeat_interleave.Tensor" and kwargs.get("output_size") is None:
            self.count["repeat_interleave"] += 1  # the output length is sum(repeats)
        elif name == "aten.index.Tensor" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            self.count["bool_index"] += 1  # x[mask]: a nonzero inside
        elif name in ("aten._to_copy.default", "aten.copy_.default") and _to_host(args, kwargs):
            self.count["to_host"] += 1
        return func(*args, **kwargs)


def _to_host(args: tuple, kwargs: dict) -> bool:
    """A copy from a device tensor into host memory."""
    source = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else args[0]
    target = kwargs.get("device") if "device" in kwargs else args[0].device
    return source.device.type != "cpu" and torch.device(target or source.device).type == "cpu"


@contextlib.contextmanager
def count_host_syncs() -> Iterator[SyncCount]:
    """Count, in ``with count_host_syncs() as syncs:``, the host syncs the block would make on a
    GPU; ``syncs.total`` after the block, ``syncs["tolist"]`` per kind."""
    count = SyncCount()
    mode = _SyncingOps(count)

    def counting(kind: str, method):
        def wrapper(self, *args, **kwargs):
            count[kind] += 1
            mode.inside_wrapped_method = True
            try:
                return method(self, *args, **kwargs)
            finally:
                mode.inside_wrapped_method = False
        return wrapper

    with contextlib.ExitStack() as stack:
        for kind in ("tolist", "cpu", "numpy"):
            method = getattr(torch.Tensor, kind)
            stack.enter_context(mock.patch.object(torch.Tensor, kind, counting(kind, method)))
        stack.enter_context(mode)
        yield count


@contextlib.contextmanager
def count_cuda_syncs() -> Iterator[SyncCount]:
    """CUDA's own count of the synchronising calls in the block (``set_sync_debug_mode``): every
    device-to-host read and every blocking host-to-device copy. Needs a CUDA device."""
    if not torch.cuda.is_available():
        raise RuntimeError("count_cuda_syncs needs a CUDA device; use count_host_syncs")
    count = SyncCount()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield count
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    count["cuda"] = sum("synchroniz" in str(w.message) for w in caught)


__all__ = ["SYNCING_OPS", "SyncCount", "count_cuda_syncs", "count_host_syncs"]
