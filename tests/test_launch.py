"""Every lesson opens in Colab and Binder: badge and Colab-only setup cell at the top, the README
badges in step, all from the one repository name in tools/launch_cells.py."""

import json
import sys
from pathlib import Path
from unittest import mock

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import launch_cells  # noqa: E402

LESSONS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_starts_with_launch_cells(path):
    nb = nbformat.read(path, as_version=4)
    badge, setup = nb.cells[0], nb.cells[1]
    assert badge.cell_type == "markdown" and badge.source == launch_cells.badge_markdown(path.name)
    assert setup.cell_type == "code" and setup.source == launch_cells.SETUP_CODE
    assert setup.metadata.get("jupyter") == launch_cells.SETUP_HIDDEN  # out of the learner's way
    assert sum(launch_cells.TAG in c.metadata.get("tags", []) for c in nb.cells) == 2


def test_readme_badges_match_the_repository():
    assert launch_cells.badge_markdown("00_start_here.ipynb") in (ROOT / "README.md").read_text()


def test_setup_cell_does_nothing_outside_colab():
    with mock.patch("subprocess.run") as run:
        exec(launch_cells.SETUP_CODE, {})  # no google.colab module here
    run.assert_not_called()


def test_setup_cell_installs_the_package_in_colab():
    colab = mock.MagicMock()
    with mock.patch.dict(sys.modules, {"google": colab, "google.colab": colab}), \
            mock.patch("subprocess.run") as run:
        exec(launch_cells.SETUP_CODE, {})
    command = run.call_args.args[0]
    assert f"git+https://github.com/{launch_cells.REPOSITORY}@{launch_cells.BRANCH}" in command[-1]
    assert "anywidget" in command and not any(c.startswith("ipywidgets") for c in command)
    colab.output.enable_custom_widget_manager.assert_called_once()


def test_figures_carry_html_only_in_colab():
    import plotly.graph_objects as go

    from moe_lab.widgets._output import PLOTLY_MIMETYPE, figure_bundle

    figure = go.Figure(go.Bar(y=[1, 2]))
    local = figure_bundle(figure)
    assert PLOTLY_MIMETYPE in local and "text/html" not in local  # no CDN outside Colab
    with mock.patch.dict(sys.modules, {"google.colab": mock.MagicMock()}):
        colab = figure_bundle(figure)
    assert "plotly" in colab["text/html"] and PLOTLY_MIMETYPE in colab


def _make_explorer():
    from torch import nn

    from moe_lab import SparseMoE
    from moe_lab.viz.explorer import byte_router_fn
    from moe_lab.widgets.explorer import RoutingExplorer

    layer = SparseMoE(16, 32, 4, 2)
    return RoutingExplorer(byte_router_fn(nn.Embedding(256, 16), layer.router), num_experts=4)


def _make(name):
    from moe_lab.widgets.capacity import CapacityGrid
    from moe_lab.widgets.dashboard import TrainingDashboard
    from moe_lab.widgets.expert_choice import ExpertChoiceExplorer
    from moe_lab.widgets.params import ParamsCalculator
    from moe_lab.widgets.router import RouterHeatmap

    return {
        "capacity": CapacityGrid,
        "dashboard": lambda: TrainingDashboard(4),
        "explorer": _make_explorer,
        "expert_choice": ExpertChoiceExplorer,
        "params": ParamsCalculator,
        "router": RouterHeatmap,
    }[name]()


@pytest.mark.parametrize("name", ["capacity", "dashboard", "explorer", "expert_choice", "params",
                                  "router"])
def test_every_widget_has_a_static_fallback(name):
    """A front end that cannot draw widgets shows the widget's last figure, not a line of text."""
    from moe_lab.widgets._output import PLOTLY_MIMETYPE, StaticFallback

    widget = _make(name)
    assert isinstance(widget, StaticFallback)
    bundle = widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle[PLOTLY_MIMETYPE]["data"] == json.loads(widget.figure.to_json())["data"]
