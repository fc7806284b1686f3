"""Training loop, callbacks, schedule, checkpoints, the CLI and the shipped lesson-05 results."""

import json
from dataclasses import replace

import pytest
import torch

from moe_lab.lm.data import load_lesson_data
from moe_lab.lm.model import ModelConfig
from moe_lab.lm.train import (
    LESSON05_RUNS,
    RESULTS_DIR,
    Callback,
    OnStep,
    TrainConfig,
    learning_rate,
    load_checkpoint,
    load_log,
    main,
    save_checkpoint,
    seconds_per_step,
    train,
)

TINY_MODEL = ModelConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=32, d_ff=16,
                         num_experts=4, top_k=2)
TINY_TRAIN = TrainConfig(steps=4, batch_size=4, seq_len=32, eval_every=2, warmup_steps=2,
                         eval_windows_per_language=1, eval_batch_size=64)


@pytest.fixture(scope="module")
def data():
    return load_lesson_data()


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, model, config):
        self.events.append("start")

    def on_step(self, metrics):
        self.events.append(("step", metrics.step))

    def on_eval(self, metrics):
        self.events.append(("eval", metrics.step))

    def on_train_end(self, result):
        self.events.append("end")


def test_callbacks_and_history(data):
    recorder = Recorder()
    result = train(TINY_MODEL, TINY_TRAIN, data=data, callbacks=[recorder], progress=False)
    assert recorder.events == ["start", ("step", 1), ("step", 2), ("eval", 2), ("step", 3),
                               ("step", 4), ("eval", 4), "end"]
    assert [m.step for m in result.steps] == [1, 2, 3, 4]
    last = result.steps[-1]
    assert last.aux_loss is not None and last.z_loss is not None and last.grad_norm > 0
    assert [sum(layer) for layer in last.tokens_per_expert] == [4 * 32 * 2] * 2
    assert set(result.evals[-1].val_loss_per_language) <= set(data.languages)
    assert not result.model.training
    stats = last.layer_stats
    assert len(stats) == 2 and sum(stats[0].load) == pytest.approx(1.0, abs=1e-4)
    assert set(stats[0].losses) == {"lm", "aux", "z"}
    log = result.to_log("tiny", "cmd")
    json.dumps(log)  # JSON-ready
    assert log["params_active"] < log["params_total"]


def test_on_step_callback(data):
    seen = []
    train(TINY_MODEL, replace(TINY_TRAIN, steps=2), data=data,
          callbacks=[OnStep(lambda m: seen.append(m.step))], progress=False)
    assert seen == [1, 2]
    with pytest.raises(TypeError, match="fn"):
        OnStep(3)


def test_same_seed_same_run_and_clipping(data):
    config = replace(TINY_TRAIN, grad_clip=1e-3)
    a = train(TINY_MODEL, config, data=data, progress=False)
    b = train(TINY_MODEL, config, data=data, progress=False)
    assert [m.loss for m in a.steps] == [m.loss for m in b.steps]
    assert a.evals[-1].val_loss == b.evals[-1].val_loss
    c = train(TINY_MODEL, replace(config, seed=1), data=data, progress=False)
    assert [m.loss for m in c.steps] != [m.loss for m in a.steps]
    # clip_grad_norm_ returns the norm before clipping; the update used the clipped one
    assert all(m.grad_norm > 1e-3 for m in a.steps)


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_bf16_autocast_runs(data, ffn):
    result = train(replace(TINY_MODEL, ffn=ffn), replace(TINY_TRAIN, precision="bf16", steps=2),
                   data=data, progress=False)
    assert torch.isfinite(torch.tensor(result.steps[-1].loss))
    assert result.model.embed.weight.dtype == torch.float32  # autocast, not a bf16 model


def test_seconds_per_step(data):
    seconds = seconds_per_step(TINY_MODEL, TINY_TRAIN, data, steps=3, warmup=1)
    assert 0 < seconds < 10


def test_learning_rate_schedule():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1e-3)
    assert learning_rate(0, config) == pytest.approx(1e-4)
    assert learning_rate(9, config) == pytest.approx(1e-3)
    assert learning_rate(10, config) == pytest.approx(1e-3)
    assert learning_rate(100, config) == pytest.approx(1e-4)
    assert learning_rate(55, config) == pytest.approx(0.55e-3)


@pytest.mark.parametrize("kwargs, error", [
    (dict(precision="fp8"), ValueError), (dict(steps=0), ValueError),
    (dict(lr=0.0), ValueError), (dict(batch_size=2.0), TypeError)])
def test_bad_train_config(kwargs, error):
    with pytest.raises(error):
        TrainConfig(**kwargs)


def test_bad_train_arguments(data):
    with pytest.raises(ValueError, match="seq_len"):
        train(TINY_MODEL, replace(TINY_TRAIN, seq_len=64), data=data)
    with pytest.raises(TypeError, match="model_config"):
        train({}, TINY_TRAIN, data=data)


def test_checkpoint_round_trip(tmp_path, data):
    result = train(TINY_MODEL, replace(TINY_TRAIN, steps=2), data=data, progress=False)
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, result.model)
    raw = torch.load(path, weights_only=True)
    assert raw["model_config"] == TINY_MODEL.to_dict()
    loaded = load_checkpoint(path)
    assert loaded.config == TINY_MODEL and not loaded.training
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    ids = torch.randint(0, 256, (2, 32))
    torch.testing.assert_close(loaded(ids).logits, result.model(ids).logits, rtol=0, atol=0)


def test_cli_writes_logs_and_checkpoints(tmp_path):
    assert main(["--runs", "dense", "moe_cf0.5", "--steps", "2", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.json", "dense.pt",
                                                          "moe_cf0.5.json"]
    log = load_log("moe_cf0.5", tmp_path)
    assert log["command"].startswith("python -m moe_lab.train --runs dense moe_cf0.5")
    assert log["model_config"]["capacity_factor"] == 0.5
    assert log["evals"][-1]["step"] == 2
    with pytest.raises(ValueError, match="runs"):
        main(["--runs", "nope", "--out", str(tmp_path)])


@pytest.mark.parametrize("name", sorted(LESSON05_RUNS))
def test_shipped_results_match_the_run_registry(name):
    model_config, ship_checkpoint = LESSON05_RUNS[name]
    log = load_log(name)
    # logs written before a field existed hold its default (num_shared_experts = 0)
    assert ModelConfig(**log["model_config"]) == model_config
    assert log["command"].startswith("python -m moe_lab.train")
    assert log["evals"][-1]["step"] == log["train_config"]["steps"]
    assert (RESULTS_DIR / f"{name}.pt").exists() == ship_checkpoint
    if ship_checkpoint:
        model = load_checkpoint(RESULTS_DIR / f"{name}.pt")
        assert model.config == model_config
        assert model.num_parameters() == log["params_total"]


def test_the_packed_step_statistics_agree_with_the_plain_functions():
    """One unit for entropy (bits) and one convention for the load: the statistics the training
    loop reads once per step equal router_entropy and max_over_mean_load computed on their own."""
    from moe_lab.lm.stats import max_over_mean_load, router_entropy, routing_summary, stats_from_summary

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 8, generator=generator) * 2
    probs = logits.softmax(-1)
    tokens_per_expert = torch.tensor([5, 0, 3, 4, 2, 2, 6, 2])
    stats = stats_from_summary(0, routing_summary(logits, probs, tokens_per_expert).tolist(), {})
    assert abs(stats.router_entropy - router_entropy(probs)) < 1e-6  # float64 against float32
    assert abs(stats.max_over_mean - max_over_mean_load(tokens_per_expert)) < 1e-9
    uniform = torch.full((4, 8), 1 / 8)
    uniform_stats = stats_from_summary(0, routing_summary(uniform.log(), uniform,
                                                          torch.full((8,), 1)).tolist(), {})
    assert abs(uniform_stats.router_entropy - 3.0) < 1e-9  # log2 8 bits
