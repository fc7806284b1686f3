"""Lesson 04's dashboards and lesson 06's timing figure in a real browser (issue 15).

Lesson 04, run all: one dashboard per run, each next to the cell that trained it, each showing its
own finished run (its title, all 150 steps, the kernel's numbers), not the last run under every
heading. Lesson 06, run all: the timing figure is drawn, with readable log ticks. Each is saved as
a PNG in artifacts/browser/ (and, with ``MOE_LAB_DOCS_IMG=<dir>``, in that directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from browser.session import ARTIFACTS, BROWSER_MARKS, opened_lesson
from playwright.sync_api import expect

pytestmark = BROWSER_MARKS

RUN_TITLES = ("no balancing loss", "Switch loss (aux_coef = 0.1)",
              "importance loss (CV^2, coef 0.1)", "router z-loss only (z_coef = 0.01)",
              "DeepSeek-V3 bias balancing (gamma = 0.05), no aux loss")

# every live TrainingDashboard of the kernel (the lesson's name `dashboard` holds only the last;
# ipywidgets keeps each open widget in its registry)
BOARDS_QUERY = """
import json as _json
from ipywidgets.widgets.widget import _instances as _widgets
from moe_lab.widgets.dashboard import TrainingDashboard as _TrainingDashboard
_boards = [_v for _v in list(_widgets.values()) if isinstance(_v, _TrainingDashboard)]
print(_json.dumps({_b.title: _b.figure_data()["max_over_mean"] for _b in _boards}))
"""


def _save(locator, name: str) -> None:
    targets = [ARTIFACTS / name]
    if os.environ.get("MOE_LAB_DOCS_IMG"):
        targets.append(Path(os.environ["MOE_LAB_DOCS_IMG"]) / name)
    locator.scroll_into_view_if_needed()
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        locator.screenshot(path=str(path), animations="disabled")
        print(f"saved {path} ({path.stat().st_size / 1e3:.0f} kB)")


def test_lesson_04_has_a_dashboard_per_run(lab) -> None:
    with opened_lesson(lab, "04_load_balancing.ipynb") as (page, lesson, _logs, _meter):
        statuses = page.locator(".moe-dashboard-status")
        statuses.nth(len(RUN_TITLES) - 1).wait_for(state="attached")
        assert statuses.count() == len(RUN_TITLES), "expected one dashboard per training run"
        lesson.wait_kernel_idle()
        kernel = lesson.kernel_json(BOARDS_QUERY)
        assert sorted(kernel) == sorted(RUN_TITLES)
        for i, title in enumerate(RUN_TITLES):
            box = statuses.nth(i).locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")
            box.scroll_into_view_if_needed()
            plot = box.locator(".js-plotly-plot").first
            plot.wait_for(state="visible")
            shown = plot.evaluate("gd => ({title: gd.layout.title.text, "
                                  "ratio: JSON.parse(JSON.stringify(gd.data[1].y))})")
            assert shown["title"] == title, f"dashboard {i + 1} shows {shown['title']!r}"
            assert len(shown["ratio"]) == 150 and shown["ratio"] == kernel[title]
            # textContent, polled: JupyterLab skips rendering cells out of view
            # (content-visibility), and the innerText of a skipped cell is empty
            status = statuses.nth(i)
            status.scroll_into_view_if_needed()
            expect(status).to_contain_text(title)
            if i in (0, 1):
                _save(box, f"lesson04_dashboard_{i + 1}.png")


def test_lesson_06_timing_figure(lab) -> None:
    with opened_lesson(lab, "06_efficiency.ipynb") as (page, lesson, _logs, _meter):
        title = page.locator(".js-plotly-plot .gtitle", has_text="time / dense limit").first
        title.wait_for(state="attached")
        plot = title.locator("xpath=ancestor::div[contains(@class,'js-plotly-plot')][1]")
        plot.scroll_into_view_if_needed()
        ticks = plot.evaluate("gd => gd.layout.yaxis.ticktext")
        assert ticks and len(ticks) <= 12, ticks
        _save(plot, "lesson06_timing.png")
