"""Lessons 00-02 in a real browser: open each, run all cells, and check that its live widget's plot
is drawn with the kernel's figure, that the console stays clean, and that the kernel websocket
carries under ``WEBSOCKET_BUDGET_BYTES`` (1 MB; a single plotly FigureWidget would be ~5 MB).

Lessons 05-08: every cell runs in the browser, the console stays clean, under the same budget.
Shares the session's JupyterLab (``lab``, tests/conftest.py) and tests/browser/session.py.
Skipped when /usr/bin/chromium is absent.
"""

from __future__ import annotations

import time

import pytest
from browser.lab import LessonPage
from browser.session import (
    BROWSER_MARKS,
    check_console,
    check_lesson_bytes,
    opened_lesson,
)

pytestmark = BROWSER_MARKS

# lesson -> (the widget class in the kernel, the CSS class of its plot's Output)
LESSON_WIDGETS = {
    "00_start_here.ipynb": ("moe_lab.widgets.params", "ParamsCalculator", "moe-params-plot"),
    "01_the_router.ipynb": ("moe_lab.widgets.router", "RouterHeatmap", "moe-router-plot"),
    "02_topk_and_capacity.ipynb": ("moe_lab.widgets.capacity", "CapacityGrid",
                                   "moe-capacity-plot"),
}
TRACE_KEYS = ("type", "x", "y", "z")

# The x, y, z of every trace the lesson's one widget shows in its Output (JSON).
WIDGET_QUERY = """
import json as _json
from {module} import {name} as _Widget
from moe_lab.widgets._output import PLOTLY_MIMETYPE as _MIME
_found = list({{id(_v): _v for _v in list(globals().values()) if isinstance(_v, _Widget)}}.values())
assert len(_found) == 1, f"expected one {name} in the lesson, found {{len(_found)}}"
(_shown,) = _found[0].output.outputs
print(_json.dumps([{{_k: _t.get(_k) for _k in {keys!r}}} for _t in _shown["data"][_MIME]["data"]]))
"""


def drawn_traces(lesson: LessonPage, box) -> list[dict[str, object]]:
    return [{key: trace.get(key) for key in TRACE_KEYS} for trace in lesson.plot_data(box)]


@pytest.mark.parametrize("name", list(LESSON_WIDGETS))
def test_lesson_widget_renders_under_budget(lab, name: str) -> None:
    module, widget, plot_class = LESSON_WIDGETS[name]
    with opened_lesson(lab, name) as (page, lesson, logs, meter):
        box = lesson.widget_box(plot_class)
        box.locator(".js-plotly-plot").first.wait_for(state="visible")
        lesson.wait_kernel_idle()
        load_bytes, load_summary = meter.total_bytes, meter.summary()  # opened and run, drawn
        expected = lesson.kernel_json(WIDGET_QUERY.format(module=module, name=widget,
                                                          keys=TRACE_KEYS))
        deadline = time.monotonic() + 30.0
        while (shown := drawn_traces(lesson, box)) != expected and time.monotonic() < deadline:
            time.sleep(0.5)  # the last redraw may still be on its way
        assert shown == expected, f"{name}: the plot does not show the kernel's {widget} figure"
        check_console(name, logs)
        check_lesson_bytes(name, load_bytes, load_summary)


@pytest.mark.parametrize("name", ["05_train_tiny_moe_lm.ipynb", "06_efficiency.ipynb",
                                  "07_expert_parallelism.ipynb", "08_beyond_topk.ipynb"])
def test_later_lesson_runs_clean_under_budget(lab, name: str) -> None:
    """Lessons 05-08: every cell runs in the browser, figures are drawn, the console stays
    clean and the kernel websocket stays under the budget."""
    with opened_lesson(lab, name) as (page, lesson, logs, meter):
        page.locator(".js-plotly-plot").first.wait_for(state="visible")
        check_console(name, logs)
        check_lesson_bytes(name, meter.total_bytes, meter.summary())
