"""Put the launch cells at the top of every lesson: a line of Colab and Binder links and a setup
cell that installs the package only when running in Google Colab.

The course's home is one setting, ``HOME`` below (``"owner/name"`` on GitHub), and the release
the links and the Colab install pin is the package's version as a tag (``RELEASE``, from
pyproject.toml). Until the course has a home (``HOME = None``), the link line says so and the
Colab cell stops with that message instead of installing from a repository nobody here holds.

After changing ``HOME`` or the version, or after adding a lesson, run (no lesson is re-executed:
the two launch cells of each source and each stored notebook are rewritten, outputs kept, and
the README's badge line with them):

    python tools/launch_cells.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]

# The course's home on GitHub, "owner/name": THE ONE PLACE it is set. None until it is published
# there (the links and the Colab install need a repository the project holds).
HOME: str | None = None


def _package_version(pyproject: Path = ROOT / "pyproject.toml") -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
    if match is None:
        raise ValueError(f"{pyproject} has no version = \"...\" line")
    return match.group(1)


# The release the links open and the Colab cell installs: a tag, never a moving branch.
# Publishing a version means pushing this tag to HOME.
RELEASE = f"v{_package_version()}"
TAG = "launch"
SETUP_HIDDEN = {"source_hidden": True}  # the Colab setup cell's code starts collapsed
README_BADGES = re.compile(r"<!-- launch-badges -->.*?<!-- /launch-badges -->", re.S)

# What Colab lacks: plotly >= 6 with anywidget (the live figures), the corpus of lesson 05,
# transformers 5 (lesson 09). Its ipywidgets 7 is kept: ipywidgets 8 breaks there.
COLAB_PACKAGES = ["plotly>=6", "anywidget", "pyyaml", "chatterbot-corpus>=1.3.3",
                  "transformers>=5.0,<6"]
# What the Colab cell says without a home, one string literal per line of the cell.
NO_HOME = ("MoE Lab has no published home yet, so there is nothing to install it from. ",
           "Run the course on your machine (bash run.sh course, see the README), or ",
           "install the moe_lab package into this runtime yourself and run this cell again.")


GITHUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}")


def checked_home(home: str | None) -> str | None:
    """``home`` if it is None or a GitHub "owner/name"; a ValueError naming it otherwise."""
    if home is not None and (not isinstance(home, str) or not GITHUB_REPO.fullmatch(home)):
        raise ValueError(f"HOME must be None or a GitHub repository as 'owner/name', got {home!r}")
    return home


def package_spec(home: str, release: str = RELEASE) -> str:
    """The pip requirement of the course package at ``release`` of ``home``."""
    return f"moe-lab @ git+https://github.com/{checked_home(home)}@{release}"


def setup_code(home: str | None = HOME, release: str = RELEASE) -> str:
    """The Colab setup cell: installs ``release`` of ``home``; without a home it says so."""
    packages = ", ".join(f'"{p}"' for p in COLAB_PACKAGES)
    message = "\n                           ".join(f'"{line}"' for line in NO_HOME)
    if checked_home(home) is None:
        get_package = f'''    import importlib.util
    import subprocess

    if importlib.util.find_spec("moe_lab") is None:
        raise RuntimeError({message})
    packages = [{packages}]'''
    else:
        get_package = f'''    import subprocess

    packages = [{packages},
                "{package_spec(home, release)}"]'''
    return f'''# NBVAL_IGNORE_OUTPUT
# Setup for Google Colab only: elsewhere (JupyterLab, Binder) this cell does nothing.
# Colab has torch and numpy; it lacks plotly >= 6 with anywidget (for the live figures), the
# corpus of lesson 05, transformers 5 (lesson 09) and the course package. Its ipywidgets 7 is
# kept: ipywidgets 8 breaks there.
import sys

if "google.colab" in sys.modules:
{get_package}
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()'''


SETUP_CODE = setup_code()


def colab_url(notebook: str, home: str | None = HOME, release: str = RELEASE) -> str | None:
    """The lesson at ``release`` in Colab; None without a home."""
    if checked_home(home) is None:
        return None
    return f"https://colab.research.google.com/github/{home}/blob/{release}/notebooks/{notebook}"


def binder_url(notebook: str = "00_start_here.ipynb", home: str | None = HOME,
               release: str = RELEASE) -> str | None:
    """The lesson at ``release`` on mybinder.org; None without a home."""
    if checked_home(home) is None:
        return None
    return f"https://mybinder.org/v2/gh/{home}/{release}?urlpath=lab/tree/notebooks/{notebook}"


NO_HOME_LINE = ("*Colab and Binder links appear here once the course is published (its home is "
                "set in `tools/launch_cells.py`); until then run it on your machine: "
                "`bash run.sh course`.*")


def badge_markdown(notebook: str, home: str | None = HOME, release: str = RELEASE) -> str:
    """The link line of a lesson (and the README): Colab and Binder badges, or the no-home note."""
    if checked_home(home) is None:
        return NO_HOME_LINE
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook, home, release)}) "
            f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder_url(notebook, home, release)})")


def _launch_cells(notebook: str) -> list[nbformat.NotebookNode]:
    badge = nbformat.v4.new_markdown_cell(badge_markdown(notebook))
    setup = nbformat.v4.new_code_cell(SETUP_CODE)
    for cell in (badge, setup):
        cell.metadata["tags"] = [TAG]
    setup.metadata["jupyter"] = dict(SETUP_HIDDEN)  # collapsed: a learner outside Colab skips it
    return [badge, setup]


def _in_place(nb: nbformat.NotebookNode, notebook: str) -> bool:
    launch = [c for c in nb.cells if TAG in c.metadata.get("tags", [])]
    return ([c.source for c in launch] == [badge_markdown(notebook), SETUP_CODE]
            and nb.cells[:2] == launch and launch[1].metadata.get("jupyter") == SETUP_HIDDEN)


def put_launch_cells(nb: nbformat.NotebookNode, notebook: str) -> bool:
    """Make the first two cells of ``nb`` its launch cells; False when they already are.

    A cell already there keeps its id, outputs and execution count (the setup cell prints
    nothing outside Colab, so a stored run stays what a new run would store)."""
    if _in_place(nb, notebook):
        return False
    old = [c for c in nb.cells if TAG in c.metadata.get("tags", [])]
    new = _launch_cells(notebook)
    for i, previous in enumerate(old[:2]):
        if previous.cell_type == new[i].cell_type:
            previous.source, previous.metadata = new[i].source, new[i].metadata
            new[i] = previous
    nb.cells = new + [c for c in nb.cells if TAG not in c.metadata.get("tags", [])]
    return True


def add_launch_cells(source: Path) -> bool:
    """Put the two launch cells first in a lesson source (``lessons/NN_name.py``)."""
    from lessons import read_source, write_source

    nb = read_source(source)
    changed = put_launch_cells(nb, source.stem + ".ipynb")
    if changed:
        write_source(nb, source)
    return changed


def update_notebook(path: Path) -> bool:
    """The same in a stored notebook, without running it: only the launch cells change."""
    nb = nbformat.read(path, as_version=4)
    changed = put_launch_cells(nb, path.name)
    if changed:
        nbformat.write(nb, path)
    return changed


def update_readme(path: Path = ROOT / "README.md") -> None:
    """Rewrite the badge line of the README (between its launch-badges markers)."""
    text = path.read_text()
    if not README_BADGES.search(text):
        raise ValueError(f"{path} has no <!-- launch-badges --> markers")
    badges = badge_markdown("00_start_here.ipynb")
    block = f"<!-- launch-badges -->\n{badges}\n<!-- /launch-badges -->"
    path.write_text(README_BADGES.sub(lambda _: block, text))


def main() -> int:
    from lessons import lesson_sources, notebook_of

    for source in lesson_sources():
        changed = add_launch_cells(source)
        notebook = notebook_of(source)
        if notebook.exists():
            changed = update_notebook(notebook) or changed
        print(f"launch cells: {source.stem} {'updated' if changed else 'unchanged'}")
    update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
