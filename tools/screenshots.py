"""Remake the README's widget screenshots with the browser test (tests/test_browser.py).

    python tools/screenshots.py            # writes docs/img/routing_explorer.png, training_dashboard.png

The browser test runs lessons 03 and 04 in JupyterLab with the system chromium and, with
``MOE_LAB_DOCS_IMG`` set, saves each widget cropped to that directory as well as to
artifacts/browser/. This command sets it, runs the test, and checks that each image exists and
is small (README images are committed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS_IMG = ROOT / "docs" / "img"
IMAGES = ("routing_explorer.png", "training_dashboard.png")
MAX_IMAGE_BYTES = 150_000


def main() -> int:
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    before = {name: (DOCS_IMG / name).stat().st_mtime if (DOCS_IMG / name).exists() else None
              for name in IMAGES}
    env = dict(os.environ, MOE_LAB_DOCS_IMG=str(DOCS_IMG))
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_browser.py", "-m",
                             "browser", "-p", "no:randomly", "-s", "-q"], cwd=ROOT, env=env,
                            check=False)
    ok = result.returncode == 0
    for name in IMAGES:
        path = DOCS_IMG / name
        if not path.exists() or path.stat().st_mtime == before[name]:
            print(f"{path.relative_to(ROOT)}: NOT written")
            ok = False
            continue
        size = path.stat().st_size
        print(f"{path.relative_to(ROOT)}: {size / 1e3:.0f} kB"
              + ("" if size <= MAX_IMAGE_BYTES else f" (over {MAX_IMAGE_BYTES / 1e3:.0f} kB)"))
        ok = ok and size <= MAX_IMAGE_BYTES
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
