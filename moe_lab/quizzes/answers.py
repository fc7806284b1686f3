"""Numeric quiz answers computed by the package, so no number in a quiz file is typed by hand.

A quiz file names one of these functions (or any ``moe_lab.`` callable) under ``compute:`` with
its keyword ``args:``; the loader calls it once and stores the result as the answer. Each one is
a thin wrapper that builds the tensors or config a core function needs and calls that function:
the quiz then checks the learner against the code the lesson taught, not a copy of it.
"""

from __future__ import annotations

import torch

from moe_lab.dispatch import compute_capacity
from moe_lab.losses import load_balancing_loss, router_z_loss, sequence_load_balancing_loss
from moe_lab.systems.params import MIXTRAL_8X7B, TransformerConfig, count_parameters, ffn_params


def _balanced_topk_idx(num_tokens: int, num_experts: int, top_k: int) -> torch.Tensor:
    """Token n picks experts n*K, n*K+1, ... (mod E): with N*K a multiple of E, every expert
    receives exactly N*K/E assignments."""
    slots = torch.arange(num_tokens * top_k).reshape(num_tokens, top_k)  # (N, K)
    return slots % num_experts  # (N, K)


def aux_loss_at_uniform_routing(num_experts: int, top_k: int, num_tokens: int = 0) -> float:
    """``load_balancing_loss`` when every probability is 1/E and the loads are equal (1.0)."""
    num_tokens = num_tokens or num_experts  # N*K is then a multiple of E
    router_probs = torch.full((num_tokens, num_experts), 1.0 / num_experts)  # (N, E)
    topk_idx = _balanced_topk_idx(num_tokens, num_experts, top_k)  # (N, K)
    return load_balancing_loss(router_probs, topk_idx).item()


def aux_loss_at_collapse(num_experts: int, top_k: int = 1, num_tokens: int = 8) -> float:
    """``load_balancing_loss`` when every token sends all its probability and its choices to
    expert 0 (top-1 collapse: E)."""
    router_probs = torch.zeros(num_tokens, num_experts)  # (N, E)
    router_probs[:, 0] = 1.0
    topk_idx = torch.arange(top_k).expand(num_tokens, top_k)  # (N, K): experts 0..K-1
    return load_balancing_loss(router_probs, topk_idx).item()


def hf_mixtral_aux_loss_at_uniform_routing(num_experts: int, top_k: int) -> float:
    """Hugging Face's Mixtral loss sums f over the K slots separately: K times ours."""
    return top_k * aux_loss_at_uniform_routing(num_experts, top_k)


def z_loss_of_constant_logits(num_experts: int, logit: float = 0.0, num_tokens: int = 4) -> float:
    """``router_z_loss`` when every logit equals ``logit``: (logit + ln E)^2."""
    router_logits = torch.full((num_tokens, num_experts), float(logit))  # (N, E)
    return router_z_loss(router_logits).item()


def capacity(capacity_factor: float, num_tokens: int, top_k: int, num_experts: int) -> int:
    """C = ceil(capacity_factor * N * K / E), the package's ``compute_capacity``."""
    return compute_capacity(capacity_factor, num_tokens, top_k, num_experts)


def expert_params(d_model: int, d_ff: int, ffn_matrices: int = 3) -> int:
    """Weights of one expert FFN, the package's ``ffn_params``."""
    return ffn_params(d_model, d_ff, ffn_matrices)


def mixtral_params_billions(which: str = "total") -> float:
    """Mixtral 8x7B's total or active parameters in billions, rounded to 0.1B."""
    counts = count_parameters(MIXTRAL_8X7B)
    if which not in ("total", "active"):
        raise ValueError(f"which must be 'total' or 'active', got {which!r}")
    return round(getattr(counts, which) / 1e9, 1)


def moe_params(which: str = "total", **config: int) -> int:
    """Total or active parameters of a ``TransformerConfig`` built from ``config``."""
    counts = count_parameters(TransformerConfig(**config))
    if which not in ("total", "active"):
        raise ValueError(f"which must be 'total' or 'active', got {which!r}")
    return getattr(counts, which)


def router_params(d_model: int, num_experts: int) -> int:
    """Weights of one ``TopKRouter`` (its (E, D) gate): E * D."""
    from moe_lab.routing import TopKRouter

    return sum(p.numel() for p in TopKRouter(d_model, num_experts, 1).parameters())


def ffn_flops_per_token(d_model: int, d_ff: int, ffn_matrices: int = 3) -> int:
    """Forward FLOPs of one FFN per token: a multiply and an add per weight, 2 * m * D * F."""
    return 2 * ffn_params(d_model, d_ff, ffn_matrices)


def _tiny_config(num_experts: int, top_k: int) -> TransformerConfig:
    return TransformerConfig(vocab_size=8, d_model=8, num_layers=1, d_ff=8, num_heads=1,
                             num_kv_heads=1, head_dim=8, num_experts=num_experts, top_k=top_k)


def dense_reference_work_ratio(num_experts: int, top_k: int) -> float:
    """Expert FLOPs of the dense reference (all E experts on every token) over the routed
    layer's (K experts): the experts' total over their active parameters, E / K."""
    experts = count_parameters(_tiny_config(num_experts, top_k))["experts"]
    return experts.total / experts.active


def byte_token_count(text: str) -> int:
    """Tokens of ``text`` for the course's ``ByteTokenizer``: its UTF-8 bytes."""
    from moe_lab.lm.tokenizer import ByteTokenizer

    return len(ByteTokenizer().encode(text))


def uniform_lm_loss(vocab_size: int) -> float:
    """Cross-entropy (nats) of a model that predicts every token with probability 1/V: ln V."""
    logits = torch.zeros(1, vocab_size)  # (1, V)
    return torch.nn.functional.cross_entropy(logits, torch.zeros(1, dtype=torch.long)).item()


def padding_percent_balanced(capacity_factor: float, num_tokens: int, top_k: int,
                             num_experts: int) -> float:
    """Share (%) of a capacity-padded (E, C, D) buffer left empty when the load is perfectly
    balanced, from the package's routing plan."""
    from moe_lab.dispatch import make_routing_plan

    topk_idx = _balanced_topk_idx(num_tokens, num_experts, top_k)  # (N, K)
    cap = compute_capacity(capacity_factor, num_tokens, top_k, num_experts)
    plan = make_routing_plan(topk_idx, torch.ones(num_tokens, top_k), num_experts, cap)
    kept = int(plan.keep.sum())
    return 100.0 * (1 - kept / (num_experts * cap))


def moe_layer_forward_gflops(num_tokens: int, d_model: int, d_ff: int, top_k: int) -> float:
    """Active forward GFLOPs of an MoE layer of SwiGLU experts: 2 * 3DF * N * K / 1e9."""
    return ffn_flops_per_token(d_model, d_ff) * num_tokens * top_k / 1e9


def owner_of_expert(expert: int, num_experts: int, world_size: int) -> int:
    """The rank that holds ``expert`` (``moe_lab.systems.parallel.expert_owner``)."""
    from moe_lab.systems.parallel import expert_owner

    return int(expert_owner(num_experts, world_size)[expert])


def cross_rank_share_balanced(num_experts: int, world_size: int, tokens_per_rank: int = 64,
                              top_k: int = 2) -> float:
    """Share of the rows that leave their rank when every rank's routing is balanced,
    from ``moe_lab.systems.parallel.send_splits``: (W - 1) / W."""
    from moe_lab.systems.parallel import send_splits

    crossing = total = 0
    for rank in range(world_size):
        splits = send_splits(_balanced_topk_idx(tokens_per_rank, num_experts, top_k),
                             num_experts, world_size)  # (W,)
        total += int(splits.sum())
        crossing += int(splits.sum() - splits[rank])
    return crossing / total


def each_sequence_on_its_experts(scope: str, num_sequences: int = 4, num_experts: int = 8,
                                 top_k: int = 2, seq_len: int = 16) -> float:
    """Lesson 11: sequence b sends every token to experts bK .. bK+K-1 (mod E), probability 1/K
    on each, so the batch is balanced when num_sequences * K is a multiple of E. The balance loss
    at ``scope``: "sequence" (:func:`sequence_load_balancing_loss`) or "batch"
    (:func:`load_balancing_loss` over all the sequences)."""
    sequence = torch.arange(num_sequences).repeat_interleave(seq_len)  # (N,)
    topk_idx = (sequence.unsqueeze(1) * top_k + torch.arange(top_k)) % num_experts  # (N, K)
    router_probs = torch.zeros(len(sequence), num_experts).scatter(1, topk_idx, 1.0 / top_k)
    if scope == "sequence":
        return sequence_load_balancing_loss(router_probs, topk_idx, seq_len).item()
    if scope == "batch":
        return load_balancing_loss(router_probs, topk_idx).item()
    raise ValueError(f"scope must be 'sequence' or 'batch', got {scope!r}")
