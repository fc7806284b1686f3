"""Small helpers for the lesson generators (tools/build_lessons_*.py): markdown and code cells,
a collapsed solution, and writing a notebook with the launch cells of tools/launch_cells.py.

    python tools/build_lessons_00_02.py && python tools/run_notebooks.py notebooks/0[0-2]_*.ipynb
"""

from __future__ import annotations

import runpy
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
_launch = runpy.run_path(str(ROOT / "tools" / "launch_cells.py"))


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source.strip("\n"))


def solution(source: str, title: str = "Solution") -> list[nbformat.NotebookNode]:
    """A markdown line and the solution's code cell, collapsed (source hidden) in JupyterLab."""
    cell = code(source)
    cell.metadata["jupyter"] = {"source_hidden": True}
    return [md(f"**{title}** (click to expand)"), cell]


def write_lesson(name: str, cells: list) -> Path:
    flat: list[nbformat.NotebookNode] = []
    for cell in cells:
        flat.extend(cell if isinstance(cell, list) else [cell])
    nb = nbformat.v4.new_notebook(cells=flat)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = ROOT / "notebooks" / name
    nbformat.write(nb, path)
    _launch["add_launch_cells"](path)
    return path
