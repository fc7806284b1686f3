"""The expert-parallel layer equals the single-process SparseMoE: outputs and gradients (input,
router, experts), over 2 and 3 processes, with uneven token shards, uneven splits and experts (or
whole ranks) that receive nothing; a failing rank ends the group with a clear error."""

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_lab import SparseMoE
from moe_lab.systems.parallel import (
    ExpertParallelError,
    expert_owner,
    free_port,
    local_expert_order,
    run_expert_parallel,
    send_splits,
    splits_from_counts,
)

# (N, D, F, E, K, world_size, activation, experts that never get a token)
CASES = [
    pytest.param(9, 8, 12, 4, 2, 2, "swiglu", (3,), id="W2-E4-expert3-idle"),
    pytest.param(11, 8, 12, 6, 2, 3, "swiglu", (4, 5), id="W3-E6-rank2-receives-nothing"),
    pytest.param(7, 8, 8, 6, 1, 3, "gelu", (), id="W3-E6-top1-uneven-shards"),
]


def _layer_and_input(n, d, f, e, k, activation, idle, seed=0):
    torch.manual_seed(seed)
    moe = SparseMoE(d, f, e, k, activation=activation)
    x = torch.randn(n, d)  # (N, D)
    if idle:
        # positive tokens, positive router rows for busy experts, negative rows for idle ones:
        # an idle expert's logit is below every busy expert's, so top-k never picks it
        x = x.abs()
        with torch.no_grad():
            moe.router.weight.abs_()
            moe.router.weight[list(idle)] *= -1
    grad_y = torch.randn(n, d)  # (N, D)
    return moe, x, grad_y


def _single_process(moe, x, grad_y):
    x = x.clone().requires_grad_(True)
    out = moe(x)
    out.y.backward(grad_y)
    return out, x.grad


@pytest.mark.slow
@pytest.mark.parametrize("n, d, f, e, k, world, activation, idle", CASES)
def test_expert_parallel_equals_single_process(n, d, f, e, k, world, activation, idle):
    moe, x, grad_y = _layer_and_input(n, d, f, e, k, activation, idle)
    result = run_expert_parallel(moe, x, grad_y, world_size=world, timeout_s=90)
    reference, grad_x = _single_process(moe, x, grad_y)

    for expert in idle:
        assert reference.tokens_per_expert[expert] == 0
    torch.testing.assert_close(result.tokens_per_expert, reference.tokens_per_expert)
    torch.testing.assert_close(result.y, reference.y, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.grad_x, grad_x, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.grad_router, moe.router.weight.grad, atol=1e-5, rtol=1e-4)
    for name, param in moe.experts.named_parameters():
        torch.testing.assert_close(result.grad_experts[name], param.grad, atol=1e-5, rtol=1e-4)

    # the bookkeeping: token shards as tensor_split, rows sent = assignments per owner rank
    assert result.token_splits == [len(s) for s in torch.tensor_split(x, world)]
    assert int(result.tokens_sent.sum()) == n * k
    expected_sent = torch.stack([send_splits(s, e, world) for s in
                                 torch.tensor_split(reference.router.topk_idx, world)])
    torch.testing.assert_close(result.tokens_sent, expected_sent)
    if idle == (4, 5):  # rank 2 owns experts 4 and 5: it receives nothing
        assert result.tokens_sent[:, 2].sum() == 0
    assert result.tokens_sent.unique().numel() > 1  # the splits really are uneven


@pytest.mark.slow
def test_noisy_router_in_eval_runs_in_parallel():
    """A layer built with noise (eval mode: no noise drawn) is rebuilt the same on every rank."""
    torch.manual_seed(0)
    moe = SparseMoE(8, 12, 4, 2, noise="noisy_topk").eval()
    x, grad_y = torch.randn(9, 8), torch.randn(9, 8)
    result = run_expert_parallel(moe, x, grad_y, world_size=2, timeout_s=90)
    reference, _ = _single_process(moe, x, grad_y)
    torch.testing.assert_close(result.y, reference.y, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("fail_rank", [0, 1])
def test_failing_rank_raises_clear_error_within_timeout(fail_rank):
    """The error names the rank that failed first, not a peer that lost its connection."""
    moe, x, grad_y = _layer_and_input(8, 8, 8, 4, 2, "swiglu", ())
    start = time.monotonic()
    with pytest.raises(ExpertParallelError,
                       match=rf"rank {fail_rank} of 2 raised RuntimeError.*on purpose"):
        run_expert_parallel(moe, x, grad_y, world_size=2, timeout_s=60, fail_rank=fail_rank)
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_run_past_timeout_stops_every_rank():
    """Starting two interpreters takes longer than 0.5 s: the launcher's deadline fires, stops
    the ranks and says so (no hang, no orphan process)."""
    import multiprocessing

    moe, x, grad_y = _layer_and_input(8, 8, 8, 4, 2, "swiglu", ())
    start = time.monotonic()
    with pytest.raises(ExpertParallelError, match=r"did not finish within timeout_s=0.5 s"):
        run_expert_parallel(moe, x, grad_y, world_size=2, timeout_s=0.5)
    assert time.monotonic() - start < 30
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


# --- pure bookkeeping: no processes -------------------------------------------------------------

def test_expert_owner_contiguous_blocks():
    assert expert_owner(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert expert_owner(4, 1).tolist() == [0, 0, 0, 0]


def test_send_splits_counts_assignments_per_owner():
    topk_idx = torch.tensor([[0, 3], [3, 2], [1, 0]])  # (N=3, K=2), E=4
    assert send_splits(topk_idx, 4, 2).tolist() == [3, 3]
    assert send_splits(topk_idx, 4, 4).tolist() == [2, 1, 1, 2]
    assert send_splits(torch.tensor([[0], [1]]), 4, 2).tolist() == [2, 0]  # rank 1 gets none
    counts = torch.tensor([1, 2, 3, 4, 5, 6])
    assert splits_from_counts(counts, 3).tolist() == [3, 7, 11]


def test_local_expert_order_groups_by_local_expert_in_source_order():
    # rows arrive: source 0 (e0 x2, e1 x1), source 1 (e0 x1, e1 x2)
    recv_counts = torch.tensor([[2, 1], [1, 2]])
    assert local_expert_order(recv_counts).tolist() == [0, 1, 3, 2, 4, 5]
    assert local_expert_order(torch.zeros(2, 3, dtype=torch.int64)).tolist() == []


@pytest.mark.parametrize("kwargs, error, match", [
    ({"world_size": 3}, ValueError, "world_size must divide num_experts"),
    ({"world_size": 0}, ValueError, "world_size must be >= 1"),
    ({"backend": "mpi"}, ValueError, "backend must be one of"),
    ({"fail_rank": 2}, ValueError, "fail_rank must be None or in"),
    ({"timeout_s": 0}, ValueError, "timeout_s must be > 0"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    moe, x, _ = _layer_and_input(8, 8, 8, 4, 2, "swiglu", ())
    with pytest.raises(error, match=match):
        run_expert_parallel(moe, x, **kwargs)


def test_capacity_and_wrong_types_are_refused():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="capacity_factor must be None"):
        run_expert_parallel(SparseMoE(8, 8, 4, 2, capacity_factor=1.0), torch.randn(4, 8))
    with pytest.raises(TypeError, match="moe must be a SparseMoE"):
        run_expert_parallel(torch.nn.Linear(8, 8), torch.randn(4, 8))
    with pytest.raises(TypeError, match="topk_idx must be"):
        send_splits([[0, 1]], 4, 2)
    with pytest.raises(ValueError, match=r"topk_idx must have shape \(N, K\)"):
        send_splits(torch.tensor([0, 1]), 4, 2)


@pytest.mark.parametrize("option", [
    {"num_shared_experts": 1},  # once ran: the shared experts' output was silently lost
    {"num_shared_experts": 1, "gate_shared_experts": True},
    {"weight_inputs": True},
])
def test_options_the_ranks_would_lose_are_refused(option):
    """Every SparseMoE option the expert-parallel layer does not carry is refused by name,
    before any process starts."""
    torch.manual_seed(0)
    moe = SparseMoE(8, 8, 4, 2, **option).eval()
    with pytest.raises(ValueError, match=f"does not carry {next(iter(option))}="):
        run_expert_parallel(moe, torch.randn(4, 8), world_size=2)


@settings(max_examples=40, deadline=None)
@given(world_size=st.integers(1, 4), local_experts=st.integers(1, 4), top_k=st.integers(1, 3),
       num_tokens=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_bookkeeping_properties(world_size, local_experts, top_k, num_tokens, seed):
    """Splits add up to N*K and match a brute-force owner count; the regroup is a permutation
    that makes every local expert's rows contiguous, sources in rank order within an expert."""
    num_experts = world_size * local_experts
    top_k = min(top_k, num_experts)
    gen = torch.Generator().manual_seed(seed)
    topk_idx = torch.stack([torch.randperm(num_experts, generator=gen)[:top_k]
                            for _ in range(num_tokens)]) if num_tokens else \
        torch.zeros(0, top_k, dtype=torch.long)
    splits = send_splits(topk_idx, num_experts, world_size)
    owner = expert_owner(num_experts, world_size)
    assert splits.tolist() == [int((owner[topk_idx] == r).sum()) for r in range(world_size)]
    assert int(splits.sum()) == num_tokens * top_k

    recv_counts = torch.randint(0, 4, (world_size, local_experts), generator=gen)
    order = local_expert_order(recv_counts)
    source = torch.arange(world_size).repeat_interleave(recv_counts.sum(1))  # (R,)
    expert = torch.arange(local_experts).repeat(world_size).repeat_interleave(
        recv_counts.reshape(-1))  # (R,)
    assert sorted(order.tolist()) == list(range(int(recv_counts.sum())))
    keys = (expert * world_size + source)[order]  # (R,) expert-major, then source
    assert bool((keys[1:] >= keys[:-1]).all())


def test_free_port_is_on_loopback_and_usable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_options_changed_after_construction_reach_the_ranks():
    """The ranks rebuild the layer from its one config as it is now: options changed on the
    router after construction (once: normalize=False ran on the ranks as True, y off by 0.05)
    and options set at construction (groups, scaling, GeGLU) all travel."""
    torch.manual_seed(0)
    moe = SparseMoE(8, 12, 8, 2, activation="geglu", num_groups=4, topk_groups=2).eval()
    moe.router.normalize = False
    moe.router.scoring = "sigmoid"
    moe.router.scaling_factor = 2.5
    moe.top_k = 3
    assert (moe.config.normalize, moe.config.scoring, moe.config.top_k) == (False, "sigmoid", 3)
    x, grad_y = torch.randn(10, 8), torch.randn(10, 8)
    result = run_expert_parallel(moe, x, grad_y, world_size=2, timeout_s=90)
    reference, grad_x = _single_process(moe, x, grad_y)
    torch.testing.assert_close(result.y, reference.y, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result.grad_x, grad_x, atol=1e-5, rtol=1e-4)
    # the run changes something: with the options at their constructor values y differs
    moe.router.normalize, moe.router.scoring, moe.router.scaling_factor, moe.top_k = True, "softmax", 1.0, 2
    assert (moe(x).y - result.y).abs().max() > 1e-2


def test_layers_a_config_cannot_rebuild_are_refused_by_name():
    from moe_lab.interop.quirks import BlockNames, FamilyMoE

    moe = SparseMoE(8, 8, 4, 2)
    family_layer = FamilyMoE(moe.config, BlockNames(router="router"), moe.router, moe.experts)
    with pytest.raises(TypeError, match="plain SparseMoE.*FamilyMoE"):
        run_expert_parallel(family_layer, torch.randn(4, 8), world_size=2)
