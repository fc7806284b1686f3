"""Sphinx configuration of the course's website; tools/build_site.py runs it (bash run.sh site).

Sphinx reads the staging folder that tools/build_site.py writes; this folder holds only the
configuration and the site's own static files. Nothing here reaches the network: MyST-NB renders
the stored outputs (no execution), furo is the theme, MathJax and plotly.js are served with the
site.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import launch_cells  # noqa: E402
import plotly  # noqa: E402

import moe_lab  # noqa: E402

project = "MoE Lab"
author = "MoE Lab contributors"
release = version = moe_lab.__version__
copyright = "MoE Lab contributors"  # noqa: A001

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/mathjax, no CDN
]

# MyST-NB: show what each notebook stored; never run a kernel.
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # no widget manager from a CDN: widgets show their static figures
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
# The lessons write \text{router\_logits}, as JupyterLab's MathJax reads it: textmacros does.
mathjax3_config = {"loader": {"load": ["[tex]/textmacros"]},
                   "tex": {"packages": {"[+]": ["textmacros"]}}}
suppress_warnings = ["mystnb.unknown_mime_type"]

autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # torch's own docstrings (autograd.Function) are not ours
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"MoE Lab {release}"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"  # plotly's own copy
html_static_path = ["_static", str(PLOTLY_JS)]
html_css_files = ["moe_site.css"]
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}
html_context = {"moe_home": launch_cells.HOME, "moe_release": launch_cells.RELEASE}


def _plotly_on_pages_with_figures(app, pagename, templatename, context, doctree):
    """plotly.js (4.8 MB, plotly's own copy) only on the pages that draw a figure."""
    if "moe-plotly" in context.get("body", ""):
        app.add_js_file("plotly.min.js")
        app.add_js_file("moe_plotly.js")


# --- the package's docstrings as reST ---------------------------------------------------------
# The package's docstrings are written for the terminal: reST-like (``code``, :class:, "- "
# lists, Google "Args:" sections) with indented blocks of formulas and tables right under a
# line of prose. reST reads such a block as a mistake (or a block quote that loses its columns),
# so each indented block becomes a literal block, and |x| (an absolute value) stays text.

SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Yields|Raises|Attributes|Example|Examples|"
                     r"Note|Notes):\s*$")
LIST_ITEM = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+")
SUBSTITUTION = re.compile(r"(?<![`\\])\|(?=\S)([^|`]*\S)\|(?!`)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _text_indent(line: str) -> int:
    """Where a line's text starts: after the marker of a list item."""
    item = LIST_ITEM.match(line)
    return item.end() if item else _indent(line)


def literal_blocks(lines: list[str]) -> list[str]:
    """Make every block indented deeper than the text above it a literal block (outside
    Google-style sections, which napoleon reads), with the blank lines reST wants around it."""
    out: list[str] = []
    text_indent = None  # where the text of the last prose line starts
    literal_base = None  # inside a literal block: the indent it must stay deeper than
    section_indent = None  # inside an "Args:"-style section: the header's indent
    for line in lines:
        if not line.strip():
            out.append(line)
            continue
        indent = _indent(line)
        if literal_base is not None:
            if indent > literal_base:
                out.append(line)
                continue
            literal_base = None
            if out[-1].strip():
                out.append("")
        if section_indent is not None:
            if indent > section_indent:
                out.append(line)
                continue
            section_indent = None
        if SECTION.match(line):
            section_indent = indent
            if out and out[-1].strip():
                out.append("")
            out.append(line)
            continue
        if text_indent is not None and indent > text_indent:
            last = next(previous for previous in reversed(out) if previous.strip())
            if not last.rstrip().endswith("::"):
                out.append(" " * text_indent + "::")  # ends the paragraph above, or stands alone
            if out[-1].strip():
                out.append("")
            literal_base = text_indent
            out.append(line)
            continue
        out.append(SUBSTITUTION.sub(lambda m: "\\" + m.group(0), line))
        text_indent = _text_indent(line)
    return out


def _readable_docstring(app, what, name, obj, options, lines):
    lines[:] = literal_blocks(lines)


def setup(app):
    app.connect("html-page-context", _plotly_on_pages_with_figures)
    app.connect("autodoc-process-docstring", _readable_docstring, priority=400)  # before napoleon
