"""A text's routing: its byte tokens, and per MoE layer which experts each token goes to.
Lessons 01-03 (a toy byte router) and 05 (a trained language model) all route text this one way.

    ids          = bytes(text)[:max_tokens]                          (T,)     ByteTokenizer
    outputs      = route_ids(ids)                                    L RouterOutputs over T tokens
    topk_idx     = stack_l outputs[l].topk_idx                       (L, T, K)
    router_probs = stack_l outputs[l].probs                          (L, T, E)
    tokens_per_expert[l, e] = #{(t, k) : topk_idx[l, t, k] = e}      (L, E)

``route_ids`` is any callable from token ids (T,) int64 to one :class:`moe_lab.RouterOutput`
per layer: an embedding and a router (lesson 03's explorer, the toy router of the lesson 01-02
widgets) or a whole model (a :class:`moe_lab.lm.model.TinyLM`, :func:`moe_lab.lm.model.route_model_text`).
The figures (``moe_lab.viz.router``, ``moe_lab.viz.explorer``) draw from the one result type,
:class:`TextRouting`.

Two token counts, never mixed up: ``num_tokens`` = T, the tokens routed (and drawn);
``total_tokens`` = the tokens of the whole text (> T when the text was cut to ``max_tokens``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from moe_lab.lm.tokenizer import ByteTokenizer, clean_text
from moe_lab.routing import RouterOutput
from moe_lab.validation import check_positive_int

RouteIds = Callable[[torch.Tensor], Sequence[RouterOutput]]  # ids (T,) -> one output per layer


@dataclass(frozen=True)
class TextRouting:
    """The routing of one text, per MoE layer.

    labels:            T printable token labels (``ByteTokenizer.pieces``)
    topk_idx:          (L, T, K) int64 chosen experts, best first
    topk_weights:      (L, T, K) float32 their combine weights
    router_probs:      (L, T, E) float32 the router's probabilities
    tokens_per_expert: (L, E) int64 assignments per expert in each layer
    num_experts:       E
    total_tokens:      tokens in the whole text (> T = num_tokens when the text was cut)
    layer_names:       L names, e.g. ("layer 0",)
    """

    labels: list[str]
    topk_idx: torch.Tensor
    topk_weights: torch.Tensor
    router_probs: torch.Tensor
    tokens_per_expert: torch.Tensor
    num_experts: int
    total_tokens: int
    layer_names: tuple[str, ...]

    @property
    def num_layers(self) -> int:
        return self.topk_idx.shape[0]

    @property
    def num_tokens(self) -> int:
        """T, the tokens routed (the first ``max_tokens`` of the text)."""
        return self.topk_idx.shape[1]

    @property
    def top_k(self) -> int:
        return self.topk_idx.shape[2]

    @property
    def truncated(self) -> bool:
        return self.total_tokens > self.num_tokens

    def to_dict(self) -> dict[str, object]:
        """Plain lists and numbers (JSON-ready), e.g. to compare with what a browser shows."""

        def rounded(tensor: torch.Tensor) -> list:
            return [[[round(w, 6) for w in row] for row in layer] for layer in tensor.tolist()]

        return {
            "labels": list(self.labels),
            "topk_idx": self.topk_idx.tolist(),
            "topk_weights": rounded(self.topk_weights),
            "router_probs": rounded(self.router_probs),
            "tokens_per_expert": self.tokens_per_expert.tolist(),
            "num_experts": self.num_experts,
            "total_tokens": self.total_tokens,
            "layer_names": list(self.layer_names),
        }


@torch.no_grad()
def route_bytes(text: str, route_ids: RouteIds, *, max_tokens: int,
               tokenizer: ByteTokenizer | None = None,
               layer_names: Sequence[str] | None = None) -> TextRouting:
    """Tokenise ``text`` into bytes, route its first ``max_tokens`` tokens with ``route_ids``
    (ids (T,) int64 on the CPU -> one RouterOutput per layer) and stack what each layer decided.

    Any string routes (empty, any script, emoji; a lone surrogate becomes '?'); the empty text
    calls ``route_ids`` with T = 0 and gives empty tables.
    """
    text = clean_text(text)  # TypeError for a non-string
    if not callable(route_ids):
        raise TypeError(f"route_ids must be a callable ids -> RouterOutputs, "
                        f"got {type(route_ids).__name__}")
    check_positive_int("max_tokens", max_tokens)
    tokenizer = tokenizer or ByteTokenizer()
    ids = tokenizer.encode(text)
    token_ids = torch.tensor(ids[:max_tokens], dtype=torch.long)  # (T,)
    labels = tokenizer.pieces(text)[:max_tokens]
    outputs = list(route_ids(token_ids))
    _check_outputs(outputs, len(labels))
    topk_idx = torch.stack([o.topk_idx.detach().cpu().long() for o in outputs])  # (L, T, K)
    topk_weights = torch.stack([o.topk_weights.detach().cpu().float() for o in outputs])  # (L, T, K)
    router_probs = torch.stack([o.probs.detach().cpu().float() for o in outputs])  # (L, T, E)
    num_experts = router_probs.shape[-1]
    names = (tuple(f"layer {i}" for i in range(len(outputs))) if layer_names is None
             else tuple(layer_names))
    if len(names) != len(outputs):
        raise ValueError(f"layer_names must hold {len(outputs)} names (one per layer), "
                         f"got {len(names)}")
    # tokens_per_expert[l, e] = #{(t, k) : topk_idx[l, t, k] = e}
    tokens_per_expert = torch.stack([torch.bincount(layer.reshape(-1), minlength=num_experts)
                                     for layer in topk_idx])  # (L, E)
    return TextRouting(labels=labels, topk_idx=topk_idx, topk_weights=topk_weights,
                       router_probs=router_probs, tokens_per_expert=tokens_per_expert,
                       num_experts=num_experts, total_tokens=len(ids), layer_names=names)


def _check_outputs(outputs: list, num_tokens: int) -> None:
    """route_ids must give at least one RouterOutput, each over the T tokens, with one K and E."""
    if not outputs or not all(isinstance(o, RouterOutput) for o in outputs):
        raise TypeError("route_ids must return a non-empty sequence of RouterOutput (one per "
                        f"layer), got {[type(o).__name__ for o in outputs]}")
    first = outputs[0]
    num_experts, top_k = first.probs.shape[-1], first.topk_idx.shape[-1]
    for layer, output in enumerate(outputs):
        if (output.probs.shape != (num_tokens, num_experts)
                or output.topk_idx.shape != (num_tokens, top_k)
                or output.topk_weights.shape != (num_tokens, top_k)):
            raise ValueError(
                f"layer {layer}: route_ids must give probs (T, E) and topk_idx, topk_weights "
                f"(T, K) with T={num_tokens}, E={num_experts}, K={top_k}; got "
                f"{tuple(output.probs.shape)}, {tuple(output.topk_idx.shape)}, "
                f"{tuple(output.topk_weights.shape)}")
        if output.topk_idx.numel() and (output.topk_idx.min() < 0
                                        or output.topk_idx.max() >= num_experts):
            raise ValueError(f"layer {layer}: topk_idx values must lie in [0, {num_experts})")
