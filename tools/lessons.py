"""Where the lessons live and how a source becomes a notebook.

Each lesson is one text source, ``lessons/NN_name.py`` (jupytext's percent format: ruff lints it,
a diff reads like code), paired with its executed notebook ``notebooks/NN_name.ipynb`` by
``jupytext.toml``. The source holds every cell; the notebook adds the outputs of its own run.

    python tools/run_notebooks.py lessons/03_weighted_sum.py   # source -> executed notebook
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"
NOTEBOOKS = ROOT / "notebooks"
SOURCE_FORMAT = "py:percent"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def lesson_sources() -> list[Path]:
    """Every lesson source, in course order."""
    return sorted(LESSONS.glob("[0-9][0-9]_*.py"))


def lesson_notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def notebook_of(source: Path) -> Path:
    return NOTEBOOKS / (source.stem + ".ipynb")


def source_of(notebook: Path) -> Path:
    return LESSONS / (notebook.stem + ".py")


def read_source(source: Path) -> nbformat.NotebookNode:
    """The lesson source as a notebook without outputs, with the course's kernel."""
    nb = jupytext.read(source, fmt=SOURCE_FORMAT)
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb


def write_source(nb: nbformat.NotebookNode, source: Path) -> None:
    jupytext.write(nb, source, fmt=SOURCE_FORMAT)


def cell_key(cell: nbformat.NotebookNode) -> tuple:
    """What must agree between a source and its notebook: type, text, tags, collapsed state."""
    return (cell.cell_type, cell.source, tuple(cell.metadata.get("tags", ())),
            cell.metadata.get("jupyter", {}).get("source_hidden", False))


def _first_line_differing(text: str, other: str) -> str:
    """The first line of ``text`` that ``other`` does not have at the same place ('' if none)."""
    mine, theirs = text.splitlines(), other.splitlines()
    for j, line in enumerate(mine):
        if j >= len(theirs) or line != theirs[j]:
            return f"line {j + 1}: {line[:100]}"
    return f"line {len(mine) + 1}: (end of cell)"


def first_difference(source: Path, notebook: Path) -> str | None:
    """None when the notebook's cells are the source's; else a message naming the first
    differing cell (1-based, as JupyterLab counts)."""
    want = [cell_key(c) for c in read_source(source).cells]
    have = [cell_key(c) for c in nbformat.read(notebook, as_version=4).cells]
    for i, (w, h) in enumerate(zip(want, have, strict=False)):
        if w != h:
            return (f"{notebook.name}: cell {i + 1} differs from {source.name}\n"
                    f"  source:   {w[0]} {_first_line_differing(w[1], h[1])!r} tags={w[2]} hidden={w[3]}\n"
                    f"  notebook: {h[0]} {_first_line_differing(h[1], w[1])!r} tags={h[2]} hidden={h[3]}")
    if len(want) != len(have):
        return (f"{notebook.name}: {len(have)} cells, but {source.name} has {len(want)} "
                f"(the first {min(len(want), len(have))} agree)")
    return None
