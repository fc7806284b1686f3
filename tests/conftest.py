import os

import pytest
import torch
from hypothesis import settings

# In CI the property tests replay the same examples every run (a landing never hinges on a new
# random draw); locally they explore new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def lab():
    """One private JupyterLab (fresh kernels, a copy of notebooks/) and one chromium, shared by
    every browser test of the session."""
    from browser.session import jupyter_lab_and_chromium

    with jupyter_lab_and_chromium() as server_and_browser:
        yield server_and_browser
