"""Lesson 04's dashboards (issue 15): one dashboard per run, shown in the cell that trains it and
left showing the finished run; a loss keeps its colour from run to run (and across the course);
the colour bar sits by the heatmap and the loss legend beside the losses panel; a paced live run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from moe_lab.lm.stats import StepStats
from moe_lab.viz.dashboard import (
    LOSS_COLOURS,
    SERIES_COLOURS,
    compare_runs_figure,
    dashboard_data,
    dashboard_figure,
    series_colour,
)
from moe_lab.viz.lm import loss_curves_figure
from moe_lab.widgets._output import PLOTLY_MIMETYPE
from moe_lab.widgets.dashboard import TrainingDashboard

ROOT = Path(__file__).resolve().parents[1]
LESSON_04 = ROOT / "lessons" / "04_load_balancing.py"
NOTEBOOK_04 = ROOT / "notebooks" / "04_load_balancing.ipynb"


def _history(steps: int, losses: tuple[str, ...], num_experts: int = 4) -> list[StepStats]:
    return [StepStats(step, (1.0 / num_experts,) * num_experts, 1.0, 1.3, 0.5,
                      {name: 1.0 + step for name in losses}) for step in range(steps)]


def _loss_colours(figure) -> dict[str, str]:
    return {trace.name: trace.line.color for trace in figure.data[3:]}


def test_a_loss_keeps_its_colour_from_run_to_run():
    first = _loss_colours(dashboard_figure(dashboard_data(_history(3, ("task", "z")))))
    second = _loss_colours(dashboard_figure(dashboard_data(_history(3, ("task", "switch", "z")))))
    assert first["z"] == second["z"] and first["task"] == second["task"]
    assert len(set(second.values())) == 3  # three losses, three colours


def test_colours_are_fixed_by_name_across_figures():
    runs = {"switch": _history(3, ("task",)), "none": _history(3, ("task",))}
    by_run = {trace.name: trace.line.color for trace in compare_runs_figure(runs).data}
    assert by_run["switch"] == series_colour("switch") == SERIES_COLOURS["switch"]
    logs = {name: {"evals": [{"step": 0, "wall_time": 0.0, "val_loss": 1.0}]}
            for name in ("moe", "dense")}
    curves = {t.name: t.line.color for t in loss_curves_figure(logs).data}
    assert curves == {"moe": SERIES_COLOURS["moe"], "dense": SERIES_COLOURS["dense"]}
    # any other name: the same colour every time, from the palette
    assert series_colour("my loss") == series_colour("my loss") in LOSS_COLOURS
    with pytest.raises(TypeError, match="name"):
        series_colour(3)


def test_colour_bar_by_the_heatmap_and_legend_beside_the_losses_panel():
    layout = dashboard_figure(dashboard_data(_history(3, ("task", "z")))).layout
    heatmap_right, ratio_left = layout.xaxis.domain[1], layout.xaxis2.domain[0]
    colourbar = dashboard_figure(dashboard_data(_history(3, ("task",)))).data[0].colorbar
    assert heatmap_right <= colourbar.x < ratio_left  # between the two top panels
    losses_x, losses_y = layout.xaxis4.domain, layout.yaxis4.domain
    assert layout.legend.x >= losses_x[1]  # beside the losses panel, not over its curves
    assert losses_y[0] <= layout.legend.y <= losses_y[1]  # not below the figure, on "step"


def test_paced_dashboard_waits_after_each_redraw():
    dashboard = TrainingDashboard(4, redraw_every=5, pace_s=0.05)
    start = time.perf_counter()
    for stats in _history(11, ("task",)):
        dashboard(stats)
    assert time.perf_counter() - start >= 3 * 0.05  # redraws at steps 0, 5 and 10
    for bad, error in (("1", TypeError), (True, TypeError), (-0.1, ValueError), (9, ValueError)):
        with pytest.raises(error, match="pace_s"):
            TrainingDashboard(4, pace_s=bad)


def test_finish_leaves_the_cell_showing_the_finished_run():
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    dashboard = TrainingDashboard(4, redraw_every=50, title="run A")
    with capture_output() as captured:
        dashboard.show()
        for stats in _history(7, ("task",)):
            dashboard(stats)
        dashboard.finish()
    shown, updated = captured.outputs
    assert not shown.update and updated.update
    assert shown.transient["display_id"] == updated.transient["display_id"]
    first, last = (out.data[PLOTLY_MIMETYPE]["data"][1]["x"] for out in (shown, updated))
    assert list(first) == [] and list(last) == list(range(7))
    assert updated.data["application/vnd.jupyter.widget-view+json"]["model_id"] == dashboard.model_id


def _cells(source: str) -> list[str]:
    return source.split("\n# %%")


def test_lesson_04_gives_every_run_its_own_dashboard():
    runs = [cell for cell in _cells(LESSON_04.read_text())
            if "train_toy(ToyConfig" in cell and not cell.startswith(" [markdown]")]
    assert len(runs) == 5
    for cell in runs:
        assert cell.count("TrainingDashboard(") == 1, cell
        assert "dashboard.show()" in cell and "dashboard.finish()" in cell, cell
    assert ".reset(" not in LESSON_04.read_text()
    assert sum("pace_s=" in cell for cell in runs) >= 1  # a live run slow enough to watch


def test_stored_lesson_04_shows_each_runs_result():
    """The notebook as it ships: each run cell's stored figure is its own finished run."""
    nb = json.loads(NOTEBOOK_04.read_text())
    figures = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "train_toy(ToyConfig" in "".join(cell["source"]):
            [figure] = [o["data"][PLOTLY_MIMETYPE] for o in cell["outputs"]
                        if PLOTLY_MIMETYPE in o.get("data", {})]
            figures.append(figure)
    titles = [figure["layout"]["title"]["text"] for figure in figures]
    assert len(set(titles)) == 5, titles
    for figure in figures:
        steps = figure["data"][1]["x"]
        assert len(steps) == 150 and steps[-1] == 149, figure["layout"]["title"]["text"]
