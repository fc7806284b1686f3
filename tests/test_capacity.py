"""Capacity and token dropping: never over capacity, nothing lost, drops in token order."""

import math

import pytest
import torch

from moe_lab import SparseMoE, compute_capacity, make_routing_plan


@pytest.mark.parametrize(("cf", "n", "k", "e", "expected"), [
    (1.0, 16, 2, 8, 4),
    (1.25, 16, 2, 8, 5),
    (1.0, 10, 1, 4, 3),  # ceil(2.5)
    (0.1, 4, 1, 8, 1),
    (2.0, 0, 2, 4, 0),
])
def test_compute_capacity(cf, n, k, e, expected):
    assert compute_capacity(cf, n, k, e) == expected == math.ceil(cf * n * k / e)


def test_drops_happen_in_token_order():
    # every token wants expert 0 first; capacity 2: tokens 0 and 1 keep it, the rest drop
    topk_idx = torch.tensor([[0, 1], [0, 2], [0, 3], [0, 1], [0, 2]])
    plan = make_routing_plan(topk_idx, torch.full((5, 2), 0.5), 4, capacity=2)
    assert plan.keep[:, 0].tolist() == [True, True, False, False, False]
    assert plan.keep[:, 1].tolist() == [True, True, True, True, True]
    assert plan.tokens_per_expert.tolist() == [2, 2, 2, 1]
    assert plan.position[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_dropped_assignment_contributes_nothing():
    torch.manual_seed(0)
    layer = SparseMoE(8, 16, 4, 1, capacity_factor=0.25, dispatch="sorted")
    x = torch.randn(16, 8)
    out = layer(x)
    dropped_tokens = out.dropped[:, 0]
    assert dropped_tokens.any()
    assert torch.equal(out.y[dropped_tokens], torch.zeros_like(out.y[dropped_tokens]))
    assert (out.y[~dropped_tokens].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("dispatch", ["dense", "loop", "sorted", "padded"])
@pytest.mark.parametrize("cf", [0.25, 0.5, 1.0, 1.5])
def test_capacity_never_exceeded_and_nothing_lost(dispatch, cf):
    torch.manual_seed(1)
    layer = SparseMoE(8, 16, 8, 2, capacity_factor=cf, dispatch=dispatch)
    x = torch.randn(50, 8) + 2.0  # a skewed batch: some experts overflow
    out = layer(x)
    capacity = layer.capacity(50)
    assert out.tokens_per_expert.max() <= capacity
    kept, dropped = out.tokens_per_expert.sum().item(), out.dropped.sum().item()
    assert kept + dropped == 50 * 2
    recount = torch.bincount(out.router.topk_idx[~out.dropped], minlength=8)
    assert torch.equal(recount, out.tokens_per_expert)


def test_dropless_drops_nothing():
    out = SparseMoE(8, 16, 8, 2)(torch.randn(64, 8) + 3.0)
    assert not out.dropped.any() and out.tokens_per_expert.sum() == 128
