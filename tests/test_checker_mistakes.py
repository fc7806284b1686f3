"""Every checker against mistakes beyond the catalogue of tests/test_checks_*.py (issue 10) and
against correct answers written differently from the lesson's solution.

The mistakes are of the kinds a learner really makes: one shape or one draw (N = 1, a fixed E,
reseeding, one draw per token), values without gradients (.item(), .detach()), inputs changed in
place, numerics (exp overflowing at logits near 100), types and edge points (int 0/1 masks, an
int load's mean, loads exactly at the mean, all-padding batches, capacity at exact multiples).

One row per function: (checker, function, expected status, words the message must contain).
A correct alternative must pass; a mistake must fail with a message that names it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lesson_sources import lesson_solution

from moe_lab import load_balancing_loss
from moe_lab.checks import (
    check_average_aux_loss,
    check_bias_update,
    check_capacity,
    check_combine_loop,
    check_convert_mixtral_experts,
    check_gate_weights,
    check_greedy_packing,
    check_group_limited_topk,
    check_input_weighted_combine,
    check_jitter,
    check_keep_mask,
    check_local_expert_order,
    check_model_balance_loss,
    check_mutual_information,
    check_noisy_topk_logits,
    check_router_probs,
    check_scatter_combine,
    check_send_splits,
    check_soft_moe_weights,
    check_sort_by_expert,
    check_switch_loss,
    check_tokens_per_expert,
    check_topk_routing,
    check_z_loss,
)

PASS = ("passed", [])

# ------------------------------------------------------------------ 01 router_probs


def probs_alt_float64(x, weight):
    return torch.softmax(x.double() @ weight.double().T, dim=-1).float()


def probs_alt_stable_by_hand(x, weight):
    logits = torch.nn.functional.linear(x.float(), weight.float())
    e = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def probs_alt_einsum(x, weight):
    return torch.einsum("nd,ed->ne", x.float(), weight.float()).softmax(-1)


def probs_exp_by_hand(x, weight):  # overflows at logits near 100
    e = torch.exp(x.float() @ weight.float().T)
    return e / e.sum(dim=-1, keepdim=True)


def probs_squeeze(x, weight):  # breaks on N = 1
    return torch.softmax((x.float() @ weight.float().T).squeeze(), dim=1)


def probs_detached(x, weight):
    return torch.softmax(x.float() @ weight.float().T, dim=-1).detach()


def probs_fixed_e(x, weight):
    return torch.softmax(x.float() @ weight.float()[:4].T, dim=-1)


def probs_normalise_x_in_place(x, weight):
    x = x.float()
    x /= 1.0 + x.norm(dim=-1, keepdim=True) * 0  # changes the caller's x (float32 case)
    return torch.softmax(x @ weight.float().T, dim=-1)


# ------------------------------------------------------------------ 01 noisy top-k


def noisy_alt_normal(x, w_gate, w_noise, training):
    logits = x @ w_gate.T
    if training:
        logits = logits + torch.normal(0.0, 1.0, size=logits.shape) * F.softplus(x @ w_noise.T)
    return logits


def noisy_alt_float64(x, w_gate, w_noise, training):
    logits = x.double() @ w_gate.double().T
    if training:
        std = F.softplus(x.double() @ w_noise.double().T)
        logits = logits + torch.randn(logits.shape, dtype=torch.float64) * std
    return logits.float()


def noisy_uniform_of_unit_std(x, w_gate, w_noise, training):
    logits = x @ w_gate.T
    if training:
        eps = (torch.rand_like(logits) * 2 - 1) * 3 ** 0.5  # mean 0, std 1, but uniform
        logits = logits + eps * F.softplus(x @ w_noise.T)
    return logits


def noisy_fixed_shape(x, w_gate, w_noise, training):
    logits = x @ w_gate.T
    if training:
        logits = logits + torch.randn(4096, 4) * F.softplus(x @ w_noise.T)
    return logits


def noisy_reseeds(x, w_gate, w_noise, training):
    torch.manual_seed(0)
    return noisy_alt_normal(x, w_gate, w_noise, training)


def noisy_per_token(x, w_gate, w_noise, training):
    logits = x @ w_gate.T
    if training:
        logits = logits + torch.randn(logits.shape[0], 1) * F.softplus(x @ w_noise.T)
    return logits


def noisy_one_vector(x, w_gate, w_noise, training):
    logits = x @ w_gate.T
    if training:
        logits = logits + torch.randn(logits.shape[1]) * F.softplus(x @ w_noise.T)
    return logits


def noisy_own_generator(x, w_gate, w_noise, training):
    logits = x @ w_gate.T
    if training:
        gen = torch.Generator().manual_seed(0)
        logits = logits + torch.randn(logits.shape, generator=gen) * F.softplus(x @ w_noise.T)
    return logits


def noisy_detached_scale(x, w_gate, w_noise, training):
    logits = x @ w_gate.T
    if training:
        logits = logits + torch.randn_like(logits) * F.softplus(x @ w_noise.T).detach()
    return logits


# ------------------------------------------------------------------ 01 jitter


def jitter_alt_rand(x, eps, training):
    return x * (1 + eps * (2 * torch.rand_like(x) - 1)) if training else x


def jitter_alt_distribution(x, eps, training):
    if not training:
        return x
    return x * torch.distributions.Uniform(1 - eps, 1 + eps).sample(x.shape)


def jitter_gaussian(x, eps, training):  # right mean and std, wrong distribution
    return x * (1 + eps / 3 ** 0.5 * torch.randn_like(x)).clamp(1 - eps, 1 + eps) \
        if training else x


def jitter_fixed_width(x, eps, training):
    return x * torch.empty(x.shape[0], 8).uniform_(1 - eps, 1 + eps) if training else x


def jitter_in_place(x, eps, training):
    if training:
        x.mul_(torch.empty_like(x).uniform_(1 - eps, 1 + eps))
    return x


def jitter_per_token(x, eps, training):
    return x * torch.empty(x.shape[0], 1).uniform_(1 - eps, 1 + eps) if training else x


def jitter_reseeds(x, eps, training):
    torch.manual_seed(1234)
    return jitter_alt_rand(x, eps, training)


def jitter_detached(x, eps, training):
    return (x * torch.empty_like(x).uniform_(1 - eps, 1 + eps)).detach() if training else x


# ------------------------------------------------------------------ 02 top-k


def topk_alt_gather_float64(router_logits, top_k):
    probs = torch.softmax(router_logits.double(), -1)
    idx = probs.topk(top_k, -1).indices
    w = probs.gather(-1, idx)
    return [idx, (w / w.sum(-1, keepdim=True)).float()]  # a list is fine


def topk_alt_per_token_loop(router_logits, top_k):
    rows = [topk_alt_gather_float64(row.unsqueeze(0), top_k) for row in router_logits]
    return torch.cat([r[0] for r in rows]).int(), torch.cat([r[1] for r in rows])  # int32 ids


def topk_exp_by_hand(router_logits, top_k):
    e = router_logits.exp()
    probs = e / e.sum(-1, keepdim=True)
    w, idx = probs.topk(top_k, -1)
    return idx, w / w.sum(-1, keepdim=True)


def topk_detached(router_logits, top_k):
    idx, w = topk_alt_gather_float64(router_logits, top_k)
    return idx, w.detach()


def topk_squeeze(router_logits, top_k):
    probs = torch.softmax(router_logits.squeeze(), dim=1)
    w, idx = probs.topk(top_k, -1)
    return idx, w / w.sum(-1, keepdim=True)


def topk_subtracts_max_in_place(router_logits, top_k):
    router_logits -= router_logits.max(-1, keepdim=True).values
    return topk_alt_gather_float64(router_logits, top_k)


# ------------------------------------------------------------------ 02 tokens per expert


def counts_alt_one_hot(topk_idx, num_experts):
    return F.one_hot(topk_idx, num_experts).sum(dim=(0, 1))


def counts_alt_loop(topk_idx, num_experts):
    return torch.tensor([int((topk_idx == e).sum()) for e in range(num_experts)])


def counts_fixed_minlength(topk_idx, num_experts):
    return torch.bincount(topk_idx.reshape(-1), minlength=4)


def counts_unique(topk_idx, num_experts):
    return topk_idx.unique(return_counts=True)[1]


def counts_one_hot_no_classes(topk_idx, num_experts):
    return F.one_hot(topk_idx).sum(dim=(0, 1))


# ------------------------------------------------------------------ 02 capacity


def capacity_alt_floor_division(capacity_factor, num_tokens, top_k, num_experts):
    return int(-(-(capacity_factor * num_tokens * top_k) // num_experts))


def capacity_alt_tensor(capacity_factor, num_tokens, top_k, num_experts):
    return torch.tensor(math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def capacity_alt_numpy(capacity_factor, num_tokens, top_k, num_experts):
    import numpy as np

    return np.int64(np.ceil(np.float64(capacity_factor) * num_tokens * top_k / num_experts))


def capacity_int_plus_one(capacity_factor, num_tokens, top_k, num_experts):
    return int(capacity_factor * num_tokens * top_k / num_experts) + 1


def capacity_no_factor(capacity_factor, num_tokens, top_k, num_experts):
    return math.ceil(num_tokens * top_k / num_experts)


def capacity_at_least_one(capacity_factor, num_tokens, top_k, num_experts):
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def capacity_round(capacity_factor, num_tokens, top_k, num_experts):
    return round(capacity_factor * num_tokens * top_k / num_experts)


# ------------------------------------------------------------------ 02 keep mask


def keep_alt_loop(topk_idx, num_experts, capacity):
    seen = [0] * num_experts
    keep = torch.zeros(topk_idx.shape, dtype=torch.bool)
    for n in range(topk_idx.shape[0]):
        for k in range(topk_idx.shape[1]):
            e = int(topk_idx[n, k])
            keep[n, k] = seen[e] < capacity
            seen[e] += 1
    return keep


def keep_alt_argsort(topk_idx, num_experts, capacity):
    flat = topk_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    rank_sorted = torch.arange(flat.numel()) - (counts.cumsum(0) - counts)[flat[order]]
    position = torch.empty_like(flat)
    position[order] = rank_sorted
    return (position < capacity).view(topk_idx.shape)


def keep_int_mask(topk_idx, num_experts, capacity):
    return keep_alt_loop(topk_idx, num_experts, capacity).int()


def keep_nothing(topk_idx, num_experts, capacity):
    return torch.zeros(topk_idx.shape, dtype=torch.bool)


def keep_marks_drops_in_place(topk_idx, num_experts, capacity):
    keep = keep_alt_loop(topk_idx, num_experts, capacity)
    topk_idx[~keep] = -1  # "mark the dropped ones": the caller's topk_idx is gone
    return keep


def keep_fixed_capacity(topk_idx, num_experts, capacity):
    return keep_alt_loop(topk_idx, num_experts, 4)


# ------------------------------------------------------------------ 03 combine loop


def loop_alt_dense(x, plan, experts):
    h_all = experts.forward_all(x)  # (E, N, D)
    w = (plan.topk_weights * plan.keep).unsqueeze(-1)  # (N, K, 1)
    return (h_all[plan.topk_idx, torch.arange(x.shape[0]).unsqueeze(-1)] * w).sum(1)


def loop_alt_per_token(x, plan, experts):
    rows = []
    for n in range(x.shape[0]):
        y_n = torch.zeros_like(x[n])
        for k in range(plan.topk_idx.shape[1]):
            if plan.keep[n, k]:
                e = int(plan.topk_idx[n, k])
                y_n = y_n + plan.topk_weights[n, k] * experts.forward_expert(x[n:n + 1], e)[0]
        rows.append(y_n)
    return torch.stack(rows)


def loop_detached_experts(x, plan, experts):
    y = torch.zeros_like(x)
    for e in range(experts.num_experts):
        token_idx, slot = torch.where((plan.topk_idx == e) & plan.keep)
        h = experts.forward_expert(x[token_idx], e).detach()
        y = y.index_add(0, token_idx, h * plan.topk_weights[token_idx, slot].unsqueeze(-1))
    return y


def loop_fixed_four(x, plan, experts):
    y = torch.zeros_like(x)
    for e in range(4):
        token_idx, slot = torch.where((plan.topk_idx == e) & plan.keep)
        h = experts.forward_expert(x[token_idx], e)
        y = y.index_add(0, token_idx, h * plan.topk_weights[token_idx, slot].unsqueeze(-1))
    return y


def loop_detached_weights(x, plan, experts):
    y = torch.zeros_like(x)
    for e in range(experts.num_experts):
        token_idx, slot = torch.where((plan.topk_idx == e) & plan.keep)
        w = plan.topk_weights.detach()[token_idx, slot].unsqueeze(-1)
        y = y.index_add(0, token_idx, experts.forward_expert(x[token_idx], e) * w)
    return y


def loop_scales_x_in_place(x, plan, experts):
    x.mul_(1.0)
    return loop_alt_dense(x, plan, experts)


# ------------------------------------------------------------------ 03 scatter combine


def scatter_alt_rows_loop(h_sorted, sort_order, topk_weights, num_tokens):
    top_k = topk_weights.shape[1]
    rows = [torch.zeros(h_sorted.shape[1]) for _ in range(num_tokens)]
    for j in range(sort_order.numel()):
        token, slot = divmod(int(sort_order[j]), top_k)
        rows[token] = rows[token] + topk_weights[token, slot] * h_sorted[j]
    return torch.stack(rows)


def scatter_alt_matrix(h_sorted, sort_order, topk_weights, num_tokens):
    top_k = topk_weights.shape[1]
    # combine[n, j] = weight of row j if row j belongs to token n
    combine = F.one_hot(sort_order // top_k, num_tokens).T.to(h_sorted.dtype)  # (N, M)
    return (combine * topk_weights.reshape(-1)[sort_order]) @ h_sorted


def scatter_weights_in_place(h_sorted, sort_order, topk_weights, num_tokens):
    top_k = topk_weights.shape[1]
    h_sorted *= topk_weights.reshape(-1)[sort_order].unsqueeze(-1)
    return h_sorted.new_zeros(num_tokens, h_sorted.shape[1]).index_add(0, sort_order // top_k,
                                                                     h_sorted)


def scatter_detached_weights(h_sorted, sort_order, topk_weights, num_tokens):
    return scatter_alt_matrix(h_sorted, sort_order, topk_weights.detach(), num_tokens)


def scatter_fixed_k(h_sorted, sort_order, topk_weights, num_tokens):
    w = topk_weights.reshape(-1)[sort_order].unsqueeze(-1)
    return h_sorted.new_zeros(num_tokens, h_sorted.shape[1]).index_add(
        0, (sort_order // 2).clamp(max=num_tokens - 1), h_sorted * w)


# ------------------------------------------------------------------ 03 gate weights


def gate_alt_list_float64(router_logits, top_k):
    probs = torch.softmax(router_logits.double(), -1)
    w, idx = probs.topk(top_k, -1)
    return [idx, (w / w.sum(-1, keepdim=True)).float()]


def gate_alt_stable_by_hand(router_logits, top_k):
    top, idx = router_logits.topk(top_k, -1)
    e = (top - top[:, :1]).exp()  # the first is the largest
    return idx, e / e.sum(-1, keepdim=True)


def gate_exp_by_hand(router_logits, top_k):
    top, idx = router_logits.topk(top_k, -1)
    return idx, top.exp() / top.exp().sum(-1, keepdim=True)


def gate_detached(router_logits, top_k):
    idx, w = gate_alt_stable_by_hand(router_logits, top_k)
    return idx, w.detach()


def gate_squeeze(router_logits, top_k):
    top, idx = router_logits.squeeze().topk(top_k, dim=1)
    return idx, top.softmax(-1)


# ------------------------------------------------------------------ 04 switch loss


def switch_alt_one_hot(router_probs, topk_idx):
    num_experts = router_probs.shape[1]
    f = F.one_hot(topk_idx, num_experts).double().mean(dim=(0, 1))
    return (num_experts * (f * router_probs.double().mean(0)).sum()).float()


def switch_alt_loop(router_probs, topk_idx):
    num_experts = router_probs.shape[1]
    total = 0.0
    for i in range(num_experts):
        total = total + (topk_idx == i).float().mean() * router_probs[:, i].mean()
    return num_experts * total


def switch_from_item(router_probs, topk_idx):
    return torch.tensor(switch_alt_loop(router_probs, topk_idx).item())


def switch_fixed_four(router_probs, topk_idx):
    return 4 * switch_alt_loop(router_probs, topk_idx) / router_probs.shape[1]


def switch_clamps_in_place(router_probs, topk_idx):
    router_probs.clamp_(min=1e-9)
    return switch_alt_loop(router_probs, topk_idx)


def switch_argmax_counts(router_probs, topk_idx):
    num_experts = router_probs.shape[1]
    f = F.one_hot(router_probs.argmax(-1), num_experts).float().mean(0)
    return num_experts * (f * router_probs.mean(0)).sum()


# ------------------------------------------------------------------ 04 z-loss


def z_alt_stable_by_hand(router_logits):
    m = router_logits.max(-1, keepdim=True).values
    z = m.squeeze(-1) + (router_logits - m).exp().sum(-1).log()
    return (z * z).mean()


def z_alt_float64_loop(router_logits):
    rows = [torch.logsumexp(row.double(), 0) ** 2 for row in router_logits]
    return (sum(rows) / len(rows)).float()


def z_log_exp(router_logits):
    return torch.log(torch.exp(router_logits).sum(-1)).square().mean()


def z_from_item(router_logits):
    return torch.tensor(torch.logsumexp(router_logits, -1).square().mean().item())


def z_shifts_in_place(router_logits):
    router_logits -= 0
    return torch.logsumexp(router_logits, -1).square().mean()


def z_over_tokens(router_logits):
    return torch.logsumexp(router_logits, 0).square().mean()


# ------------------------------------------------------------------ 04 model balance loss


def model_alt_manual(per_layer_probs, per_layer_idx):
    return sum(switch_alt_one_hot(p, i) for p, i in zip(per_layer_probs, per_layer_idx,
                                                        strict=True)) / len(per_layer_probs)


def model_alt_stack(per_layer_probs, per_layer_idx):
    return torch.stack([load_balancing_loss(p, i) for p, i in zip(per_layer_probs,
                                                                  per_layer_idx,
                                                                  strict=True)]).mean(0)


def model_last_layer(per_layer_probs, per_layer_idx):
    return load_balancing_loss(per_layer_probs[-1], per_layer_idx[-1])


def model_from_item(per_layer_probs, per_layer_idx):
    return torch.tensor(model_alt_stack(per_layer_probs, per_layer_idx).item())


def model_detached_first(per_layer_probs, per_layer_idx):
    probs = [per_layer_probs[0].detach()] + list(per_layer_probs[1:])
    return model_alt_stack(probs, per_layer_idx)


def model_appends(per_layer_probs, per_layer_idx):
    per_layer_probs.append(per_layer_probs[0])
    per_layer_idx.append(per_layer_idx[0])
    return model_alt_stack(per_layer_probs[:-1], per_layer_idx[:-1])


# ------------------------------------------------------------------ 04 bias update


def bias_alt_loop(bias, tokens_per_expert, gamma):
    mean = sum(tokens_per_expert.tolist()) / len(tokens_per_expert)
    step = [gamma * ((mean > load) - (mean < load)) for load in tokens_per_expert.tolist()]
    return bias + torch.tensor(step, dtype=bias.dtype)


def bias_alt_float64_sgn(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.double()
    return (bias.double() + gamma * torch.sgn(load.mean() - load)).float()


def bias_moves_at_mean(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    return bias + torch.where(load > load.mean(), -gamma, gamma)


def bias_in_place(bias, tokens_per_expert, gamma):
    load = tokens_per_expert.float()
    bias += gamma * torch.sign(load.mean() - load)
    return bias


def bias_int_mean(bias, tokens_per_expert, gamma):
    return bias + gamma * torch.sign(tokens_per_expert.mean() - tokens_per_expert)


# ------------------------------------------------------------------ 05 aux loss


def aux_alt_package(router_probs_per_layer, topk_idx_per_layer, mask=None):
    return torch.stack([load_balancing_loss(p, i, mask) for p, i in
                        zip(router_probs_per_layer, topk_idx_per_layer, strict=True)]).mean()


def aux_alt_boolean_rows(router_probs_per_layer, topk_idx_per_layer, mask=None):
    losses = []
    for p, i in zip(router_probs_per_layer, topk_idx_per_layer, strict=True):
        real = torch.ones(p.shape[0], dtype=torch.bool) if mask is None else mask.bool()
        if not real.any():
            losses.append(p.sum() * 0)
            continue
        losses.append(switch_alt_one_hot(p[real], i[real]))
    return torch.stack(losses).mean()


def aux_divides_by_mask_sum(router_probs_per_layer, topk_idx_per_layer, mask=None):
    losses = []
    for p, i in zip(router_probs_per_layer, topk_idx_per_layer, strict=True):
        keep = torch.ones(p.shape[0]) if mask is None else mask.float()
        counts = torch.zeros_like(p).scatter_add(1, i, torch.ones_like(i, dtype=p.dtype))
        f = (counts * keep[:, None]).sum(0) / (keep.sum() * i.shape[1])
        probs = (p * keep[:, None]).sum(0) / keep.sum()
        losses.append(p.shape[1] * (f * probs).sum())
    return torch.stack(losses).mean()


def aux_int_mask_as_index(router_probs_per_layer, topk_idx_per_layer, mask=None):
    if mask is None:
        return aux_alt_package(router_probs_per_layer, topk_idx_per_layer)
    return torch.stack([switch_alt_loop(p[mask], i[mask]) for p, i in
                        zip(router_probs_per_layer, topk_idx_per_layer, strict=True)]).mean()


def aux_from_item(router_probs_per_layer, topk_idx_per_layer, mask=None):
    return torch.tensor(aux_alt_package(router_probs_per_layer, topk_idx_per_layer, mask).item())


def aux_zeroes_padding_in_place(router_probs_per_layer, topk_idx_per_layer, mask=None):
    if mask is not None:
        for p in router_probs_per_layer:
            p.mul_(mask.to(p.dtype)[:, None])
    return aux_alt_package(router_probs_per_layer, topk_idx_per_layer, mask)


# ------------------------------------------------------------------ 05 mutual information


def mi_alt_entropies(counts):
    p = counts.double() / counts.sum()

    def h(q):
        q = q[q > 0]
        return float(-(q * q.log2()).sum())

    return h(p.sum(1)) + h(p.sum(0)) - h(p.reshape(-1))


def mi_alt_cell_loop(counts):
    total = float(counts.sum())
    rows, cols = counts.sum(1).tolist(), counts.sum(0).tolist()
    mi = 0.0
    for i, row in enumerate(counts.tolist()):
        for j, c in enumerate(row):
            if c > 0:
                mi += c / total * math.log2(c * total / (rows[i] * cols[j]))
    return mi


def mi_normalises_in_place(counts):
    counts /= counts.sum()
    return mi_alt_entropies(counts)


def mi_entropy_no_mask(counts):
    p = counts.double() / counts.sum()

    def h(q):
        return float(-(q * q.log2()).nansum()) if q.dim() == 2 else float(-(q * q.log2()).sum())

    return h(p.sum(1)) + h(p.sum(0)) - h(p)


def mi_integer_division(counts):
    return mi_alt_cell_loop(counts // counts.sum().clamp_min(1) * 0 + counts.long() // 2 * 2
                            + 1)


# ------------------------------------------------------------------ 06 sort by expert


def sort_alt_per_expert_lists(topk_idx, num_experts):
    flat = topk_idx.reshape(-1)
    order = torch.cat([torch.nonzero(flat == e).flatten() for e in range(num_experts)])
    return order, torch.tensor([int((flat == e).sum()) for e in range(num_experts)])


def sort_alt_unstable_list(topk_idx, num_experts):
    flat = topk_idx.reshape(-1)
    return [torch.sort(flat, stable=False).indices.int(),
            F.one_hot(flat, num_experts).sum(0)]


def sort_descending(topk_idx, num_experts):
    flat = topk_idx.reshape(-1)
    return torch.argsort(flat, descending=True), torch.bincount(flat, minlength=num_experts)


def sort_returns_values(topk_idx, num_experts):
    flat = topk_idx.reshape(-1)
    return torch.sort(flat).values, torch.bincount(flat, minlength=num_experts)


def sort_fixed_minlength(topk_idx, num_experts):
    flat = topk_idx.reshape(-1)
    return torch.argsort(flat, stable=True), torch.bincount(flat, minlength=4)


# ------------------------------------------------------------------ 07 send splits


def splits_alt_loop_list(topk_idx, num_experts, world_size):
    per_rank = num_experts // world_size
    return [int(((topk_idx // per_rank) == r).sum()) for r in range(world_size)]


def splits_alt_one_hot(topk_idx, num_experts, world_size):
    owner = torch.div(topk_idx, num_experts // world_size, rounding_mode="floor")
    return F.one_hot(owner.reshape(-1), world_size).sum(0)


def splits_fixed_block(topk_idx, num_experts, world_size):
    return torch.bincount(topk_idx.reshape(-1) // 2, minlength=world_size)[:world_size]


def splits_in_place(topk_idx, num_experts, world_size):
    topk_idx //= num_experts // world_size
    return torch.bincount(topk_idx.reshape(-1), minlength=world_size)


def splits_first_slot(topk_idx, num_experts, world_size):
    return torch.bincount(topk_idx[:, 0] // (num_experts // world_size), minlength=world_size)


# ------------------------------------------------------------------ 07 local expert order


def _expert_of_row(recv_counts):
    world_size, local_experts = recv_counts.shape
    return torch.arange(local_experts).repeat(world_size).repeat_interleave(
        recv_counts.reshape(-1))


def local_alt_lists(recv_counts):
    labels = _expert_of_row(recv_counts)
    return torch.cat([torch.nonzero(labels == e).flatten()
                      for e in range(recv_counts.shape[1])] + [torch.zeros(0, dtype=torch.long)])


def local_alt_unstable(recv_counts):
    return torch.sort(_expert_of_row(recv_counts), stable=False).indices


def local_descending(recv_counts):
    return torch.argsort(_expert_of_row(recv_counts), descending=True, stable=True)


def local_values(recv_counts):
    return torch.sort(_expert_of_row(recv_counts)).values


def local_transposes_in_place(recv_counts):
    order = local_alt_unstable(recv_counts)
    recv_counts.mul_(0)  # "free" the counts
    return order


# ------------------------------------------------------------------ the table


# ------------------------------------------------------------------ issue 20: 02, 06, 08, 09


def capacity_integer_ceiling(capacity_factor, num_tokens, top_k, num_experts):
    return int((capacity_factor * num_tokens * top_k + num_experts - 1) // num_experts)


def keep_drops_overloaded_expert(topk_idx, num_experts, capacity):
    load = torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)
    return (load <= capacity)[topk_idx]


def sort_pair_swapped(topk_idx, num_experts):
    flat = topk_idx.reshape(-1)
    return torch.bincount(flat, minlength=num_experts), torch.argsort(flat, stable=True)


def _soft(slot_logits, shift):
    e = (slot_logits - shift).exp()
    return e / e.sum(-2, keepdim=True), e / e.sum(-1, keepdim=True)


def soft_alt_two_maxes(slot_logits):
    dispatch = _soft(slot_logits, slot_logits.amax(-2, keepdim=True))[0]
    combine = _soft(slot_logits, slot_logits.amax(-1, keepdim=True))[1]
    return dispatch, combine


def soft_alt_log_softmax(slot_logits):
    return slot_logits.log_softmax(-2).exp(), slot_logits.log_softmax(-1).exp()


def soft_global_max(slot_logits):  # exp of rows far below the global max underflows: 0/0
    return _soft(slot_logits, slot_logits.max())


def soft_axes_swapped(slot_logits):
    return slot_logits.softmax(-1), slot_logits.softmax(-2)


def soft_combine_over_batch(slot_logits):
    return slot_logits.softmax(-2), slot_logits.softmax(0)


def _group_choice(scores, top_k, num_groups, topk_groups, fill):
    n, e = scores.shape
    grouped = scores.view(n, num_groups, e // num_groups)  # (N, G, E/G)
    best = grouped.topk(min(2, e // num_groups), -1).values.sum(-1).topk(topk_groups, -1).indices
    keep = torch.zeros(n, num_groups, dtype=torch.bool).scatter(1, best, True)
    keep = keep.repeat_interleave(e // num_groups, dim=1)  # (N, E)
    return scores.masked_fill(~keep, fill).topk(top_k, -1).indices


def group_alt_inf(scores, top_k, num_groups, topk_groups):
    return _group_choice(scores, top_k, num_groups, topk_groups, float("-inf"))


def group_alt_where_min(scores, top_k, num_groups, topk_groups):
    low = torch.finfo(scores.dtype).min
    return _group_choice(scores.double(), top_k, num_groups, topk_groups, low)


def group_mask_minus_one(scores, top_k, num_groups, topk_groups):
    return _group_choice(scores, top_k, num_groups, topk_groups, -1.0)


def group_mask_zero(scores, top_k, num_groups, topk_groups):
    return _group_choice(scores, top_k, num_groups, topk_groups, 0.0)


def group_no_limit(scores, top_k, num_groups, topk_groups):
    return scores.topk(top_k, -1).indices


def _weighted(x, topk_idx, topk_weights, experts, *, x_of=None, w_of=None, out=False):
    y = torch.zeros_like(x)
    for e in range(experts.num_experts):
        token, slot = (topk_idx == e).nonzero(as_tuple=True)
        w = (w_of or (lambda w: w))(topk_weights)[token, slot, None]
        x_e = (x_of or (lambda x: x))(x)[token]
        h = experts.forward_expert(x_e if out else w * x_e, e)
        y = y.index_add(0, token, w * h if out else h)
    return y


def weighting_alt_loop(x, topk_idx, topk_weights, experts):
    y = []
    for n in range(x.shape[0]):
        y.append(sum(experts.forward_expert(topk_weights[n, k] * x[n:n + 1], int(topk_idx[n, k]))[0]
                     for k in range(topk_idx.shape[1])))
    return torch.stack(y)


def weighting_alt_index_add(x, topk_idx, topk_weights, experts):
    return _weighted(x, topk_idx, topk_weights, experts)


def weighting_x_no_grad(x, topk_idx, topk_weights, experts):
    with torch.no_grad():
        x_const = x.clone()
    return _weighted(x_const, topk_idx, topk_weights, experts)


def weighting_renormalised(x, topk_idx, topk_weights, experts):
    return _weighted(x, topk_idx, topk_weights, experts,
                     w_of=lambda w: w / w.sum(-1, keepdim=True))


def weighting_scaled_once(x, topk_idx, topk_weights, experts):
    y = torch.zeros_like(x)
    xs = x * topk_weights.sum(-1, keepdim=True)  # (N, D)
    for e in range(experts.num_experts):
        token, _ = (topk_idx == e).nonzero(as_tuple=True)
        y = y.index_add(0, token, experts.forward_expert(xs[token], e))
    return y


def weighting_output(x, topk_idx, topk_weights, experts):
    return _weighted(x, topk_idx, topk_weights, experts, out=True)


def convert_alt_float64(gate_up_proj, down_proj):
    gate, up = gate_up_proj.double().chunk(2, dim=1)
    return gate.transpose(1, 2), up.transpose(1, 2), down_proj.double().transpose(1, 2)


def convert_alt_permute_copies(gate_up_proj, down_proj):
    f = gate_up_proj.shape[1] // 2
    return (gate_up_proj[:, :f].permute(0, 2, 1).clone(),
            gate_up_proj[:, f:].permute(0, 2, 1).clone(), down_proj.permute(0, 2, 1).clone())


def convert_transposes_in_place(gate_up_proj, down_proj):
    gate, up = gate_up_proj.chunk(2, dim=1)
    return gate.transpose(1, 2), up.transpose(1, 2), down_proj.transpose_(1, 2)


def convert_reshape(gate_up_proj, down_proj):
    e, f2, d = gate_up_proj.shape
    gate, up = gate_up_proj.chunk(2, dim=1)
    return gate.reshape(e, d, f2 // 2), up.reshape(e, d, f2 // 2), down_proj.reshape(e, -1, d)


def convert_gate_up_swapped(gate_up_proj, down_proj):
    gate, up = gate_up_proj.chunk(2, dim=1)
    return up.transpose(1, 2), gate.transpose(1, 2), down_proj.transpose(1, 2)


def _greedy(order, load, num_devices):
    slots = load.numel() // num_devices
    devices, totals = [[] for _ in range(num_devices)], [0.0] * num_devices
    for e in order:
        g = min((g for g in range(num_devices) if len(devices[g]) < slots), key=totals.__getitem__)
        devices[g].append(int(e))
        totals[g] += float(load[e])
    return devices


def packing_alt_loop(expert_load, num_devices):
    order = sorted(range(expert_load.numel()), key=lambda e: -float(expert_load[e]))
    return _greedy(order, expert_load, num_devices)


def packing_alt_tuples(expert_load, num_devices):
    order = torch.argsort(expert_load, descending=True, stable=True).tolist()
    return [tuple(d) for d in _greedy(order, expert_load, num_devices)]


def packing_snake(expert_load, num_devices):
    devices = [[] for _ in range(num_devices)]
    for rank, e in enumerate(torch.argsort(expert_load, descending=True, stable=True).tolist()):
        turn, step = divmod(rank, num_devices)
        devices[step if turn % 2 == 0 else num_devices - 1 - step].append(e)
    return devices


def packing_sorted_round_robin(expert_load, num_devices):
    order = torch.argsort(expert_load, descending=True, stable=True).tolist()
    return [order[g::num_devices] for g in range(num_devices)]


def packing_round_robin_ids(expert_load, num_devices):
    return [list(range(g, expert_load.numel(), num_devices)) for g in range(num_devices)]


def packing_lightest_first(expert_load, num_devices):
    return _greedy(torch.argsort(expert_load, stable=True).tolist(), expert_load, num_devices)


CASES = [
    (check_router_probs, probs_alt_float64, *PASS),
    (check_router_probs, probs_alt_stable_by_hand, *PASS),
    (check_router_probs, probs_alt_einsum, *PASS),
    (check_router_probs, probs_exp_by_hand, "failed", ["NaN or inf", "logits up to 100",
                                                        "subtract each row's max"]),
    (check_router_probs, probs_squeeze, "error", ["IndexError", "N=1"]),
    (check_router_probs, probs_detached, "failed", ["no gradient", ".detach()"]),
    (check_router_probs, probs_fixed_e, "failed", ["shape (N, E) = (5, 8)"]),
    (check_router_probs, probs_normalise_x_in_place, "error", ["in-place", "out-of-place"]),

    (check_noisy_topk_logits, noisy_alt_normal, *PASS),
    (check_noisy_topk_logits, noisy_alt_float64, *PASS),
    (check_noisy_topk_logits, noisy_reseeds, "failed", ["reseeds", "torch.manual_seed"]),
    (check_noisy_topk_logits, noisy_uniform_of_unit_std, "failed", ["not Gaussian"]),
    (check_noisy_topk_logits, noisy_fixed_shape, "error", ["training=True, N=1, E=6"]),
    (check_noisy_topk_logits, noisy_per_token, "failed", ["per token", "per expert"]),
    (check_noisy_topk_logits, noisy_one_vector, "failed", ["Every token got the same"]),
    (check_noisy_topk_logits, noisy_own_generator, "failed", ["same noise", "torch.Generator"]),
    (check_noisy_topk_logits, noisy_detached_scale, "failed", ["No gradient reaches w_noise"]),

    (check_jitter, jitter_alt_rand, *PASS),
    (check_jitter, jitter_alt_distribution, *PASS),
    (check_jitter, jitter_in_place, "failed", ["changed its input x in place"]),
    (check_jitter, jitter_gaussian, "failed", ["not uniform"]),
    (check_jitter, jitter_fixed_width, "error", ["x of shape (1, 3)"]),
    (check_jitter, jitter_per_token, "failed", ["per token", "per element"]),
    (check_jitter, jitter_reseeds, "failed", ["reseeds"]),
    (check_jitter, jitter_detached, "failed", ["no gradient"]),

    (check_topk_routing, topk_alt_gather_float64, *PASS),
    (check_topk_routing, topk_alt_per_token_loop, *PASS),
    (check_topk_routing, topk_exp_by_hand, "failed", ["NaN or inf", "torch.softmax"]),
    (check_topk_routing, topk_detached, "failed", ["no gradient"]),
    (check_topk_routing, topk_squeeze, "error", ["N=1, E=4, K=2"]),
    (check_topk_routing, topk_subtracts_max_in_place, "error", ["in-place"]),

    (check_tokens_per_expert, counts_alt_one_hot, *PASS),
    (check_tokens_per_expert, counts_alt_loop, *PASS),
    (check_tokens_per_expert, counts_fixed_minlength, "failed", ["minlength=num_experts"]),
    (check_tokens_per_expert, counts_unique, "failed", ["still needs its 0"]),
    (check_tokens_per_expert, counts_one_hot_no_classes, "failed", ["still needs its 0"]),

    (check_capacity, capacity_alt_floor_division, *PASS),
    (check_capacity, capacity_alt_tensor, *PASS),
    (check_capacity, capacity_alt_numpy, *PASS),
    (check_capacity, capacity_int_plus_one, "failed", ["exact multiple", "adding 1"]),
    (check_capacity, capacity_no_factor, "failed", ["left out capacity_factor"]),
    (check_capacity, capacity_at_least_one, "failed", ["N=0", "ceil(0) = 0"]),
    (check_capacity, capacity_round, "failed", ["rounded down (or to nearest)"]),

    (check_keep_mask, keep_alt_loop, *PASS),
    (check_keep_mask, keep_alt_argsort, *PASS),
    (check_keep_mask, keep_int_mask, "failed", ["bool mask", "torch.int32"]),
    (check_keep_mask, keep_nothing, "failed", ["kept no assignment at all"]),
    (check_keep_mask, keep_marks_drops_in_place, "failed", ["changed its input topk_idx"]),
    (check_keep_mask, keep_fixed_capacity, "failed", ["capacity"]),

    (check_combine_loop, loop_alt_dense, *PASS),
    (check_combine_loop, loop_alt_per_token, *PASS),
    (check_combine_loop, loop_detached_experts, "failed", ["No gradient reaches x", "detached"]),
    (check_combine_loop, loop_fixed_four, "failed", ["Only experts 0-3", "E=6"]),
    (check_combine_loop, loop_detached_weights, "failed", ["No gradient reaches topk_weights"]),
    (check_combine_loop, loop_scales_x_in_place, "error", ["in-place"]),

    (check_scatter_combine, scatter_alt_rows_loop, *PASS),
    (check_scatter_combine, scatter_alt_matrix, *PASS),
    (check_scatter_combine, scatter_weights_in_place, "error", ["in-place"]),
    (check_scatter_combine, scatter_detached_weights, "failed",
     ["No gradient reaches topk_weights"]),
    (check_scatter_combine, scatter_fixed_k, "failed", ["first row that differs", "expected"]),

    (check_gate_weights, gate_alt_list_float64, *PASS),
    (check_gate_weights, gate_alt_stable_by_hand, *PASS),
    (check_gate_weights, gate_exp_by_hand, "failed", ["NaN or inf", "logits near 100"]),
    (check_gate_weights, gate_detached, "failed", ["no gradient"]),
    (check_gate_weights, gate_squeeze, "error", ["N=1"]),

    (check_switch_loss, switch_alt_one_hot, *PASS),
    (check_switch_loss, switch_alt_loop, *PASS),
    (check_switch_loss, switch_from_item, "failed", ["no gradient", ".item()"]),
    (check_switch_loss, switch_fixed_four, "failed", ["multiplied by 4", "E = "]),
    (check_switch_loss, switch_clamps_in_place, "error", ["in-place"]),
    (check_switch_loss, switch_argmax_counts, "failed", ["Expected", "got"]),

    (check_z_loss, z_alt_stable_by_hand, *PASS),
    (check_z_loss, z_alt_float64_loop, *PASS),
    (check_z_loss, z_log_exp, "failed", ["NaN or inf", "torch.logsumexp"]),
    (check_z_loss, z_from_item, "failed", ["no gradient"]),
    (check_z_loss, z_shifts_in_place, "error", ["in-place"]),
    (check_z_loss, z_over_tokens, "failed", ["Expected"]),

    (check_model_balance_loss, model_alt_manual, *PASS),
    (check_model_balance_loss, model_alt_stack, *PASS),
    (check_model_balance_loss, model_last_layer, "failed", ["last layer's loss alone"]),
    (check_model_balance_loss, model_from_item, "failed", ["no gradient"]),
    (check_model_balance_loss, model_detached_first, "failed",
     ["No gradient reaches per_layer_probs[0]"]),
    (check_model_balance_loss, model_appends, "failed", ["changed its input per_layer_probs"]),

    (check_bias_update, bias_alt_loop, *PASS),
    (check_bias_update, bias_alt_float64_sgn, *PASS),
    (check_bias_update, bias_moves_at_mean, "failed", ["equals the mean exactly",
                                                       "sign(0) = 0"]),
    (check_bias_update, bias_in_place, "failed", ["changed its input bias in place"]),
    (check_bias_update, bias_int_mean, "error", ["integer tensor has no mean", ".float()"]),

    (check_average_aux_loss, aux_alt_package, *PASS),
    (check_average_aux_loss, aux_alt_boolean_rows, *PASS),
    (check_average_aux_loss, aux_divides_by_mask_sum, "failed", ["0 / 0", "clamp_min(1)"]),
    (check_average_aux_loss, aux_int_mask_as_index, "failed", ["int 0/1 tensor", "mask.bool()"]),
    (check_average_aux_loss, aux_from_item, "failed", ["no gradient"]),
    (check_average_aux_loss, aux_zeroes_padding_in_place, "error", ["in-place"]),

    (check_mutual_information, mi_alt_entropies, *PASS),
    (check_mutual_information, mi_alt_cell_loop, *PASS),
    (check_mutual_information, mi_normalises_in_place, "failed", ["changed its input counts"]),
    (check_mutual_information, mi_entropy_no_mask, "failed", ["NaN", "0 log 0 = 0"]),
    (check_mutual_information, mi_integer_division, "failed", ["Expected", "counts ="]),

    (check_sort_by_expert, sort_alt_per_expert_lists, *PASS),
    (check_sort_by_expert, sort_alt_unstable_list, *PASS),
    (check_sort_by_expert, sort_descending, "failed", ["contiguous", "descending sort"]),
    (check_sort_by_expert, sort_returns_values, "failed", ["sorted expert ids", "argsort"]),
    (check_sort_by_expert, sort_fixed_minlength, "failed", ["minlength=num_experts"]),

    (check_send_splits, splits_alt_loop_list, *PASS),
    (check_send_splits, splits_alt_one_hot, *PASS),
    (check_send_splits, splits_fixed_block, "failed", ["expected splits", "Rank r owns"]),
    (check_send_splits, splits_in_place, "failed", ["changed its input topk_idx"]),
    (check_send_splits, splits_first_slot, "failed", ["expected splits"]),

    (check_local_expert_order, local_alt_lists, *PASS),
    (check_local_expert_order, local_alt_unstable, *PASS),
    (check_local_expert_order, local_descending, "failed", ["descending sort"]),
    (check_local_expert_order, local_values, "failed", ["sorted expert ids"]),
    (check_local_expert_order, local_transposes_in_place, "failed",
     ["changed its input recv_counts"]),
    # issue 20
    (check_capacity, capacity_integer_ceiling, "failed", ["(a + b - 1) // b", "math.ceil"]),
    (check_keep_mask, keep_drops_overloaded_expert, "failed",
     ["dropped every assignment", "first C assignments"]),
    (check_sort_by_expert, sort_pair_swapped, "failed", ["pair swapped"]),
    (check_soft_moe_weights, soft_alt_two_maxes, *PASS),
    (check_soft_moe_weights, soft_alt_log_softmax, *PASS),
    (check_soft_moe_weights, soft_global_max, "failed",
     ["one max of the whole tensor", "underflow", "own axis"]),
    (check_soft_moe_weights, soft_axes_swapped, "failed", ["swapped", "dim -2"]),
    (check_soft_moe_weights, soft_combine_over_batch, "failed", ["combine_weights"]),
    (check_group_limited_topk, group_alt_inf, *PASS),
    (check_group_limited_topk, group_alt_where_min, *PASS),
    (check_group_limited_topk, group_mask_minus_one, "failed",
     ["with -1", "dropped group", "float('-inf')"]),
    (check_group_limited_topk, group_mask_zero, "failed", ["with 0", "float('-inf')"]),
    (check_group_limited_topk, group_no_limit, "failed", ["among all experts"]),
    (check_input_weighted_combine, weighting_alt_loop, *PASS),
    (check_input_weighted_combine, weighting_alt_index_add, *PASS),
    (check_input_weighted_combine, weighting_x_no_grad, "failed", ["No gradient reaches x"]),
    (check_input_weighted_combine, weighting_renormalised, "failed",
     ["renormalised", "sigmoid scores as they are"]),
    (check_input_weighted_combine, weighting_scaled_once, "failed",
     ["scaled x once", "its own weight"]),
    (check_input_weighted_combine, weighting_output, "failed", ["OUTPUT"]),
    (check_convert_mixtral_experts, convert_alt_float64, *PASS),
    (check_convert_mixtral_experts, convert_alt_permute_copies, *PASS),
    (check_convert_mixtral_experts, convert_transposes_in_place, "failed",
     ["changed its input down_proj"]),
    (check_convert_mixtral_experts, convert_reshape, "failed", ["reshaped", "transpose"]),
    (check_convert_mixtral_experts, convert_gate_up_swapped, "failed", ["swapped", "FIRST F"]),
    (check_greedy_packing, packing_alt_loop, *PASS),
    (check_greedy_packing, packing_alt_tuples, *PASS),
    (check_greedy_packing, packing_snake, "failed", ["snake", "least-loaded"]),
    (check_greedy_packing, packing_sorted_round_robin, "failed", ["round-robin deal"]),
    (check_greedy_packing, packing_round_robin_ids, "failed", ["round-robin placement by expert id"]),
    (check_greedy_packing, packing_lightest_first, "failed", ["lightest"]),
]


# ---------------------------------------------------------------- results of another form
# (a float64 result where float32 was computed, numpy ints, a tensor on another device, values
# that int() would truncate): each passes when right, else fails with a message that names it,
# never a crash blamed on the learner's function


def noisy_alt_float64_result(x, w_gate, w_noise, training):
    return noisy_alt_float64(x, w_gate, w_noise, training).double()


def sequence_alt_float64(router_probs, topk_idx, seq_len):
    probs = router_probs.double().view(-1, seq_len, router_probs.shape[1])  # (B, T, E)
    chosen = F.one_hot(topk_idx, router_probs.shape[1]).double().sum(1)  # (N, E)
    counts = chosen.view(-1, seq_len, router_probs.shape[1]).sum(1)  # (B, E)
    f = router_probs.shape[1] / (topk_idx.shape[1] * seq_len) * counts
    return (f * probs.mean(1)).sum(-1).mean()


def probs_on_meta(x, weight):
    return torch.softmax(x.float() @ weight.float().T, dim=-1).to("meta")


def topk_complex_weights(router_logits, top_k):
    topk_idx, topk_weights = lesson_solution("02", "route_topk")(router_logits, top_k)
    return topk_idx, topk_weights.to(torch.complex64)


def counts_nan(topk_idx, num_experts):
    return torch.full((num_experts,), math.nan)


def capacity_nan(capacity_factor, num_tokens, top_k, num_experts):
    return math.nan


def params_numpy_ints(config):
    import numpy as np

    return tuple(np.int64(v) for v in lesson_solution("00", "moe_ffn_params")(config))


def layout_numpy_ints(num_experts, top_k, d_ff, granularity, num_shared_experts):
    import numpy as np

    return tuple(np.int64(v) for v in lesson_solution("08", "fine_grained_layout")(
        num_experts, top_k, d_ff, granularity, num_shared_experts))


def splits_numpy_ints(topk_idx, num_experts, world_size):
    import numpy as np

    owner = topk_idx.reshape(-1) // (num_experts // world_size)
    return tuple(np.int64(v) for v in torch.bincount(owner, minlength=world_size).tolist())


def select_raises(router_probs, capacity):
    gates, token_idx = torch.topk(router_probs.t(), max(2, capacity), dim=-1)  # 2 > N = 1
    return token_idx, gates


def lru_fractional(trace, cache_size):
    hits, misses = lesson_solution("10", "lru_cache")(trace, cache_size)
    return hits / 2, misses / 2  # a rate-like value that int() would truncate


def lru_strings(trace, cache_size):
    return tuple(str(v) for v in lesson_solution("10", "lru_cache")(trace, cache_size))


def lru_tensors(trace, cache_size):
    return tuple(torch.tensor(v) for v in lesson_solution("10", "lru_cache")(trace, cache_size))


def packing_fractional_ids(expert_load, num_devices):
    return [[e + 0.5 for e in d] for d in lesson_solution("09", "greedy_packing")(
        expert_load, num_devices)]


def packing_tensor_devices(expert_load, num_devices):
    return [torch.tensor(d) for d in lesson_solution("09", "greedy_packing")(
        expert_load, num_devices)]


def _other_form_rows():
    from moe_lab.checks import (
        check_expert_choice_select,
        check_fine_grained_layout,
        check_lru_cache,
        check_moe_ffn_params,
        check_sequence_balance_loss,
    )

    return [
        (check_noisy_topk_logits, noisy_alt_float64_result, *PASS),
        (check_sequence_balance_loss, sequence_alt_float64, *PASS),
        (check_router_probs, probs_on_meta, "failed", ["device meta", "inputs are on cpu"]),
        (check_topk_routing, topk_complex_weights, "failed", ["complex"]),
        (check_tokens_per_expert, counts_nan, "failed", ["NaN"]),
        (check_capacity, capacity_nan, "failed", ["Return an int", "nan"]),
        (check_moe_ffn_params, params_numpy_ints, *PASS),
        (check_fine_grained_layout, layout_numpy_ints, *PASS),
        (check_send_splits, splits_numpy_ints, *PASS),
        (check_expert_choice_select, select_raises, "error", ["raised RuntimeError",
                                                              "on the case N=1"]),
        (check_lru_cache, lru_fractional, "failed", ["two ints"]),
        (check_lru_cache, lru_strings, "failed", ["two ints"]),
        (check_lru_cache, lru_tensors, *PASS),
        (check_greedy_packing, packing_fractional_ids, "failed", ["expert ids (ints)"]),
        (check_greedy_packing, packing_tensor_devices, *PASS),
    ]


OTHER_FORMS = _other_form_rows()


def test_a_result_the_checker_cannot_read_is_not_blamed_on_the_function():
    from moe_lab.checks.core import call, checker

    @checker("check_demo")
    def check_demo(fn):
        int(call(fn, names=()))  # the checker's own step on the result

    raised = check_demo(lambda: int("x"), verbose=False)
    assert raised.status == "error" and "Your function raised ValueError" in raised.message
    unreadable = check_demo(lambda: "x", verbose=False)
    assert unreadable.status == "failed", unreadable.message
    assert "could not be checked" in unreadable.message
    assert "Your function raised" not in unreadable.message
    with pytest.raises(TypeError, match=r"check_demo\(your_function\) takes nothing else"):
        check_demo(lambda: 1, 2)


def z_squares_logsumexp_in_place(router_logits):
    z = torch.logsumexp(router_logits, dim=-1)
    z.pow_(2)  # logsumexp's backward needs its output as it was
    return z.mean()


def test_an_in_place_step_that_breaks_the_backward_is_named():
    result = check_z_loss(z_squares_logsumexp_in_place, verbose=False)
    assert result.status == "failed", result.message
    assert "could not be checked" in result.message
    assert "changed a tensor that the backward pass needs" in result.message

@pytest.mark.parametrize(("check", "fn", "status", "words"), CASES,
                         ids=[f"{c.__name__}-{f.__name__}" for c, f, _, _ in CASES])
def test_verdict_and_hint(check, fn, status, words):
    result = check(fn, verbose=False)
    assert result.status == status, result.message
    for word in words:
        assert word in result.message, (word, result.message)
    if status != "passed":  # a sentence, or a code name (topk_idx, y, order) that starts one
        first = result.message.split()[0]
        assert first[0].isupper() or first[0] == "(" or "_" in first or first in ("y", "order"), \
            result.message  # "(N=12, E=6, K=2): ..." names the case first


def test_every_checker_has_three_new_mistakes_and_two_alternatives():
    for check in {c for c, *_ in CASES}:
        rows = [status for c, _, status, _ in CASES if c is check]
        assert rows.count("passed") >= 2 and len(rows) - rows.count("passed") >= 3, check


@pytest.mark.parametrize(("check", "fn", "status", "words"), OTHER_FORMS,
                         ids=[f"{c.__name__}-{f.__name__}" for c, f, _, _ in OTHER_FORMS])
def test_results_of_another_form(check, fn, status, words):
    test_verdict_and_hint(check, fn, status, words)

# ---------------------------------------------------------------- no hint without its diagnostic
# a mistake that only shares one symptom (or one value) with a catalogued one gets the plain
# message, not that mistake's hint


def topk_float_indices(router_logits, top_k):
    topk_idx, topk_weights = lesson_solution("02", "route_topk")(router_logits, top_k)
    return topk_idx.float(), topk_weights


def topk_pair_swapped(router_logits, top_k):
    topk_idx, topk_weights = lesson_solution("02", "route_topk")(router_logits, top_k)
    return topk_weights, topk_idx


def capacity_divides_by_factor(capacity_factor, num_tokens, top_k, num_experts):
    return math.ceil(num_tokens * top_k / (num_experts * capacity_factor))  # = ceil(cf N / E) once


def group_lowest_scores(scores_for_choice, top_k, num_groups, topk_groups):
    return lesson_solution("09", "group_limited_topk")(-scores_for_choice, top_k, num_groups,
                                                       topk_groups)


def probs_rows_rolled_when_many(x, weight):  # right for N < 32, rows shifted at N = 64 (bf16)
    probs = torch.softmax(x.float() @ weight.float().T, dim=-1)
    return probs if x.shape[0] < 32 else probs.roll(1, 0)


def probs_in_bf16(x, weight):
    return torch.softmax(x @ weight.T, dim=-1).float()


def counts_short_and_wrong(topk_idx, num_experts):
    return torch.bincount(topk_idx.reshape(-1), minlength=num_experts)[:-1] + 1


def sort_returns_topk_idx(topk_idx, num_experts):
    return topk_idx.clone(), torch.bincount(topk_idx.reshape(-1), minlength=num_experts)


def splits_e_zeros(topk_idx, num_experts, world_size):
    return torch.zeros(num_experts, dtype=torch.long)


def splits_first_rank_only(topk_idx, num_experts, world_size):
    return torch.tensor([topk_idx.numel()])


def soft_nan_at_small_logits(slot_logits):
    combine = torch.softmax(slot_logits, dim=-1)
    return torch.softmax(slot_logits, dim=-2), combine + torch.log(combine - combine)


NO_WRONG_HINT = [  # (checker, function, words the message has, words it must not have)
    (check_router_probs, probs_rows_rolled_when_many, ["The first row that differs"],
     ["bf16 rounding"]),
    (check_router_probs, probs_in_bf16, ["bf16 rounding", "*before* the matmul"], []),
    (check_tokens_per_expert, counts_short_and_wrong, ["should have shape (E,)"], ["minlength"]),
    (check_sort_by_expert, sort_returns_topk_idx, ["one entry per assignment"],
     ["sorted each token"]),
    (check_send_splits, splits_e_zeros, ["should have shape (W,)"], ["one per expert"]),
    (check_send_splits, splits_first_rank_only, ["should have shape (W,)"], ["minlength"]),
    (check_soft_moe_weights, soft_nan_at_small_logits, ["inf or NaN where the reference"],
     ["overflow"]),
    (check_topk_routing, topk_float_indices, ["no .float()"], ["swap"]),
    (check_topk_routing, topk_pair_swapped, ["the pair is swapped"], []),
    (check_capacity, capacity_divides_by_factor, ["got 4: C = ceil(capacity_factor * N * K / E)"],
     ["K assignments", "left out capacity_factor"]),
    (check_group_limited_topk, group_lowest_scores, ["your choice differs from the reference"],
     ["masked", "finite value"]),
]


@pytest.mark.parametrize(("check", "fn", "words", "absent"), NO_WRONG_HINT,
                         ids=[f"{c.__name__}-{f.__name__}" for c, f, _, _ in NO_WRONG_HINT])
def test_no_hint_without_its_diagnostic(check, fn, words, absent):
    result = check(fn, verbose=False)
    assert result.status == "failed", result.message
    for word in words:
        assert word in result.message, (word, result.message)
    for word in absent:
        assert word not in result.message, (word, result.message)

LESSON_SOLUTIONS = [
    (check_router_probs, "01", "router_probs"), (check_noisy_topk_logits, "01", "noisy_topk_logits"),
    (check_jitter, "01", "jitter"), (check_topk_routing, "02", "route_topk"),
    (check_tokens_per_expert, "02", "tokens_per_expert"), (check_capacity, "02", "capacity"),
    (check_keep_mask, "02", "keep_mask"), (check_combine_loop, "03", "combine_loop"),
    (check_scatter_combine, "03", "scatter_combine"), (check_gate_weights, "03", "gate_weights"),
    (check_switch_loss, "04", "switch_loss"), (check_z_loss, "04", "z_loss"),
    (check_model_balance_loss, "04", "model_balance_loss"),
    (check_bias_update, "04", "bias_update"), (check_average_aux_loss, "05", "model_aux_loss"),
    (check_mutual_information, "05", "mutual_info"),
    (check_sort_by_expert, "06", "sort_by_expert"), (check_send_splits, "07", "my_send_splits"),
    (check_local_expert_order, "07", "my_local_expert_order"),
]


@pytest.mark.parametrize(("check", "lesson", "name"), LESSON_SOLUTIONS,
                         ids=[n for _, _, n in LESSON_SOLUTIONS])
def test_lesson_solution_passes_the_stricter_checker_and_leaves_the_rng_alone(check, lesson, name):
    torch.manual_seed(4321)
    expected_next = torch.rand(3)
    torch.manual_seed(4321)
    result = check(lesson_solution(lesson, name), verbose=False)
    assert result, result.message
    assert torch.equal(torch.rand(3), expected_next)


def test_every_checker_imports_from_moe_lab_checks():
    import moe_lab.checks
    from moe_lab.checks import check_moe_ffn_params  # lesson 00's: missing once (issue 20)

    modules = ("balance", "beyond_topk", "combine", "efficiency", "lm", "parallel", "params",
               "real_models", "router", "topk")
    for module in modules:
        namespace = vars(__import__(f"moe_lab.checks.{module}", fromlist=["_"]))
        for name in namespace:
            if name.startswith("check_") and callable(namespace[name]):
                assert getattr(moe_lab.checks, name) is namespace[name], name
    assert check_moe_ffn_params is moe_lab.checks.params.check_moe_ffn_params
