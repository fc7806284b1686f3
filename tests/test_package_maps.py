"""The lesson maps in the viz and widgets package docstrings name what exists: every module of
the package is on its map, every name listed for a module is defined in that module, and the
lesson named uses it (the name, or the widget or figure named in brackets, is in the lesson)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moe_lab"
ENTRY = re.compile(r"^\s+lesson (\d\d)\s+(\w+)\.py\s+(.*)$")
NAME = re.compile(r"\b[A-Za-z_]\w*\b")


def lesson_map(package: str) -> list[tuple[str, str, set[str], set[str]]]:
    """(lesson, module, names listed, words in brackets), continuation lines joined."""
    doc = importlib.import_module(f"moe_lab.{package}").__doc__
    entries: list[tuple[str, str, str]] = []
    for line in doc.split("Where each")[1].splitlines()[2:]:
        if not line.strip():
            break
        match = ENTRY.match(line)
        if match:
            entries.append(match.groups())
        else:
            lesson, module, rest = entries[-1]
            entries[-1] = (lesson, module, f"{rest} {line}")
    table = []
    for lesson, module, rest in entries:
        brackets = " ".join(re.findall(r"\[([^]]*)\]", rest))
        names = set(NAME.findall(re.sub(r"\[[^]]*\]", "", rest)))
        # from the brackets, only code names (a widget class, a function): not "viz", "py"
        code = {w for w in NAME.findall(brackets) if "_" in w or w[0].isupper()}
        table.append((lesson, module, names, code))
    return table


def lesson_text(lesson: str) -> str:
    paths = sorted(ROOT.glob(f"lessons/{lesson}_*.py")) or sorted(
        ROOT.glob(f"notebooks/{lesson}_*.ipynb"))
    assert paths, f"no lesson {lesson}"
    return paths[0].read_text()


@pytest.mark.parametrize("package", ["viz", "widgets"])
def test_every_module_is_on_the_map_and_every_name_exists(package):
    table = lesson_map(package)
    assert {module for _, module, _, _ in table} == {
        p.stem for p in (PACKAGE / package).glob("[!_]*.py")}
    for lesson, module, names, brackets in table:
        loaded = importlib.import_module(f"moe_lab.{package}.{module}")
        assert names and not [n for n in names if not hasattr(loaded, n)], (module, names)
        text = lesson_text(lesson)
        assert any(re.search(rf"\b{n}\b", text) for n in names | brackets), (lesson, module)
