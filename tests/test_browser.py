"""The live widgets in a real browser: JupyterLab 4 + Debian's chromium, driven by Playwright.

Lesson 03 (routing explorer): run all cells, type a sentence, check the plot shows the kernel's
routing of that sentence token by token; move the top-k slider with the keyboard, check the plot
follows. Lesson 04 (training dashboard): run all cells, check the dashboard plot is drawn. For
both: no console errors, and the kernel websocket traffic of the whole lesson stays under
``WEBSOCKET_BUDGET_BYTES``. Screenshots go to artifacts/browser/ (and, with
``MOE_LAB_DOCS_IMG=<dir>``, the cropped widgets to that directory: ``python tools/screenshots.py``).
``MOE_LAB_BROWSER_NOTEBOOKS=<dir>`` runs it on another copy of the lessons.

Skipped only when /usr/bin/chromium is absent (CI installs it). Never runs ``playwright install``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from browser.lab import LessonPage
from browser.session import (
    ARTIFACTS,
    BROWSER_MARKS,
    check_console,
    check_lesson_bytes,
    opened_lesson,
)

pytestmark = BROWSER_MARKS

EXPLORER_LESSON = "03_weighted_sum.ipynb"
DASHBOARD_LESSON = "04_load_balancing.ipynb"
MAX_BYTES_PER_REDRAW = 50_000  # one keystroke or slider step, both directions (2-8 kB measured)
SENTENCE = "Mixture of experts routes each token: 전문가!"
EXPERT_IN_HOVER = re.compile(r"\be(\d+) \d+\.\d\d\b")

# The lesson's one RoutingExplorer, found in the kernel, and its routing of a text (JSON).
EXPLORER_QUERY = """
import json as _json
from moe_lab.widgets.explorer import RoutingExplorer as _RoutingExplorer
_explorers = list({{id(_v): _v for _v in list(globals().values())
                   if isinstance(_v, _RoutingExplorer)}}.values())  # _, Out[n] repeat it
assert len(_explorers) == 1, f"expected one RoutingExplorer in the lesson, found {{len(_explorers)}}"
_ex = _explorers[0]
_table = _ex.route_fn({text!r}, {top_k}, float(_ex.noise.value))
print(_json.dumps({{"text": _ex.text.value, "top_k": _ex.top_k.value, "noise": _ex.noise.value,
                    "routing": _table.to_dict()}}))
"""

# every open TrainingDashboard, from ipywidgets' registry (lesson 04 makes one per run and its name
# `dashboard` holds only the last)
DASHBOARD_QUERY = """
import json as _json
from ipywidgets.widgets.widget import _instances as _widgets
from moe_lab.widgets.dashboard import TrainingDashboard as _TrainingDashboard
_boards = [_v for _v in list(_widgets.values()) if isinstance(_v, _TrainingDashboard)]
print(_json.dumps([{k: _b.figure_data()[k] for k in ("steps", "max_over_mean", "router_entropy")}
                   for _b in _boards]))
"""


def save_widget_image(box, name: str) -> None:
    """The widget, cropped, as a PNG in artifacts/browser/ (and in $MOE_LAB_DOCS_IMG if set)."""
    box.scroll_into_view_if_needed()
    targets = [ARTIFACTS / name]
    if os.environ.get("MOE_LAB_DOCS_IMG"):
        targets.append(Path(os.environ["MOE_LAB_DOCS_IMG"]) / name)
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        box.screenshot(path=str(path), animations="disabled")
        print(f"saved {path} ({path.stat().st_size / 1e3:.0f} kB)")


def shown_routing(lesson: LessonPage, box) -> dict[str, list]:
    """What the rendered plot shows per token: label, colour, experts listed in the hover (in
    order), and the load bars."""
    grid, bars = lesson.plot_data(box)[:2]
    return {
        "labels": list(grid.get("text") or []),
        "colours": list((grid.get("marker") or {}).get("color") or []),
        "experts": [[int(e) for e in EXPERT_IN_HOVER.findall(h)] for h in grid.get("hovertext") or []],
        "bars": list(bars.get("y") or []),
    }


def wait_for_plot(lesson: LessonPage, box, predicate_js: str, arg: object) -> None:
    """Wait until ``predicate_js(gd, arg)`` holds for the plot in ``box`` (looked up on every
    poll: a redraw may replace the plot's element)."""
    box.locator(".js-plotly-plot").first.wait_for(state="attached")
    lesson.page.wait_for_function(
        "([box, arg]) => { const gd = box.querySelector('.js-plotly-plot'); "
        f"try {{ return !!gd && !!gd.data && ({predicate_js})(gd, arg); }} "
        "catch (e) { return false; } }",
        arg=[box.element_handle(), arg], timeout=30_000, polling=200)


def assert_plot_matches_kernel(shown: dict[str, list], routing: dict[str, object]) -> None:
    from moe_lab.viz.explorer import expert_colour

    topk_idx = routing["topk_idx"][0]  # (T, K) of the only layer
    assert shown["labels"] == routing["labels"], "the plot's tokens are not the kernel's tokens"
    assert shown["experts"] == topk_idx, (
        "per-token experts in the plot differ from the kernel's routing:\n"
        f"plot   {shown['experts']}\nkernel {topk_idx}")
    assert shown["colours"] == [expert_colour(row[0]) for row in topk_idx], \
        "token colours are not the colours of the kernel's top experts"
    assert shown["bars"] == routing["tokens_per_expert"][0], "load bars differ from the kernel's"


def query_explorer(lesson: LessonPage, text: str, top_k: int, *,
                   timeout_s: float = 30.0) -> dict[str, object]:
    """The kernel's explorer state and its routing of ``text`` with ``top_k``, once the kernel's
    Text widget holds ``text`` (ipywidgets may still be sending the last keystrokes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = lesson.kernel_json(EXPLORER_QUERY.format(text=text, top_k=top_k))
        if answer["text"] == text or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def test_routing_explorer_follows_text_and_k(lab) -> None:
    with opened_lesson(lab, EXPLORER_LESSON) as (page, lesson, logs, meter):
        box = lesson.widget_box("moe-explorer-text")
        assert page.locator(".moe-explorer-text").count() == 1
        box.locator(".js-plotly-plot").first.wait_for(state="visible")
        load_bytes = meter.total_bytes
        load_summary = meter.summary()
        meter.reset()
        text_input = box.locator(".moe-explorer-text input")

        # Type a sentence: the plot must show the kernel's routing of exactly that sentence.
        top_k = int(lesson.kernel_json(EXPLORER_QUERY.format(text="", top_k=1))["top_k"])
        text_input.fill("")
        text_input.press_sequentially(SENTENCE, delay=15)
        expected = query_explorer(lesson, SENTENCE, top_k)
        wait_for_plot(lesson, box, "(gd, labels) => JSON.stringify(gd.data[0].text) === "
                      "JSON.stringify(labels)", expected["routing"]["labels"])
        lesson.wait_kernel_idle()
        assert expected["text"] == SENTENCE, "the kernel's Text widget did not receive the sentence"
        assert_plot_matches_kernel(shown_routing(lesson, box), expected["routing"])

        # Move the top-k slider one step with the keyboard: K experts per token become K + 1.
        handle = box.locator(".moe-explorer-k .noUi-handle").first
        handle.focus()
        handle.press("ArrowRight")
        wait_for_plot(lesson, box, "(gd, k) => gd.data[0].hovertext.every("
                      "h => (h.match(/\\be\\d+ \\d+\\.\\d\\d\\b/g) || []).length === k)", top_k + 1)
        lesson.wait_kernel_idle()
        expected = query_explorer(lesson, SENTENCE, top_k + 1)
        assert expected["top_k"] == top_k + 1, "the kernel's k slider did not move"
        shown = shown_routing(lesson, box)
        assert all(len(experts) == top_k + 1 for experts in shown["experts"])
        assert_plot_matches_kernel(shown, expected["routing"])

        # typed characters, the cleared box, the slider step (ipywidgets may merge keystrokes)
        updates = len(SENTENCE) + 2
        print(f"{EXPLORER_LESSON}: {updates} interactions: kernel websocket {meter.summary()}, "
              f"{meter.total_bytes / updates / 1e3:.1f} kB per interaction")
        page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=False)
        save_widget_image(box, "routing_explorer.png")
        check_console(EXPLORER_LESSON, logs)
        assert meter.total_bytes / updates < MAX_BYTES_PER_REDRAW, \
            f"an interaction costs {meter.total_bytes / updates / 1e3:.1f} kB on average: {meter.summary()}"
        check_lesson_bytes(EXPLORER_LESSON, load_bytes, load_summary)


def test_training_dashboard_renders(lab) -> None:
    with opened_lesson(lab, DASHBOARD_LESSON) as (page, lesson, logs, meter):
        box = lesson.widget_box("moe-dashboard-status")
        wait_for_plot(lesson, box, "(gd) => gd.data.length >= 3 && gd.data[1].x.length > 0", None)
        lesson.wait_kernel_idle()
        boards = lesson.kernel_json(DASHBOARD_QUERY)
        _, ratio, entropy, *_ = lesson.plot_data(box)
        shown = {"steps": ratio["x"], "max_over_mean": ratio["y"], "router_entropy": entropy["y"]}
        print(f"{DASHBOARD_LESSON}: {len(boards)} dashboard(s); the first drawn shows "
              f"{len(shown['steps'])} steps")
        assert any(board["steps"] == shown["steps"]
                   and board["max_over_mean"] == pytest.approx(shown["max_over_mean"])
                   and board["router_entropy"] == pytest.approx(shown["router_entropy"])
                   for board in boards), "the dashboard plot shows no kernel dashboard's data"
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)
        save_widget_image(box, "training_dashboard.png")
        check_console(DASHBOARD_LESSON, logs)
        check_lesson_bytes(DASHBOARD_LESSON, meter.total_bytes, meter.summary())
