"""Execute lessons in place so their stored outputs are their own (the outputs nbval compares).

    python tools/run_notebooks.py                      # every notebooks/[0-9]*.ipynb
    python tools/run_notebooks.py notebooks/03_*.ipynb # some of them
    python tools/run_notebooks.py --check              # run, report, but do not write

For each notebook it prints the wall time and the kernel's peak memory (max RSS of the kernel
process, and of any worker processes it started), strips widget state (``metadata.widgets``,
megabytes per FigureWidget) and writes the notebook back.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
PEAK_RSS_CODE = (
    "import resource as _r\n"
    "print(_r.getrusage(_r.RUSAGE_SELF).ru_maxrss, _r.getrusage(_r.RUSAGE_CHILDREN).ru_maxrss)"
)


def strip_widget_state(nb: nbformat.NotebookNode) -> None:
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def run_notebook(path: Path, *, write: bool, timeout: int) -> tuple[float, float]:
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_RSS_CODE))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    probe = nb.cells.pop()
    self_kb, children_kb = (int(v) for v in probe.outputs[0]["text"].split())
    strip_widget_state(nb)
    if write:
        nbformat.write(nb, path)
    return seconds, max(self_kb, children_kb) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true", help="run and report, do not write")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    for path in paths:
        seconds, peak_mb = run_notebook(path, write=not args.check, timeout=args.timeout)
        print(f"{path.name}: {seconds:6.1f} s, kernel peak RSS {peak_mb:7.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
