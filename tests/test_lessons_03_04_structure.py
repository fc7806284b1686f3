"""Lessons 03-04 as stored: the skeleton, a collapsed solution after every exercise that passes
its checker, stubs left unimplemented, widget cells ignored by nbval, no widget state, no
sys.path edits, and the widget each lesson is about."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = {"03_weighted_sum.ipynb": (3, "RoutingExplorer("),
           "04_load_balancing.ipynb": (4, "TrainingDashboard(")}
SKELETON = ["**Goal.**", "The math", "| symbol |", "Build", "Visualise", "Summary", "Exercises",
            "Interview questions", "Further reading"]


@pytest.mark.parametrize(("name", "expected"), LESSONS.items())
def test_lesson_structure(name: str, expected: tuple[int, str]) -> None:
    n_exercises, widget = expected
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert "widgets" not in nb.metadata
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in SKELETON:
        assert heading in markdown, heading
    assert "<details>" in markdown and any("\uac00" <= ch <= "\ud7a3" for ch in markdown)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any("sys.path" in c.source for c in code)
    assert any(widget in c.source for c in code)
    stubs = [c for c in code if 'raise NotImplementedError("your code here")' in c.source]
    assert len(stubs) == n_exercises
    solutions = [i for i, c in enumerate(nb.cells)
                 if c.cell_type == "markdown" and c.source.startswith("**Solution**")]
    assert len(solutions) == n_exercises
    for i in solutions:
        hidden = nb.cells[i + 1]
        assert hidden.cell_type == "code" and hidden.metadata["jupyter"]["source_hidden"] is True
        assert "✅" in "".join(o.get("text", "") for o in hidden.outputs)
    checks = [c for c in code if c.source.startswith("ok_")]
    assert len(checks) == n_exercises
    assert all("not implemented yet" in "".join(o.get("text", "") for o in c.outputs)
               for c in checks)
    for cell in code:
        if any("widget-view" in key for o in cell.outputs for key in o.get("data", {})):
            assert cell.source.startswith("# NBVAL_IGNORE_OUTPUT")
        if "train_toy(" in cell.source or "last_redraw_ms" in cell.source:
            assert cell.source.startswith("# NBVAL_IGNORE_OUTPUT")
