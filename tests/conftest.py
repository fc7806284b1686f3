import pytest
import torch


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
