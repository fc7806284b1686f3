"""Numeric quiz answers computed by the package, so no number in a quiz file is typed by hand.

A quiz file names one of these functions (or any ``moe_lab.`` callable) under ``compute:`` with
its keyword ``args:``; the loader calls it once and stores the result as the answer. Each one is
a thin wrapper that builds the tensors or config a core function needs and calls that function:
the quiz then checks the learner against the code the lesson taught, not a copy of it.
"""

from __future__ import annotations

import torch

from moe_lab.dispatch import compute_capacity
from moe_lab.losses import load_balancing_loss, router_z_loss
from moe_lab.params import MIXTRAL_8X7B, TransformerConfig, count_parameters, ffn_params


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
