"""Lesson 11's experiment: the scopes' losses on a model's routing, a short training run of each,
the shipped runs and how the lesson reads them, the re-centred bias, the figure's table."""

from dataclasses import replace

import pytest
import torch

from moe_lab import BiasBalancer, TopKRouter, count_assignments, load_balancing_loss
from moe_lab.lm.balance_scope import (
    METRICS,
    RESULTS_DIR,
    SCOPE_MODEL,
    SCOPE_TRAIN,
    SCOPES,
    ScopeConfig,
    balance_losses,
    load_runs,
    seed_values,
    separated,
    split_batch,
    train_scope,
)
from moe_lab.lm.data import load_lesson_data, sample_batch
from moe_lab.lm.model import TinyLM
from moe_lab.quizzes.answers import each_sequence_on_its_experts
from moe_lab.viz.balance_scope import PANELS, scope_figure, scope_points


@pytest.fixture(scope="module")
def data():
    return load_lesson_data()


@pytest.fixture(scope="module")
def step(data):
    """One global batch of 8 windows of 32 bytes in 4 micro-batches, through a fresh model."""
    torch.manual_seed(0)
    model = TinyLM(replace(SCOPE_MODEL, max_seq_len=32))
    batch = sample_batch(data.train, 8, 32, torch.Generator().manual_seed(0))
    micro = split_batch(batch, 4)
    return model, batch, micro, [model(mb.input_ids, mb.targets, mb.attention_mask)
                                 for mb in micro]


def test_split_batch_keeps_every_window_in_order(step):
    _, batch, micro, _ = step
    assert [mb.input_ids.shape[0] for mb in micro] == [2, 2, 2, 2]
    assert torch.equal(torch.cat([mb.input_ids for mb in micro]), batch.input_ids)
    with pytest.raises(ValueError, match="micro_batches"):
        split_batch(batch, 3)


def test_global_scope_averages_to_the_whole_batch_loss(step):
    # f from the summed counts, P per micro-batch: the mean over equal micro-batches is the loss
    # of the whole global batch; the micro-batch scope is not
    _, _, _, outputs = step
    global_loss = torch.stack(balance_losses(outputs, step[2], "global_batch", 8)).mean()
    per_layer = []
    for layer in range(2):
        probs = torch.cat([out.routing[layer].router.probs for out in outputs])
        idx = torch.cat([out.routing[layer].topk_idx for out in outputs])
        per_layer.append(load_balancing_loss(probs, idx))
    torch.testing.assert_close(global_loss, torch.stack(per_layer).mean())
    micro_loss = torch.stack(balance_losses(outputs, step[2], "micro_batch", 8)).mean()
    assert not torch.allclose(micro_loss, global_loss)


def test_sequence_scope_is_the_mean_of_one_window_micro_batches(step):
    _, _, micro, outputs = step
    seq = torch.stack(balance_losses(outputs, micro, "sequence", 8))  # (M,)
    for out, value in zip(outputs, seq, strict=True):
        per_layer = []
        for r in out.routing:
            windows = r.router.probs.view(2, 32, 8), r.topk_idx.view(2, 32, 2)
            per_layer.append(torch.stack([load_balancing_loss(windows[0][b], windows[1][b])
                                          for b in range(2)]).mean())
        torch.testing.assert_close(value, torch.stack(per_layer).mean())
    assert balance_losses(outputs, micro, "bias", 8) == [None] * 4
    with pytest.raises(ValueError, match="scope"):
        balance_losses(outputs, micro, "batch", 8)


@pytest.mark.parametrize("scope", SCOPES)
def test_a_short_run_of_each_scope_trains(scope, data):
    config = replace(SCOPE_TRAIN, steps=3, seq_len=32, batch_size=8, eval_every=3,
                     eval_windows_per_language=1)
    run = train_scope(replace(SCOPE_MODEL, max_seq_len=32), config,
                      ScopeConfig(scope=scope), data=data)
    assert len(run.lm_loss) == 3 and run.evals[-1]["step"] == 3
    assert (run.balance_loss[-1] is None) == (scope == "bias")
    bias = run.model.blocks[0].ffn.router.score_correction_bias
    assert bool(bias.any()) == (scope == "bias")  # only the bias run moves the bias


def test_bad_configs_are_refused_by_name(data):
    with pytest.raises(ValueError, match="scope"):
        ScopeConfig(scope="batch")
    with pytest.raises(ValueError, match="micro_batches"):
        train_scope(SCOPE_MODEL, replace(SCOPE_TRAIN, batch_size=6), ScopeConfig(), data=data)
    with pytest.raises(TypeError, match="model_config"):
        train_scope(replace(SCOPE_MODEL, ffn="dense"), SCOPE_TRAIN, ScopeConfig(), data=data)


def test_shipped_runs_are_complete_and_name_their_command():
    runs = load_runs()
    assert list(runs) == list(SCOPES)
    for scope, logs in runs.items():
        assert len(logs) == 3, scope
        for seed, log in enumerate(logs):
            assert log["scope"] == scope and log["train_config"]["seed"] == seed
            assert log["command"].startswith("python -m moe_lab.lm.balance_scope")
            assert log["train_config"]["steps"] == SCOPE_TRAIN.steps
            final = log["final"]
            assert len(final["mi_language"]) == 2 and set(METRICS) <= set(final)
            for layer in range(2):  # every run far above its shuffled-router baseline
                assert final["mi_language"][layer] > 3 * final["baseline_mi_language"][layer]
    assert "python -m moe_lab.lm.balance_scope --seeds 0 1 2 --threads 1" in (
        RESULTS_DIR / "README.md").read_text(encoding="utf-8")


def test_seed_values_and_the_spread_verdict():
    logs = [{"final": {"val_loss": v, "mi_language": [v, 2 * v]}} for v in (1.0, 2.0, 3.0)]
    assert seed_values(logs, "val_loss") == [1.0, 2.0, 3.0]
    assert seed_values(logs, "mi_language", layer=1) == [2.0, 4.0, 6.0]
    assert seed_values(logs, "mi_language") == [1.5, 3.0, 4.5]
    assert separated([1, 2], [3, 4]) and separated([5, 6], [3, 4])
    assert not separated([1, 3.5], [3, 4])
    with pytest.raises(ValueError, match="metric"):
        seed_values(logs, "accuracy")
    with pytest.raises(ValueError):
        separated([], [1.0])


def test_scope_figure_table_has_one_point_per_scope_seed_and_panel():
    runs = load_runs()
    points = scope_points(runs)
    assert len(points) == len(PANELS) * len(SCOPES) * 3
    first = next(p for p in points if p.scope == "bias" and p.metric == "val_loss")
    assert first.value == runs["bias"][0]["final"]["val_loss"]
    assert len(scope_figure(runs).data) == len(PANELS) * len(SCOPES)


def test_recentred_bias_keeps_mean_zero_and_the_same_choice():
    torch.manual_seed(0)
    plain_router = TopKRouter(8, 4, 2)
    centred_router = TopKRouter(8, 4, 2)
    centred_router.load_state_dict(plain_router.state_dict())
    plain = BiasBalancer(plain_router, gamma=0.01)
    centred = BiasBalancer(centred_router, gamma=0.01, recenter=True)
    load = torch.tensor([10, 1, 1, 1])
    for _ in range(50):
        plain.update(load)
        centred.update(load)
    # three experts rise, one falls: the mean drifts by gamma * (3 - 1) / 4 per step
    assert plain_router.score_correction_bias.mean().item() == pytest.approx(0.25, abs=1e-5)
    assert abs(centred_router.score_correction_bias.mean().item()) < 1e-5
    x = torch.randn(32, 8)
    assert torch.equal(plain_router(x).topk_idx, centred_router(x).topk_idx)
    with pytest.raises(TypeError, match="recenter"):
        BiasBalancer(plain_router, recenter=1)


def test_sign_update_ignores_a_uniform_doubling_of_the_counts():
    counts = count_assignments(torch.randint(0, 4, (40, 2), generator=torch.Generator()
                                             .manual_seed(1)), 4)
    once, twice = (BiasBalancer(TopKRouter(8, 4, 2), recenter=True) for _ in range(2))
    once.update(counts)
    twice.update(2 * counts)
    assert torch.equal(once.router.score_correction_bias, twice.router.score_correction_bias)


def test_quiz_wrapper_values():
    assert each_sequence_on_its_experts("sequence") == pytest.approx(4.0)
    assert each_sequence_on_its_experts("batch") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scope"):
        each_sequence_on_its_experts("window")
