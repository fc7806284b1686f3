"""Lessons 00-02 as stored: the skeleton, collapsed solutions after every exercise, stubs left
unimplemented, widget cells ignored by nbval, no widget state or sys.path edits, and no
FigureWidget (each would send plotly's ~5 MB bundle over the websocket; the widgets draw into an
ipywidgets.Output)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = {"00_start_here.ipynb": 0, "01_the_router.ipynb": 3, "02_topk_and_capacity.ipynb": 4}
SKELETON = ["Goal", "Summary", "Exercises", "Interview questions", "Further reading"]


@pytest.mark.parametrize(("name", "n_exercises"), LESSONS.items())
def test_lesson_structure(name: str, n_exercises: int) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert "widgets" not in nb.metadata
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in SKELETON:
        assert heading in markdown, heading
    assert "<details>" in markdown  # self-check answers, Korean with English
    assert any("\uac00" <= ch <= "\ud7a3" for ch in markdown)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any("sys.path" in c.source for c in code)
    stubs = [c for c in code if 'raise NotImplementedError("your code here")' in c.source]
    assert len(stubs) == n_exercises
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.startswith("**Solution**"):
            hidden = nb.cells[i + 1]
            assert hidden.cell_type == "code"
            assert hidden.metadata["jupyter"]["source_hidden"] is True
            assert "✅" in "".join(o.get("text", "") for o in hidden.outputs)  # it passed
    solutions = sum(c.source.startswith("**Solution**") for c in nb.cells
                    if c.cell_type == "markdown")
    assert solutions == n_exercises
    widget_cells = 0
    for cell in code:
        if any("widget-view" in key for o in cell.outputs for key in o.get("data", {})):
            assert cell.source.startswith("# NBVAL_IGNORE_OUTPUT")
            widget_cells += 1
        shown = [str(o.get("data", {}).get("text/plain", "")) for o in cell.outputs]
        assert not any("FigureWidget" in text for text in [cell.source, *shown]), cell.source
    assert widget_cells == 1  # the lesson's one live widget
    checks = [c for c in code if c.source.startswith("ok_")]
    assert all("not implemented yet" in "".join(o.get("text", "") for o in c.outputs)
               for c in checks)
