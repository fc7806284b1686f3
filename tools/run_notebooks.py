"""Execute lessons in place so their stored outputs are their own (the outputs nbval compares).

    python tools/run_notebooks.py                      # every notebooks/[0-9]*.ipynb
    python tools/run_notebooks.py notebooks/03_*.ipynb # some of them
    python tools/run_notebooks.py --check              # run, report, but do not write

For each notebook it prints the wall time and the kernel's peak memory: the largest sum of the
resident memory of the kernel and every process it started (lesson 07's ranks), sampled every
0.1 s. It strips widget state (``metadata.widgets``, megabytes per FigureWidget) and writes the
notebook back.
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

ROOT = Path(__file__).resolve().parents[1]


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


def run_notebook(path: Path, *, write: bool, timeout: int) -> tuple[float, float]:
    nb = nbformat.read(path, as_version=4)
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
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="run and report, do not write")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    for path in paths:
        seconds, peak_mb = run_notebook(path, write=not args.check, timeout=args.timeout)
        print(f"{path.name}: {seconds:6.1f} s, kernel + workers peak RSS {peak_mb:7.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
