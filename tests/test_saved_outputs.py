"""The learner's side of saved notebooks: the course server sends saved widget outputs without
their widget view (their last figure shows instead of "model not found"), and `bash run.sh course`
works in a copy of the lessons that it never overwrites."""

from __future__ import annotations

import copy
import json
import os
import runpy
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from traitlets.config import Config

from moe_lab.course.saved_outputs import RUN_TO_SHOW, WIDGET_VIEW, CourseContentsManager, drop_widget_views

ROOT = Path(__file__).resolve().parents[1]
PLOTLY = "application/vnd.plotly.v1+json"
VIEW = {"version_major": 2, "version_minor": 0, "model_id": "abc"}


def _notebook(*outputs: dict) -> dict:
    return {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": list(outputs)},
                      {"cell_type": "markdown", "source": "text", "metadata": {}}]}


def test_widget_with_figure_keeps_the_figure():
    nb = _notebook({"output_type": "display_data", "metadata": {},
                    "data": {WIDGET_VIEW: VIEW, PLOTLY: {"data": []}, "text/plain": "VBox(...)"}})
    assert drop_widget_views(nb) == 1
    assert nb["cells"][0]["outputs"][0]["data"] == {PLOTLY: {"data": []}, "text/plain": "VBox(...)"}


def test_widget_without_figure_says_to_run_the_cell():
    nb = _notebook({"output_type": "execute_result", "metadata": {}, "execution_count": 1,
                    "data": {WIDGET_VIEW: VIEW, "text/plain": "IntSlider(value=3)"}})
    assert drop_widget_views(nb) == 1
    assert nb["cells"][0]["outputs"][0]["data"] == {"text/plain": RUN_TO_SHOW}


def test_other_outputs_are_untouched():
    outputs = ({"output_type": "stream", "name": "stdout", "text": "hi\n"},
               {"output_type": "display_data", "metadata": {}, "data": {"text/plain": "1"}},
               {"output_type": "error", "ename": "E", "evalue": "", "traceback": []})
    nb = _notebook(*copy.deepcopy(outputs))
    assert drop_widget_views(nb) == 0
    assert nb["cells"][0]["outputs"] == list(outputs)
    assert drop_widget_views({"cells": []}) == 0


@pytest.mark.parametrize("bad", [None, [], {"cells": None}, "notebook"])
def test_bad_notebook_is_a_type_error(bad):
    with pytest.raises(TypeError, match="notebook"):
        drop_widget_views(bad)


def test_stored_lesson_03_shows_its_figure(tmp_path):
    """Lesson 03 as shipped, read through the course's contents manager: no widget view left, the
    explorer's figure still there, the file on disk unchanged."""
    import asyncio
    import concurrent.futures

    path = tmp_path / "03_weighted_sum.ipynb"
    path.write_bytes((ROOT / "notebooks" / "03_weighted_sum.ipynb").read_bytes())
    before = path.read_bytes()
    assert WIDGET_VIEW.encode() in before
    manager = CourseContentsManager(root_dir=str(tmp_path))
    # in a thread of its own: an earlier test (the browser session) may run an event loop here
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        model = pool.submit(asyncio.run, manager.get(path.name)).result()
    sent = json.dumps(model["content"])
    assert WIDGET_VIEW not in sent and PLOTLY in sent
    assert path.read_bytes() == before
    nbformat.validate(nbformat.from_dict(model["content"]))


def test_course_config_uses_the_manager_and_its_settings():
    config = Config()
    runpy.run_path(str(ROOT / "course" / "jupyter_server_config.py"),
                   init_globals={"get_config": lambda: config})
    assert config.ServerApp.contents_manager_class is CourseContentsManager
    assert config.LabApp.news_url is None
    overrides = json.loads((Path(config.LabApp.app_settings_dir) / "overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"


def _working_copy(repo: Path) -> subprocess.CompletedProcess[str]:
    """run.sh's working_copy function, run in ``repo``."""
    script = (ROOT / "run.sh").read_text()
    function = script[script.index("COPY=my_course"):script.index('case "${1:-}" in')]
    return subprocess.run(["bash", "-c", f"set -euo pipefail\n{function}\nworking_copy"], cwd=repo,
                          capture_output=True, text=True, check=True)


def test_run_sh_copies_lessons_and_never_overwrites(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for name in ("00_a.ipynb", "01_b.ipynb"):
        (tmp_path / "notebooks" / name).write_text(name)
    (tmp_path / "notebooks" / "sanitize.cfg").write_text("")
    _working_copy(tmp_path)
    copies = tmp_path / "my_course"
    assert sorted(p.name for p in copies.iterdir()) == ["00_a.ipynb", "01_b.ipynb"]

    (copies / "00_a.ipynb").write_text("my answers")  # the learner's work
    (copies / "01_b.ipynb").unlink()  # deleted: comes back
    later = time.time() + 10
    os.utime(tmp_path / "notebooks" / "00_a.ipynb", (later, later))  # git pull changed lesson 00
    result = _working_copy(tmp_path)
    assert (copies / "00_a.ipynb").read_text() == "my answers"
    assert (copies / "01_b.ipynb").read_text() == "01_b.ipynb"
    assert "notebooks/00_a.ipynb is newer than your my_course/00_a.ipynb" in result.stderr


def test_working_copy_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "my_course/00_start_here.ipynb"],
                             cwd=ROOT, check=False)
    assert ignored.returncode == 0
