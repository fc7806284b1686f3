"""Decoding lesson 05's model token by token, with a KV cache, recording a routing trace. Lesson 10.

Prefill runs the prompt's P tokens through the model in one forward pass (B * P tokens routed at
once); each decode step then runs only the newest token of each sequence (B tokens routed), its
attention reading the keys and values of all earlier positions from the cache:

    q_t = x_t W_q,   K_{<=t} = [K_cache; x_t W_k],   V_{<=t} = [V_cache; x_t W_v]
    attn_t = softmax(q_t K_{<=t}^T / sqrt(d_h)) V_{<=t}

The trace records, per MoE layer, the K experts of every position: (L, B, S, K).
:func:`moe_forward` runs one :class:`moe_lab.SparseMoE` with its own routing, or with a routing
given from outside (routing replay, :mod:`moe_lab.inference.replay`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_lab.dispatch import DISPATCH_FUNCTIONS, make_routing_plan
from moe_lab.layer import SparseMoE
from moe_lab.lm.model import TinyLM
from moe_lab.routing import RouterOutput
from moe_lab.systems.threads import torch_threads
from moe_lab.validation import check_nonnegative_int, check_positive_float


@dataclass
class KVCache:
    """Keys and values of every layer so far: keys[l], values[l] (B, H, S, d_h), or None."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        return cls([None] * num_layers, [None] * num_layers)

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]


@dataclass(frozen=True)
class StepOutput:
    """logits (B, t, V) of the t new positions and each MoE layer's routing of their B * t tokens."""

    logits: torch.Tensor
    routing: tuple[RouterOutput, ...]


@dataclass(frozen=True)
class DecodeResult:
    """tokens (B, P + new); trace (L, B, S, K) expert ids of every position that went through
    the model (S = P + new - 1: the last sampled token is not run); tokens_per_pass: how many
    tokens each forward pass routed (B * P for the prefill, then B per step)."""

    tokens: torch.Tensor
    trace: torch.Tensor
    tokens_per_pass: tuple[int, ...]


def moe_forward(layer: SparseMoE, x: torch.Tensor,
                replay_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, RouterOutput]:
    """y (N, D) and the routing of an MoE layer on x (N, D). With ``replay_idx`` (N, K) the experts
    are those ids, not the router's top-k; the weights are the router's current probabilities of
    those experts (renormalised like the router's own), so gradients reach the router and the
    experts as in an ordinary pass (R3, Ma et al. 2025, arXiv:2510.11370)."""
    routing = layer.router(x)  # logits and probs from the live router
    if replay_idx is not None:
        if replay_idx.shape != routing.topk_idx.shape:
            raise ValueError(f"replay_idx must have shape {tuple(routing.topk_idx.shape)}, got "
                             f"{tuple(replay_idx.shape)}")
        # w_{n,k} = p_{n, e_{n,k}}  (/ sum_k p_{n, e_{n,k}} when the router renormalises)
        weights = routing.probs.gather(1, replay_idx)  # (N, K)
        if layer.router.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        routing = RouterOutput(logits=routing.logits, probs=routing.probs, topk_idx=replay_idx,
                               topk_weights=weights)
    plan = make_routing_plan(routing.topk_idx, routing.topk_weights, layer.num_experts,
                             layer.capacity(x.shape[0]), check_range=replay_idx is not None)
    y = DISPATCH_FUNCTIONS[layer.dispatch](x, plan, layer.experts)  # (N, D)
    return y.to(x.dtype), routing


def forward_step(model: TinyLM, input_ids: torch.Tensor, cache: KVCache,
                 replay: list[torch.Tensor] | None = None) -> StepOutput:
    """Run the t new tokens ``input_ids`` (B, t) at positions cache.length..+t-1, extending the
    cache; ``replay`` holds one (B * t, K) id tensor per MoE layer to route with."""
    batch, new = input_ids.shape
    start = cache.length
    if start + new > model.config.max_seq_len:
        raise ValueError(f"{start + new} positions exceed max_seq_len={model.config.max_seq_len}")
    h = model.embed(input_ids) + model.pos_embed[start:start + new]  # (B, t, D)
    routing = []
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        heads, d_model = attn.n_heads, h.shape[-1]
        qkv = attn.qkv(block.norm_attn(h)).view(batch, new, 3, heads, d_model // heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, H, t, d_h)
        if cache.keys[layer] is not None:
            k = torch.cat([cache.keys[layer], k], dim=2)  # (B, H, start + t, d_h)
            v = torch.cat([cache.values[layer], v], dim=2)
        cache.keys[layer], cache.values[layer] = k, v
        # new position i (absolute start + i) sees positions j <= start + i
        mask = None if new == 1 else (torch.arange(start + new, device=h.device)
                                      <= start + torch.arange(new, device=h.device)[:, None])
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, t, d_h)
        h = h + attn.out(y.transpose(1, 2).reshape(batch, new, d_model))  # (B, t, D)
        x = block.norm_ffn(h).reshape(batch * new, d_model)  # (N, D)
        if isinstance(block.ffn, SparseMoE):
            replay_idx = None if replay is None else replay[len(routing)]
            y, layer_routing = moe_forward(block.ffn, x, replay_idx)
            routing.append(layer_routing)
        else:
            y = block.ffn(x)
        h = h + y.view(batch, new, d_model)
    logits = model.norm_out(h) @ model.embed.weight.T  # (B, t, V)
    return StepOutput(logits, tuple(routing))


def sample_tokens(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``probs`` (B, V), by the inverse of the cumulative distribution:

        token = the first v with CDF(v) > u * CDF(V - 1),   u ~ U[0, 1)

    drawn on the CPU in float64 (``generator``: a CPU generator, or None for torch's default).
    ``torch.multinomial`` draws other tokens from the same seed in other torch versions (lesson
    10's trace changed under torch 2.4); ``torch.rand``'s CPU stream and this rule do not. The
    scale by CDF(V - 1) keeps u below the total, so a token of probability 0 is never drawn.
    """
    cdf = probs.detach().to("cpu", torch.float64).cumsum(dim=-1)  # (B, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=torch.float64)  # (B, 1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (B, 1)


@torch.no_grad()
def generate(model: TinyLM, prompt_ids: torch.Tensor, max_new_tokens: int, *,
             temperature: float = 1.0, generator: torch.Generator | None = None,
             num_threads: int | None = 1) -> DecodeResult:
    """Sample ``max_new_tokens`` tokens after each prompt of ``prompt_ids`` (B, P) (all of one
    length), one prefill pass then one pass per token with a KV cache; temperature 0 is greedy.
    Records every MoE layer's routing of every position (the trace). The tiny model's matmuls
    run fastest on ``num_threads`` = 1 (:mod:`moe_lab.systems.threads`; None: torch's setting)."""
    if not isinstance(model, TinyLM) or model.config.ffn != "moe":
        raise TypeError("model must be a TinyLM with ffn='moe'")
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dtype != torch.long \
            or prompt_ids.dim() != 2 or prompt_ids.shape[1] < 1:
        raise TypeError("prompt_ids must be an int64 tensor (B, P) with P >= 1")
    check_nonnegative_int("max_new_tokens", max_new_tokens)
    if temperature != 0:
        check_positive_float("temperature", temperature)
    if generator is not None and (not isinstance(generator, torch.Generator)
                                  or generator.device.type != "cpu"):
        raise TypeError("generator must be a CPU torch.Generator or None (tokens are drawn on "
                        "the CPU)")
    if prompt_ids.shape[1] + max_new_tokens > model.config.max_seq_len + 1:
        raise ValueError(f"prompt + max_new_tokens must be <= max_seq_len + 1 = "
                         f"{model.config.max_seq_len + 1}")
    was_training = model.training
    model.eval()
    tokens, traces, per_pass = prompt_ids, [], []
    try:
        with torch_threads(num_threads):
            cache = KVCache.empty(len(model.blocks))
            step_input = prompt_ids  # the prefill: all P positions in one pass
            for _ in range(max_new_tokens):
                out = forward_step(model, step_input, cache)
                batch, new = step_input.shape
                per_pass.append(batch * new)
                traces.append(torch.stack([r.topk_idx.view(batch, new, -1) for r in out.routing]))
                last = out.logits[:, -1].float()  # (B, V)
                if temperature == 0:
                    next_ids = last.argmax(dim=-1, keepdim=True)  # (B, 1)
                else:
                    probs = torch.softmax(last / temperature, dim=-1)  # (B, V)
                    next_ids = sample_tokens(probs, generator).to(tokens.device)  # (B, 1)
                tokens = torch.cat([tokens, next_ids], dim=1)
                step_input = next_ids  # a decode step: one position per sequence
    finally:
        model.train(was_training)
    layers = sum(isinstance(b.ffn, SparseMoE) for b in model.blocks)
    trace = (torch.cat(traces, dim=2) if traces else
             torch.empty(layers, prompt_ids.shape[0], 0, model.config.top_k, dtype=torch.long))
    return DecodeResult(tokens=tokens, trace=trace, tokens_per_pass=tuple(per_pass))
