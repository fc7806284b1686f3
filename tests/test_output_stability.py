"""Every output nbval compares holds on any machine and any torch the README promises (issue 18).

nbval compares a checked cell's stored output with a fresh run character by character, so an
output stays checked only if nothing about the machine can change it. The rules below fail the
build when a checked output carries what does change, whatever the machine that wrote it:

- a figure's raw JSON (its floats' last digits move with the BLAS and the plotly version): the
  figure cell is ignored and a checked cell prints the few values that matter, rounded;
- a float-rounding gap printed as a number (5.7e-06 here, 4.8e-06 there): print it as a bound;
- a float printed with more significant digits than float32 keeps (> 6);
- a version string or a count of torch's own operators (``aten::...``; ``_grouped_mm`` exists
  from torch 2.8 only), which depend on the installed torch.

nbval's own sanitizer (notebooks/sanitize.cfg) only masks machine noise (addresses, ids,
timings); results are made stable here, in the lessons, not masked.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.ipynb"))
IGNORED = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP")
#: MIME types nbval compares that are allowed in a checked output: plain text only
PLAIN = {"text/plain"}
#: scientific notation with a negative exponent: a magnitude at float-rounding scale
SMALL_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?[eE]-\d+)")
#: a comparison in front of a number makes it a bound
BOUND = re.compile(r"(<=?|>=?|≤|≥)\s*$")
LONG_FLOAT = re.compile(r"(?<![\w.])\d+\.\d+")
VERSION = re.compile(r"\b(torch|numpy|python|transformers|plotly|ipywidgets)\s*[=: ]\s*v?\d+\.\d+",
                     re.IGNORECASE)
TORCH_OPS = re.compile(r"\baten::\w+")
#: (notebook stem, text) -> why a small number there is exact, not a rounding gap
EXACT_SMALL_NUMBERS = {
    ("11_balance_scope", "epsilon"):
        "1e-20 is the epsilon written in the bug's code (Megatron-LM #1545), not a result",
}


def checked_outputs(notebook: Path):
    """(cell index among code cells, MIME type or 'stream', text) of every checked output."""
    cells = [c for c in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
             if c["cell_type"] == "code"]
    for index, cell in enumerate(cells):
        source = "".join(cell["source"])
        if any(marker in source for marker in IGNORED):
            continue
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                yield index, "stream", "".join(output["text"])
            elif output["output_type"] in ("execute_result", "display_data"):
                for mime, data in output["data"].items():
                    if mime == "application/vnd.jupyter.widget-view+json":
                        continue  # nbval skips it (random model ids)
                    yield index, mime, data if isinstance(data, str) else json.dumps(data)


def significant_digits(number: str) -> int:
    return len(number.replace(".", "").lstrip("0"))


def stability_problems(notebook: Path) -> list[str]:
    problems = []
    for index, mime, text in checked_outputs(notebook):
        where = f"{notebook.stem} cell {index}"
        if mime not in PLAIN | {"stream"}:
            problems.append(f"{where}: a checked {mime} output (ignore the figure cell, print "
                            f"the values that matter, rounded, in a checked cell)")
            continue
        for line in text.splitlines():
            exact = any(notebook.stem == stem and phrase in line
                        for stem, phrase in EXACT_SMALL_NUMBERS)
            for match in SMALL_SCIENTIFIC.finditer(line):
                if not exact and not BOUND.search(line[:match.start()]):
                    problems.append(f"{where}: {match.group(1)} is a float-rounding magnitude "
                                    f"printed as a number (print a bound): {line.strip()!r}")
            for match in LONG_FLOAT.finditer(line):
                if significant_digits(match.group()) > 6:
                    problems.append(f"{where}: {match.group()} has more digits than float32 "
                                    f"keeps: {line.strip()!r}")
            if VERSION.search(line):
                problems.append(f"{where}: a version in a checked output: {line.strip()!r}")
            if TORCH_OPS.search(line):
                problems.append(f"{where}: torch's operator names and counts change between "
                                f"versions: {line.strip()!r}")
    return problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_checked_outputs_hold_on_any_machine(notebook):
    problems = stability_problems(notebook)
    assert not problems, "\n".join(problems)


def _notebook(tmp_path: Path, source: str, outputs: list[dict]) -> Path:
    path = tmp_path / "99_probe.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": source,
                                           "outputs": outputs, "metadata": {},
                                           "execution_count": 1}]}), encoding="utf-8")
    return path


def _stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


@pytest.mark.parametrize("source, outputs, problem", [
    ("fig", [{"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.plotly.v1+json": {"data": [{"z": [0.123456789]}]}}}],
     "a checked application/vnd.plotly.v1+json output"),
    ("print(gap)", [_stream("max |a - b| = 5.7e-06 (float rounding)\n")], "print a bound"),
    ("print(x)", [_stream("loss 2.31434917\n")], "more digits than float32"),
    ("print(v)", [_stream("torch: 2.13.0+cpu\n")], "a version"),
    ("print(t)", [_stream("aten::_grouped_mm 9 calls\n")], "operator names"),
])
def test_each_rule_catches_its_unstable_output(tmp_path, source, outputs, problem):
    problems = stability_problems(_notebook(tmp_path, source, outputs))
    assert len(problems) == 1 and problem in problems[0]


@pytest.mark.parametrize("source, outputs", [
    ("print(gap)", [_stream("max |a - b| < 1e-5: True\n")]),  # a bound
    ("print(x)", [_stream("loss 2.314, ratio 0.44, 1.0e+03 rows\n")]),
    ("# NBVAL_IGNORE_OUTPUT\nprint(v)", [_stream("torch: 2.13.0+cpu 5.7e-06\n")]),
    ("fig", [{"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x"}}}]),
])
def test_stable_outputs_pass(tmp_path, source, outputs):
    assert stability_problems(_notebook(tmp_path, source, outputs)) == []
