"""What every browser test shares: the lesson opened and run in a fresh kernel, the console
and websocket checks, the budget, where screenshots go. The ``lab`` fixture (one JupyterLab and
one chromium for the whole session) is in tests/conftest.py."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser.lab import (
    CHROMIUM,
    VIEWPORT,
    ConsoleLog,
    ExternalRequests,
    LessonPage,
    WebsocketMeter,
    launch_chromium,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "browser"
WEBSOCKET_BUDGET_BYTES = 1_000_000  # a lesson opened and run, widgets drawn (DESIGN/issue 6)

BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed "
                       "(apt-get install chromium); the browser test needs it"),
]


@contextlib.contextmanager
def jupyter_lab_and_chromium() -> Iterator[tuple[object, object]]:
    """A private JupyterLab over a fresh copy of notebooks/ (fresh kernels) and a chromium."""
    from playwright.sync_api import sync_playwright

    from browser.jupyter_server import jupyter_lab

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    notebooks = Path(os.environ.get("MOE_LAB_BROWSER_NOTEBOOKS", ROOT / "notebooks"))
    with jupyter_lab(notebooks) as server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield server, browser
        finally:
            browser.close()


@contextlib.contextmanager
def opened_lesson(lab, name: str):
    """Open lesson ``name`` in a new page, run all its cells; at the end shut its kernel down and
    close the page (also on failure)."""
    server, browser = lab
    if not (server.root_dir / name).exists():
        pytest.fail(f"the lesson {name} is missing")
    page = browser.new_page(viewport=VIEWPORT)
    console, meter = ConsoleLog().attach(page), WebsocketMeter().attach(page)
    external = ExternalRequests(server.base_url).attach(page)
    start = time.perf_counter()
    lesson = None
    try:
        lesson = LessonPage(page, server.lab_url(name))  # may time out: still screenshot, close
        state = lesson.run_all()
        print(f"\n{name}: opened and ran {state['code']} code cells in "
              f"{time.perf_counter() - start:.1f} s")
        yield page, lesson, (console, external), meter
    except BaseException:
        with contextlib.suppress(Exception):  # the page as it was when the test failed
            page.screenshot(path=str(ARTIFACTS / f"failed_{Path(name).stem}.png"))
        raise
    finally:
        if lesson is not None:
            lesson.close()
        else:
            page.close()


def check_console(name: str, logs: tuple[ConsoleLog, ExternalRequests]) -> None:
    console, external = logs
    assert not external.blocked, f"{name} requested files from other hosts: {external.blocked}"
    assert not console.errors, (f"console errors in {name}:\n" + "\n".join(console.errors)
                                + "\nlast console messages:\n" + "\n".join(console.messages[-20:]))


def check_lesson_bytes(name: str, total_bytes: int, summary: str) -> None:
    """The lesson, opened and run top to bottom with its widgets drawn, stays under the budget."""
    print(f"{name}: opened + run all: kernel websocket {summary}")
    assert total_bytes < WEBSOCKET_BUDGET_BYTES, (
        f"{name} sent {total_bytes / 1e6:.2f} MB over the kernel websocket when opened and run "
        f"(budget {WEBSOCKET_BUDGET_BYTES / 1e6:.1f} MB): {summary}")


