"""DeepSeek-V3's sequence-wise balance loss and the global-batch loss: exact values at known
points, equality with a per-sequence loop of the Switch loss, the masking rules, bad input."""

import pytest
import torch

import moe_lab
from moe_lab import count_assignments, load_balancing_loss, sequence_load_balancing_loss


def _uniform(num_seqs, seq_len, e, k):
    probs = torch.full((num_seqs * seq_len, e), 1.0 / e)
    token = torch.arange(num_seqs * seq_len).unsqueeze(1)
    topk_idx = (token * k + torch.arange(k)) % e  # (N, K): every expert equally often per sequence
    return probs, topk_idx


def _normalised_sigmoid_case(seed, num_seqs, seq_len, e, k):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.sigmoid(torch.randn(num_seqs * seq_len, e, generator=generator) * 2)  # (N, E)
    probs = scores / scores.sum(dim=-1, keepdim=True)  # s' = s / sum_j s_j
    return probs, scores.topk(k, dim=-1).indices


def test_exported_from_the_package_root():
    assert "sequence_load_balancing_loss" in moe_lab.__all__
    assert moe_lab.sequence_load_balancing_loss is sequence_load_balancing_loss
    assert "count_assignments" in moe_lab.__all__


@pytest.mark.parametrize(("e", "k"), [(4, 1), (8, 2), (6, 3), (4, 4)])
def test_uniform_routing_gives_one(e, k):
    probs, topk_idx = _uniform(3, 2 * e, e, k)
    loss = sequence_load_balancing_loss(probs, topk_idx, 2 * e)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("e", [2, 4, 8])
def test_full_collapse_gives_e(e):
    # K = 1, every token of every sequence puts score 1 on expert 0: f_0 = E, P_0 = 1
    probs = torch.zeros(12, e)
    probs[:, 0] = 1.0
    topk_idx = torch.zeros(12, 1, dtype=torch.long)
    assert sequence_load_balancing_loss(probs, topk_idx, 4).item() == pytest.approx(e)


def test_each_sequence_collapsed_on_its_own_expert_is_still_e():
    # the sequence-wise loss cannot tell "each sequence on one expert" from global collapse;
    # the batch loss can: it sees a balanced batch
    e, seq_len = 4, 5
    topk_idx = torch.arange(e).repeat_interleave(seq_len).unsqueeze(1)  # (N, 1)
    probs = torch.nn.functional.one_hot(topk_idx.squeeze(1), e).float()  # (N, E)
    assert sequence_load_balancing_loss(probs, topk_idx, seq_len).item() == pytest.approx(e)
    assert load_balancing_loss(probs, topk_idx).item() == pytest.approx(1.0)


@pytest.mark.parametrize(("seed", "num_seqs", "seq_len", "e", "k"),
                         [(0, 3, 7, 8, 2), (1, 1, 10, 4, 1), (2, 5, 3, 6, 3), (3, 2, 16, 8, 8)])
def test_equals_a_loop_of_the_switch_loss_over_sequences(seed, num_seqs, seq_len, e, k):
    probs, topk_idx = _normalised_sigmoid_case(seed, num_seqs, seq_len, e, k)
    expected = torch.stack([load_balancing_loss(probs[b * seq_len:(b + 1) * seq_len],
                                                topk_idx[b * seq_len:(b + 1) * seq_len])
                            for b in range(num_seqs)]).mean()
    got = sequence_load_balancing_loss(probs, topk_idx, seq_len)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_masked_tokens_leave_t_and_a_fully_masked_sequence_leaves_the_mean():
    probs, topk_idx = _normalised_sigmoid_case(4, 3, 6, 4, 2)
    mask = torch.ones(18, dtype=torch.bool)
    mask[4:6] = False  # sequence 0: 4 real tokens
    mask[6:12] = False  # sequence 1: none
    got = sequence_load_balancing_loss(probs, topk_idx, 6, mask)
    seq0 = load_balancing_loss(probs[:4], topk_idx[:4])
    seq2 = load_balancing_loss(probs[12:], topk_idx[12:])
    torch.testing.assert_close(got, (seq0 + seq2) / 2, atol=1e-6, rtol=1e-6)
    # a masked token's scores do not matter
    changed = probs.clone()
    changed[4:12] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(sequence_load_balancing_loss(changed, topk_idx, 6, mask), got)


def test_all_masked_or_empty_gives_zero_connected_to_the_graph():
    probs, topk_idx = _normalised_sigmoid_case(5, 2, 4, 4, 2)
    probs = probs.clone().requires_grad_(True)
    loss = sequence_load_balancing_loss(probs, topk_idx, 4, torch.zeros(8, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert probs.grad is not None and probs.grad.abs().sum() == 0
    empty = sequence_load_balancing_loss(torch.zeros(0, 4), torch.zeros(0, 2, dtype=torch.long), 3)
    assert empty.item() == 0.0


def test_gradient_reaches_the_scores_and_float64_passes_gradcheck():
    probs, topk_idx = _normalised_sigmoid_case(6, 2, 5, 4, 2)
    logits = probs.double().log().requires_grad_(True)

    def loss_of(x):
        return sequence_load_balancing_loss(torch.softmax(x, dim=-1), topk_idx, 5)

    assert torch.autograd.gradcheck(loss_of, (logits,))


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"router_probs": [[0.5, 0.5]]}, TypeError, "router_probs"),
    ({"router_probs": torch.ones(4, 2, 1) / 2}, ValueError, "router_probs"),
    ({"seq_len": 0}, ValueError, "seq_len"),
    ({"seq_len": 2.0}, TypeError, "seq_len"),
    ({"seq_len": 3}, ValueError, "seq_len"),
    ({"topk_idx": torch.zeros(4, 1)}, TypeError, "topk_idx"),
    ({"topk_idx": torch.zeros(3, 1, dtype=torch.long)}, ValueError, "topk_idx"),
    ({"topk_idx": torch.full((4, 1), 2)}, ValueError, "topk_idx"),
    ({"mask": torch.ones(3, dtype=torch.bool)}, ValueError, "mask"),
    ({"router_probs": torch.full((4, 2), 0.3)}, ValueError, "router_probs"),  # not normalised
])
def test_bad_input_is_refused_by_name(kwargs, error, name):
    args = {"router_probs": torch.full((4, 2), 0.5), "topk_idx": torch.zeros(4, 1, dtype=torch.long),
            "seq_len": 2, "mask": None}
    args.update(kwargs)
    with pytest.raises(error, match=name):
        sequence_load_balancing_loss(**args)


def test_unnormalised_scores_pass_without_the_check_and_padding_is_not_checked():
    probs = torch.full((4, 2), 0.5)
    probs[3] = 7.0  # a padded token's scores are not looked at
    mask = torch.tensor([True, True, True, False])
    sequence_load_balancing_loss(probs, torch.zeros(4, 1, dtype=torch.long), 2, mask)
    raw = torch.full((4, 2), 0.3)
    sequence_load_balancing_loss(raw, torch.zeros(4, 1, dtype=torch.long), 2, check_range=False)


# ------------------------------------------------------------------------- global batch


def test_global_counts_of_the_batch_itself_give_the_batch_loss():
    probs, topk_idx = _normalised_sigmoid_case(7, 4, 6, 8, 2)
    counts = count_assignments(topk_idx, 8)
    torch.testing.assert_close(load_balancing_loss(probs, topk_idx, expert_counts=counts),
                               load_balancing_loss(probs, topk_idx))


def test_micro_batches_with_summed_counts_average_to_the_global_batch_loss():
    # f from the global batch and P linear in the tokens: the mean over equal micro-batches of
    # E sum_i f_i^global P_i^micro is the loss of the whole batch
    probs, topk_idx = _normalised_sigmoid_case(8, 4, 6, 8, 2)
    micro = [(probs[i:i + 6], topk_idx[i:i + 6]) for i in range(0, 24, 6)]
    counts = sum(count_assignments(idx, 8) for _, idx in micro)
    losses = [load_balancing_loss(p, idx, expert_counts=counts) for p, idx in micro]
    torch.testing.assert_close(torch.stack(losses).mean(), load_balancing_loss(probs, topk_idx))
    # and differs from the mean of the micro-batch losses (each balanced on its own)
    local = torch.stack([load_balancing_loss(p, idx) for p, idx in micro]).mean()
    assert not torch.allclose(local, load_balancing_loss(probs, topk_idx))


def test_count_assignments_leaves_out_padding():
    topk_idx = torch.tensor([[0, 1], [1, 2], [3, 3]])
    assert count_assignments(topk_idx, 4).tolist() == [1, 2, 1, 2]
    assert count_assignments(topk_idx, 4, torch.tensor([1, 1, 0])).tolist() == [1, 2, 1, 0]


@pytest.mark.parametrize(("counts", "error"), [
    ([1, 2, 3, 4], TypeError), (torch.ones(3), ValueError), (torch.ones(4, dtype=torch.bool),
                                                             TypeError)])
def test_bad_expert_counts_are_refused_by_name(counts, error):
    probs = torch.full((2, 4), 0.25)
    with pytest.raises(error, match="expert_counts"):
        load_balancing_loss(probs, torch.zeros(2, 1, dtype=torch.long), expert_counts=counts)


def test_count_assignments_refuses_bad_input_by_name():
    with pytest.raises(ValueError, match="num_experts"):
        count_assignments(torch.zeros(2, 1, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="topk_idx"):
        count_assignments(torch.full((2, 1), 5), 4)
