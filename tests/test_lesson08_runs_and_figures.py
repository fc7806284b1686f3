"""Lesson 08 beyond the core: the shipped runs match their registry, the CLI writes the
specialisation record, upcycle_model and train(init_model=...), the figures and the widget."""

import json
from dataclasses import replace

import pytest
import torch

from moe_lab.lm.model import ModelConfig, TinyLM, upcycle_model
from moe_lab.lm.train import LESSON08_RESULTS_DIR, LESSON08_RUNS, TrainConfig, load_log, main, train
from moe_lab.viz.beyond_topk import choice_loads, choice_loads_figure, slot_weights_heatmap_figure
from moe_lab.widgets.expert_choice import ExpertChoiceExplorer

SEEDS = (0, 1, 2)


@pytest.mark.parametrize("name", sorted(LESSON08_RUNS))
@pytest.mark.parametrize("seed", SEEDS)
def test_shipped_lesson08_logs_match_the_registry(name, seed):
    model_config, ship_checkpoint = LESSON08_RUNS[name]
    log = load_log(f"{name}_seed{seed}", LESSON08_RESULTS_DIR)
    assert ModelConfig(**log["model_config"]) == model_config
    assert log["train_config"]["seed"] == seed
    assert log["command"].startswith("python -m moe_lab.train --suite lesson08")
    assert log["evals"][-1]["step"] == log["train_config"]["steps"] == 400
    assert not ship_checkpoint and not (LESSON08_RESULTS_DIR / f"{name}_seed{seed}.pt").exists()
    model = TinyLM(model_config)
    assert log["params_total"] == model.num_parameters()
    assert log["params_active"] == model.num_active_parameters()
    spec = log["specialisation"]
    assert len(spec["mi_language"]) == len(spec["baseline_mi_language"]) == model_config.n_layers
    assert all(0 <= b < mi <= spec["h_language"]
               for mi, b in zip(spec["mi_language"], spec["baseline_mi_language"], strict=True))


def test_lesson08_layouts_have_equal_expert_budgets():
    widths = {name: (c.num_experts + c.num_shared_experts) * c.d_ff
              for name, (c, _) in LESSON08_RUNS.items()}
    active = {name: (c.top_k + c.num_shared_experts) * c.d_ff for name, (c, _) in LESSON08_RUNS.items()}
    assert set(widths.values()) == {512} and set(active.values()) == {128}


TINY = ModelConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=32, d_ff=16, num_experts=4,
                   top_k=2)
TINY_TRAIN = TrainConfig(steps=2, batch_size=2, seq_len=32, eval_every=2,
                         eval_windows_per_language=1, eval_batch_size=8)


def test_cli_suite_lesson08_writes_the_specialisation(tmp_path):
    assert main(["--suite", "lesson08", "--runs", "shared", "--steps", "1", "--seeds", "3",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared_seed3.json"]
    log = json.loads((tmp_path / "shared_seed3.json").read_text())
    assert log["model_config"]["num_shared_experts"] == 1
    assert log["train_config"]["seed"] == 3
    assert set(log["specialisation"]) >= {"mi_language", "baseline_mi_language", "h_language"}
    with pytest.raises(ValueError, match="runs"):
        main(["--suite", "lesson08", "--runs", "dense", "--out", str(tmp_path)])


def test_upcycle_model_equals_the_dense_model_and_trains_from_it():
    torch.manual_seed(0)
    dense = TinyLM(ModelConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=32, d_ff=16,
                               ffn="dense")).eval()
    moe = upcycle_model(dense, 4, 2)
    ids = torch.randint(0, 256, (2, 20))
    torch.testing.assert_close(moe(ids).logits, dense(ids).logits, atol=1e-5, rtol=1e-5)
    assert moe.config.ffn == "moe" and moe.config.num_experts == 4
    before = {k: v.clone() for k, v in moe.state_dict().items()}
    result = train(moe.config, TINY_TRAIN, progress=False, init_model=moe)
    assert all(torch.equal(v, moe.state_dict()[k]) for k, v in before.items())  # left unchanged
    assert result.model is not moe
    moved = [k for k, v in result.model.state_dict().items() if not torch.equal(v, before[k])]
    assert moved  # trained from the upcycled weights ...
    trained_router = result.model.blocks[0].ffn.router.weight
    assert (trained_router - before["blocks.0.ffn.router.weight"]).abs().max() < 0.1  # ... nearby
    with pytest.raises(TypeError, match="dense"):
        upcycle_model(moe, 4, 2)
    with pytest.raises(ValueError, match="init_model"):
        train(replace(TINY, num_experts=8), TINY_TRAIN, progress=False, init_model=moe)


def test_choice_loads_and_their_figure():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(20, 4) * 2, -1)
    loads = choice_loads(probs, 2, 2.0)
    assert loads.capacity == 10
    assert loads.expert_choice_tokens_per_expert == [10] * 4
    assert sum(loads.token_choice_tokens_per_expert) == 40
    assert sum(loads.expert_choice_experts_per_token) == 40
    assert loads.token_choice_experts_per_token == [2] * 20
    assert loads.tokens_left_out == sum(1 for n in loads.expert_choice_experts_per_token if n == 0)
    figure = choice_loads_figure(loads)
    assert [t.type for t in figure.data] == ["bar"] * 4
    assert list(figure.data[1].y) == [10] * 4
    assert sum(figure.data[3].y) == 20 and len(figure.data[3].x) == 5  # 0..E experts


def test_slot_heatmap_is_slots_by_tokens():
    weights = torch.softmax(torch.randn(5, 6), 0)
    figure = slot_weights_heatmap_figure(weights, list("abcde"), slots_per_expert=2)
    heatmap = figure.data[0]
    assert len(heatmap.z) == 6 and len(heatmap.z[0]) == 5
    assert list(heatmap.y)[:3] == ["e0.s0", "e0.s1", "e1.s0"]


def test_expert_choice_explorer_redraws_on_every_control():
    widget = ExpertChoiceExplorer("hello world", capacity_factor=1.0, top_k=1)
    n = len("hello world")
    assert widget.loads.expert_choice_tokens_per_expert == [2] * 8  # ceil(11 / 8)
    widget.capacity_factor.value = 8.0
    assert widget.loads.capacity == n  # every expert takes every token
    assert widget.loads.tokens_left_out == 0
    widget.top_k.value = 3
    assert widget.loads.token_choice_experts_per_token == [3] * n
    assert "0</b> of 11 tokens got no expert" in widget.note.value
    widget.text.value = ""  # nothing typed: nothing routed, not one space (issue 20)
    assert widget.loads is None and widget.figure is None and "Type a text" in widget.note.value
    widget.text.value = "x" * 100  # cut to the toy's 64 bytes, and said so
    assert widget.figure.layout.title.text.startswith("token choice vs expert choice")
    assert "the first 64 of the text's 100 bytes" in widget.note.value


def test_expert_choice_explorer_default_shows_tokens_without_an_expert():
    widget = ExpertChoiceExplorer()  # the lesson's prose: expert choice leaves some tokens out
    assert widget.loads.tokens_left_out > 0
    assert widget.capacity_factor.value == widget.top_k.value  # equal compute (c = K)
