"""The website's pieces without building it (tools/build_site.py): what a lesson page is made of,
the index, the API reference from the package's import surface."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_site  # noqa: E402
import launch_cells  # noqa: E402

from moe_lab.course.saved_outputs import WIDGET_VIEW  # noqa: E402
from moe_lab.widgets._output import PLOTLY_MIMETYPE  # noqa: E402

LESSONS = build_site.lesson_notebooks()


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _code(nb):
    return next(c for c in nb.cells if c.cell_type == "code")


def _figures(nb):
    return [o["data"][PLOTLY_MIMETYPE] for o in _outputs(nb) if PLOTLY_MIMETYPE in o.get("data", {})]


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_page_keeps_every_figure_and_drops_widget_views(path):
    pytest.importorskip("docutils", reason="the site's requirements (bash run.sh site)")
    stored = nbformat.read(path, as_version=4)
    page = build_site.site_notebook(stored, path.name)
    html = [o["data"]["text/html"] for o in _outputs(page) if "text/html" in o.get("data", {})]
    drawn = [json.loads(h.split('type="application/json">', 1)[1].split("</script>", 1)[0]
                        .replace("<\\/", "</")) for h in html if 'class="moe-plotly"' in h]
    assert drawn == _figures(stored)  # every figure, as stored, in order
    assert not any(WIDGET_VIEW in o.get("data", {}) or PLOTLY_MIMETYPE in o.get("data", {})
                   for o in _outputs(page))
    assert stored == nbformat.read(path, as_version=4)  # the stored notebook is not changed
    hidden = [c.source for c in stored.cells if c.metadata.get("jupyter", {}).get("source_hidden")
              and launch_cells.TAG not in c.metadata.get("tags", [])]
    toggled = [c.source for c in page.cells if build_site.HIDE_INPUT in c.metadata.get("tags", [])]
    assert toggled == hidden  # the solutions stay behind a toggle
    assert launch_cells.SETUP_CODE not in [c.source for c in page.cells]  # Colab's cell left out
    title = next(c for c in page.cells if c.cell_type == "markdown"
                 and c.source.startswith("# ")).source.splitlines()
    assert title[2] == build_site.launch_html(path.name)  # right under the title


def test_figure_json_cannot_close_its_script_tag():
    html = build_site.plotly_html({"data": [{"type": "bar", "name": "</script><b>x"}]})
    assert html.count("</script>") == 1
    payload = html.split('type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(payload.replace("<\\/", "</"))["data"][0]["name"] == "</script><b>x"


def test_widget_without_a_figure_says_where_it_runs():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("w")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"model_id": "x", "version_major": 2, "version_minor": 0},
        "text/plain": "Dropdown(...)"})]
    nb.cells = [cell]
    page = build_site.site_notebook(nb, "00_start_here.ipynb")
    assert _code(page).outputs[0]["data"] == {"text/plain": build_site.WIDGET_ONLY}


def test_quiz_links_point_at_the_lesson_pages():
    pytest.importorskip("docutils", reason="the site's requirements (bash run.sh site)")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("show_quiz(1)")
    cell.outputs = [nbformat.v4.new_output("execute_result", execution_count=1, data={
        "text/html": '<a href="04_load_balancing.ipynb#2.-Routing-collapse">04</a>'})]
    nb.cells = [cell]
    page = build_site.site_notebook(nb, "01_the_router.ipynb")
    assert _code(page).outputs[0]["data"]["text/html"] == \
        '<a href="04_load_balancing.html#routing-collapse">04</a>'


def test_links_to_package_files_become_links_to_their_reference():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("in [`moe_lab/lm/train.py`](../moe_lab/lm/train.py).")]
    page = build_site.site_notebook(nb, "05_train_tiny_moe_lm.ipynb")
    assert page.cells[-1].source == "in {py:mod}`moe_lab/lm/train.py <moe_lab.lm.train>`."


def test_launch_line_without_a_home_says_so(monkeypatch):
    monkeypatch.setattr(launch_cells, "HOME", None)
    line = build_site.launch_html("03_weighted_sum.ipynb")
    assert "moe-launch-none" in line and "http" not in line and "published" in line


def test_launch_line_links_colab_and_binder_at_the_release(monkeypatch):
    monkeypatch.setattr(launch_cells, "HOME", "someone/moe-course")
    line = build_site.launch_html("03_weighted_sum.ipynb")
    assert (f"https://colab.research.google.com/github/someone/moe-course/blob/"
            f"{launch_cells.RELEASE}/notebooks/03_weighted_sum.ipynb") in line
    assert f"https://mybinder.org/v2/gh/someone/moe-course/{launch_cells.RELEASE}" in line
    assert "<img" not in line  # no image from another host


def test_index_is_the_readme_learning_path():
    readme = (ROOT / "README.md").read_text()
    page = build_site.index_page(readme, LESSONS)
    assert "| 00 | [start here](lessons/00_start_here.ipynb)" in page
    assert "notebooks/" not in page.split("```{toctree}")[0]
    for lesson in LESSONS:  # every lesson of notebooks/, also those the README's table lacks
        assert f"\n{build_site.LESSON_DIR}/{lesson.stem}\n" in page
    with pytest.raises(ValueError, match="learning path"):
        build_site.learning_path("# no such section\n")


def test_api_reference_documents_every_public_name_once():
    import moe_lab

    pages = build_site.api_pages()
    text = "\n".join(pages.values())
    for name in moe_lab.__all__:
        assert f":: moe_lab.{name}\n" in text  # the root's names, under their root name
    documented = [line.split(":: ", 1)[1] for line in text.splitlines()
                  if line.startswith(".. auto") and "automodule" not in line]
    objects = [id(_resolve(name)) for name in documented]
    assert len(objects) == len(set(objects)), "an object documented twice"
    # each public subpackage has its page
    import pkgutil

    subpackages = {m.name for m in pkgutil.iter_modules(moe_lab.__path__)
                   if m.ispkg and not m.name.startswith("_")}
    assert {Path(n).stem for n in pages} >= subpackages
    assert "automodule:: moe_lab.bench\n" not in text  # a command shim: the module it stands for


def _resolve(dotted: str):
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_pages_workflow_builds_with_the_projects_command():
    text = (ROOT / ".github" / "workflows" / "pages.yml").read_text()
    assert "bash run.sh site --require-home" in text
    assert "path: build/site/html" in text and "actions/deploy-pages" in text


def test_publishing_needs_a_home(monkeypatch, capsys):
    monkeypatch.setattr(launch_cells, "HOME", None)
    with pytest.raises(SystemExit):
        build_site.main(["--require-home"])
    assert "no home yet" in capsys.readouterr().err


def _website_conf():
    import importlib.util

    spec = importlib.util.spec_from_file_location("website_conf", ROOT / "website" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_docstring_blocks_become_literal_and_parse_cleanly():
    docutils_core = pytest.importorskip("docutils.core", reason="the site's requirements")
    docstring = [
        "The router. Lessons 01-02.",
        "    router_logits = x W^T        (N, E)",
        "    router_probs  = softmax(...)  (N, E)",
        "Back to prose with |x| an absolute value.",
        "",
        "- a list item that wraps",
        "  onto a second line",
        "",
        "Args:",
        "    d_model: D.",
    ]
    lines = _website_conf().literal_blocks(docstring)
    assert lines[:5] == ["The router. Lessons 01-02.", "::", "",
                         "    router_logits = x W^T        (N, E)",
                         "    router_probs  = softmax(...)  (N, E)"]
    assert "Back to prose with \\|x| an absolute value." in lines
    assert "  onto a second line" in lines and lines[-2:] == ["Args:", "    d_model: D."]
    # reST reads it without a warning (halt at level 2), the formulas kept as one literal block
    tree = docutils_core.publish_doctree("\n".join(lines[:-3]),
                                         settings_overrides={"halt_level": 2, "report_level": 5})
    literal = [n.astext() for n in tree.findall() if n.tagname == "literal_block"]
    assert literal == ["router_logits = x W^T        (N, E)\nrouter_probs  = softmax(...)  (N, E)"]
