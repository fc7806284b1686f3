"""Bad input: a clear error naming the argument, raised before any work."""

import pytest
import torch

from moe_lab import (
    BiasBalancer,
    Experts,
    SparseMoE,
    TopKRouter,
    cv_squared,
    importance_loss,
    load_balancing_loss,
    router_z_loss,
)

CONSTRUCTOR_CASES = [
    (lambda: TopKRouter(16, 4, 5), ValueError, "top_k"),
    (lambda: TopKRouter(16, 4, 0), ValueError, "top_k"),
    (lambda: TopKRouter(16, 4, 1.5), TypeError, "top_k"),
    (lambda: TopKRouter(0, 4, 1), ValueError, "d_model"),
    (lambda: TopKRouter(16, 4, 2, noise="gumbel"), ValueError, "noise"),
    (lambda: TopKRouter(16, 4, 2, scoring="relu"), ValueError, "scoring"),
    (lambda: TopKRouter(16, 4, 2, router_dtype=torch.int32), TypeError, "router_dtype"),
    (lambda: Experts(4, 16, 32, activation="tanh"), ValueError, "activation"),
    (lambda: Experts(4, 16, -1), ValueError, "d_ff"),
    (lambda: SparseMoE(16, 32, 4, 8), ValueError, "top_k"),
    (lambda: SparseMoE(16, 32, 4, 2, dispatch="fast"), ValueError, "dispatch"),
    (lambda: SparseMoE(16, 32, 4, 2, capacity_factor=0), ValueError, "capacity_factor"),
    (lambda: SparseMoE(16, 32, 4, 2, capacity_factor=-1.0), ValueError, "capacity_factor"),
    (lambda: SparseMoE(16, 32, 4, 2, capacity_factor="1"), TypeError, "capacity_factor"),
    (lambda: SparseMoE(16, 32, True, 1), TypeError, "num_experts"),
    (lambda: SparseMoE(16, 32, 4, 2, num_shared_experts=-1), ValueError, "num_shared_experts"),
    (lambda: SparseMoE(16, 32, 4, 2, num_shared_experts=1.0), TypeError, "num_shared_experts"),
    (lambda: BiasBalancer("router"), TypeError, "router"),
    (lambda: BiasBalancer(TopKRouter(8, 4, 1), gamma=0), ValueError, "gamma"),
]


@pytest.mark.parametrize(("make", "error", "argument"), CONSTRUCTOR_CASES)
def test_bad_constructor_arguments(make, error, argument):
    with pytest.raises(error, match=argument):
        make()


layer = SparseMoE(16, 32, 4, 2)
probs = torch.softmax(torch.randn(6, 4), -1)
topk_idx = probs.topk(2, -1).indices
CALL_CASES = [
    (lambda: layer(torch.randn(5, 8)), ValueError, "d_model"),
    (lambda: layer(torch.randint(0, 5, (5, 16))), TypeError, "x"),
    (lambda: layer([[0.0] * 16]), TypeError, "x"),
    (lambda: layer(torch.randn(2, 2, 2, 16)), ValueError, "x"),
    (lambda: layer.router(torch.randn(5, 15)), ValueError, "d_model"),
    (lambda: load_balancing_loss(probs, topk_idx.float()), TypeError, "topk_idx"),
    (lambda: load_balancing_loss(probs, topk_idx[:3]), ValueError, "topk_idx"),
    (lambda: load_balancing_loss(probs, topk_idx + 4), ValueError, "topk_idx"),
    (lambda: load_balancing_loss(probs[0], topk_idx), ValueError, "router_probs"),
    (lambda: load_balancing_loss(probs, topk_idx, torch.ones(5)), ValueError, "mask"),
    (lambda: router_z_loss(torch.randn(6)), ValueError, "router_logits"),
    (lambda: router_z_loss(torch.randn(6, 4), mask=[1] * 6), TypeError, "mask"),
    (lambda: cv_squared(torch.randn(3, 3)), ValueError, "x"),
    (lambda: cv_squared(torch.arange(3)), TypeError, "x"),
    (lambda: importance_loss(torch.randn(6)), ValueError, "router_probs"),
    (lambda: BiasBalancer(TopKRouter(8, 4, 1)).update(torch.ones(3)), ValueError,
     "tokens_per_expert"),
]


@pytest.mark.parametrize(("call", "error", "argument"), CALL_CASES)
def test_bad_call_arguments(call, error, argument):
    with pytest.raises(error, match=argument):
        call()
