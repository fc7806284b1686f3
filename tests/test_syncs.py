"""Host syncs: the counter counts what would sync on a GPU, and the counts of the model's
forward + backward and of the expert-parallel exchange stay where issue 14 left them."""

import pytest
import torch
import torch.distributed as dist

from moe_lab import SparseMoE, load_balancing_loss
from moe_lab.grouped_gemm import path_for
from moe_lab.lm.model import ModelConfig, TinyLM
from moe_lab.systems.parallel import ExpertParallelMoE, free_port
from moe_lab.systems.syncs import count_host_syncs


@pytest.mark.parametrize("make_sync, kind", [
    (lambda x: x[0].item(), "item"),
    (lambda x: bool(x[0] > 0), "item"),
    (lambda x: int(x.argmax()), "item"),
    (lambda x: x.tolist(), "tolist"),
    (lambda x: x.cpu(), "cpu"),
    (lambda x: x.numpy(), "numpy"),
    (lambda x: torch.where(x > 0), "nonzero"),
    (lambda x: x[x > 0], "bool_index"),
    (lambda x: torch.bincount((x > 0).long(), minlength=2), "bincount"),
    (lambda x: torch.arange(2).repeat_interleave(torch.tensor([1, 2])), "repeat_interleave"),
    (lambda x: torch.unique(x), "unique"),
])
def test_counter_sees_each_kind_of_host_read_once(make_sync, kind):
    x = torch.randn(6)
    with count_host_syncs() as syncs:
        make_sync(x)
    assert dict(syncs) == {kind: 1}


def test_counter_ignores_device_side_work_and_sees_the_backward():
    x = torch.randn(8, 4, requires_grad=True)
    with count_host_syncs() as syncs:
        y = torch.softmax(x @ x.T, dim=-1).topk(2).values  # (8, 2)
        torch.arange(2).repeat_interleave(torch.tensor([1, 2]), output_size=3)  # size given
        torch.argsort(x[:, 0], stable=True)
        y.sum().backward()
    assert syncs.total == 0

    class SyncsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, grad):
            grad.sum().item()
            return grad * 2

    with count_host_syncs() as syncs:
        SyncsInBackward.apply(x).sum().backward()
    assert dict(syncs) == {"item": 1}


def test_counter_restores_the_tensor_methods():
    with count_host_syncs():
        pass
    with count_host_syncs() as syncs:
        pass
    torch.ones(2).tolist()
    assert syncs.total == 0


def _sorted_layer_syncs() -> dict[str, int]:
    layer = SparseMoE(16, 32, 8, 2)
    x = torch.randn(40, 16, requires_grad=True)
    with count_host_syncs() as syncs:
        layer(x).y.sum().backward()
    return dict(syncs)


def _loop_path_syncs() -> dict[str, int]:
    """What the sorted layer syncs on this torch: nothing where the grouped GEMM takes device
    offsets (torch's kernels), one copy of the offsets to the host for the loop of mm."""
    path = path_for(torch.randn(2, 16), torch.randn(8, 16, 32))
    return {} if path != "segment_loop" else {"cpu": 1}


def test_sorted_layer_syncs_only_where_the_grouped_gemm_loops():
    # before issue 18: a bincount (make_routing_plan) and a tolist (dispatch_sorted's counts)
    assert _sorted_layer_syncs() == _loop_path_syncs()


@pytest.mark.parametrize("path", ["segment_loop", "cpu_grouped_mm"])
def test_each_grouped_gemm_path_syncs_as_documented(path, monkeypatch):
    if path != "segment_loop" and path_for(torch.randn(2, 16), torch.randn(8, 16, 32)) != path:
        pytest.skip(f"this torch ({torch.__version__}) has no {path} path on the CPU")
    monkeypatch.setattr("moe_lab.experts.path_for", lambda *_: path)
    # one copy of the offsets to the host for the loop (forward and backward reuse it)
    assert _sorted_layer_syncs() == ({"cpu": 1} if path == "segment_loop" else {})


@pytest.mark.parametrize("n_layers", [1, 3])
def test_tinylm_step_syncs_one_input_check_plus_each_layers_dispatch(n_layers):
    model = TinyLM(ModelConfig(n_layers=n_layers, max_seq_len=16))
    ids = torch.randint(0, 256, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 10:] = False
    with count_host_syncs() as syncs:
        out = model(ids, ids, mask)
        out.loss.backward()
    per_layer = _sorted_layer_syncs()
    # before issue 14: + 2 per layer (the range check of topk_idx in load_balancing_loss)
    # and one more for the input-id range check (min and max read separately)
    expected = {"item": 1, **{kind: n * n_layers for kind, n in per_layer.items()}}
    assert dict(syncs) == expected


def test_dense_tinylm_syncs_once():
    model = TinyLM(ModelConfig(ffn="dense", max_seq_len=16))
    ids = torch.randint(0, 256, (2, 16))
    with count_host_syncs() as syncs:
        model(ids, ids).loss.backward()
    assert dict(syncs) == {"item": 1}


def test_load_balancing_loss_range_check_is_one_sync_and_optional():
    probs = torch.softmax(torch.randn(10, 4), dim=-1)
    topk_idx = probs.topk(2).indices
    with count_host_syncs() as checked:
        loss = load_balancing_loss(probs, topk_idx)
    with count_host_syncs() as unchecked:
        loss_unchecked = load_balancing_loss(probs, topk_idx, check_range=False)
    # the ids' range and the probabilities' range (logits refused) are read in one transfer
    assert checked.total == 1 and unchecked.total == 0
    assert torch.equal(loss, loss_unchecked)
    with pytest.raises(ValueError, match="topk_idx values must lie in"):
        load_balancing_loss(probs, topk_idx + 4)
    with pytest.raises(ValueError, match="topk_idx must have shape"):  # shapes: still checked
        load_balancing_loss(probs, topk_idx[:5], check_range=False)


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_expert_parallel_exchange_reads_the_counts_once(one_rank_group):
    moe = SparseMoE(16, 32, 4, 2).eval()
    layer = ExpertParallelMoE.from_sparse_moe(moe, rank=0, world_size=1)
    x = torch.randn(10, 16, requires_grad=True)
    with count_host_syncs() as syncs:
        out = layer(x)
        out.y.sum().backward()
    # one .tolist() of this rank's counts and one of the received counts
    # (before issue 14: three more .tolist(), a .cpu() and a bincount and repeat_interleave)
    # (issue 18: this rank's counts are read here, where the exchange's splits need them, not
    # in every single-process sorted dispatch)
    assert dict(syncs) == {"tolist": 2}
    reference = moe(x.detach())
    torch.testing.assert_close(out.y, reference.y)
    assert out.exchange.send_splits == [20] and out.exchange.recv_splits == [20]
    assert out.exchange.recv_counts.tolist() == [moe(x).tokens_per_expert.tolist()]


@pytest.mark.parametrize("ffn", ["moe", "dense"])
def test_a_whole_training_step_reads_its_statistics_once(ffn):
    """Forward, backward, clip, AdamW and the step's statistics (losses, gradient norm, drops,
    tokens and routing summary of every layer): the model's syncs plus one read of the packed
    statistics, however many layers and experts (before issue 18: about E + 5 per layer)."""
    from moe_lab.lm.data import Batch
    from moe_lab.lm.train import TrainConfig, train_step

    config = ModelConfig(ffn=ffn, n_layers=2, max_seq_len=16)
    model = TinyLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 256, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.bool)
    batch = Batch(ids, ids, mask, torch.zeros(2, dtype=torch.long))
    train_config = TrainConfig(steps=2, seq_len=16)
    train_step(model, optimizer, batch, train_config, 1, 1e-3, lambda: 0.0)  # AdamW's state
    with count_host_syncs() as forward_backward:
        model(ids, ids, mask).loss.backward()
    # AdamW reads its step counters with .item(): host tensors even for CUDA parameters (torch
    # keeps `step` on the CPU unless capturable or fused), so no GPU sync; the counter, which
    # sees only the CPU here, counts them: measured alone, then added
    with count_host_syncs() as optimizer_step:
        optimizer.step()
    with count_host_syncs() as syncs:
        metrics = train_step(model, optimizer, batch, train_config, 2, 1e-3, lambda: 0.0)
    expected = forward_backward + optimizer_step
    expected["tolist"] += 1  # the step's statistics, packed and read once
    assert dict(syncs) == dict(expected)
    assert set(optimizer_step) <= {"item"}
    assert len(metrics.tokens_per_expert) == (2 if ffn == "moe" else 0)
    assert all(sum(t) == 2 * 16 * 2 for t in metrics.tokens_per_expert)  # N * K assignments
    assert all(abs(sum(s.load) - 1) < 1e-6 for s in metrics.layer_stats)
