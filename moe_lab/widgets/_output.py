"""Show a plotly figure in an ``ipywidgets.Output`` as plain JSON (the
``application/vnd.plotly.v1+json`` mimetype that JupyterLab's plotly extension draws).

Why not a ``go.FigureWidget``: in plotly >= 6 each FigureWidget ships its ~5 MB JavaScript bundle
over the kernel websocket when it opens (anywidget), which alone breaks the course's budget of
1 MB per lesson. A redraw here sends only the figure's JSON (a few kB, with the empty "none"
template), and works the same with or without a live kernel (tests set the Output's ``outputs``).
"""

from __future__ import annotations

import json

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"


def figure_bundle(figure: go.Figure) -> dict[str, object]:
    """The display bundle of ``figure``: plotly JSON, and a one-line text fallback."""
    return {
        PLOTLY_MIMETYPE: {**json.loads(pio.to_json(figure, validate=False)),
                          "config": {"displaylogo": False, "responsive": True}},
        "text/plain": f"<plotly figure: {figure.layout.title.text or 'untitled'}>",
    }


def show_in_output(output: widgets.Output, figure: go.Figure) -> None:
    """Replace what ``output`` shows with ``figure`` (one message to the browser)."""
    output.outputs = ({"output_type": "display_data", "data": figure_bundle(figure),
                       "metadata": {}},)
