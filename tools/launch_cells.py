"""Put the launch cells at the top of every lesson source: an "Open in Colab" badge and a setup
cell that installs the package only when running in Google Colab. The repository is named here,
once; run this after changing it (and after adding a lesson), then regenerate the notebooks:

    python tools/launch_cells.py && python tools/run_notebooks.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

from lessons import lesson_sources, read_source, write_source

REPOSITORY = "moe-lab/moe-lab"  # owner/name on GitHub: the one place the URL is set
BRANCH = "main"
ROOT = Path(__file__).resolve().parents[1]
TAG = "launch"
SETUP_HIDDEN = {"source_hidden": True}  # the Colab setup cell's code starts collapsed

SETUP_CODE = f'''# NBVAL_IGNORE_OUTPUT
# Setup for Google Colab only: elsewhere (JupyterLab, Binder) this cell does nothing.
# Colab has torch and numpy; it lacks plotly >= 6 with anywidget (for the live figures), the
# corpus of lesson 05, transformers 5 (lesson 09) and the course package. Its ipywidgets 7 is
# kept: ipywidgets 8 breaks there.
import sys

if "google.colab" in sys.modules:
    import subprocess

    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "plotly>=6", "anywidget",
                    "pyyaml", "chatterbot-corpus>=1.3.3", "transformers>=5.0,<6",
                    "moe-lab @ git+https://github.com/{REPOSITORY}@{BRANCH}"], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()'''


def colab_url(notebook: str) -> str:
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{notebook}"


def binder_url(notebook: str = "00_start_here.ipynb") -> str:
    return (f"https://mybinder.org/v2/gh/{REPOSITORY}/{BRANCH}"
            f"?urlpath=lab/tree/notebooks/{notebook}")


def badge_markdown(notebook: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook)}) "
            f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder_url(notebook)})")


def add_launch_cells(source: Path) -> None:
    """Put the two launch cells first in a lesson source (``lessons/NN_name.py``)."""
    nb = read_source(source)
    notebook = source.stem + ".ipynb"
    launch = [c for c in nb.cells if TAG in c.metadata.get("tags", [])]
    if [c.source for c in launch] == [badge_markdown(notebook), SETUP_CODE] \
            and nb.cells[:2] == launch and launch[1].metadata.get("jupyter") == SETUP_HIDDEN:
        return  # already in place: leave the file untouched
    nb.cells = [c for c in nb.cells if TAG not in c.metadata.get("tags", [])]
    badge = nbformat.v4.new_markdown_cell(badge_markdown(notebook))
    setup = nbformat.v4.new_code_cell(SETUP_CODE)
    for cell in (badge, setup):
        cell.metadata["tags"] = [TAG]
    setup.metadata["jupyter"] = dict(SETUP_HIDDEN)  # collapsed: a learner outside Colab skips it
    nb.cells[:0] = [badge, setup]
    write_source(nb, source)


README_BADGES = re.compile(r"<!-- launch-badges -->.*?<!-- /launch-badges -->", re.S)


def update_readme(path: Path = ROOT / "README.md") -> None:
    """Rewrite the badge line of the README (between its launch-badges markers)."""
    text = path.read_text()
    if not README_BADGES.search(text):
        raise ValueError(f"{path} has no <!-- launch-badges --> markers")
    badges = badge_markdown("00_start_here.ipynb")
    block = f"<!-- launch-badges -->\n{badges}\n<!-- /launch-badges -->"
    path.write_text(README_BADGES.sub(lambda _: block, text))


def main() -> int:
    for source in lesson_sources():
        add_launch_cells(source)
        print(f"launch cells: {source.name}")
    update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
