"""Build the course's website from the stored notebooks (never re-executed): Sphinx + MyST-NB.

    python tools/build_site.py               # -> build/site/html (open index.html, or serve it)
    python tools/build_site.py --out DIR     # elsewhere
    python tools/build_site.py --require-home   # refuse to build without a published home

Sphinx reads a staging folder (build/site/src) that this script writes, with the configuration
of website/conf.py:

- ``lessons/NN_name.ipynb``: each notebook of notebooks/, as stored, with what a web page needs
  instead of a kernel: widget views removed, so each widget shows its static figure
  (moe_lab.course.saved_outputs, the course's JupyterLab does the same); each plotly figure as
  an element that the site's own copy of plotly.js draws (no CDN); the badge line replaced by
  Colab and Binder links without external images, under the title (the Colab-only setup cell
  left out); collapsed cells (the solutions) behind a "show" toggle; links to the package's
  source files pointed at its API reference.
- ``index.md``: the README's learning path, and the list of every lesson in notebooks/.
- ``api/``: the API reference, from the package's import surface (``moe_lab.__all__``, each
  public subpackage's ``__all__`` or its public modules), each object documented once.

Nothing is fetched from the network: the theme (furo), MathJax (sphinx-mathjax-offline) and
plotly.js (plotly's package) come from installed packages (requirements-site.txt).
"""

from __future__ import annotations

import argparse
import copy
import html
import importlib
import inspect
import json
import pkgutil
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import launch_cells  # noqa: E402

from moe_lab.course.saved_outputs import RUN_TO_SHOW, drop_widget_views  # noqa: E402
from moe_lab.widgets._output import PLOTLY_MIMETYPE  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
CONF_DIR = ROOT / "website"
DEFAULT_OUT = ROOT / "build" / "site"
LESSON_DIR = "lessons"  # the lessons' folder in the site
HIDE_INPUT = "hide-input"  # MyST-NB's tag: the cell's code behind a toggle
SOURCE_LINK = re.compile(r"\[([^\]]+)\]\(\.\./(moe_lab/[\w/]+)\.py\)")  # [text](../moe_lab/x/y.py)
# A widget that drew no figure: JupyterLab says to run the cell; a web page cannot run it.
WIDGET_ONLY = "(an interactive widget: it runs in JupyterLab, Colab or Binder)"
QUIZ_LINK = re.compile(r'href="(\d\d_\w+)\.ipynb#([^"]*)"')


# --- lessons --------------------------------------------------------------------------------

def plotly_html(figure: dict) -> str:
    """A plotly figure (the mimetype's JSON) as an element that website/_static/moe_plotly.js
    draws with the site's plotly.js; ``</`` is escaped so the JSON cannot end its script tag."""
    payload = json.dumps(figure, separators=(",", ":")).replace("</", "<\\/")
    return (f'<div class="moe-plotly"><script type="application/json">{payload}</script>'
            f"</div>")


def heading_anchor(heading: str) -> str:
    """The id Sphinx gives a section titled ``heading`` (docutils' make_id)."""
    from docutils.nodes import make_id

    return make_id(heading)


def _quiz_href(match: re.Match) -> str:
    """JupyterLab's heading link (spaces as '-') -> the lesson page's section id."""
    lesson, heading = match.group(1), html.unescape(match.group(2)).replace("-", " ")
    return f'href="{lesson}.html#{heading_anchor(heading)}"'


def launch_html(notebook: str) -> str:
    """The launch line of a lesson page: Colab and Binder links (text, no external image), or
    the note that the course has no home yet (launch_cells.HOME)."""
    home = launch_cells.HOME  # read at call time (a test sets it)
    colab, binder = launch_cells.colab_url(notebook, home), launch_cells.binder_url(notebook, home)
    if colab is None or binder is None:
        note = html.escape(launch_cells.NO_HOME_LINE.strip("*").replace("`", ""))
        return f'<div class="moe-launch moe-launch-none">{note}</div>'
    return (f'<div class="moe-launch">Run this lesson: '
            f'<a class="moe-launch-colab" href="{html.escape(colab, quote=True)}">Open in Colab</a> '
            f'<a class="moe-launch-binder" href="{html.escape(binder, quote=True)}">Launch Binder</a>'
            f' <span class="moe-launch-release">(release {html.escape(launch_cells.RELEASE)})'
            f"</span></div>")


def _source_role(match: re.Match) -> str:
    """A markdown link to a file of the package -> a link to that module's API reference."""
    text, module = match.group(1).replace("`", ""), match.group(2).replace("/", ".")
    return f"{{py:mod}}`{text} <{module}>`"


def _lesson_output(output: nbformat.NotebookNode) -> None:
    data = output.get("data")
    if not isinstance(data, dict):
        return
    if data.get("text/plain") == RUN_TO_SHOW:
        data["text/plain"] = WIDGET_ONLY
    if PLOTLY_MIMETYPE in data:
        figure = data.pop(PLOTLY_MIMETYPE)
        data["text/html"] = plotly_html(figure)
    if "text/html" in data:
        data["text/html"] = QUIZ_LINK.sub(_quiz_href, "".join(data["text/html"]))


def _put_launch_under_title(cells: list, launch: str) -> None:
    """The launch line goes right under the page's title (the first '# ' heading)."""
    for cell in cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# "):
                cell.source = "\n".join([*lines[:i + 1], "", launch, "", *lines[i + 1:]])
                return
    cells.insert(0, nbformat.v4.new_markdown_cell(launch))  # a lesson without a title


def site_notebook(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """A stored lesson notebook as its web page shows it (a copy; ``nb`` is not changed).

    The two launch cells give way to the launch line under the title: the Colab setup cell
    does nothing outside Colab, and the page's links are where a reader starts a lesson."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)  # no widget state: nothing for a widget manager to load
    drop_widget_views(nb)
    nb.cells = [c for c in nb.cells if launch_cells.TAG not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if cell.cell_type == "markdown":
            cell.source = SOURCE_LINK.sub(_source_role, cell.source)
        if cell.metadata.get("jupyter", {}).get("source_hidden") and HIDE_INPUT not in tags:
            tags.append(HIDE_INPUT)
        for output in cell.get("outputs", []):
            _lesson_output(output)
    _put_launch_under_title(nb.cells, launch_html(name))
    return nb


def lesson_notebooks(notebooks: Path = NOTEBOOKS) -> list[Path]:
    """Every lesson of notebooks/ (whatever it holds, in course order)."""
    return sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))


def write_lessons(src: Path, notebooks: Path = NOTEBOOKS) -> list[Path]:
    (src / LESSON_DIR).mkdir(parents=True, exist_ok=True)
    written = []
    for path in lesson_notebooks(notebooks):
        nb = site_notebook(nbformat.read(path, as_version=4), path.name)
        target = src / LESSON_DIR / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


# --- index ----------------------------------------------------------------------------------

def learning_path(readme: str) -> str:
    """The README's "The learning path" section, its links pointed at the site's pages."""
    match = re.search(r"^## The learning path\n(.*?)(?=^## )", readme, re.M | re.S)
    if match is None:
        raise ValueError("README.md has no '## The learning path' section")
    text = match.group(1)
    text = re.sub(r"\]\(notebooks/(\d\d_\w+)\.ipynb\)", rf"]({LESSON_DIR}/\1.ipynb)", text)
    return text.replace("](docs/img/", "](img/")


def index_page(readme: str, lessons: list[Path]) -> str:
    listed = "\n".join(f"{LESSON_DIR}/{p.stem}" for p in lessons)
    return f"""# MoE Lab

Learn Mixture-of-Experts routing by building it: a self-paced Jupyter course in PyTorch. These
pages show every lesson as it was last run (its printed outputs and figures; each widget as the
figure it drew). To run a lesson, use its Colab or Binder link, or `bash run.sh course` on your
machine.

## The learning path
{learning_path(readme)}
```{{toctree}}
:caption: Lessons
:maxdepth: 1

{listed}
```

```{{toctree}}
:caption: Reference
:maxdepth: 2

api/index
```
"""


# --- API reference --------------------------------------------------------------------------

def _is_public(name: str) -> bool:
    return not name.startswith("_")


def public_names(module: ModuleType) -> list[str]:
    """The module's ``__all__``; without one, the public functions and classes it defines."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return sorted(name for name, obj in vars(module).items()
                  if _is_public(name) and (inspect.isfunction(obj) or inspect.isclass(obj))
                  and getattr(obj, "__module__", None) == module.__name__)


def _import(name: str) -> ModuleType | None:
    """The module ``name``; None for an alias (a command shim that stands for another module)."""
    module = importlib.import_module(name)
    return module if module.__name__ == name else None


def _submodules(package: ModuleType) -> list[tuple[str, bool]]:
    """(full name, is a package) of each public module directly inside ``package``."""
    return [(f"{package.__name__}.{info.name}", info.ispkg)
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)
            if _is_public(info.name)]


def _directive(obj: object) -> str:
    if inspect.isclass(obj):
        return "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


def _module_block(module: ModuleType, names: list[str], seen: set[int], title: str) -> str:
    """An rst section: the module's docstring, then each of ``names`` not documented yet."""
    lines = [title, "-" * len(title), "", f".. automodule:: {module.__name__}",
             "   :no-members:", ""]
    for name in names:
        obj = getattr(module, name)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        lines.append(f".. {_directive(obj)}:: {module.__name__}.{name}")
        if inspect.isclass(obj):
            lines.append("   :members:")
        lines.append("")
    return "\n".join(lines)


def api_pages(package_name: str = "moe_lab") -> dict[str, str]:
    """rst pages (file name -> text): the root's names first, then the top-level modules, then
    one page per public subpackage (its ``__all__``, then its modules)."""
    root = importlib.import_module(package_name)
    seen: set[int] = set()
    modules, packages = [], []
    for name, ispkg in _submodules(root):
        (packages if ispkg else modules).append(name)
    root_title = f"``{package_name}``: the names at the top"
    pages = {"index.rst": "API reference\n=============\n\n"
             + _module_block(root, public_names(root), seen, root_title)}
    core = ["Top-level modules", "=================", ""]
    for name in modules:
        module = _import(name)
        if module is not None:
            core.append(_module_block(module, public_names(module), seen, f"``{name}``"))
    pages["core.rst"] = "\n".join(core)
    toc = ["core"]
    for name in packages:
        package = importlib.import_module(name)
        title = f"``{name}``"
        lines = [title, "=" * len(title), "",
                 _module_block(package, list(getattr(package, "__all__", [])), seen,
                               "The package")]
        stack = _submodules(package)
        while stack:
            sub, ispkg = stack.pop(0)
            module = _import(sub)
            if module is None:
                continue
            lines.append(_module_block(module, public_names(module), seen, f"``{sub}``"))
            if ispkg:
                stack[:0] = _submodules(module)
        short = name.rsplit(".", 1)[-1]
        pages[f"{short}.rst"] = "\n".join(lines)
        toc.append(short)
    pages["index.rst"] += "\n.. toctree::\n   :maxdepth: 1\n\n" + "".join(
        f"   {entry}\n" for entry in toc)
    return pages


# --- build ----------------------------------------------------------------------------------

def stage(src: Path, notebooks: Path = NOTEBOOKS) -> list[Path]:
    """Write the staging folder Sphinx reads; returns the lesson notebooks written."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    lessons = write_lessons(src, notebooks)
    (src / "index.md").write_text(index_page((ROOT / "README.md").read_text(), lessons))
    shutil.copytree(ROOT / "docs" / "img", src / "img")
    (src / "api").mkdir()
    for name, text in api_pages().items():
        (src / "api" / name).write_text(text)
    return lessons


def build(out: Path = DEFAULT_OUT, notebooks: Path = NOTEBOOKS) -> Path:
    """Stage and run Sphinx; returns the folder of the HTML site. Raises on any Sphinx warning."""
    from sphinx.cmd.build import build_main

    src = out / "src"
    stage(src, notebooks)
    html_dir = out / "html"
    status = build_main(["-b", "html", "-c", str(CONF_DIR), "-W", "--keep-going", "-q",
                         "-d", str(out / "doctrees"), str(src), str(html_dir)])
    if status != 0:
        raise RuntimeError(f"sphinx-build failed (exit {status}): see its messages above")
    return html_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="build folder (the site is OUT/html); default build/site")
    parser.add_argument("--require-home", action="store_true",
                        help="fail unless tools/launch_cells.py names the course's home")
    args = parser.parse_args(argv)
    if args.require_home and launch_cells.HOME is None:
        parser.error("the course has no home yet: set HOME in tools/launch_cells.py, run "
                     "python tools/launch_cells.py, commit, then publish")
    html_dir = build(args.out.resolve())
    print(f"site: {html_dir / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
