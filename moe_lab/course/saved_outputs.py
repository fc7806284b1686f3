"""What the course's JupyterLab shows of a saved notebook's widgets: their static part.

A widget's output in a saved notebook holds the ``application/vnd.jupyter.widget-view+json``
mimetype: a pointer to a widget model that lived in the kernel that ran the cell. Once that kernel
is gone (shut down, or the next day), JupyterLab's widget manager cannot find the model and writes
"Error displaying widget: model not found" where the widget was. The course's server
(course/jupyter_server_config.py) hands the front end each saved notebook without those pointers,
so JupyterLab draws what else the output carries: the widget's last figure
(:class:`moe_lab.widgets._output.StaticFallback`) or a line saying to run the cell. Running the
cell draws the live widget again. Only what the browser is sent changes; the file stays as saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
RUN_TO_SHOW = "(an interactive widget: run this cell to show it)"


def drop_widget_views(notebook: Mapping[str, Any]) -> int:
    """Remove the widget-view pointer from every output of ``notebook`` (an nbformat 4 dict, edited
    in place); an output with nothing but text left says to run its cell. Returns how many
    outputs changed."""
    if not isinstance(notebook, Mapping) or not isinstance(notebook.get("cells"), list):
        raise TypeError(f"notebook must be an nbformat 4 notebook (a dict with a 'cells' list), "
                        f"got {type(notebook).__name__}")
    changed = 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not isinstance(data, dict) or WIDGET_VIEW not in data:
                continue
            del data[WIDGET_VIEW]
            if set(data) <= {"text/plain"}:  # no figure to show: the widget's repr says nothing
                data["text/plain"] = RUN_TO_SHOW
            changed += 1
    return changed


class CourseContentsManager(AsyncLargeFileManager):
    """Jupyter server's default contents manager, with :func:`drop_widget_views` on every
    notebook it reads for the front end (jupytext wraps it as it wraps the default)."""

    async def get(self, path: str, content: bool = True, type: str | None = None,  # noqa: A002
                  format: str | None = None, **kwargs: Any) -> dict[str, Any]:  # noqa: A002
        model = await super().get(path, content=content, type=type, format=format, **kwargs)
        if content and model.get("type") == "notebook" and model.get("content") is not None:
            drop_widget_views(model["content"])
        return model
