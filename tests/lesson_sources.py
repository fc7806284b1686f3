"""Reference solutions, read from the lesson sources (never copied into a test).

Every exercise of a lesson ends with a collapsed cell defining ``<name>_solution``; tests take
that very function from ``lessons/NN_*.py``:

    from lesson_sources import lesson_solution
    combine_loop_solution = lesson_solution("03", "combine_loop")

The cell runs with the lesson's imports, but without its checker calls (statements that use a
``check_*`` name), so loading a solution never runs a checker.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from lessons import lesson_sources, read_source  # noqa: E402


def lesson_path(lesson: str) -> Path:
    """'03' or '03_weighted_sum' -> lessons/03_weighted_sum.py."""
    matches = [p for p in lesson_sources() if p.stem == lesson or p.stem.split("_")[0] == lesson]
    if len(matches) != 1:
        raise LookupError(f"lesson {lesson!r}: {len(matches)} sources match")
    return matches[0]


def _calls_a_checker(node: ast.stmt) -> bool:
    return any(isinstance(n, ast.Name) and n.id.startswith("check_") for n in ast.walk(node))


@functools.cache
def _lesson_namespace(lesson: str) -> dict[str, Any]:
    """The lesson's import statements (from every code cell but the launch cells) and the
    definitions of its collapsed solution cells, executed once per lesson."""
    nb = read_source(lesson_path(lesson))
    code = [c for c in nb.cells if c.cell_type == "code" and "launch" not in c.metadata.get("tags", [])]
    imports, solutions = [], []
    for cell in code:
        tree = ast.parse(cell.source)
        imports += [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        if cell.metadata.get("jupyter", {}).get("source_hidden"):
            solutions += [n for n in tree.body if not _calls_a_checker(n)]
    namespace: dict[str, Any] = {"__name__": f"lesson_{lesson}"}
    module = ast.Module(body=imports + solutions, type_ignores=[])
    exec(compile(module, str(lesson_path(lesson)), "exec"), namespace)  # noqa: S102
    return namespace


def lesson_solution(lesson: str, name: str):
    """The function ``<name>_solution`` defined in the collapsed solution cells of a lesson."""
    namespace = _lesson_namespace(lesson)
    key = f"{name}_solution"
    if key not in namespace:
        found = sorted(k for k in namespace if k.endswith("_solution"))
        raise LookupError(f"lesson {lesson}: no {key} in its solution cells (found {found})")
    return namespace[key]
