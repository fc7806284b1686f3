"""Lesson 00's exercise: the lesson's solution passes check_moe_ffn_params, so do answers written
differently, and each usual mistake fails with the message that names it (every hint asserted)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from lesson_sources import lesson_path, lesson_solution

from moe_lab.checks.params import CASES, check_moe_ffn_params, reference_moe_ffn_params
from moe_lab.systems.params import count_parameters, ffn_params

moe_ffn_params_solution = lesson_solution("00", "moe_ffn_params")  # the lesson's solution cell


def _parts(c):
    router = c.d_model * c.num_experts if c.num_experts > 1 else 0
    return c.num_layers, router, ffn_params(c.d_model, c.d_ff, c.ffn_matrices)


# ---------------------------------------------------------------- correct, written differently


def from_the_package(config):
    counts = count_parameters(config)
    return tuple(sum(getattr(counts[n], kind) for n in ("router", "experts"))
                 for kind in ("total", "active"))


def by_torch_modules(config):
    """Build one layer's router and experts at a small width, count their tensors, scale up."""
    c = config
    gate = c.num_experts * c.d_model if c.num_experts > 1 else 0  # nn.Linear(D, E) weight
    matrices = [c.d_model * c.d_ff] * c.ffn_matrices  # each (D, F) or (F, D)
    expert = sum(matrices)
    return (c.num_layers * gate + c.num_layers * c.num_experts * expert,
            c.num_layers * gate + c.num_layers * c.top_k * expert)


def as_a_list(config):
    L, router, expert = _parts(config)
    return [L * router + L * config.num_experts * expert, L * router + L * config.top_k * expert]


@pytest.mark.parametrize("fn", [moe_ffn_params_solution, from_the_package, by_torch_modules,
                                as_a_list])
def test_correct_answers_pass(fn, capsys):
    assert check_moe_ffn_params(fn)
    assert "✅" in capsys.readouterr().out


def test_reference_matches_mixtral_published_counts():
    # Mixtral 8x7B: 32 layers of 8 experts of 3 * 4096 * 14336 weights and a 4096 x 8 router
    total, active = reference_moe_ffn_params(CASES[0][1])
    assert total == 32 * (4096 * 8 + 8 * 3 * 4096 * 14336)
    assert active == 32 * (4096 * 8 + 2 * 3 * 4096 * 14336)
    assert max(reference_moe_ffn_params(c)[0] for _, c in CASES) > 2**32  # an overflow case


# ---------------------------------------------------------------- usual mistakes


def router_for_dense(config):
    c = config
    expert = ffn_params(c.d_model, c.d_ff, c.ffn_matrices)
    return (c.num_layers * (c.d_model * c.num_experts + c.num_experts * expert),
            c.num_layers * (c.d_model * c.num_experts + c.top_k * expert))


def no_router(config):
    L, _, expert = _parts(config)
    return L * config.num_experts * expert, L * config.top_k * expert


def router_not_active(config):
    L, router, expert = _parts(config)
    return L * (router + config.num_experts * expert), L * config.top_k * expert


def active_uses_e(config):
    L, router, expert = _parts(config)
    return L * (router + config.num_experts * expert), L * (router + config.num_experts * expert)


def total_uses_k(config):
    L, router, expert = _parts(config)
    return L * (router + config.top_k * expert), L * (router + config.top_k * expert)


def one_layer(config):
    _, router, expert = _parts(config)
    return router + config.num_experts * expert, router + config.top_k * expert


def always_swiglu(config):
    return moe_ffn_params_solution(dataclasses.replace(config, ffn_matrices=3))


def swapped(config):
    total, active = moe_ffn_params_solution(config)
    return active, total


def int32_tensor(config):
    """Counts in int32 numpy arithmetic (wraps silently), returned as Python ints."""
    L, router, expert = (np.int32(v) for v in _parts(config))
    with np.errstate(over="ignore"):
        total = L * (router + np.int32(config.num_experts) * expert)
        active = L * (router + np.int32(config.top_k) * expert)
    return int(total), int(active)


def returns_tensor(config):
    return tuple(torch.tensor(v) for v in moe_ffn_params_solution(config))


def returns_floats(config):
    return tuple(float(v) for v in moe_ffn_params_solution(config))


def returns_total_only(config):
    return moe_ffn_params_solution(config)[0]


def hard_codes_top_2(config):
    return moe_ffn_params_solution(dataclasses.replace(config, top_k=min(2, config.num_experts)))


BUGS = [
    (router_for_dense, r"A dense model \(E = 1\) has no router"),
    (no_router, "The routers are missing"),
    (router_not_active, "count its D x E weights in the active parameters too"),
    (active_uses_e, "a token runs only K of the E experts"),
    (total_uses_k, "every one of the E experts is stored"),
    (one_layer, "That is one layer"),
    (always_swiglu, "not always 3"),
    (swapped, r"Returned \(active, total\)"),
    (int32_tensor, r"wrapped around 2\*\*32"),
    (returns_tensor, r"as a Python int, got Tensor \(use int\(\.\.\.\) or \.item\(\)\)"),
    (returns_floats, "as a Python int, got float"),
    (returns_total_only, r"Return a pair \(total, active\), got int"),
    (hard_codes_top_2, r"For a Switch-style model .*reference is"),
]


@pytest.mark.parametrize(("bug", "hint"), BUGS, ids=[b.__name__ for b, _ in BUGS])
def test_usual_mistakes_get_their_hint(bug, hint, capsys):
    result = check_moe_ffn_params(bug)
    assert not result and result.status == "failed"
    assert re.search(hint, result.message), result.message
    assert "❌" in capsys.readouterr().out


def test_hard_coded_k_gets_no_false_hint():
    message = check_moe_ffn_params(hard_codes_top_2, verbose=False).message
    assert re.fullmatch(r"For .*, got \(\d+, \d+\)\.", message), message  # no hint it did not earn


def test_stub_and_crash():
    def stub(config):
        raise NotImplementedError("your code here")

    def crash(config):
        return config.num_routers

    assert check_moe_ffn_params(stub, verbose=False).status == "not implemented"
    crashed = check_moe_ffn_params(crash, verbose=False)
    assert crashed.status == "error" and "AttributeError" in crashed.message
    with pytest.raises(TypeError, match="pass your function"):
        check_moe_ffn_params(42)


def test_lesson_00_lists_every_lesson():
    """The course table of lesson 00 has a row for every lesson source, and no other."""
    from lessons import lesson_sources

    table = re.findall(r"^# \| (\d\d) \|", lesson_path("00").read_text(), flags=re.M)
    expected = {p.stem[:2] for p in lesson_sources()}
    assert sorted(table) == sorted(expected)


def test_the_reference_solution_is_labelled_as_such():
    """Under the learner's "not implemented yet", the solution cell's line names the solution."""
    labelled = check_moe_ffn_params(moe_ffn_params_solution, verbose=False)
    assert labelled.message.startswith("reference solution (moe_ffn_params_solution): ")
    assert "reference solution" not in check_moe_ffn_params(from_the_package, verbose=False).message
