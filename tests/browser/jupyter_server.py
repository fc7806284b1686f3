"""JupyterLab for browser tests: a private server on 127.0.0.1 over a fresh copy of the lessons.

    with jupyter_lab(Path("notebooks")) as server:
        page.goto(server.lab_url("03_weighted_sum.ipynb"))

Each run gets a new temporary directory (a copy of the notebooks, its own runtime, settings and
workspace directories, so no state from an earlier run or from the developer's own JupyterLab
leaks in), a free port, a random token and therefore a fresh kernel. The server is started in its
own process group and stopped by its own PID (then its group, for any kernel it left) when the
``with`` block ends, also when it ends with an exception.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moe_lab.systems.parallel import free_port  # a port on 127.0.0.1 only

STARTUP_TIMEOUT_S = 120.0  # a loaded 2-core machine can take a while to import JupyterLab
SHUTDOWN_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class JupyterServer:
    """A running server: where it listens, its token, its copy of the notebooks, its PID."""

    base_url: str
    token: str
    root_dir: Path
    log_path: Path
    pid: int

    def lab_url(self, notebook: str) -> str:
        """The JupyterLab URL that opens ``notebook`` (a path relative to the root) in a fresh
        workspace (``reset`` drops any saved layout)."""
        return f"{self.base_url}lab/tree/{notebook}?reset&token={self.token}"

    def api(self, path: str, *, method: str = "GET", timeout: float = 10.0) -> bytes:
        """Call the server's REST API (``path`` like ``"api/status"``) with the token."""
        request = urllib.request.Request(f"{self.base_url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# The course's own JupyterLab settings (what `bash run.sh course` uses): the contents manager that
# sends saved widget outputs without their widget view, no news pop-up, no news feed.
COURSE_CONFIG = Path(__file__).resolve().parents[2] / "course"


def lab_command(port: int, token: str, root: Path, state: Path) -> list[str]:
    """The command line of a private, quiet JupyterLab (no browser, no network look-ups)."""
    command = [
        sys.executable, "-m", "jupyterlab",
        "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
        "--ServerApp.open_browser=False",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        # window.jupyterapp: lets the test run JupyterLab commands (runmenu:run-all).
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.workspaces_dir={state / 'workspaces'}",
        f"--LabApp.user_settings_dir={state / 'settings'}",
        # No update check (it would reach out to the internet); the news feed is off in course/.
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.name == "posix" and os.geteuid() == 0:
        command.append("--allow-root")
    return command


def _wait_until_ready(server: JupyterServer, process: subprocess.Popen[bytes],
                      timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode} before it "
                               f"was ready; log:\n{server.log_tail()}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            server.api("api/status", timeout=5.0)
            return
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab was not ready after {timeout:.0f} s; log:\n"
                       f"{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes], server: JupyterServer) -> None:
    """Ask the server to shut down (it stops its kernels), then SIGTERM and SIGKILL its PID, then
    kill whatever is left in its process group (the group id is the server's PID)."""
    if process.poll() is None:
        with contextlib.suppress(OSError, urllib.error.URLError):
            server.api("api/shutdown", method="POST", timeout=5.0)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                process.wait(timeout=SHUTDOWN_TIMEOUT_S / 2)
                break
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=SHUTDOWN_TIMEOUT_S / 2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def jupyter_lab(notebooks_dir: Path, *,
                startup_timeout: float = STARTUP_TIMEOUT_S) -> Iterator[JupyterServer]:
    """Start JupyterLab over a temporary copy of ``notebooks_dir``; stop it on exit."""
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise ValueError(f"notebooks_dir must be a directory, got {notebooks_dir}")
    work = Path(tempfile.mkdtemp(prefix="moe-lab-browser-"))
    root, state = work / "notebooks", work / "state"
    shutil.copytree(notebooks_dir, root,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    env = dict(os.environ,
               JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTER_CONFIG_DIR=str(state / "config"),
               JUPYTER_CONFIG_PATH=str(COURSE_CONFIG),
               IPYTHONDIR=str(state / "ipython"),
               JUPYTER_PLATFORM_DIRS="1",
               PYTHONUNBUFFERED="1")
    (state / "settings").mkdir(parents=True)
    port, token = free_port(), secrets.token_hex(24)
    log_path = work / "server.log"
    process = None
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(lab_command(port, token, root, state), cwd=root, env=env,
                                       stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        server = JupyterServer(base_url=f"http://127.0.0.1:{port}/", token=token,
                               root_dir=root, log_path=log_path, pid=process.pid)
        _wait_until_ready(server, process, startup_timeout)
        yield server
    finally:
        if process is not None:
            _stop(process, server)
        shutil.rmtree(work, ignore_errors=True)
