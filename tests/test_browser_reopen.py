"""A lesson reopened after its kernel is gone shows its figures, never "Error displaying widget".

In a real browser (JupyterLab 4 + Debian's chromium, the course's settings from course/): open
lesson 03, run all, save, shut its kernel down, open it again (a new kernel, none of the old widget
models): every saved widget output shows its figure, no cell shows the widget manager's error, no
news pop-up covers the page. The saved file itself still holds the widget views of the run (so
without the course's contents manager JupyterLab would have looked for their models).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from browser.lab import VIEWPORT, ConsoleLog, LessonPage
from browser.session import ARTIFACTS, BROWSER_MARKS, opened_lesson

pytestmark = BROWSER_MARKS

LESSON = "03_weighted_sum.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"
ERROR_TEXTS = ("Error displaying widget", "model not found")
NEWS_TEXT = "official Jupyter news"

# Bring every cell into view once (a windowed notebook renders only what is near the viewport).
_SCROLL_ALL_JS = """
async () => {
  const panel = window.jupyterapp.shell.currentWidget;
  for (let i = 0; i < panel.content.widgets.length; i++) {
    await panel.content.scrollToItem(i);
    await new Promise(r => setTimeout(r, 60));
  }
}
"""

_SCROLL_TO_FIRST_FIGURE_JS = """
async () => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets;
  const index = cells.findIndex(c => c.model.type === 'code' && [...Array(c.model.outputs.length)
    .keys()].some(i => 'application/vnd.plotly.v1+json' in (c.model.outputs.get(i).data || {})));
  await panel.content.scrollToItem(Math.max(index, 0), 'start');
}
"""


def _saved_views(path: Path) -> tuple[set[str], int, int]:
    """The widget model ids the saved notebook points at, how many widget outputs lack a static
    view of their own (a plotly figure, or the quiz's HTML), and how many carry a figure."""
    nb = json.loads(path.read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", []) if "data" in o]
    views = [o for o in outputs if WIDGET_VIEW in o["data"]]
    ids = {o["data"][WIDGET_VIEW]["model_id"] for o in views}
    bare = sum(PLOTLY not in o["data"] and "text/html" not in o["data"] for o in views)
    return ids, bare, sum(PLOTLY in o["data"] for o in views)


def _kernel_ids(server) -> set[str]:
    return {kernel["id"] for kernel in json.loads(server.api("api/kernels"))}


def _wait_kernels_back_to(server, before: set[str], timeout_s: float = 90.0) -> None:
    """Wait until the lesson's kernel is gone: only the kernels that ran before it are left (the
    server is shared with other browser tests, whose lessons may still hold theirs)."""
    deadline = time.monotonic() + timeout_s
    while _kernel_ids(server) - before:
        assert time.monotonic() < deadline, "the lesson's kernel did not shut down"
        time.sleep(0.5)


def test_reopened_lesson_shows_figures_not_errors(lab) -> None:
    server, browser = lab
    path = server.root_dir / LESSON
    shipped_ids, _, _ = _saved_views(path)
    kernels_before = _kernel_ids(server)
    with opened_lesson(lab, LESSON) as (page, lesson, _logs, _meter):
        lesson.widget_box("moe-explorer-text").locator(".js-plotly-plot").first.wait_for()
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty",
                               timeout=30_000)
    _wait_kernels_back_to(server, kernels_before)  # opened_lesson shut the kernel down on leaving
    run_ids, bare, figures = _saved_views(path)
    assert run_ids and run_ids.isdisjoint(shipped_ids), \
        "the saved notebook should point at the widgets of the run, whose kernel is now gone"
    assert bare == 0 and figures > 0, "each saved widget output should carry its static view"

    page = browser.new_page(viewport=VIEWPORT)
    console = ConsoleLog().attach(page)
    try:
        reopened = LessonPage(page, server.lab_url(LESSON))
        page.evaluate(_SCROLL_ALL_JS)
        page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot').length >= {figures}",
                               timeout=60_000, polling=500)
        time.sleep(3.0)  # the widget manager reports a missing model once it has restored
        page.evaluate(_SCROLL_ALL_JS)
        # Error texts from every cell: textContent, since the innerText of a cell the browser
        # skips rendering (JupyterLab's content-visibility windowing, off screen) is empty.
        # The news pop-up counts only when shown, so that check reads innerText.
        cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.text_content()
        assert "weighted" in cells.lower(), "the notebook's text was not read"
        for text in ERROR_TEXTS:
            assert text not in cells, f"the reopened {LESSON} shows {text!r}"
        assert NEWS_TEXT not in page.locator("body").inner_text(), "JupyterLab's news pop-up is showing"
        assert not [e for e in console.errors if "model not found" in e]
        page.evaluate(_SCROLL_TO_FIRST_FIGURE_JS)
        page.locator(".js-plotly-plot").first.wait_for(state="visible")
        targets = [ARTIFACTS / "reopened_lesson_03.png"]
        if os.environ.get("MOE_LAB_DOCS_IMG"):
            targets.append(Path(os.environ["MOE_LAB_DOCS_IMG"]) / "reopened_lesson_03.png")
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(target), animations="disabled")
        reopened.close()
    finally:
        if not page.is_closed():
            page.close()
