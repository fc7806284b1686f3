"""Expert choice, Soft MoE and sparse upcycling against plain loops (outputs and gradients), their
properties over random shapes (hypothesis), bad input, empty input, and the causality probe."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from plain_references import one_expert

from moe_lab import ExpertChoiceMoE, Experts, SoftMoE, SparseMoE, upcycle
from moe_lab.dispatch import DISPATCH_STRATEGIES
from moe_lab.lm.model import DenseFFN
from moe_lab.variants.causality import last_token_perturbation
from moe_lab.variants.expert_choice import expert_choice_capacity, expert_choice_routing
from moe_lab.variants.soft_moe import soft_moe_weights


def grads_of(y, inputs, grad_y):
    return torch.autograd.grad(y, inputs, grad_y, allow_unused=True)


def assert_same_outputs_and_grads(layer, x, forward, reference):
    grad_y = torch.randn(x.shape)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    params = list(layer.parameters())
    y1, y2 = forward(x1), reference(x2)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-4)
    g1, g2 = grads_of(y1, [x1, *params], grad_y), grads_of(y2, [x2, *params], grad_y)
    names = ["x", *(n for n, _ in layer.named_parameters())]
    for name, a, b in zip(names, g1, g2, strict=True):
        if a is None and b is None:
            continue
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------------------- expert choice


def expert_choice_loop(layer, x):
    """Each expert sorts the tokens by its probability (Python sort), keeps the best C, and adds
    gate * Expert_e(x_n) to token n; one token and one expert at a time."""
    x_flat = x.reshape(-1, layer.d_model)
    num_tokens = x_flat.shape[0]
    logits = x_flat @ layer.router.weight.T  # (N, E)
    probs = torch.softmax(logits, dim=-1)
    capacity = min(math.ceil(layer.capacity_factor * num_tokens / layer.num_experts), num_tokens)
    rows = [torch.zeros(layer.d_model) for _ in range(num_tokens)]
    for e in range(layer.num_experts):
        ranked = sorted(range(num_tokens), key=lambda n: -float(probs[n, e].detach()))[:capacity]
        for n in ranked:
            rows[n] = rows[n] + probs[n, e] * one_expert(layer.experts, e, x_flat[n])
    return torch.stack(rows).view(x.shape)


EC_CASES = [  # (shape, D, F, E, capacity_factor, activation)
    ((12, 8), 8, 16, 4, 1.0, "swiglu"),
    ((1, 8), 8, 16, 4, 1.0, "swiglu"),  # N = 1: C = 1, every expert takes the one token
    ((2, 5, 8), 8, 12, 3, 2.0, "gelu"),
    ((7, 6), 6, 8, 8, 0.5, "relu"),  # E > N
    ((9, 4), 4, 8, 2, 10.0, "swiglu"),  # C clamped to N: every expert takes every token
]


@pytest.mark.parametrize("case", EC_CASES, ids=[str(c) for c in EC_CASES])
def test_expert_choice_matches_loop(case):
    shape, d, f, e, cf, act = case
    layer = ExpertChoiceMoE(d, f, e, capacity_factor=cf, activation=act)
    assert_same_outputs_and_grads(layer, torch.randn(shape), lambda x: layer(x).y,
                                  lambda x: expert_choice_loop(layer, x))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 24), e=st.integers(1, 9), cf=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.5]),
       seed=st.integers(0, 2**16))
def test_expert_choice_exact_load_and_permutation_equivariance(n, e, cf, seed):
    torch.manual_seed(seed)
    layer = ExpertChoiceMoE(4, 8, e, capacity_factor=cf)
    x = torch.randn(n, 4)
    out = layer(x)
    capacity = min(math.ceil(cf * n / e), n)
    assert out.tokens_per_expert.tolist() == [capacity] * e
    assert out.token_idx.shape == (e, capacity)
    for row in out.token_idx:  # C distinct tokens per expert
        assert len(set(row.tolist())) == capacity
    assert int(out.experts_per_token.sum()) == e * capacity
    assert int(out.experts_per_token.min()) >= 0 and int(out.experts_per_token.max()) <= e
    assert torch.isfinite(out.y).all()
    # permuting the tokens permutes the outputs (no position enters the choice); with E = 1 every
    # probability is exactly 1, a tie that topk may break either way, so we need E >= 2
    if e >= 2:
        perm = torch.randperm(n)
        torch.testing.assert_close(layer(x[perm]).y, out.y[perm], atol=1e-5, rtol=1e-4)


def test_expert_choice_routing_picks_each_experts_best_tokens():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    token_idx, gates = expert_choice_routing(probs, 2)
    assert token_idx.tolist() == [[0, 1], [2, 3]]
    torch.testing.assert_close(gates, torch.tensor([[0.7, 0.6], [0.9, 0.8]]))
    assert expert_choice_capacity(1.0, 10, 4) == 3
    assert expert_choice_capacity(8.0, 10, 4) == 10


# ---------------------------------------------------------------------------- Soft MoE


def soft_moe_loop(layer, x):
    """Per sequence, per slot, per token: the two softmaxes with exp and sums, then the mixes."""
    seqs = x if x.dim() == 3 else x.unsqueeze(0)
    out = []
    for seq in seqs:
        logits = seq @ layer.slot_embeds  # (T, E*S)
        num_tokens, num_slots = logits.shape
        slot_out = []
        for j in range(num_slots):
            denom = sum(torch.exp(logits[t, j]) for t in range(num_tokens))
            slot = sum(torch.exp(logits[t, j]) / denom * seq[t] for t in range(num_tokens))
            slot_out.append(one_expert(layer.experts, j // layer.slots_per_expert, slot))
        rows = []
        for t in range(num_tokens):
            denom = sum(torch.exp(logits[t, j]) for j in range(num_slots))
            rows.append(sum(torch.exp(logits[t, j]) / denom * slot_out[j] for j in range(num_slots)))
        out.append(torch.stack(rows))
    return torch.stack(out).view(x.shape)


SOFT_CASES = [  # (shape, D, F, E, S, activation)
    ((6, 8), 8, 16, 4, 1, "swiglu"),
    ((1, 8), 8, 16, 2, 3, "swiglu"),  # one token: every slot is that token
    ((3, 5, 6), 6, 8, 3, 2, "gelu"),
    ((2, 4, 4), 4, 8, 5, 1, "relu"),  # more slots than tokens
]


@pytest.mark.parametrize("case", SOFT_CASES, ids=[str(c) for c in SOFT_CASES])
def test_soft_moe_matches_loop(case):
    shape, d, f, e, s, act = case
    layer = SoftMoE(d, f, e, slots_per_expert=s, activation=act)
    assert_same_outputs_and_grads(layer, torch.randn(shape), lambda x: layer(x).y,
                                  lambda x: soft_moe_loop(layer, x))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), t=st.integers(1, 12), e=st.integers(1, 6), s=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_soft_moe_weights_are_convex_and_sequences_do_not_mix(b, t, e, s, seed):
    torch.manual_seed(seed)
    layer = SoftMoE(4, 8, e, slots_per_expert=s)
    x = torch.randn(b, t, 4) * 3
    out = layer(x)
    assert out.dispatch_weights.shape == out.combine_weights.shape == (b, t, e * s)
    # every slot: weights over the tokens of its sequence sum to 1; every token: over the slots
    torch.testing.assert_close(out.dispatch_weights.sum(1), torch.ones(b, e * s))
    torch.testing.assert_close(out.combine_weights.sum(-1), torch.ones(b, t))
    assert (out.dispatch_weights >= 0).all() and (out.combine_weights >= 0).all()
    # changing sequence b-1 leaves the others untouched
    x2 = x.clone()
    x2[-1] = torch.randn(t, 4)
    y2 = layer(x2).y
    torch.testing.assert_close(y2[:-1], out.y[:-1], atol=0, rtol=0)
    # (N, D) is one sequence
    torch.testing.assert_close(layer(x[0]).y, out.y[0], atol=1e-5, rtol=1e-4)


def test_soft_moe_weights_survive_large_logits():
    logits = torch.tensor([[1000.0, -1000.0], [0.0, 1000.0]])
    dispatch, combine = soft_moe_weights(logits)
    assert torch.isfinite(dispatch).all() and torch.isfinite(combine).all()
    torch.testing.assert_close(dispatch, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


# ---------------------------------------------------------------------------- upcycling


@pytest.mark.parametrize("dispatch", DISPATCH_STRATEGIES)
@pytest.mark.parametrize(("e", "k"), [(8, 2), (4, 1), (4, 4), (16, 3)])
def test_upcycled_moe_equals_the_dense_ffn_at_step_0(dispatch, e, k):
    dense = DenseFFN(8, 16)
    moe = upcycle(dense, e, k, dispatch=dispatch)
    x = torch.randn(3, 7, 8)
    torch.testing.assert_close(moe(x).y, dense(x), atol=1e-6, rtol=1e-5)
    # every expert is a copy, the router is fresh and routes tokens to different experts
    for name, weight in moe.experts.named_parameters():
        assert all(torch.equal(weight[i], getattr(dense.experts, name)[0]) for i in range(e))
    assert moe.router.weight.requires_grad


@settings(max_examples=15, deadline=None)
@given(e=st.integers(1, 8), k=st.integers(1, 8), act=st.sampled_from(["swiglu", "gelu", "relu"]),
       n=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_upcycling_equal_at_step_0_over_shapes(e, k, act, n, seed):
    torch.manual_seed(seed)
    bank = Experts(1, 4, 8, activation=act)
    moe = upcycle(bank, e, min(k, e))
    x = torch.randn(n, 4)
    torch.testing.assert_close(moe(x).y, bank.forward_expert(x, 0), atol=1e-6, rtol=1e-5)


def test_upcycled_experts_drift_apart_after_a_step():
    torch.manual_seed(0)
    moe = upcycle(DenseFFN(8, 16), 4, 1)
    opt = torch.optim.SGD(moe.parameters(), lr=0.1)
    moe(torch.randn(64, 8)).y.pow(2).sum().backward()
    opt.step()
    w = moe.experts.w_up
    assert not torch.equal(w[0], w[1])


def test_a_raw_probability_router_would_not_be_equal():
    """Why renormalisation matters: the same copies with raw weights shrink the output."""
    torch.manual_seed(0)
    dense = DenseFFN(8, 16)
    raw = SparseMoE(8, 16, 8, 2, normalize=False)
    raw.experts.load_state_dict(upcycle(dense, 8, 2).experts.state_dict())
    x = torch.randn(10, 8)
    ratio = raw(x).y.norm() / dense(x).norm()
    assert ratio < 0.6  # about the sum of 2 of 8 probabilities


# ---------------------------------------------------------------------------- causality


def test_causality_probe_separates_the_designs():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8)
    dropless = SparseMoE(8, 16, 4, 2)
    report = last_token_perturbation(lambda v: dropless(v).y, x)
    assert report.max_change_earlier == 0.0 and report.max_change_other_sequences == 0.0
    expert_choice = ExpertChoiceMoE(8, 16, 4)
    assert last_token_perturbation(lambda v: expert_choice(v).y, x).share_changed_earlier > 0
    soft = SoftMoE(8, 16, 4)
    report = last_token_perturbation(lambda v: soft(v).y, x)
    assert report.share_changed_earlier == 1.0 and report.max_change_other_sequences == 0.0


# ---------------------------------------------------------------------------- bad and empty input

BAD = [
    (lambda: ExpertChoiceMoE(8, 16, 4, capacity_factor=0), ValueError, "capacity_factor"),
    (lambda: ExpertChoiceMoE(8, 16, 4, capacity_factor="1"), TypeError, "capacity_factor"),
    (lambda: ExpertChoiceMoE(8, 16, 0), ValueError, "num_experts"),
    (lambda: ExpertChoiceMoE(8, 16, 4, activation="tanh"), ValueError, "activation"),
    (lambda: ExpertChoiceMoE(8, 16, 4)(torch.randn(3, 7)), ValueError, "d_model"),
    (lambda: ExpertChoiceMoE(8, 16, 4)(torch.ones(3, 8, dtype=torch.long)), TypeError, "x"),
    (lambda: ExpertChoiceMoE(8, 16, 4)(torch.randn(1, 2, 3, 8)), ValueError, "x"),
    (lambda: expert_choice_routing(torch.rand(5, 3), 6), ValueError, "capacity"),
    (lambda: expert_choice_routing(torch.rand(5), 1), ValueError, "router_probs"),
    (lambda: SoftMoE(8, 16, 4, slots_per_expert=0), ValueError, "slots_per_expert"),
    (lambda: SoftMoE(8, 16, 4, slots_per_expert=1.5), TypeError, "slots_per_expert"),
    (lambda: SoftMoE(8, 0, 4), ValueError, "d_ff"),
    (lambda: SoftMoE(8, 16, 4)(torch.randn(3, 9)), ValueError, "d_model"),
    (lambda: SoftMoE(8, 16, 4)([[0.0] * 8]), TypeError, "x"),
    (lambda: soft_moe_weights(torch.randn(4)), ValueError, "slot_logits"),
    (lambda: upcycle(Experts(2, 8, 16), 4, 2), TypeError, "dense_ffn"),
    (lambda: upcycle("ffn", 4, 2), TypeError, "dense_ffn"),
    (lambda: upcycle(DenseFFN(8, 16), 4, 5), ValueError, "top_k"),
    (lambda: upcycle(DenseFFN(8, 16), 4, 2, capacity_factor=1.0), ValueError, "capacity_factor"),
    (lambda: upcycle(DenseFFN(8, 16), 4, 2, normalize=False), ValueError, "normalize"),
    (lambda: upcycle(DenseFFN(8, 16), 4, 2, num_shared_experts=1), ValueError, "num_shared"),
    (lambda: last_token_perturbation(lambda v: v, torch.randn(4, 8)), ValueError, "x"),
]


@pytest.mark.parametrize(("call", "error", "name"), BAD)
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()


@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8), (0, 5, 8)])
def test_empty_input_gives_empty_output(shape):
    x = torch.randn(*shape)
    out = ExpertChoiceMoE(8, 16, 4)(x)
    assert out.y.shape == shape and out.experts_per_token.shape == (0,)
    assert out.tokens_per_expert.tolist() == [0, 0, 0, 0]
    soft = SoftMoE(8, 16, 4, slots_per_expert=2)(x)
    assert soft.y.shape == shape
    assert soft.dispatch_weights.shape == soft.combine_weights.shape == shape[:-1] + (8,)
    assert upcycle(DenseFFN(8, 16), 4, 2)(x).y.shape == shape
