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
    widget manager, a saved output whose widget is gone) shows the figure as it was when the
    cell ran, not a line of text.

    Both ipywidgets majors: 8 builds a widget's bundle in ``_repr_mimebundle_``; 7 (Colab's) has
    no such method and displays the bundle from ``_ipython_display_``, which IPython prefers. On 7
    the subclass gets :meth:`_display_with_fallback` as its ``_ipython_display_``.
    """

    figure: go.Figure

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if _displays_itself(cls):
            cls._ipython_display_ = StaticFallback._display_with_fallback  # type: ignore[attr-defined]

    def _repr_mimebundle_(self, **kwargs: object) -> dict[str, object] | None:
        widget_repr = getattr(super(), "_repr_mimebundle_", None)
        bundle = widget_repr(**kwargs) if widget_repr is not None else self._widget_view_bundle()
        if bundle is None:
            return None
        fallback = figure_bundle(self.figure)
        fallback.pop("text/plain")
        return {**fallback, **bundle}

    def _widget_view_bundle(self) -> dict[str, object] | None:
        """The bundle ipywidgets 7's ``Widget._ipython_display_`` displays (its 7.7 source)."""
        if getattr(self, "_view_name", None) is None:
            return None
        plaintext = repr(self)
        if len(plaintext) > 110:
            plaintext = plaintext[:110] + "…"
        return {"text/plain": plaintext,
                "application/vnd.jupyter.widget-view+json": {
                    "version_major": 2, "version_minor": 0,
                    "model_id": self._model_id}}  # type: ignore[attr-defined]

    def _display_with_fallback(self, **kwargs: object) -> None:
        """ipywidgets 7's ``_ipython_display_``, with the figure in the bundle."""
        from IPython.display import display

        bundle = self._repr_mimebundle_()
        if bundle is None:
            return
        display(bundle, raw=True)
        self._handle_displayed(**kwargs)  # type: ignore[attr-defined]


def _displays_itself(cls: type) -> bool:
    """True for a class whose widget base shows itself with ``_ipython_display_`` and has no
    ``_repr_mimebundle_`` (ipywidgets 7), looking past :class:`StaticFallback` in the MRO."""
    mro = cls.__mro__
    bases = mro[mro.index(StaticFallback) + 1:]
    defines = {name for base in bases for name in vars(base)}
    return "_ipython_display_" in defines and "_repr_mimebundle_" not in defines
