"""The router: shapes, dtypes, normalisation conventions, noise in training only, the bias."""

import pytest
import torch

from moe_lab import BiasBalancer, TopKRouter, topk_routing


def test_router_output_shapes_and_dtypes():
    router = TopKRouter(16, 8, 2)
    out = router(torch.randn(3, 5, 16))
    assert out.logits.shape == (15, 8) and out.logits.dtype == torch.float32
    assert out.probs.shape == (15, 8)
    assert out.topk_idx.shape == (15, 2) and out.topk_idx.dtype == torch.int64
    assert out.topk_weights.shape == (15, 2)
    torch.testing.assert_close(out.probs, torch.softmax(out.logits, -1))
    assert router.weight.shape == (8, 16)


def test_normalized_weights_equal_softmax_over_topk_logits():
    """Mixtral: softmax(topk(logits)) == renormalised topk(softmax(logits))."""
    router = TopKRouter(16, 8, 3, normalize=True)
    out = router(torch.randn(40, 16))
    topk_logits = out.logits.gather(-1, out.topk_idx)
    torch.testing.assert_close(out.topk_weights, torch.softmax(topk_logits, -1))
    torch.testing.assert_close(out.topk_weights.sum(-1), torch.ones(40))


def test_raw_weights_are_the_probabilities():
    router = TopKRouter(16, 8, 1, normalize=False)  # Switch top-1
    out = router(torch.randn(40, 16))
    torch.testing.assert_close(out.topk_weights, out.probs.max(-1, keepdim=True).values)
    assert (out.topk_weights < 1).all()


def test_topk_is_sorted_best_first():
    out = TopKRouter(16, 8, 4)(torch.randn(30, 16))
    chosen = out.probs.gather(-1, out.topk_idx)
    assert (chosen[:, :-1] >= chosen[:, 1:]).all()


def test_sigmoid_scoring_deepseek():
    router = TopKRouter(16, 8, 2, scoring="sigmoid")
    out = router(torch.randn(10, 16))
    torch.testing.assert_close(out.probs, torch.sigmoid(out.logits))
    expected = out.probs.gather(-1, out.topk_idx)
    torch.testing.assert_close(out.topk_weights, expected / expected.sum(-1, keepdim=True))


def test_topk_routing_ranks_the_logits_where_sigmoid_saturates():
    """sigmoid(20), sigmoid(30) and sigmoid(25) all round to 1.0 in float32: ranking the scores
    ties and keeps expert 0; given the logits (no bias, no groups) the choice is the best,
    expert 1, with the same weight. With a selection bias score + bias is ranked, as DeepSeek-V3
    does (a saturated tie is then the family's own)."""
    logits = torch.tensor([[20.0, 30.0, 25.0]])
    probs = torch.sigmoid(logits)
    assert torch.equal(probs, torch.ones(1, 3))  # the scores do tie
    assert topk_routing(probs, 1, normalize=False)[0].tolist() == [[0]]
    idx, weights = topk_routing(probs, 1, normalize=False, router_logits=logits)
    assert idx.tolist() == [[1]] and weights.tolist() == [[1.0]]
    bias = torch.tensor([0.0, 0.0, 0.5])
    assert topk_routing(probs, 1, router_logits=logits, selection_bias=bias)[0].tolist() == [[2]]
    with pytest.raises(ValueError, match="router_logits must have router_probs' shape"):
        topk_routing(probs, 1, router_logits=logits[:, :2])


def test_router_runs_in_fp32_under_bf16_input():
    router = TopKRouter(32, 8, 2)
    x = torch.randn(64, 32).to(torch.bfloat16)
    out = router(x)
    assert out.logits.dtype == torch.float32 and out.topk_weights.dtype == torch.float32
    expected = x.float() @ router.weight.detach().T
    torch.testing.assert_close(out.logits, expected)


def test_bf16_router_dtype_is_coarser_than_fp32():
    torch.manual_seed(0)
    fp32 = TopKRouter(64, 64, 2)
    bf16 = TopKRouter(64, 64, 2, router_dtype=torch.bfloat16)
    bf16.load_state_dict(fp32.state_dict())
    x = torch.randn(2000, 64)
    flips = (fp32(x).topk_idx != bf16(x).topk_idx).any(-1).sum()
    assert flips > 0  # near-ties flip in bf16: why routers run in fp32


@pytest.mark.parametrize("noise", ["noisy_topk", "jitter"])
def test_noise_only_in_training(noise):
    torch.manual_seed(0)
    router = TopKRouter(16, 8, 2, noise=noise)
    clean = TopKRouter(16, 8, 2)
    clean.weight.data.copy_(router.weight.data)
    if router.noise_weight is not None:
        router.noise_weight.data.fill_(1.0)  # a visible noise scale
    x = torch.randn(50, 16)
    router.train()
    noisy = router(x).logits
    assert not torch.allclose(noisy, clean(x).logits)
    router.eval()
    torch.testing.assert_close(router(x).logits, clean(x).logits)
    torch.testing.assert_close(router(x).logits, router(x).logits)


def test_noisy_topk_noise_scale_is_learned():
    router = TopKRouter(16, 8, 2, noise="noisy_topk")
    router.noise_weight.data.normal_()
    router.train()
    router(torch.randn(20, 16)).topk_weights.sum().backward()
    assert router.noise_weight.grad is not None and router.noise_weight.grad.abs().sum() > 0


def test_bias_changes_the_choice_never_the_weights():
    router = TopKRouter(16, 4, 1)
    x = torch.randn(200, 16)
    before = router(x)
    router.score_correction_bias[:] = torch.tensor([5.0, 0.0, 0.0, 0.0])  # force expert 0
    after = router(x)
    assert (after.topk_idx == 0).all() and not (before.topk_idx == 0).all()
    # weights stay the unbiased probabilities of the chosen expert, renormalised
    torch.testing.assert_close(after.probs, before.probs)
    torch.testing.assert_close(after.topk_weights, torch.ones(200, 1))


def test_bias_balancer_update_rule_and_weights_untouched():
    router = TopKRouter(16, 4, 2)
    weight_before = router.weight.detach().clone()
    balancer = BiasBalancer(router, gamma=0.1)
    bias = balancer.update(torch.tensor([10, 2, 2, 2]))  # mean 4
    torch.testing.assert_close(bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))
    bias = balancer.update(torch.tensor([4, 4, 4, 4]))  # balanced: no change
    torch.testing.assert_close(bias, torch.tensor([-0.1, 0.1, 0.1, 0.1]))
    assert torch.equal(router.weight, weight_before)
    assert not router.score_correction_bias.requires_grad


def test_bias_balancer_evens_out_a_skewed_router():
    torch.manual_seed(0)
    router = TopKRouter(16, 4, 2)
    router.weight.data[0] += 0.3  # expert 0 favoured
    balancer = BiasBalancer(router, gamma=0.002)
    held_out = torch.randn(2048, 16) + 0.5

    def max_over_mean():
        load = torch.bincount(router(held_out).topk_idx.flatten(), minlength=4).float()
        return (load.max() / load.mean()).item()

    start = max_over_mean()
    for _ in range(400):  # a fresh batch each step, as in training
        x = torch.randn(256, 16) + 0.5
        balancer.update(torch.bincount(router(x).topk_idx.flatten(), minlength=4))
    assert start > 1.5
    assert max_over_mean() < 1.15


def test_topk_routing_function_matches_router():
    router = TopKRouter(16, 8, 2)
    out = router(torch.randn(10, 16))
    idx, weights = topk_routing(out.probs, 2)
    assert torch.equal(idx, out.topk_idx)
    torch.testing.assert_close(weights, out.topk_weights)


def test_router_stays_fp32_under_autocast():
    router = TopKRouter(32, 8, 2)
    x = torch.randn(64, 32)
    expected = router(x).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = router(x)
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits, expected)
