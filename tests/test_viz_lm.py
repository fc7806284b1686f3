"""Lesson 05 figures: the tables behind them, and that each figure builds."""

import pytest
import torch

from moe_lab.lm.model import ModelConfig, TinyLM
from moe_lab.viz.lm import (
    capacity_sweep_figure,
    capacity_sweep_table,
    expert_share_table,
    lm_route_fn,
    loss_curve_table,
    loss_curves_figure,
    specialisation_heatmap_figure,
)


def fake_log(capacity_factor, losses, drops):
    return {"model_config": {"capacity_factor": capacity_factor},
            "evals": [{"step": 10 * (i + 1), "wall_time": 1.5 * (i + 1), "val_loss": loss,
                       "val_drop_rate": drop} for i, (loss, drop) in enumerate(zip(losses, drops,
                                                                                     strict=True))]}


def test_loss_curve_table_and_figure():
    logs = {"dense": fake_log(None, [3.0, 2.5], [0, 0]), "moe": fake_log(None, [2.9, 2.4], [0, 0])}
    curves = loss_curve_table(logs, "wall_time")
    assert [c.name for c in curves] == ["dense", "moe"]
    assert curves[1].x == [1.5, 3.0] and curves[1].val_loss == [2.9, 2.4]
    assert loss_curve_table(logs)[0].x == [10.0, 20.0]
    with pytest.raises(ValueError, match="x"):
        loss_curve_table(logs, "epoch")
    assert len(loss_curves_figure(logs).data) == 4


def test_capacity_sweep_table_sorts_dropless_last():
    logs = [fake_log(None, [2.0], [0.0]), fake_log(2.0, [2.1], [0.01]),
            fake_log(0.5, [2.6], [0.4])]
    rows = capacity_sweep_table(logs)
    assert [r.label for r in rows] == ["0.5", "2", "dropless"]
    assert rows[0].drop_rate == 0.4 and rows[-1].val_loss == 2.0
    assert len(capacity_sweep_figure(rows).data) == 2


def test_expert_share_table_and_heatmap():
    counts = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    assert expert_share_table(counts) == [[0.25, 0.75], [0.0, 0.0]]
    with pytest.raises(ValueError, match="counts"):
        expert_share_table(torch.ones(3))
    figure = specialisation_heatmap_figure([counts, counts], ["a", "b"])
    assert len(figure.data) == 2
    assert list(figure.data[0].y) == ["a"]  # the empty label is left out
    with pytest.raises(ValueError, match="counts_per_layer"):
        specialisation_heatmap_figure([], [])


def test_lm_route_fn_feeds_the_explorer():
    from moe_lab.widgets.explorer import RoutingExplorer

    model = TinyLM(ModelConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=8, d_ff=8,
                               num_experts=4, top_k=2))
    route_fn = lm_route_fn(model)
    table = route_fn("한국어 text", 2, 0.0)
    assert table.num_layers == 2 and table.num_tokens == 8 and table.total_tokens == 14
    assert table.tokens_per_expert.sum(dim=1).tolist() == [16, 16]
    assert route_fn("", 2, 0.0).num_tokens == 0
    explorer = RoutingExplorer(route_fn, num_experts=4, top_k=2, show_top_k=False,
                               show_noise=False)
    for text in ("", "🙂" * 50, "\x00\ufffd", "Привет"):
        explorer.text.value = text
    explorer.layer.value = 1
    assert explorer.current_table().num_layers == 2
    with pytest.raises(ValueError, match="model"):
        lm_route_fn(TinyLM(ModelConfig(ffn="dense", d_model=16, n_heads=2)))
