"""Lesson 08's figures: token choice against expert choice loads, Soft MoE slot weights.

:func:`choice_loads` is the plain data (tested); the figures draw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from moe_lab.routing import topk_routing
from moe_lab.variants.expert_choice import expert_choice_capacity, expert_choice_routing

TOKEN_CHOICE_COLOUR, EXPERT_CHOICE_COLOUR = "#1f77b4", "#d62728"


@dataclass(frozen=True)
class ChoiceLoads:
    """For N tokens routed over E experts by the same probabilities (N, E): token choice top-K
    (tokens per expert varies, K experts per token) against expert choice with C per expert
    (C tokens per expert, 0 to E experts per token). Counts as Python lists."""

    top_k: int
    capacity: int
    token_choice_tokens_per_expert: list[int]  # (E,)
    expert_choice_tokens_per_expert: list[int]  # (E,) all C
    token_choice_experts_per_token: list[int]  # (N,) all K
    expert_choice_experts_per_token: list[int]  # (N,) 0..E

    @property
    def num_experts(self) -> int:
        return len(self.token_choice_tokens_per_expert)

    @property
    def tokens_left_out(self) -> int:
        """Tokens no expert picked (expert choice): they get no expert's output at all."""
        return sum(1 for n in self.expert_choice_experts_per_token if n == 0)


def choice_loads(router_probs: torch.Tensor, top_k: int, capacity_factor: float) -> ChoiceLoads:
    """Token choice (top_k per token) and expert choice (C = ceil(capacity_factor * N / E)) on
    the same router_probs (N, E)."""
    num_tokens, num_experts = router_probs.shape
    topk_idx, _ = topk_routing(router_probs, top_k)  # (N, K)
    capacity = expert_choice_capacity(capacity_factor, num_tokens, num_experts)
    token_idx, _ = expert_choice_routing(router_probs, capacity)  # (E, C)
    return ChoiceLoads(
        top_k=top_k, capacity=capacity,
        token_choice_tokens_per_expert=torch.bincount(topk_idx.reshape(-1),
                                                      minlength=num_experts).tolist(),
        expert_choice_tokens_per_expert=[capacity] * num_experts,
        token_choice_experts_per_token=[top_k] * num_tokens,
        expert_choice_experts_per_token=torch.bincount(token_idx.reshape(-1),
                                                       minlength=num_tokens).tolist())


def choice_loads_figure(loads: ChoiceLoads, title: str = "token choice vs expert choice") -> go.Figure:
    """Left: tokens per expert (token choice varies, expert choice is C for all). Right: how many
    tokens get 0, 1, ..., E experts (token choice: all exactly K)."""
    experts = [f"e{e}" for e in range(loads.num_experts)]
    figure = make_subplots(rows=1, cols=2, subplot_titles=(
        "tokens per expert", "tokens by number of experts they get"))
    figure.add_trace(go.Bar(name=f"token choice (top-{loads.top_k})", x=experts,
                            y=loads.token_choice_tokens_per_expert,
                            marker_color=TOKEN_CHOICE_COLOUR), row=1, col=1)
    figure.add_trace(go.Bar(name=f"expert choice (C = {loads.capacity})", x=experts,
                            y=loads.expert_choice_tokens_per_expert,
                            marker_color=EXPERT_CHOICE_COLOUR), row=1, col=1)
    counts = list(range(loads.num_experts + 1))

    def histogram(values: Sequence[int]) -> list[int]:
        return [sum(1 for v in values if v == c) for c in counts]

    figure.add_trace(go.Bar(x=counts, y=histogram(loads.token_choice_experts_per_token),
                            marker_color=TOKEN_CHOICE_COLOUR, showlegend=False), row=1, col=2)
    figure.add_trace(go.Bar(x=counts, y=histogram(loads.expert_choice_experts_per_token),
                            marker_color=EXPERT_CHOICE_COLOUR, showlegend=False), row=1, col=2)
    figure.update_xaxes(title_text="expert", row=1, col=1)
    figure.update_xaxes(title_text="experts per token", dtick=1, row=1, col=2)
    figure.update_yaxes(title_text="tokens", row=1, col=1)
    figure.update_yaxes(title_text="tokens", row=1, col=2)
    figure.update_layout(title=f"{title}: {loads.tokens_left_out} token(s) get no expert",
                         barmode="group", height=360, margin={"t": 70, "b": 40},
                         legend={"orientation": "h", "y": -0.25})
    return figure


def slot_weights_heatmap_figure(weights: torch.Tensor, token_labels: Sequence[str],
                                slots_per_expert: int = 1,
                                title: str = "Soft MoE dispatch weights") -> go.Figure:
    """weights (T, E*S), e.g. dispatch weights (each column sums to 1 over the tokens), as a
    slots x tokens heatmap."""
    num_tokens, num_slots = weights.shape
    slot_names = [f"e{j // slots_per_expert}.s{j % slots_per_expert}" for j in range(num_slots)]
    token_names = [f"{i}:{label}" for i, label in enumerate(token_labels)]
    figure = go.Figure(go.Heatmap(z=weights.detach().float().t().tolist(), x=token_names,
                                  y=slot_names, colorscale="Blues", colorbar={"title": "weight"}))
    figure.update_layout(title=title, height=120 + 22 * num_slots,
                         xaxis={"title": "token", "tickangle": 0},
                         yaxis={"title": "slot (expert.slot)", "autorange": "reversed"},
                         margin={"t": 50, "b": 40})
    return figure
