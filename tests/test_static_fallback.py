"""StaticFallback on both ipywidgets majors: the display bundle of a course widget carries its last
figure next to the widget view, on ipywidgets 8 (``_repr_mimebundle_``) and on ipywidgets 7
(Colab's: no ``_repr_mimebundle_``, the bundle is displayed by ``_ipython_display_``).

ipywidgets 7 is stood in for by a class with its display API as in its 7.7.1 source (the same
tests also ran against the real 7.7.1 package: see the README's "Tried with").
"""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from moe_lab.widgets._output import PLOTLY_MIMETYPE, StaticFallback

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class FakeWidget7:
    """ipywidgets 7.7.1's ``Widget`` display API: ``_ipython_display_``, no ``_repr_mimebundle_``."""

    _view_name = "VBoxView"
    _model_id = "model-7"

    def __init__(self) -> None:
        self.displayed = 0

    def __repr__(self) -> str:
        return "FakeWidget7()"

    def _ipython_display_(self, **kwargs: object) -> None:
        raise AssertionError("the widget's own _ipython_display_ shows no fallback figure")

    def _handle_displayed(self, **kwargs: object) -> None:
        self.displayed += 1


class FakeWidget8(FakeWidget7):
    """ipywidgets 8's API: the bundle comes from ``_repr_mimebundle_``."""

    _ipython_display_ = None  # type: ignore[assignment]

    def _repr_mimebundle_(self, **kwargs: object) -> dict[str, object] | None:
        return {"text/plain": repr(self), WIDGET_VIEW: {"version_major": 2, "version_minor": 0,
                                                        "model_id": self._model_id}}


def _figure() -> go.Figure:
    return go.Figure(go.Bar(y=[3, 1, 2]), layout={"title": {"text": "load"}})


class Shown7(StaticFallback, FakeWidget7):
    def __init__(self) -> None:
        super().__init__()
        self.figure = _figure()


class Shown8(StaticFallback, FakeWidget8):
    def __init__(self) -> None:
        super().__init__()
        self.figure = _figure()


def _assert_bundle(bundle: dict[str, object]) -> None:
    assert bundle[WIDGET_VIEW]["model_id"] == "model-7"
    assert bundle[PLOTLY_MIMETYPE]["data"][0]["y"] == [3, 1, 2]
    assert bundle["text/plain"] == "FakeWidget7()"  # the widget's own text, not the figure's


def test_ipywidgets_7_display_carries_the_figure(monkeypatch):
    shown: list[tuple[dict[str, object], bool]] = []
    monkeypatch.setattr("IPython.display.display",
                        lambda obj, raw=False: shown.append((obj, raw)))
    widget = Shown7()
    assert Shown7._ipython_display_ is StaticFallback._display_with_fallback
    widget._ipython_display_()
    [(bundle, raw)] = shown
    assert raw
    _assert_bundle(bundle)
    assert widget.displayed == 1  # the widget's "displayed" callbacks still run
    _assert_bundle(widget._repr_mimebundle_())


def test_ipywidgets_7_closed_widget_shows_nothing(monkeypatch):
    shown: list[object] = []
    monkeypatch.setattr("IPython.display.display", lambda obj, raw=False: shown.append(obj))
    widget = Shown7()
    widget._view_name = None
    assert widget._repr_mimebundle_() is None
    widget._ipython_display_()
    assert shown == [] and widget.displayed == 0


def test_ipywidgets_8_keeps_its_own_display_path():
    assert Shown8._ipython_display_ is None  # not replaced: IPython uses _repr_mimebundle_
    _assert_bundle(Shown8()._repr_mimebundle_())


def test_installed_ipywidgets_displays_the_fallback():
    """The real package (8 in the course's venv; 7.7.1 when run with it on the path): what
    IPython's display publishes for a course widget holds the widget view and the figure."""
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display
    from IPython.utils.capture import capture_output

    from moe_lab.widgets.capacity import CapacityGrid

    InteractiveShell.instance()
    widget = CapacityGrid()
    with capture_output() as captured:
        display(widget)
    [output] = captured.outputs
    assert output.data[WIDGET_VIEW]["model_id"] == widget.model_id
    assert PLOTLY_MIMETYPE in output.data
