"""Small helpers for the lesson generators (tools/build_lesson_NN.py): markdown and code cells,
a collapsed solution, and writing a notebook with the launch cells of tools/launch_cells.py.

    python tools/build_lesson_00.py && python tools/run_notebooks.py notebooks/00_*.ipynb
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from launch_cells import add_launch_cells

ROOT = Path(__file__).resolve().parents[1]


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
    add_launch_cells(path)
    return path
