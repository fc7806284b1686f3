"""Every expert stays on the expert axis, and loads stay non-negative, also for empty text
(issue 15: with no tokens plotly's autorange showed experts -1..6 and a load axis from -1 to 1)."""

from __future__ import annotations

import pytest
import torch

from moe_lab.lm.text_routing import route_bytes
from moe_lab.routing import TopKRouter
from moe_lab.viz.capacity import capacity_grid_figure, capacity_grid_table
from moe_lab.viz.explorer import explorer_figure
from moe_lab.viz.parallel import tokens_sent_figure
from moe_lab.viz.router import router_heatmap_figure, router_heatmap_table

E, K, D = 8, 2, 16


def _routing(num_tokens: int):
    torch.manual_seed(0)
    router = TopKRouter(D, E, K)
    return router(torch.randn(num_tokens, D))


def _text_routing(num_tokens: int):
    """A text of ``num_tokens`` bytes routed by a seeded byte embedding and router."""
    torch.manual_seed(0)
    embedding, router = torch.nn.Embedding(256, D), TopKRouter(D, E, K)
    with torch.no_grad():
        routing = route_bytes("ab" * num_tokens, lambda ids: [router(embedding(ids))],
                             max_tokens=max(1, num_tokens))
    assert routing.num_tokens == num_tokens
    return routing


@pytest.mark.parametrize("num_tokens", [0, 1, 5])
def test_router_heatmap_shows_every_expert(num_tokens):
    table = router_heatmap_table(_text_routing(num_tokens))
    axis = router_heatmap_figure(table).layout.xaxis
    assert tuple(axis.range) == (-0.5, E - 0.5)
    assert tuple(axis.tickvals) == tuple(range(E))


@pytest.mark.parametrize("num_tokens", [0, 1, 5])
def test_capacity_grid_shows_every_expert(num_tokens):
    table = capacity_grid_table(_routing(num_tokens).topk_idx, E, 1.0)
    axis = capacity_grid_figure(table).layout.xaxis
    assert tuple(axis.range) == (-0.5, E - 0.5)
    assert len(axis.ticktext) == E


@pytest.mark.parametrize("num_tokens", [0, 1, 5])
def test_explorer_load_axis_is_non_negative_with_every_expert(num_tokens):
    table = _text_routing(num_tokens)
    layout = explorer_figure(table).layout
    assert tuple(layout.xaxis2.range) == (-0.5, E - 0.5)
    low, high = layout.yaxis2.range
    assert low == 0
    assert high >= max(1, int(table.tokens_per_expert.max()))  # the tallest bar fits


@pytest.mark.parametrize("world_size", [2, 4])
def test_tokens_sent_title_fits_its_figure(world_size):
    """Lesson 07's heatmap title was clipped: each title line must fit the figure's width, at
    0.6 em per character (a generous average for plotly's default sans-serif font)."""
    from moe_lab.viz.parallel import tokens_sent_table

    sent = torch.arange(world_size * world_size).reshape(world_size, world_size) * 100
    layout = tokens_sent_figure(tokens_sent_table(sent)).layout
    lines = layout.title.text.split("<br>")
    assert len(lines) == 2
    for line in lines:
        assert 0.6 * layout.title.font.size * len(line) < layout.width - 40, line
