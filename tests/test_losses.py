"""Auxiliary losses: exact values at known points, the padding mask, averaging over layers."""

import math

import pytest
import torch

from moe_lab import (
    average_over_layers,
    cv_squared,
    importance_loss,
    load_balancing_loss,
    router_z_loss,
)


def _uniform_routing(n, e, k):
    probs = torch.full((n, e), 1.0 / e)
    topk_idx = (torch.arange(n).unsqueeze(1) * k + torch.arange(k)) % e  # (N, K), balanced
    return probs, topk_idx


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("e", [4, 8])
def test_aux_loss_is_one_for_uniform_routing(k, e):
    probs, topk_idx = _uniform_routing(8 * e, e, k)
    assert load_balancing_loss(probs, topk_idx).item() == pytest.approx(1.0)


@pytest.mark.parametrize("e", [2, 4, 8, 64])
def test_aux_loss_is_e_at_full_collapse(e):
    probs = torch.zeros(10, e)
    probs[:, 0] = 1.0
    topk_idx = torch.zeros(10, 1, dtype=torch.long)
    assert load_balancing_loss(probs, topk_idx).item() == pytest.approx(e)


def test_aux_loss_at_a_hand_computed_point():
    # E=2, K=1: tokens 0,1 -> expert 0, token 2 -> expert 1; f = (2/3, 1/3)
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])  # P = (0.6, 0.4)
    topk_idx = torch.tensor([[0], [0], [1]])
    expected = 2 * (2 / 3 * 0.6 + 1 / 3 * 0.4)
    assert load_balancing_loss(probs, topk_idx).item() == pytest.approx(expected)


def test_aux_loss_gradient_flows_through_p_only():
    logits = torch.randn(6, 4, requires_grad=True)
    probs = torch.softmax(logits, -1)
    topk_idx = probs.topk(2, -1).indices
    load_balancing_loss(probs, topk_idx).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_hugging_face_mixtral_convention_is_k_times_ours():
    e, k = 8, 2
    probs = torch.softmax(torch.randn(64, e), -1)
    topk_idx = probs.topk(k, -1).indices
    # transformers' load_balancing_loss_func: one-hot (N, K, E), mean over N, sum over K and E
    expert_mask = torch.nn.functional.one_hot(topk_idx, e).float()  # (N, K, E)
    hf = e * torch.sum(expert_mask.mean(0) * probs.mean(0))
    torch.testing.assert_close(hf, k * load_balancing_loss(probs, topk_idx))


def test_z_loss_matches_its_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    z0 = math.log(math.e + math.e**2 + math.e**3)
    z1 = math.log(3.0)
    assert router_z_loss(logits).item() == pytest.approx((z0**2 + z1**2) / 2)


def test_cv_squared_uses_population_variance():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])  # var_pop = 1.25, mean = 2.5
    assert cv_squared(x).item() == pytest.approx(1.25 / 6.25)
    assert cv_squared(torch.tensor([3.0, 3.0, 3.0])).item() == pytest.approx(0.0)
    assert cv_squared(torch.tensor([5.0])).item() == 0.0


def test_importance_loss_is_cv_squared_of_summed_probs():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])  # importance (1.5, 0.5)
    assert importance_loss(probs).item() == pytest.approx(cv_squared(torch.tensor([1.5, 0.5])).item())
    uniform = torch.full((10, 4), 0.25)
    assert importance_loss(uniform).item() == pytest.approx(0.0)


def _with_padding(n_real=12, n_pad=5, e=4, k=2):
    torch.manual_seed(3)
    logits = torch.randn(n_real + n_pad, e)
    logits[n_real:] = 20 * torch.randn(n_pad, e)  # padding rows look nothing like real ones
    probs = torch.softmax(logits, -1)
    topk_idx = probs.topk(k, -1).indices
    mask = torch.arange(n_real + n_pad) < n_real
    return logits, probs, topk_idx, mask


@pytest.mark.parametrize("loss", ["aux", "z", "importance"])
def test_padding_mask_excludes_padding(loss):
    logits, probs, topk_idx, mask = _with_padding()
    compute = {
        "aux": lambda rows, m=None: load_balancing_loss(probs[rows], topk_idx[rows], m),
        "z": lambda rows, m=None: router_z_loss(logits[rows], m),
        "importance": lambda rows, m=None: importance_loss(probs[rows], m),
    }[loss]
    everything = torch.arange(len(mask))
    masked = compute(everything, mask)
    real_only = compute(mask.nonzero().squeeze(1))
    assert masked.item() == pytest.approx(real_only.item(), rel=1e-5)
    # negative control: without the mask the padding does change the value
    assert compute(everything).item() != pytest.approx(real_only.item(), rel=1e-3)


def test_average_over_layers_is_a_mean():
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(6.0)]
    assert average_over_layers(losses).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="per_layer_losses"):
        average_over_layers([])
