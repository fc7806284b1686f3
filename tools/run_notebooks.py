"""Regenerate lessons: each source becomes its notebook, executed, with its own outputs stored.

    python tools/run_notebooks.py                            # every lesson
    python tools/run_notebooks.py lessons/03_weighted_sum.py # one (a notebook path works too)
    python tools/run_notebooks.py --check lessons/03_*.py    # run and report, write nothing

The cells come from the text source ``lessons/NN_name.py`` (tools/lessons.py); the notebook
``notebooks/NN_name.ipynb`` is rebuilt from it, so a notebook never drifts from its source. For
each lesson it prints the wall time and the kernel's peak memory: the largest sum of the resident
memory of the kernel and every process it started (lesson 07's ranks), sampled every 0.1 s. It
strips widget state (``metadata.widgets``, megabytes per widget) before writing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
from nbclient import NotebookClient

from lessons import lesson_sources, notebook_of, read_source, source_of


class PeakMemory:
    """Samples the summed RSS of this process's descendants (the kernel and its workers)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak_bytes = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # it ended between listing and reading
                    total += child.memory_info().rss
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def strip_widget_state(nb: nbformat.NotebookNode) -> None:
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def run_lesson(source: Path, *, write: bool, timeout: int) -> tuple[float, float]:
    """Build the notebook from its source, execute it in a fresh kernel, write it."""
    nb = read_source(source)
    path = notebook_of(source)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    with PeakMemory() as memory:
        client.execute()
    seconds = time.perf_counter() - start
    strip_widget_state(nb)
    if write:
        nbformat.write(nb, path)
    return seconds, memory.peak_bytes / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", type=Path,
                        help="lesson sources (lessons/NN_*.py) or their notebooks; default: all")
    parser.add_argument("--check", action="store_true", help="run and report, do not write")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    sources = [source_of(p) if p.suffix == ".ipynb" else p.resolve() for p in args.lessons]
    for source in sources or lesson_sources():
        if not source.exists():
            parser.error(f"no lesson source {source}")
        seconds, peak_mb = run_lesson(source, write=not args.check, timeout=args.timeout)
        print(f"{source.stem}: {seconds:6.1f} s, kernel + workers peak RSS {peak_mb:7.1f} MB",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
