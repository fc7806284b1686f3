"""binder/ stays in step with requirements.txt: every package a learner needs is there, and
torch is a CPU build (Binder has no GPU)."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _names(path):
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[ ]", line)[0].lower())
    return names


def test_binder_installs_every_course_requirement():
    assert _names(ROOT / "requirements.txt") <= _names(ROOT / "binder" / "requirements.txt")


def test_binder_torch_is_a_cpu_build():
    text = (ROOT / "binder" / "requirements.txt").read_text()
    assert re.search(r"^torch==[\d.]+\+cpu$", text, re.M)
    assert "download.pytorch.org/whl/cpu" in text


def test_binder_pins_the_torch_that_ci_tests():
    """Binder's torch is CI's first leg (issue 18: an untested pin broke lesson 06 there)."""
    binder = re.search(r"^torch==([\d.]+)\+cpu$",
                       (ROOT / "binder" / "requirements.txt").read_text(), re.M).group(1)
    ci = re.findall(r"pip install --quiet torch==([\d.]+)", (ROOT / ".ci" / "run").read_text())
    assert ci and binder == ci[0]


def test_binder_python_is_pinned_and_postbuild_installs_the_package():
    assert re.fullmatch(r"python-3\.1[0-3]\s*", (ROOT / "binder" / "runtime.txt").read_text())
    assert "pip install" in (ROOT / "binder" / "postBuild").read_text()


def test_binder_start_uses_the_course_settings():
    import subprocess

    start = ROOT / "binder" / "start"
    assert os.access(start, os.X_OK)
    result = subprocess.run([str(start), "bash", "-c", 'echo "$JUPYTER_CONFIG_PATH"'],
                            env={"REPO_DIR": str(ROOT), "PATH": os.environ["PATH"]},
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(ROOT / "course")
