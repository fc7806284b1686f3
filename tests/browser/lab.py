"""Driving JupyterLab in Debian's chromium with Playwright: launch, open a lesson, run all cells,
ask the lesson's kernel a question, count the websocket bytes, collect console errors.

Shared by tests/test_browser.py and tools/screenshots.py. The browser is the system chromium
(``CHROMIUM``); ``playwright install`` is never needed (nor run).
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Route, WebSocket

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}
WIDGET_MSG_TYPES = frozenset({"comm_open", "comm_msg", "comm_close", "comm_info_request",
                              "comm_info_reply"})


def launch_chromium(playwright: Playwright) -> Browser:
    """The system chromium, headless, with no background network traffic."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)


# Images the lessons' markdown links from other hosts: the "Open in Colab" and Binder badges. The
# test answers them with a blank SVG (no network needed, no console error when offline); any other
# request leaving 127.0.0.1 (a CDN script, say) is blocked and reported.
BADGE_URLS = (
    re.compile(r"^https://colab\.research\.google\.com/assets/colab-badge\.svg$"),
    re.compile(r"^https://mybinder\.org/badge_logo\.svg$"),
    re.compile(r"^https://img\.shields\.io/"),
)
BLANK_SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'


@dataclass
class ExternalRequests:
    """Keeps a page on 127.0.0.1: badge images get a blank SVG, anything else is blocked."""

    local_prefix: str
    blocked: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> ExternalRequests:
        page.route(lambda url: not url.startswith(self.local_prefix), self._handle)
        return self

    def _handle(self, route: Route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")):
            route.continue_()
        elif any(pattern.search(url) for pattern in BADGE_URLS):
            route.fulfill(status=200, content_type="image/svg+xml", body=BLANK_SVG)
        else:
            self.blocked.append(url)
            route.abort("blockedbyclient")


# Console messages that are not failures of the lessons (each with the reason it is harmless).
HARMLESS_CONSOLE: tuple[re.Pattern[str], ...] = ()


@dataclass
class ConsoleLog:
    """Every console message and uncaught page error of a page."""

    messages: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> ConsoleLog:
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        return self

    def _on_console(self, message: ConsoleMessage) -> None:
        line = f"{message.type}: {message.text}"
        self.messages.append(line)
        if message.type == "error" and not any(p.search(message.text) for p in HARMLESS_CONSOLE):
            location = message.location or {}
            self.errors.append(f"{line} (at {location.get('url', '?')}:"
                               f"{location.get('lineNumber', '?')})")


def kernel_message_type(payload: str | bytes) -> str:
    """The msg_type of one kernel websocket frame: JSON text (the legacy protocol) or the binary
    ``v1.kernel.websocket.jupyter.org`` framing (offsets, channel, header, ...)."""
    try:
        if isinstance(payload, str):
            return str(json.loads(payload)["header"]["msg_type"])
        (count,) = struct.unpack_from("<Q", payload, 0)
        offsets = struct.unpack_from(f"<{count}Q", payload, 8)
        header = payload[offsets[1]:offsets[2]]
        return str(json.loads(header)["msg_type"])
    except (ValueError, KeyError, IndexError, TypeError, struct.error):
        return "unknown"


@dataclass
class WebsocketMeter:
    """Bytes over the page's kernel websockets, both directions, by kernel message type."""

    by_type: Counter[str] = field(default_factory=Counter)
    received_bytes: int = 0  # kernel -> browser
    frames: int = 0

    def attach(self, page: Page) -> WebsocketMeter:
        page.on("websocket", self._on_websocket)
        return self

    def _on_websocket(self, socket: WebSocket) -> None:
        if "/api/kernels/" not in socket.url:
            return  # the terminals and event sockets carry nothing of the lessons
        socket.on("framereceived", lambda payload: self._count(payload, received=True))
        socket.on("framesent", lambda payload: self._count(payload, received=False))

    def _count(self, payload: str | bytes, *, received: bool) -> None:
        size = len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)
        self.by_type[kernel_message_type(payload)] += size
        self.received_bytes += size if received else 0
        self.frames += 1

    @property
    def total_bytes(self) -> int:
        return sum(self.by_type.values())

    @property
    def widget_bytes(self) -> int:
        """Bytes of the widget (comm) messages: models opened, state synced, updates."""
        return sum(size for kind, size in self.by_type.items() if kind in WIDGET_MSG_TYPES)

    def reset(self) -> None:
        self.by_type.clear()
        self.received_bytes = self.frames = 0

    def summary(self) -> str:
        top = ", ".join(f"{kind} {size / 1e3:.1f} kB" for kind, size in self.by_type.most_common(6))
        return (f"{self.total_bytes / 1e6:.3f} MB in {self.frames} frames, "
                f"{self.received_bytes / 1e6:.3f} MB of it from the kernel "
                f"(widgets {self.widget_bytes / 1e6:.3f} MB; {top})")


_CURRENT_NOTEBOOK_JS = """
() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  return panel && panel.content && panel.sessionContext ? panel : null;
}
"""

_KERNEL_IDLE_JS = """
() => {
  const app = window.jupyterapp;
  const panel = app && app.shell.currentWidget;
  if (!panel || !panel.sessionContext || !panel.content) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return panel.sessionContext.isReady && !!kernel && kernel.status === 'idle'
      && kernel.connectionStatus === 'connected';
}
"""

# Progress of "run all": how many code cells ran, are queued/running, or failed.
_RUN_STATE_JS = """
() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  let code = 0, done = 0, busy = 0;
  const errors = [];
  for (const cell of panel.content.widgets) {
    if (cell.model.type !== 'code') continue;
    code += 1;
    const prompt = cell.node.querySelector('.jp-InputPrompt');
    if (prompt && prompt.textContent.includes('*')) busy += 1;
    else if (cell.model.executionCount !== null) done += 1;
    const outputs = cell.model.outputs;
    for (let i = 0; i < outputs.length; i++) {
      const out = outputs.get(i);
      if (out.type === 'error') {
        const json = out.toJSON();
        errors.push(`${json.ename}: ${json.evalue}`);
      }
    }
  }
  return {code, done, busy, errors, idle: !!kernel && kernel.status === 'idle'};
}
"""

# Run code in the notebook's own kernel (not recorded in the notebook) and return its stdout.
_KERNEL_EXEC_JS = """
async (code) => {
  const panel = window.jupyterapp.shell.currentWidget;
  const kernel = panel.sessionContext.session.kernel;
  const future = kernel.requestExecute({code, silent: false, store_history: false});
  let stdout = '';
  let error = null;
  future.onIOPub = (msg) => {
    if (msg.header.msg_type === 'stream' && msg.content.name === 'stdout') stdout += msg.content.text;
    if (msg.header.msg_type === 'error') error = `${msg.content.ename}: ${msg.content.evalue}`;
  };
  await future.done;
  return {stdout, error};
}
"""


class LessonPage:
    """One lesson open in JupyterLab: run it, query its kernel, find its widgets."""

    def __init__(self, page: Page, url: str, *, timeout_s: float = 60.0) -> None:
        self.page = page
        page.set_default_timeout(timeout_s * 1e3)
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function(_CURRENT_NOTEBOOK_JS, timeout=timeout_s * 1e3)
        self.wait_kernel_idle(timeout_s)

    def close(self) -> None:
        """Shut down the kernel of every notebook this page opened (the lesson's, and any
        lesson a link opened beside it) and close the page."""
        try:
            self.page.evaluate("() => Promise.all(Array.from(window.jupyterapp.shell.widgets('main'))"
                               ".filter(w => w.sessionContext)"
                               ".map(w => w.sessionContext.shutdown()))")
        finally:
            self.page.close()

    def wait_kernel_idle(self, timeout_s: float = 60.0) -> None:
        self.page.wait_for_function(_KERNEL_IDLE_JS, timeout=timeout_s * 1e3, polling=250)

    def run_all(self, timeout_s: float = 120.0) -> dict[str, object]:
        """Run every cell (JupyterLab's ``runmenu:run-all``) and wait until all code cells have
        run and the kernel is idle; raise with the notebook's error if a cell fails."""
        self.page.evaluate("() => window.jupyterapp.commands.execute('runmenu:run-all')")
        handle = self.page.wait_for_function(
            f"() => {{ const s = ({_RUN_STATE_JS})(); "
            "return (s.errors.length || (s.idle && s.busy === 0 && s.done === s.code)) ? s : null; }",
            timeout=timeout_s * 1e3, polling=500)
        state = handle.json_value()
        if state["errors"]:
            raise AssertionError(f"a lesson cell failed in the browser: {state['errors']}")
        return state

    def kernel_json(self, code: str) -> object:
        """Run ``code`` in the lesson's kernel; it must print one JSON document."""
        result = self.page.evaluate(_KERNEL_EXEC_JS, code)
        if result["error"]:
            raise AssertionError(f"kernel query failed: {result['error']}\n{code}")
        return json.loads(result["stdout"])

    def widget_box(self, control_class: str):
        """The widget box (VBox) that holds the control carrying ``control_class``."""
        control = self.page.locator(f".{control_class}").first
        control.wait_for(state="visible")
        return control.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]")

    def plot_data(self, box) -> list[dict[str, object]]:
        """plotly's ``gd.data`` of the rendered plot inside ``box`` (JSON-ready lists)."""
        return box.locator(".js-plotly-plot").first.evaluate(
            "gd => JSON.parse(JSON.stringify(gd.data))")
