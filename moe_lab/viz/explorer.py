"""The routing explorer's data and figure: which experts each token of a text goes to. Lesson 03
(a toy byte router) and lesson 05 (a trained language model) share it.

The interface, in three pieces:

1. :class:`moe_lab.lm.text_routing.TextRouting` (also importable here as ``RoutingTable``), plain
   data: one label per token, and per MoE layer ``topk_idx`` (T, K), ``topk_weights`` (T, K),
   ``router_probs`` (T, E) and ``tokens_per_expert`` (E,), stacked over the L layers. Any model
   makes one with :func:`moe_lab.lm.text_routing.route_bytes` from a callable ids -> RouterOutputs;
   :func:`route_text` here does it for an embedding + router over bytes (lesson 03).
2. A *routing callable*, what :class:`moe_lab.widgets.explorer.RoutingExplorer` accepts::

       route_fn(text: str, top_k: int, noise: float) -> TextRouting

   It must accept any string (empty, any script, emoji), ignore or honour ``top_k`` (1..E) and
   ``noise`` (>= 0, the std of Gaussian noise added to the router logits) as it can, and cut
   long texts itself (``TextRouting.total_tokens`` then says how long the text was, and the
   figure shows a note). A trained model with a fixed K can recompute the top-k of its router
   probabilities with :func:`moe_lab.topk_routing`, or ignore ``top_k`` (hide the slider with
   ``RoutingExplorer(..., show_top_k=False)``). :func:`byte_router_fn` makes one for lesson 03.
3. :func:`explorer_traces` turns a table into exactly what is drawn (tested); :func:`explorer_figure`
   builds the figure once and :func:`apply_explorer_traces` updates it in place (fast redraws).

The figure: a grid of tokens (``COLUMNS`` per row), each square coloured by the token's top
expert, its opacity the top expert's weight, the hover listing all K experts and weights; below,
one bar per expert with its load (tokens_per_expert) in the chosen layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import nn

from moe_lab.lm import text_routing
from moe_lab.lm.text_routing import TextRouting
from moe_lab.lm.tokenizer import ByteTokenizer
from moe_lab.routing import RouterOutput, TopKRouter
from moe_lab.validation import check_top_k

MAX_TOKENS = 96  # tokens drawn; longer texts are cut, and the figure says so
COLUMNS = 24  # tokens per row of the grid
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
           "#7b4173", "#3182bd")


def expert_colour(expert: int) -> str:
    """The colour of an expert, the same in the token grid and the load bars."""
    return _PALETTE[expert % len(_PALETTE)]


RoutingTable = TextRouting  # the explorer's name for the one result type (lessons 03, 05)
RoutingFn = Callable[[str, int, float], TextRouting]


def route_text(text: str, embedding: nn.Embedding, router: TopKRouter, *, top_k: int,
               noise: float = 0.0, seed: int = 0, max_tokens: int = MAX_TOKENS,
               tokenizer: ByteTokenizer | None = None) -> TextRouting:
    """Route the byte tokens of ``text`` through ``embedding`` and ``router`` (lesson 03), with
    :func:`moe_lab.lm.text_routing.route_bytes`.

    ``top_k`` overrides the router's K (1..E); ``noise`` is the std of Gaussian noise added to the
    router logits (seeded: the same text and settings give the same picture); only the first
    ``max_tokens`` tokens are routed. The router runs in eval mode and is put back as it was.
    """
    check_top_k(top_k, router.num_experts)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")

    def route_ids(token_ids: torch.Tensor) -> list[RouterOutput]:  # token_ids: (T,)
        x = embedding(token_ids)  # (T, D)
        router_logits = router(x).logits  # (T, E)
        if noise > 0:
            generator = torch.Generator().manual_seed(seed)
            # logits <- logits + noise * eps,  eps ~ N(0, 1)
            router_logits = router_logits + noise * torch.randn(
                router_logits.shape, generator=generator)  # (T, E)
        return [router.decide(router_logits, top_k)]  # the router's own scoring, bias and K

    was_training = router.training
    router.eval()
    try:
        return text_routing.route_bytes(text, route_ids, max_tokens=max_tokens,
                                       tokenizer=tokenizer)
    finally:
        router.train(was_training)


def byte_router_fn(embedding: nn.Embedding, router: TopKRouter, *, seed: int = 0,
                   max_tokens: int = MAX_TOKENS) -> RoutingFn:
    """A routing callable ``(text, top_k, noise) -> TextRouting`` for the explorer widget."""

    def route_fn(text: str, top_k: int, noise: float) -> TextRouting:
        return route_text(text, embedding, router, top_k=top_k, noise=noise, seed=seed,
                          max_tokens=max_tokens)

    return route_fn


@dataclass(frozen=True)
class ExplorerTraces:
    """Exactly what the explorer figure draws for one layer of a table.

    x, y: grid position of each token; text: its label; colour: its top expert's colour;
    opacity: 0.25 + 0.75 * its top expert's weight; hover: all K experts and weights;
    bar_y: tokens_per_expert (E,); title: with a note when the text was cut.
    """

    x: list[int]
    y: list[int]
    text: list[str]
    colour: list[str]
    opacity: list[float]
    hover: list[str]
    top_expert: list[int]
    bar_y: list[int]
    bar_colour: list[str]
    title: str


def explorer_traces(table: TextRouting, layer: int = 0) -> ExplorerTraces:
    """The plain lists the figure shows for ``layer`` of ``table``."""
    if not 0 <= layer < table.num_layers:
        raise ValueError(f"layer must lie in [0, {table.num_layers}), got {layer}")
    idx = table.topk_idx[layer].tolist()  # (T, K)
    weights = table.topk_weights[layer].tolist()  # (T, K)
    top_expert = [row[0] for row in idx]
    hover = [
        f"{label!r}: " + ", ".join(f"e{e} {w:.2f}" for e, w in zip(row_e, row_w, strict=True))
        for label, row_e, row_w in zip(table.labels, idx, weights, strict=True)]
    title = f"{table.layer_names[layer]}: {table.num_tokens} tokens, top-{table.top_k} of " \
            f"{table.num_experts} experts"
    if table.truncated:
        title += f" (showing the first {table.num_tokens} of {table.total_tokens} tokens)"
    if table.num_tokens == 0:
        title += " (type some text)"
    return ExplorerTraces(
        x=[t % COLUMNS for t in range(table.num_tokens)],
        y=[-(t // COLUMNS) for t in range(table.num_tokens)],
        text=list(table.labels),
        colour=[expert_colour(e) for e in top_expert],
        opacity=[round(0.25 + 0.75 * row[0], 4) for row in weights],
        hover=hover,
        top_expert=top_expert,
        bar_y=table.tokens_per_expert[layer].tolist(),
        bar_colour=[expert_colour(e) for e in range(table.num_experts)],
        title=title,
    )


def explorer_figure(table: TextRouting, layer: int = 0) -> go.Figure:
    """Token grid (top) and expert load bars (bottom) for ``layer`` of ``table``."""
    figure = make_subplots(rows=2, cols=1, row_heights=[0.62, 0.38], vertical_spacing=0.12,
                           subplot_titles=("tokens, coloured by top expert (opacity = weight)",
                                           "expert load (assignments)"))
    figure.add_trace(go.Scatter(mode="markers+text", marker={"symbol": "square", "size": 26},
                                textfont={"size": 13}, hoverinfo="text", showlegend=False),
                     row=1, col=1)
    figure.add_trace(go.Bar(showlegend=False), row=2, col=1)
    figure.update_xaxes(visible=False, range=[-0.7, COLUMNS - 0.3], row=1, col=1)
    figure.update_yaxes(visible=False, row=1, col=1)
    figure.update_xaxes(title_text="expert", row=2, col=1, dtick=1)
    figure.update_layout(height=460, margin={"t": 70, "b": 40, "l": 40, "r": 20},
                         template="none", plot_bgcolor="white")  # "none": 6 kB less JSON
    apply_explorer_traces(figure, explorer_traces(table, layer))
    return figure


def apply_explorer_traces(figure: go.Figure, traces: ExplorerTraces) -> None:
    """Write ``traces`` into a figure made by :func:`explorer_figure` (in place; works on a
    FigureWidget too, where it sends one small update)."""
    rows = max(1, -min(traces.y, default=0) + 1)
    with figure.batch_update():
        grid, bars = figure.data[0], figure.data[1]
        grid.x, grid.y, grid.text, grid.hovertext = traces.x, traces.y, traces.text, traces.hover
        grid.marker.color, grid.marker.opacity = traces.colour, traces.opacity
        bars.x = list(range(len(traces.bar_y)))
        bars.y, bars.marker.color = traces.bar_y, traces.bar_colour
        # every expert on the load axis, which counts assignments: from 0 (0..1 with no tokens)
        figure.layout.xaxis2.range = [-0.5, len(traces.bar_y) - 0.5]
        figure.layout.yaxis2.range = [0, 1.1 * max(max(traces.bar_y, default=0), 1)]
        figure.layout.yaxis.range = [-rows + 0.4, 0.6]
        figure.layout.title.text = traces.title

