"""Lessons 06-07 figure data: exact values at known points; figures draw what the tables say."""

import json
from types import SimpleNamespace

import pytest
import torch

from moe_lab.systems.bench import BenchResult, BenchShape
from moe_lab.viz.efficiency import (
    BenchRow,
    bench_rows,
    load_recorded_bench,
    memory_figure,
    padding_figure,
    padding_table,
    profile_figure,
    profile_summary,
    ratio_table,
    scaling_figure,
)
from moe_lab.viz.parallel import (
    exchange_cost_figure,
    exchange_cost_table,
    tokens_sent_figure,
    tokens_sent_table,
)

SHAPE = BenchShape(64, 8, 16, 4, 2)
RESULTS = [BenchResult(SHAPE, "dense_limit", 2.0, 1.0), BenchResult(SHAPE, "loop", 6.0, 3.0),
           BenchResult(SHAPE, "sorted", 3.0, 1.5)]


def test_bench_rows_from_objects_and_json_dicts_agree(tmp_path):
    rows = bench_rows(RESULTS)
    assert rows[1] == BenchRow(64, 8, 16, 4, 2, "loop", 6.0, 3.0)
    payload = {"environment": {"device": "cuda", "gpu": "X"}, "command": "python -m moe_lab.bench",
               "results": [{"tokens": 64, "d_model": 8, "d_ff": 16, "num_experts": 4, "top_k": 2,
                            "strategy": r.strategy, "median_ms": r.median_ms,
                            "ratio_to_dense_limit": r.ratio_to_dense_limit} for r in RESULTS]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(payload))
    recorded = load_recorded_bench(path)
    assert recorded.rows == rows
    assert recorded.environment["gpu"] == "X"
    assert load_recorded_bench(tmp_path / "missing.json") is None
    with pytest.raises(TypeError, match="results must hold"):
        bench_rows([1.0])


def test_ratio_table_and_scaling_figure():
    table = ratio_table(bench_rows(RESULTS))
    assert table == [{"shape": "T=64 D=8 F=16 E=4 K=2", "dense_limit": 1.0, "loop": 3.0,
                      "sorted": 1.5, "sorted/loop": 0.5}]
    more = bench_rows(RESULTS + [BenchResult(BenchShape(128, 8, 16, 4, 2), "loop", 9.0, 2.0)])
    figure = scaling_figure(more, x="tokens", y="median_ms")
    loop = next(t for t in figure.data if t.name == "loop")
    assert list(loop.x) == [64, 128] and list(loop.y) == [6.0, 9.0]
    with pytest.raises(ValueError, match="x must be one of"):
        scaling_figure(more, x="width")


def test_padding_table_exact():
    table = padding_table(torch.tensor([5, 1, 0, 2]), capacity=3)
    assert (table.slots, table.used, table.dropped) == (12, 6, 2)
    assert table.waste == pytest.approx(0.5)
    figure = padding_figure(table)
    assert list(figure.data[0].y) == [3, 1, 0, 2] and list(figure.data[2].y) == [2, 0, 0, 0]
    assert padding_table(torch.tensor([0, 0]), 0).waste == 0.0
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        padding_table(torch.tensor([1]), -1)


def test_profile_summary_counts_and_ranks():
    events = [SimpleNamespace(key="aten::mm", count=3, self_cpu_time_total=3000.0,
                              self_cpu_memory_usage=400),
              SimpleNamespace(key="aten::index", count=2, self_cpu_time_total=500.0,
                              self_cpu_memory_usage=-100),
              SimpleNamespace(key="aten::bmm", count=1, self_cpu_time_total=9000.0,
                              self_cpu_memory_usage=100)]
    summary = profile_summary(events, ["aten::mm", "aten::_grouped_mm"], top=2)
    assert summary.op_calls == {"aten::mm": 3, "aten::_grouped_mm": 0}
    assert summary.top_ops == [("aten::bmm", 1, 9.0), ("aten::mm", 3, 3.0)]
    assert summary.allocated_bytes == 500
    figure = profile_figure({"loop": summary})
    assert list(figure.data[0].y) == [3, 0]
    assert list(memory_figure({"loop": 1.5, "sorted": 0.5}).data[0].y) == [1.5, 0.5]


def test_tokens_sent_table_exact():
    table = tokens_sent_table(torch.tensor([[3, 1], [2, 4]]))
    assert (table.total, table.local) == (10, 7)
    assert table.remote_share == pytest.approx(0.3)
    assert list(tokens_sent_figure(table).data[0].z[1]) == [2, 4]
    assert tokens_sent_table(torch.zeros(2, 2, dtype=torch.long)).remote_share == 0.0
    with pytest.raises(ValueError, match="square"):
        tokens_sent_table(torch.zeros(2, 3))


def test_exchange_cost_table_exact():
    routed = torch.tensor([[4, 0, 1, 1], [2, 2, 2, 0]])  # (W=2, E=4), 3 tokens per rank, K=2
    costs = exchange_cost_table(routed, [3, 3], top_k=2, capacity_factors=(1.0, 2.0))
    dropless, cf1, cf2 = costs
    assert (dropless.rows_sent, dropless.padding, dropless.dropped) == (12, 0, 0)
    assert dropless.count_exchange and not cf1.count_exchange
    # cf=1: C = ceil(1 * 3 * 2 / 4) = 2; kept = 2+0+1+1 + 2+2+2+0 = 10; sent = 2*4*2 = 16
    assert (cf1.capacity, cf1.rows_sent, cf1.useful, cf1.padding, cf1.dropped) == (2, 16, 10, 6, 2)
    # cf=2: C = 3; kept = 3+0+1+1 + 2+2+2+0 = 11; sent = 24
    assert (cf2.capacity, cf2.rows_sent, cf2.useful, cf2.padding, cf2.dropped) == (3, 24, 11, 13, 1)
    assert list(exchange_cost_figure(costs).data[1].y) == [0, 6, 13]
    with pytest.raises(ValueError, match="token_splits must have one entry per rank"):
        exchange_cost_table(routed, [3], top_k=2)


def test_ratio_figure_groups_by_shape():
    from moe_lab.viz.efficiency import ratio_figure

    figure = ratio_figure(bench_rows(RESULTS))
    assert [t.name for t in figure.data] == ["loop", "sorted"]
    assert list(figure.data[0].y) == [3.0] and list(figure.data[1].y) == [1.5]
