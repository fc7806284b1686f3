"""The course's website in a real browser (Debian's chromium, driven by Playwright), served on
127.0.0.1: every lesson page loads with its headings and maths, draws every figure its notebook
stored, reveals a quiz answer on a click, shows its launch line; search finds lessons; the API
reference is there. No console error, no request leaves 127.0.0.1, every local link resolves.
A screenshot of lesson 04 goes to artifacts/site/ (and, with ``MOE_LAB_DOCS_IMG=<dir>``, there:
the README shows docs/img/site_lesson04.png).

The site is built fresh into a temporary folder (about a minute), or, with
``MOE_LAB_SITE=<folder of index.html>``, the one ``bash run.sh site`` built (CI does that). Skipped
when the site's requirements are not installed (``bash run.sh site`` installs them) or
/usr/bin/chromium is absent. Never runs ``playwright install``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import nbformat
import pytest
from browser.lab import CHROMIUM, launch_chromium

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_site  # noqa: E402

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed "
                       "(apt-get install chromium); the browser test needs it"),
]

LESSONS = build_site.lesson_notebooks()
ARTIFACTS = ROOT / "artifacts" / "site"
SCREENSHOT_LESSON = "04_load_balancing"
VIEWPORT = {"width": 1280, "height": 900}


def _markdown_headings(nb, level: str) -> list[str]:
    """The text of each markdown heading of ``level`` ('#', '##') in the notebook."""
    heads = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        in_fence = False
        for line in cell.source.splitlines():
            if line.startswith("```"):
                in_fence = not in_fence
            elif not in_fence and line.startswith(level + " "):
                heads.append(line[len(level) + 1:].strip())
    return heads


def _plain(text: str) -> str:
    """A heading's words to compare: no markup, typographic quotes as typed, maths cut off
    (MathJax draws it)."""
    text = text.split("$", 1)[0].replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(re.sub(r"[`*#\u00b6]", "", text).split())


def _figure_count(nb) -> int:
    from moe_lab.widgets._output import PLOTLY_MIMETYPE

    return sum(PLOTLY_MIMETYPE in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)


def _has_quiz(nb) -> bool:
    return any("moe-quiz-static" in "".join(o.get("data", {}).get("text/html", ""))
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base URL on 127.0.0.1, the site's folder)."""
    built = os.environ.get("MOE_LAB_SITE")
    if built:
        html_dir = Path(built).resolve()
        assert (html_dir / "index.html").exists(), f"MOE_LAB_SITE={built} has no index.html"
    else:
        for module in ("sphinx", "myst_nb", "furo"):
            pytest.importorskip(module, reason="the site's requirements: bash run.sh site")
        html_dir = build_site.build(tmp_path_factory.mktemp("site"))
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_Quiet, directory=str(html_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", html_dir
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


class Visit:
    """A page of the site, with every console error and every request that left 127.0.0.1."""

    def __init__(self, browser, base: str, path: str) -> None:
        self.base, self.errors, self.external = base, [], []
        self.page = browser.new_page(viewport=VIEWPORT)
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route(lambda url: not url.startswith(base), self._block)
        response = self.page.goto(base + path, wait_until="load")
        assert response is not None and response.status == 200, f"{path}: {response}"

    def _block(self, route) -> None:
        self.external.append(route.request.url)
        route.abort()

    def check_clean(self) -> None:
        assert self.external == [], f"requests left 127.0.0.1: {self.external}"
        assert self.errors == [], f"console errors: {self.errors}"

    def close(self) -> None:
        self.page.close()


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_page(site, browser, path):
    base, _ = site
    nb = nbformat.read(path, as_version=4)
    visit = Visit(browser, base, f"{build_site.LESSON_DIR}/{path.stem}.html")
    page = visit.page
    try:
        title = _markdown_headings(nb, "#")[0]
        assert _plain(page.locator("article h1").first.inner_text()) == _plain(title)
        written = [_plain(h) for h in _markdown_headings(nb, "##")]
        shown = [_plain(h) for h in page.locator("article h2").all_inner_texts()]
        assert [s[:len(w)] for s, w in zip(shown, written, strict=False)] == written
        assert len(shown) == len(written)
        if "$" in "".join(c.source for c in nb.cells if c.cell_type == "markdown"):
            page.locator("mjx-container").first.wait_for(state="attached", timeout=20_000)
            assert page.locator("mjx-merror").count() == 0  # every formula typeset

        figures = _figure_count(nb)
        drawn = page.locator(".moe-plotly.js-plotly-plot")
        if figures:
            page.wait_for_function(f"document.querySelectorAll('.moe-plotly .main-svg').length "
                                   f">= {figures}", timeout=30_000)
            assert drawn.count() == figures  # every figure the notebook stored, drawn
            first = drawn.first
            first.scroll_into_view_if_needed()
            assert first.locator(".main-svg").first.bounding_box()["height"] > 100
            assert first.locator("g.trace, g.hm").count() > 0  # a drawn trace, not only axes
        else:
            assert drawn.count() == 0

        if path.stem == SCREENSHOT_LESSON:
            _screenshot(page)

        launch = page.locator(".moe-launch")
        assert launch.count() == 1
        import launch_cells

        if launch_cells.HOME is None:
            assert "published" in launch.inner_text()
        else:
            hrefs = [launch.locator(f"a.moe-launch-{k}").get_attribute("href")
                     for k in ("colab", "binder")]
            assert hrefs == [launch_cells.colab_url(path.name, launch_cells.HOME),
                             launch_cells.binder_url(path.name, launch_cells.HOME)]

        if _has_quiz(nb):
            answer = page.locator(".moe-quiz-static details").first
            body = answer.locator("p[lang='en']").first
            answer.scroll_into_view_if_needed()
            assert not body.is_visible()  # behind the reveal
            answer.locator("summary").click()
            assert body.is_visible() and "Answer" in body.inner_text()

        visit.check_clean()
    finally:
        visit.close()


def _screenshot(page) -> None:
    """Lesson 04's first figure with the code above it, as a reader sees the page."""
    page.locator(".moe-plotly").first.evaluate(
        "el => el.scrollIntoView({block: 'center', behavior: 'instant'})")
    page.wait_for_timeout(1000)  # the scroll and plotly's redraw settle
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / f"site_lesson{SCREENSHOT_LESSON[:2]}.png"
    page.screenshot(path=str(target))
    if os.environ.get("MOE_LAB_DOCS_IMG"):
        shutil.copy(target, Path(os.environ["MOE_LAB_DOCS_IMG"]) / target.name)


def test_index_lists_every_lesson_and_the_api(site, browser):
    base, _ = site
    visit = Visit(browser, base, "index.html")
    try:
        links = visit.page.locator("article a").evaluate_all("els => els.map(a => a.href)")
        for path in LESSONS:
            assert urljoin(base, f"{build_site.LESSON_DIR}/{path.stem}.html") in links
        assert urljoin(base, "api/index.html") in links
        assert visit.page.locator("article table").count() >= 1  # the learning path's table
        visit.check_clean()
    finally:
        visit.close()


def test_search_finds_lessons(site, browser):
    """Sphinx's search (its index shipped with the site) finds a word in several lessons."""
    base, _ = site
    visit = Visit(browser, base, "search.html?q=capacity")
    try:
        results = visit.page.locator("#search-results ul.search li a")
        results.first.wait_for(timeout=20_000)
        visit.page.wait_for_function("document.querySelector('#search-results p')"
                                     " && !document.querySelector('#search-results p')"
                                     ".textContent.includes('Preparing')", timeout=20_000)
        hrefs = results.evaluate_all("els => els.map(a => a.getAttribute('href'))")
        lessons = {h.split("/")[-1].split(".html")[0] for h in hrefs
                   if f"{build_site.LESSON_DIR}/" in h}
        assert len(lessons) >= 3, hrefs
        visit.check_clean()
    finally:
        visit.close()


def test_api_reference_has_the_root_names(site, browser):
    import moe_lab

    base, _ = site
    visit = Visit(browser, base, "api/index.html")
    try:
        for name in moe_lab.__all__:
            assert visit.page.locator(f"[id='moe_lab.{name}']").count() == 1, name
        first_line = moe_lab.SparseMoE.__doc__.strip().splitlines()[0]  # from its docstring
        assert first_line in visit.page.locator("article").inner_text()
        visit.check_clean()
    finally:
        visit.close()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def test_every_local_link_resolves(site):
    """Each link of a lesson or reference page to the site itself reaches a file, and its
    #anchor an element of that file (the quizzes' links to other lessons' sections included)."""
    _, html_dir = site
    parsed: dict[Path, _Links] = {}

    def links(path: Path) -> _Links:
        if path not in parsed:
            parsed[path] = _Links()
            parsed[path].feed(path.read_text())
        return parsed[path]

    pages = [*sorted((html_dir / build_site.LESSON_DIR).glob("*.html")),
             *sorted((html_dir / "api").glob("*.html")), html_dir / "index.html"]
    broken = []
    for page in pages:
        for href in links(page).hrefs:
            url, fragment = urldefrag(href)
            if urlparse(url).scheme or url.startswith("//"):
                continue
            target = (page.parent / unquote(url)).resolve() if url else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.name}: {href}")
            elif fragment and target.suffix == ".html" and unquote(fragment) not in links(target).ids:
                broken.append(f"{page.name}: {href} (no such anchor)")
    assert broken == []
