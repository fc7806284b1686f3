"""Every lesson, as its source and as its stored notebook: no drift between the two, one
skeleton, one exercise layout, one hop from the lesson to the package's code.

Covers every ``lessons/NN_*.py`` automatically: a new lesson is checked by adding its source.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from lessons import (  # noqa: E402
    first_difference,
    lesson_notebooks,
    lesson_sources,
    notebook_of,
    read_source,
    source_of,
)

SOURCES = lesson_sources()
IDS = [s.stem for s in SOURCES]
STUB = 'raise NotImplementedError("your code here")'
LINE_LIMIT = 110  # ruff's, for code cells (markdown lines in the sources may be longer)
# The sections every lesson has, in this order: (what the heading says, a regex on heading lines).
SKELETON = [
    ("the math", r"^#+ .*The math"),
    ("a visualisation", r"^#+ .*Visualise"),
    ("the summary", r"^#+ .*Summary"),
    ("interview questions", r"^#+ .*[Ii]nterview questions"),
    ("further reading", r"^#+ .*Further reading"),
]
# A review lesson builds nothing new: it has no math, exercise or live figure of its own.
REVIEW_LESSONS = {"12_review_and_interview"}


def cells(source: Path) -> list[nbformat.NotebookNode]:
    return read_source(source).cells


def text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def is_hidden(cell: nbformat.NotebookNode) -> bool:
    return cell.metadata.get("jupyter", {}).get("source_hidden", False)


def test_every_notebook_has_its_source_and_back() -> None:
    assert {p.stem for p in lesson_notebooks()} == {p.stem for p in SOURCES}
    for notebook in lesson_notebooks():
        assert source_of(notebook).exists()


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_notebook_matches_its_source(source: Path) -> None:
    difference = first_difference(source, notebook_of(source))
    assert difference is None, (f"{difference}\nRegenerate it: python tools/run_notebooks.py "
                                f"lessons/{source.name}")


def test_drift_is_reported_with_the_lesson_and_cell(tmp_path: Path) -> None:
    source = SOURCES[0]
    nb = nbformat.read(notebook_of(source), as_version=4)
    nb.cells[3].source += "\n# edited in JupyterLab, source not updated"
    edited = tmp_path / notebook_of(source).name
    nbformat.write(nb, edited)
    message = first_difference(source, edited)
    assert message is not None and edited.name in message and "cell 4 differs" in message


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_skeleton_in_order(source: Path) -> None:
    nb = cells(source)
    markdown = [c.source for c in nb if c.cell_type == "markdown"]
    title = next(m for m in markdown if m.startswith("# "))
    assert title.startswith(f"# {source.stem[:2]} · ") and "**Goal.**" in title
    headings = [line for m in markdown for line in m.splitlines() if line.startswith("#")]
    positions = []
    for what, pattern in SKELETON:
        if source.stem in REVIEW_LESSONS and what in ("the math", "a visualisation"):
            continue
        found = [i for i, h in enumerate(headings) if re.search(pattern, h)]
        assert found, f"{source.name} has no section for {what}"
        positions.append(found[0])
    assert positions == sorted(positions), f"{source.name}: sections out of order"
    if source.stem not in REVIEW_LESSONS:
        assert "| symbol |" in "\n".join(markdown), f"{source.name}: the math has no symbol table"


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_further_reading_links_every_entry(source: Path) -> None:
    markdown = "\n".join(c.source for c in cells(source) if c.cell_type == "markdown")
    section = markdown.split("Further reading", 1)[1]
    entries = re.split(r"\n- ", section.split("\n#", 1)[0])[1:]
    assert entries, f"{source.name}: further reading is empty"
    for entry in entries:
        assert re.search(r"\]\(https?://", entry), f"{source.name}: no link in {entry[:70]!r}"


def exercises(nb: list) -> list[tuple[str, int]]:
    """(function name, cell index) of every stub the learner fills in."""
    found = []
    for i, cell in enumerate(nb):
        if cell.cell_type == "code" and STUB in cell.source and not is_hidden(cell):
            functions = [n.name for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef)]
            assert len(functions) == 1, f"cell {i + 1}: a stub cell defines one function"
            found.append((functions[0], i))
    return found


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_one_exercise_layout(source: Path) -> None:
    """stub -> `ok_x = check_y(stub)` -> **Solution** -> collapsed `stub_solution` checked ->
    "**In the package:** `moe_lab.module.name`", the named object importable."""
    nb = cells(source)
    stored = nbformat.read(notebook_of(source), as_version=4).cells
    found = exercises(nb)
    if source.stem not in REVIEW_LESSONS:
        assert found, f"{source.name} has no exercise"
    for name, i in found:
        where = f"{source.name}, exercise {name} (cell {i + 1})"
        check, header, solution, package = nb[i + 1], nb[i + 2], nb[i + 3], nb[i + 4]
        assert re.fullmatch(rf"ok_\w+ = check_\w+\({name}\)", check.source), where
        assert "not implemented yet" in text(stored[i + 1]), where
        assert header.cell_type == "markdown" and header.source.startswith("**Solution**"), where
        assert solution.cell_type == "code" and is_hidden(solution), where
        assert f"def {name}_solution(" in solution.source, where
        assert re.search(rf"check_\w+\({name}_solution\)", solution.source), where
        assert "✅" in text(stored[i + 3]), f"{where}: the solution does not pass its checker"
        assert package.cell_type == "markdown", where
        named = re.match(r"\*\*In the package:\*\* `(moe_lab(?:\.\w+)+)`", package.source)
        assert named, f"{where}: the cell after the solution names the package's function"
        module, _, attribute = named.group(1).rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), named.group(1)
        headings = [line for c in nb[:i] if c.cell_type == "markdown"
                    for line in c.source.splitlines() if line.startswith("#")]
        assert "Build" in headings[-1], f"{where}: it sits under {headings[-1]!r}, not a Build heading"


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_code_cells(source: Path) -> None:
    nb = cells(source)
    stored = nbformat.read(notebook_of(source), as_version=4)
    assert "widgets" not in stored.metadata  # widget state is stripped (megabytes otherwise)
    for i, cell in enumerate(nb):
        if cell.cell_type != "code":
            continue
        where = f"{source.name}, cell {i + 1}"
        assert "sys.path" not in cell.source, f"{where}: notebooks import the installed package"
        assert "FigureWidget" not in cell.source, where  # a 5 MB bundle per widget
        for line in cell.source.splitlines():
            assert len(line) <= LINE_LIMIT, f"{where}: line longer than {LINE_LIMIT}"
        outputs = stored.cells[i].get("outputs", []) if i < len(stored.cells) else []
        if any("widget-view" in key for o in outputs for key in o.get("data", {})):
            assert cell.source.startswith("# NBVAL_IGNORE_OUTPUT"), f"{where}: widget output"
