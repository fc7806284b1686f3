"""Lessons 00-02: the tables behind the figures (exact values at known points, properties), the
figures drawn from them, and the widgets built and driven as a learner would, odd input included:
what each widget's Output holds (the plotly JSON the browser draws) must be what the pure table
function gives for the widget's controls, and no widget holds a FigureWidget."""

from __future__ import annotations

import json

import ipywidgets as widgets
import plotly.graph_objects as go
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_lab import RouterOutput
from moe_lab.lm.text_routing import route_bytes
from moe_lab.systems.params import MIXTRAL_8X7B, count_parameters
from moe_lab.viz.capacity import (
    DROPPED,
    KEPT,
    NOT_CHOSEN,
    capacity_grid_figure,
    capacity_grid_table,
)
from moe_lab.viz.params import format_count, params_figure, params_summary
from moe_lab.viz.router import MAX_TOKENS as ROUTER_MAX_TOKENS
from moe_lab.viz.router import router_heatmap_figure, router_heatmap_table
from moe_lab.widgets._output import PLOTLY_MIMETYPE
from moe_lab.widgets._toy import ToyByteRouter
from moe_lab.widgets.capacity import MAX_TOKENS as CAPACITY_MAX_TOKENS
from moe_lab.widgets.capacity import CapacityGrid
from moe_lab.widgets.params import ParamsCalculator, config_from_sliders
from moe_lab.widgets.router import DTYPES, NOISES, RouterHeatmap

ODD_TEXTS = ["", " ", "a\ud800b lone surrogate", "\x00\x01\x7f", "\uffff\ud7a3", "🙂" * 40,
             "전문가 혼합 모델", "a" * 5000, "\n\t\r"]
MAX_REDRAW_BYTES = 50_000  # one redraw's message to the browser (the browser test's budget)


def shown_figure(widget: widgets.VBox) -> dict:
    """The plotly JSON the widget's Output holds: exactly one figure, small, and no FigureWidget
    anywhere in the widget (each would ship plotly's ~5 MB bundle over the websocket)."""
    def descendants(w: widgets.Widget) -> list[widgets.Widget]:
        return [w] + [d for c in getattr(w, "children", ()) for d in descendants(c)]

    assert not any(isinstance(w, go.FigureWidget) for w in descendants(widget))
    assert widget.output in descendants(widget)
    (output,) = widget.output.outputs
    assert output["output_type"] == "display_data"
    assert len(json.dumps(output)) < MAX_REDRAW_BYTES
    return output["data"][PLOTLY_MIMETYPE]


def assert_shows_router_table(widget: RouterHeatmap) -> None:
    """The Output shows the table the pure function makes for the widget's current controls
    (routed afresh by a separate toy router with the same seed)."""
    routed = ToyByteRouter(seed=0).route(
        widget.text.value, widget.top_k.value, noise=NOISES[widget.noise.value],
        router_dtype=DTYPES[widget.dtype.value], max_tokens=ROUTER_MAX_TOKENS)
    table = router_heatmap_table(routed)
    figure = shown_figure(widget)
    heatmap, dots = figure["data"]
    assert heatmap["z"] == table.probs
    assert figure["layout"]["yaxis"]["ticktext"] == table.token_labels
    assert dots["x"] == [e for row in table.topk_idx for e in row]
    assert dots["y"] == [t for t, row in enumerate(table.topk_idx) for _ in row]


def assert_shows_capacity_table(widget: CapacityGrid) -> None:
    routed = ToyByteRouter(seed=0).route(widget.text.value, widget.top_k.value,
                                         max_tokens=CAPACITY_MAX_TOKENS)
    table = capacity_grid_table(routed.topk_idx[0], 8, widget.capacity_factor.value,
                                routed.labels)
    figure = shown_figure(widget)
    (grid,) = figure["data"]
    assert grid["z"] == table.grid
    assert figure["layout"]["yaxis"]["ticktext"] == table.token_labels
    assert figure["layout"]["xaxis"]["ticktext"] == [
        f"{e}: {k}/{d}" for e, (k, d) in enumerate(zip(table.kept, table.demand, strict=True))]
    title = figure["layout"]["title"]["text"]
    assert (f"C = {table.capacity} " in title and f"{100 * table.drop_rate:.1f} %" in title
            if table.grid else "no tokens" in title)

# ------------------------------------------------------------------ lesson 00: parameters


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (999, "999"), (1234, "1.23 K"),
                                             (46_702_792_704, "46.70 B"), (2.5e12, "2.50 T")])
def test_format_count(value: float, text: str) -> None:
    assert format_count(value) == text


def test_params_summary_for_mixtral() -> None:
    rows = dict(params_summary(MIXTRAL_8X7B, context_length=0))
    assert rows["total parameters"] == "46.70 B"
    assert rows["active parameters per token"] == "12.88 B"
    assert rows["active / total"] == "27.6 %"
    assert rows["weights in bf16 (memory)"] == "87.0 GiB"


def test_params_figure_draws_every_component() -> None:
    counts = count_parameters(MIXTRAL_8X7B)
    figure = params_figure(counts)
    assert [trace.type for trace in figure.data] == ["bar", "bar"]
    assert list(figure.data[0].x) == [c.name for c in counts.components]
    assert sum(figure.data[0].y) == pytest.approx(counts.total / 1e9)
    assert sum(figure.data[1].y) == pytest.approx(counts.active / 1e9)


@pytest.mark.parametrize("d_model", [128, 256, 640, 1408, 4096, 16384])
def test_config_from_sliders_is_always_valid(d_model: int) -> None:
    config = config_from_sliders(256, 300, d_model, 128, 1)
    assert config.top_k == 256  # clamped to E
    assert config.num_heads * config.head_dim == d_model
    assert config.num_heads % config.num_kv_heads == 0


def assert_shows_params(calc: ParamsCalculator) -> None:
    """The Output shows the counts of the config the sliders describe."""
    counts = count_parameters(config_from_sliders(
        calc.num_experts.value, calc.top_k.value, calc.d_model.value, calc.d_ff.value,
        calc.num_layers.value))
    figure = shown_figure(calc)
    total, active = figure["data"]
    assert total["x"] == active["x"] == [c.name for c in counts.components]
    assert total["y"] == [c.total / 1e9 for c in counts.components]
    assert active["y"] == [c.active / 1e9 for c in counts.components]
    assert f"total {format_count(counts.total)}" in figure["layout"]["title"]["text"]


def test_params_calculator_reproduces_mixtral_and_survives_extremes() -> None:
    calc = ParamsCalculator()
    assert dict(calc.rows)["total parameters"] == "46.70 B"
    assert_shows_params(calc)
    for slider in (calc.num_experts, calc.top_k, calc.d_model, calc.d_ff, calc.num_layers):
        slider.value = slider.min
    assert calc.config.num_experts == 1 and calc.config.top_k == 1
    assert dict(calc.rows)["active / total"] == "100.0 %"
    assert_shows_params(calc)
    for slider in (calc.num_experts, calc.top_k, calc.d_model, calc.d_ff, calc.num_layers):
        slider.value = slider.max
    assert calc.config.top_k == 256 and calc.config.d_model == 16384
    assert_shows_params(calc)
    calc.num_experts.value = 2  # K must follow E down
    assert calc.top_k.value == 2 and calc.config.top_k == 2
    assert_shows_params(calc)
    calc.d_model.value = -5  # out of range: ipywidgets clamps it to the minimum
    assert calc.config.d_model == calc.d_model.min
    assert_shows_params(calc)
    calc.mixtral.click()
    assert dict(calc.rows)["active parameters per token"] == "12.88 B"
    assert_shows_params(calc)
    assert "46.70 B" in shown_figure(calc)["layout"]["title"]["text"]


# ------------------------------------------------------------------ lesson 01: router heatmap


def _routing(probs: list[list[float]], top_k: int):
    """A one-layer routing callable over fixed probabilities (T_max, E), cut to T tokens."""
    router_probs = torch.tensor(probs)
    topk_weights, topk_idx = torch.topk(router_probs, top_k, dim=-1)

    def route_ids(ids: torch.Tensor) -> list[RouterOutput]:
        t = len(ids)
        return [RouterOutput(logits=router_probs[:t].log(), probs=router_probs[:t],
                             topk_idx=topk_idx[:t], topk_weights=topk_weights[:t])]

    return route_ids


def test_router_heatmap_table_exact_and_cut() -> None:
    route_ids = _routing([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], top_k=1)
    table = router_heatmap_table(route_bytes("abc", route_ids, max_tokens=3))
    assert table.token_labels == ["a", "b", "c"] and table.topk_idx == [[0], [2], [1]]
    assert table.probs[1] == pytest.approx([0.1, 0.3, 0.6])
    assert table.num_experts == 3 and table.num_tokens == table.total_tokens == 3
    assert "first" not in router_heatmap_figure(table).layout.title.text
    cut = router_heatmap_table(route_bytes("abcdefghij", route_ids, max_tokens=2))
    assert cut.token_labels == ["a", "b"] and len(cut.probs) == 2
    assert (cut.num_tokens, cut.total_tokens) == (2, 10)  # tokens drawn, tokens in the text
    figure = router_heatmap_figure(cut)
    assert "first 2 of 10" in figure.layout.title.text
    assert list(figure.data[1].x) == [0, 2]  # the chosen experts are marked
    with pytest.raises(TypeError, match="routing"):
        router_heatmap_table(route_ids)
    with pytest.raises(ValueError, match="layer"):
        router_heatmap_table(route_bytes("abc", route_ids, max_tokens=3), layer=1)


def test_router_heatmap_table_empty() -> None:
    table = router_heatmap_table(route_bytes("", _routing([[0.25] * 4], top_k=2), max_tokens=3))
    assert table.probs == [] and table.num_experts == 4 and table.num_tokens == 0
    assert "no tokens" in router_heatmap_figure(table).layout.title.text


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_router_widget_survives_odd_text(text: str) -> None:
    widget = RouterHeatmap()
    widget.text.value = text
    assert len(widget.table.token_labels) == min(len(text.encode("utf-8", "replace")), 64)
    assert_shows_router_table(widget)
    widget.top_k.value = widget.top_k.max  # extreme controls on the odd text
    widget.dtype.value = "bfloat16"
    widget.noise.value = "jitter (train)"
    assert_shows_router_table(widget)


def test_router_widget_controls() -> None:
    widget = RouterHeatmap("hello", top_k=2)
    fp32_idx = widget.table.topk_idx
    widget.top_k.value = widget.top_k.max
    assert all(len(row) == 8 for row in widget.table.topk_idx)
    widget.top_k.value = 2
    widget.dtype.value = "bfloat16"
    assert len(widget.table.topk_idx) == len(fp32_idx) == 5
    for noise in widget.noise.options:
        widget.noise.value = noise
        assert all(abs(sum(row) - 1) < 1e-2 for row in widget.table.probs)  # bf16 rounding
    widget.noise.value = "noisy top-k (train)"
    first = widget.table.probs
    widget.update()
    assert widget.table.probs == first  # noise is seeded: the same picture on a redraw
    assert_shows_router_table(widget)
    widget.top_k.value = 99  # past the slider: clamped to E
    assert widget.top_k.value == 8 and all(len(row) == 8 for row in widget.table.topk_idx)
    assert_shows_router_table(widget)


# ------------------------------------------------------------------ lesson 02: capacity grid


def test_capacity_grid_table_exact() -> None:
    # 4 tokens, E = 2, K = 1, all to expert 0: factor 1.0 -> C = ceil(4 / 2) = 2
    topk_idx = torch.tensor([[0], [0], [0], [1]])
    table = capacity_grid_table(topk_idx, 2, 1.0, ["w", "x", "y", "z"])
    assert table.capacity == 2
    assert table.grid == [[KEPT, NOT_CHOSEN], [KEPT, NOT_CHOSEN], [DROPPED, NOT_CHOSEN],
                          [NOT_CHOSEN, KEPT]]
    assert table.demand == [3, 1] and table.kept == [2, 1]
    assert table.num_dropped == 1 and table.drop_rate == pytest.approx(0.25)
    assert capacity_grid_table(topk_idx, 2, 1.5).num_dropped == 0  # C = 3
    figure = capacity_grid_figure(table)
    assert "C = 2" in figure.layout.title.text and "25.0 %" in figure.layout.title.text
    assert list(figure.layout.xaxis.ticktext) == ["0: 2/3", "1: 1/1"]


def test_capacity_grid_table_empty_and_bad_input() -> None:
    table = capacity_grid_table(torch.zeros(0, 2, dtype=torch.long), 4, 1.0)
    assert table.grid == [] and table.drop_rate == 0.0 and table.capacity == 0
    assert "no tokens" in capacity_grid_figure(table).layout.title.text
    with pytest.raises(ValueError, match="capacity_factor"):
        capacity_grid_table(torch.zeros(3, 1, dtype=torch.long), 4, 0.0)
    with pytest.raises(ValueError, match="topk_idx"):
        capacity_grid_table(torch.full((3, 1), 7), 4, 1.0)
    with pytest.raises(ValueError, match="token_labels"):
        capacity_grid_table(torch.zeros(3, 1, dtype=torch.long), 4, 1.0, ["a"])


@settings(max_examples=40, deadline=None)
@given(n_tokens=st.integers(1, 40), num_experts=st.integers(1, 8), data=st.data(),
       capacity_factor=st.floats(0.05, 4.0))
def test_capacity_grid_properties(n_tokens, num_experts, data, capacity_factor) -> None:
    top_k = data.draw(st.integers(1, num_experts))
    scores = torch.rand(n_tokens, num_experts, generator=torch.Generator().manual_seed(n_tokens))
    topk_idx = torch.topk(scores, top_k, dim=-1).indices
    table = capacity_grid_table(topk_idx, num_experts, capacity_factor)
    grid = torch.tensor(table.grid)
    assert ((grid != NOT_CHOSEN).sum(1) == top_k).all()  # every assignment appears once
    assert table.kept == [min(d, table.capacity) for d in table.demand]
    assert table.num_dropped == int((grid == DROPPED).sum()) == sum(table.demand) - sum(table.kept)
    # token order: within an expert, no kept cell comes after a dropped one
    for e in range(num_experts):
        column = [c for c in grid[:, e].tolist() if c != NOT_CHOSEN]
        assert column == sorted(column)


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_capacity_widget_survives_odd_text(text: str) -> None:
    widget = CapacityGrid()
    widget.text.value = text
    n_tokens = min(len(text.encode("utf-8", "replace")), CAPACITY_MAX_TOKENS)
    assert len(widget.table.grid) == n_tokens
    assert "drop rate" in widget.drop_rate.value
    assert_shows_capacity_table(widget)
    widget.capacity_factor.value = widget.capacity_factor.min  # extreme slider on odd text
    widget.top_k.value = widget.top_k.max
    assert_shows_capacity_table(widget)


def test_capacity_widget_slider_extremes() -> None:
    widget = CapacityGrid()
    rates = []
    for factor in (widget.capacity_factor.min, 1.0, widget.capacity_factor.max):
        widget.capacity_factor.value = factor
        rates.append(widget.table.drop_rate)
        assert_shows_capacity_table(widget)
    assert rates[0] > rates[1] >= rates[2] == 0.0  # less capacity, more drops
    widget.capacity_factor.value = 100.0  # past the slider: clamped to its maximum
    assert widget.capacity_factor.value == widget.capacity_factor.max
    assert_shows_capacity_table(widget)
    widget.top_k.value = widget.top_k.max  # K = E: every token to every expert
    assert widget.table.demand == [widget.table.demand[0]] * 8
    assert_shows_capacity_table(widget)
    widget.top_k.value = widget.top_k.min
    assert_shows_capacity_table(widget)


def test_params_calculator_redraws_once_when_e_drops_below_k() -> None:
    widget = ParamsCalculator()
    widget.top_k.value = 4
    sent = []
    widget.output.observe(lambda change: sent.append(change), names="outputs")
    widget.num_experts.value = 2  # K is clamped to 2: one redraw, with K = 2
    assert len(sent) == 1 and widget.config.top_k == 2 == widget.top_k.value
