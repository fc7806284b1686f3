"""The toy task of lesson 04: its data, its training loop, and the claims the lesson makes about
it (collapse without a balancing method, balance with each one)."""

from __future__ import annotations

import pytest
import torch

from moe_lab.lm.stats import StepStats
from moe_lab.lm.toy import ToyConfig, make_toy_targets, train_toy


def test_targets_permute_each_group():
    config = ToyConfig(vocab_size=24, num_groups=4)
    targets = make_toy_targets(config)
    for group in range(4):
        members = torch.arange(group, 24, 4)
        assert sorted(targets[members].tolist()) == members.tolist()
    assert torch.equal(targets, make_toy_targets(config))


@pytest.mark.parametrize(("field", "value", "error"), [
    ("balance", "magic", ValueError), ("top_k", 9, ValueError), ("steps", 0, ValueError),
    ("lr", -1.0, ValueError), ("z_coef", -0.1, ValueError), ("d_model", 2.5, TypeError)])
def test_config_rejects_bad_values(field, value, error):
    with pytest.raises(error, match=field):
        ToyConfig(**{field: value})


def test_callbacks_get_every_step_and_threads_are_restored():
    seen: list[StepStats] = []
    threads = torch.get_num_threads()
    run = train_toy(ToyConfig(steps=5, balance="switch", z_coef=1e-3), callbacks=[seen.append],
                    progress=False)
    assert [s.step for s in seen] == [0, 1, 2, 3, 4] and run.history == seen
    assert set(seen[0].losses) == {"task", "switch", "z"}
    assert sum(seen[0].load) == pytest.approx(1.0)
    assert torch.get_num_threads() == threads


def test_runs_are_reproducible():
    a = train_toy(ToyConfig(steps=8), progress=False)
    b = train_toy(ToyConfig(steps=8), progress=False)
    assert [s.load for s in a.history] == [s.load for s in b.history]


@pytest.mark.slow
def test_collapse_without_balancing_and_its_fixes():
    """The lesson's claims, on the default config (about a second per run)."""
    collapsed = train_toy(ToyConfig(), progress=False)
    first, last = collapsed.history[0], collapsed.final
    assert last.max_over_mean > first.max_over_mean and last.max_over_mean > 5.0
    assert last.losses["z"] > 2 * first.losses["z"]  # the logits grow
    for balance in ("switch", "importance", "bias"):
        fixed = train_toy(ToyConfig(balance=balance), progress=False)
        assert fixed.final.max_over_mean < 2.5, balance
    with_z = train_toy(ToyConfig(z_coef=1e-2), progress=False)
    assert with_z.final.losses["z"] < 0.1 * last.losses["z"]
