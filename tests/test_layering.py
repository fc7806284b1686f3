"""The way through the package goes one direction, folder by folder (docs/architecture.md,
section 2, cites this table; the package docstring draws it). A part of the package may import
only the parts listed for it; nothing imports a notebook or edits sys.path."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "moe_lab"
CORE_MODULES = ("routing", "experts", "grouped_gemm", "dispatch", "layer", "losses", "balancing",
                "validation")
CORE = tuple(f"moe_lab.{m}" for m in CORE_MODULES)

# part of the package -> the parts of moe_lab it may import (besides itself). Bottom to top.
ALLOWED = {
    "core": CORE,
    "variants": CORE,
    "systems": CORE,
    "interop": CORE,
    "lm": CORE + ("moe_lab.variants", "moe_lab.systems"),
    "analysis": CORE + ("moe_lab.lm",),
    "inference": CORE + ("moe_lab.variants", "moe_lab.systems", "moe_lab.lm"),
    "viz": CORE + ("moe_lab.variants", "moe_lab.systems", "moe_lab.lm", "moe_lab.analysis",
                   "moe_lab.inference"),
    "widgets": CORE + ("moe_lab.variants", "moe_lab.systems", "moe_lab.lm", "moe_lab.analysis",
                       "moe_lab.inference", "moe_lab.viz", "moe_lab.quizzes"),
    "quizzes": CORE + ("moe_lab.variants", "moe_lab.systems", "moe_lab.lm", "moe_lab.analysis",
                       "moe_lab.inference"),
    "checks": CORE + ("moe_lab.variants", "moe_lab.systems", "moe_lab.lm", "moe_lab.analysis",
                      "moe_lab.interop", "moe_lab.inference"),
    "course": ("moe_lab",),  # the top: anything
}
# Outer layers never reach the core; only these may import plotting or Jupyter libraries.
DRAWS = ("viz", "widgets", "quizzes", "checks", "course")
FRONT_END = ("plotly", "ipywidgets", "anywidget", "IPython", "tqdm", "jupyter_server")


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) == 1:
        return "core" if path.stem in CORE_MODULES else path.stem
    return relative.parts[0]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "moe_lab":  # from moe_lab import text_routing: a submodule or a name
                names.update(f"moe_lab.{alias.name}" for alias in node.names)
    return names


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if part_of(p) in ALLOWED)


def test_every_part_of_the_package_has_a_rule():
    commands = {"__init__", "bench", "train", "gpu_check"}  # the root and the three entry points
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")}
    assert parts - set(ALLOWED) <= commands, parts - set(ALLOWED) - commands


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layering(path):
    part = part_of(path)
    own = CORE if part == "core" else (f"moe_lab.{part}",)
    allowed = ALLOWED[part] + own
    inside = [m for m in imported_modules(path) if m.startswith("moe_lab")]
    wrong = [m for m in inside if not any(m == a or m.startswith(a + ".") for a in allowed)
             and m != "moe_lab"]
    if part != "course":  # the package root re-exports the core: only the outer layers may use it
        wrong += [m for m in inside if m == "moe_lab" and part in ("core", "variants", "systems",
                                                                  "interop")]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({part}) imports {wrong}"
    if part not in DRAWS:  # the language model's training loop shows a progress bar (tqdm)
        front_end = tuple(f for f in FRONT_END if not (part == "lm" and f == "tqdm"))
        drawn = [m for m in imported_modules(path) if m.split(".")[0] in front_end]
        assert not drawn, f"{path.relative_to(PACKAGE)} ({part}) imports {drawn}"


def test_nothing_imports_a_notebook_or_edits_sys_path():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text, path
        assert "notebooks" not in imported_modules(path), path
