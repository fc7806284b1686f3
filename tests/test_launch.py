"""Every lesson opens in Colab and Binder: link line and Colab-only setup cell at the top, the
README badges in step, all from the one home setting in tools/launch_cells.py (HOME), pinned to
the package's release tag; without a home the cells say so and install nothing."""

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


def _run_in_colab(code, moe_lab_installed=True):
    """Run a setup cell as Colab would: google.colab importable, pip mocked; the command."""
    colab = mock.MagicMock()
    spec = object() if moe_lab_installed else None
    with mock.patch.dict(sys.modules, {"google": colab, "google.colab": colab}), \
            mock.patch("subprocess.run") as run, mock.patch("importlib.util.find_spec",
                                                            return_value=spec):
        exec(code, {})
    colab.output.enable_custom_widget_manager.assert_called_once()
    return run.call_args.args[0]


def test_release_is_the_package_version_as_a_tag():
    import moe_lab

    assert f"v{moe_lab.__version__}" == launch_cells.RELEASE  # a tag, not a branch


def test_setup_cell_installs_the_pinned_release_in_colab():
    code = launch_cells.setup_code("someone/moe-course", "v9.8.7")
    command = _run_in_colab(code)
    assert command[-1] == "moe-lab @ git+https://github.com/someone/moe-course@v9.8.7"
    assert "anywidget" in command and not any(c.startswith("ipywidgets") for c in command)


def test_without_a_home_the_setup_cell_says_so_and_installs_nothing_from_github():
    code = launch_cells.setup_code(None)
    assert "github" not in code
    with pytest.raises(RuntimeError, match="no published home"):
        _run_in_colab(code, moe_lab_installed=False)
    command = _run_in_colab(code, moe_lab_installed=True)  # a learner installed it by hand
    assert not any("moe-lab" in c or "moe_lab" in c for c in command)
    assert "anywidget" in command


def test_links_pin_the_release_or_say_there_is_no_home():
    line = launch_cells.badge_markdown("03_weighted_sum.ipynb", "someone/moe-course", "v9.8.7")
    assert ("https://colab.research.google.com/github/someone/moe-course/blob/v9.8.7/"
            "notebooks/03_weighted_sum.ipynb") in line
    assert ("https://mybinder.org/v2/gh/someone/moe-course/v9.8.7"
            "?urlpath=lab/tree/notebooks/03_weighted_sum.ipynb") in line
    no_home = launch_cells.badge_markdown("03_weighted_sum.ipynb", None)
    assert "http" not in no_home and "published" in no_home


@pytest.mark.parametrize("home", ["moe-lab", "https://github.com/a/b", "a/b/c", "a b/c", 7])
def test_a_home_that_is_not_owner_slash_name_is_refused(home):
    calls = [lambda: launch_cells.setup_code(home),
             lambda: launch_cells.badge_markdown("00_start_here.ipynb", home),
             lambda: launch_cells.colab_url("00_start_here.ipynb", home),
             lambda: launch_cells.binder_url("00_start_here.ipynb", home)]
    for call in calls:
        with pytest.raises(ValueError, match="HOME must be None or a GitHub repository"):
            call()


def test_the_tool_rewrites_only_the_launch_cells_of_a_stored_notebook(tmp_path):
    """Changing the home rewrites two cells of each stored notebook, keeping every output."""
    lesson = LESSONS[1]
    nb = nbformat.read(lesson, as_version=4)
    nb.cells[0].source, nb.cells[1].source = "old links", "# old setup"
    path = tmp_path / lesson.name
    nbformat.write(nb, path)
    assert launch_cells.update_notebook(path) is True
    updated = nbformat.read(path, as_version=4)
    original = nbformat.read(lesson, as_version=4)
    assert updated.cells == original.cells
    assert launch_cells.update_notebook(path) is False  # already in place: untouched


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
