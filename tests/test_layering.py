"""The way through the package goes one direction (docs/architecture.md, section 2): the core imports no
plotting, widgets, checks or training; figures know no widget; nothing imports a notebook."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moe_lab"
CORE = ["routing", "experts", "dispatch", "layer", "losses", "balancing", "validation",
        "expert_choice", "soft_moe", "upcycling"]
FORBIDDEN_FOR_CORE = ("plotly", "ipywidgets", "moe_lab.viz", "moe_lab.widgets", "moe_lab.checks",
                      "moe_lab.train", "moe_lab.model", "moe_lab.data", "tqdm")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_imports_no_outer_layer(module):
    imports = imported_modules(PACKAGE / f"{module}.py")
    assert not [m for m in imports if m.startswith(FORBIDDEN_FOR_CORE)]


@pytest.mark.parametrize("module", ["tokenizer", "text_routing"])
def test_text_routing_is_as_plain_as_the_core(module):
    """Built on the core, under the model and the figures: routing a text (moe_lab.text_routing)
    knows no figure, widget, checker, model or training, so each of them can use it."""
    imports = imported_modules(PACKAGE / f"{module}.py")
    assert not [m for m in imports if m.startswith(FORBIDDEN_FOR_CORE)]


@pytest.mark.parametrize("path", sorted((PACKAGE / "viz").glob("*.py")), ids=lambda p: p.name)
def test_figures_know_no_widget(path):
    imports = imported_modules(path)
    assert not [m for m in imports if m.startswith(("ipywidgets", "moe_lab.widgets"))]


def test_nothing_imports_a_notebook_or_edits_sys_path():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text, path
        assert "notebooks" not in imported_modules(path), path
