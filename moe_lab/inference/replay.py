"""Precision and routing replay: the same tokens routed by two engines. Lesson 10.

An inference engine (bf16 kernels) and a training engine (fp32) hold the same weights, but their
hidden states differ in the last bits, and a token whose K-th and (K+1)-th router scores are
close changes experts. Per layer we count the tokens whose *set* of K experts differs:

    disagreement_l = (1/N) * #{n : set(e^a_{n,l}) != set(e^b_{n,l})}

Reinforcement learning samples with one engine and trains with the other; a changed expert
changes the token's log-probability, so the importance ratio pi_train / pi_sample no longer
measures the policy update alone. Routing replay (R3, Ma et al. 2025, arXiv:2510.11370; Megatron-LM
issue 4168) records the sampler's expert ids and reuses them in the training pass, where the router
still computes its probabilities and receives gradients (:func:`moe_lab.inference.decode.moe_forward`).
"""

from __future__ import annotations

import copy

import torch

from moe_lab.inference.decode import KVCache, forward_step
from moe_lab.lm.model import TinyLM
from moe_lab.systems.threads import torch_threads


def expert_sets_differ(trace_a: torch.Tensor, trace_b: torch.Tensor) -> torch.Tensor:
    """(..., K) expert ids of the same tokens by two engines -> (...) bool: True where the
    *sets* differ (the order of the K slots does not count)."""
    if not isinstance(trace_a, torch.Tensor) or not isinstance(trace_b, torch.Tensor) \
            or trace_a.shape != trace_b.shape:
        raise ValueError("trace_a and trace_b must be tensors of one shape (..., K)")
    return (trace_a.sort(dim=-1).values != trace_b.sort(dim=-1).values).any(dim=-1)


def route_in(model: TinyLM, input_ids: torch.Tensor, dtype: torch.dtype, *,
             router_dtype: torch.dtype = torch.float32,
             replay: list[torch.Tensor] | None = None,
             num_threads: int | None = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of a copy of ``model`` cast to ``dtype`` (routers computing in
    ``router_dtype``) over ``input_ids`` (B, T): log-probabilities of the next token (B, T, V) in
    fp32 and the trace (L, B, T, K). ``replay``: one (B * T, K) id tensor per MoE layer to route
    with. The model itself is left as it was; the tiny model runs on ``num_threads``."""
    engine = copy.deepcopy(model).to(dtype).eval()
    for block in engine.blocks:
        block.ffn.router.router_dtype = router_dtype
    batch, seq = input_ids.shape
    with torch.no_grad(), torch_threads(num_threads):
        out = forward_step(engine, input_ids, KVCache.empty(len(engine.blocks)), replay=replay)
    trace = torch.stack([r.topk_idx.view(batch, seq, -1) for r in out.routing])  # (L, B, T, K)
    return torch.log_softmax(out.logits.float(), dim=-1), trace
