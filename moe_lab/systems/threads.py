"""Run a block of tiny tensor work on a fixed number of CPU threads. Lessons 03 and 04.

The toy trainer and the routing explorer multiply matrices of a few thousand elements. On such
work one thread is fastest, and on a busy machine several OpenMP threads spin-wait for each other:
we measured the explorer's routing at 0.6 ms on one thread and 40 ms on two, on 2 shared cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from moe_lab.validation import check_positive_int


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's CPU thread count inside the block and restore it after (None: leave it)."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(check_positive_int("num_threads", num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
