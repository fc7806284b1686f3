"""Show a plotly figure in an ``ipywidgets.Output`` as plain JSON (the
``application/vnd.plotly.v1+json`` mimetype that JupyterLab's plotly extension draws).

Why not a ``go.FigureWidget``: in plotly >= 6 each FigureWidget ships its ~5 MB JavaScript bundle
over the kernel websocket when it opens (anywidget), which alone breaks the course's budget of
1 MB per lesson. A redraw here sends only the figure's JSON (a few kB, with the empty "none"
template), and works the same with or without a live kernel (tests set the Output's ``outputs``).
"""

from __future__ import annotations

import json
import sys

import ipywidgets as widgets
import plotly.graph_objects as go
import plotly.io as pio

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"


def in_colab() -> bool:
    return "google.colab" in sys.modules


def figure_bundle(figure: go.Figure) -> dict[str, object]:
    """The display bundle of ``figure``: plotly JSON, and a one-line text fallback.

    Colab does not draw the plotly mimetype: there (only there) the bundle also carries the
    figure as HTML that loads plotly.js from its CDN, exactly what plotly's own "colab" renderer
    does. JupyterLab and Binder never fetch anything from the network.
    """
    bundle: dict[str, object] = {
        PLOTLY_MIMETYPE: {**json.loads(pio.to_json(figure, validate=False)),
                          "config": {"displaylogo": False, "responsive": True}},
        "text/plain": f"<plotly figure: {figure.layout.title.text or 'untitled'}>",
    }
    if in_colab():
        bundle["text/html"] = pio.to_html(figure, include_plotlyjs="cdn", full_html=False)
    return bundle


def show_in_output(output: widgets.Output, figure: go.Figure) -> None:
    """Replace what ``output`` shows with ``figure`` (one message to the browser)."""
    output.outputs = ({"output_type": "display_data", "data": figure_bundle(figure),
                       "metadata": {}},)


class StaticFallback:
    """Mixin for a widget that keeps the figure it last drew in ``self.figure``.

    Its display bundle carries that figure too, after the widget view: a front end that draws
    widgets shows the live widget, and one that cannot (a static notebook viewer, a missing
    widget manager) shows the figure as it was when the cell ran, not a line of text.
    """

    figure: go.Figure

    def _repr_mimebundle_(self, **kwargs: object) -> dict[str, object] | None:
        bundle = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        if bundle is None:
            return None
        fallback = figure_bundle(self.figure)
        fallback.pop("text/plain")
        return {**fallback, **bundle}
