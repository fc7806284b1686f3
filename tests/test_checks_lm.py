"""Lesson 05 checkers: the solutions pass, each catalogued bug fails with its hint."""

import math

import pytest
import torch
from lesson_sources import lesson_solution

from moe_lab.checks.lm import check_average_aux_loss, check_mutual_information

# ---------------------------------------------------------------- averaged aux loss


aux_solution = lesson_solution("05", "model_aux_loss")  # the lesson's own solution cell


def aux_summed(probs, idx, mask=None):
    return aux_solution(probs, idx, mask) * len(probs)


def aux_no_k(probs, idx, mask=None):
    return aux_solution(probs, idx, mask) * idx[0].shape[1]


def aux_no_mask(probs, idx, mask=None):
    return aux_solution(probs, idx, None)


def aux_pooled(probs, idx, mask=None):
    pooled_mask = None if mask is None else mask.repeat(len(probs))
    return aux_solution([torch.cat(probs)], [torch.cat(idx)], pooled_mask)


def aux_not_scalar(probs, idx, mask=None):
    return aux_solution(probs, idx, mask).reshape(1)


def aux_stub(probs, idx, mask=None):
    raise NotImplementedError


def test_aux_solution_passes(capsys):
    assert check_average_aux_loss(aux_solution)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("buggy, hint", [
    (aux_summed, "average the layers"),
    (aux_no_k, "divide the counts by K"),
    (aux_no_mask, "padding"),
    (aux_pooled, "pooled"),
    (aux_not_scalar, "scalar"),
])
def test_aux_bugs_fail_with_hints(buggy, hint):
    result = check_average_aux_loss(buggy, verbose=False)
    assert not result and result.status == "failed"
    assert hint in result.message


def test_aux_stub_is_not_implemented(capsys):
    result = check_average_aux_loss(aux_stub)
    assert not result and result.status == "not implemented"
    assert "not implemented yet" in capsys.readouterr().out


# ---------------------------------------------------------------- mutual information


mi_solution = lesson_solution("05", "mutual_info")  # the lesson's own solution cell


def mi_nats(counts):
    return mi_solution(counts) * math.log(2)


def mi_nan(counts):
    p = counts / counts.sum()
    return (p * torch.log2(p / (p.sum(1, keepdim=True) * p.sum(0, keepdim=True)))).sum()


def mi_joint_entropy(counts):
    p = counts / counts.sum()
    p = p[p > 0]
    return -(p * p.log2()).sum()


def mi_unnormalised(counts):
    p = counts  # forgot to divide by the total
    p_l, p_e = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return (p[nz] * torch.log2(p[nz] / (p_l * p_e)[nz])).sum()


def test_mi_solution_passes():
    assert check_mutual_information(mi_solution, verbose=False)
    assert check_mutual_information(lambda c: float(mi_solution(c)), verbose=False)


@pytest.mark.parametrize("buggy, hint", [
    (mi_nats, "nats"),
    (mi_nan, "0 log 0"),
    (mi_joint_entropy, "joint entropy"),
    (mi_unnormalised, "differs"),
])
def test_mi_bugs_fail_with_hints(buggy, hint):
    result = check_mutual_information(buggy, verbose=False)
    assert not result and result.status == "failed"
    assert hint in result.message


def test_mi_stub_and_crash():
    def stub(counts):
        raise NotImplementedError

    assert check_mutual_information(stub, verbose=False).status == "not implemented"
    assert check_mutual_information(lambda c: c.foo, verbose=False).status == "error"
    with pytest.raises(TypeError):
        check_mutual_information("not a function")
