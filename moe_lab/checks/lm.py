"""Checkers for lesson 05 (training a tiny MoE language model).

- :func:`check_average_aux_loss`: the load-balancing loss of a model with several MoE layers,
  computed per layer (with the padding mask) and averaged over layers.
- :func:`check_mutual_information`: I(L; E) in bits from a (label, expert) count table.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.checks.core import CheckFailed, checker, expect_close
from moe_lab.losses import average_over_layers, load_balancing_loss
from moe_lab.specialisation import entropy_bits, mutual_information


def _aux_case(seed: int, num_layers: int, num_tokens: int, num_experts: int, top_k: int,
              padded: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    probs, idx = [], []
    for layer in range(num_layers):
        # skew each layer differently so that pooling layers or summing them changes the answer
        bias = torch.linspace(0, 2.0 * (layer + 1), num_experts)  # (E,)
        logits = torch.randn(num_tokens, num_experts, generator=generator) + bias  # (N, E)
        router_probs = torch.softmax(logits, dim=-1)  # (N, E)
        probs.append(router_probs)
        idx.append(torch.topk(router_probs, top_k, dim=-1).indices)  # (N, K)
    mask = None
    if padded:
        mask = torch.ones(num_tokens, dtype=torch.bool)
        mask[-padded:] = False
        for router_probs in probs:  # padding rows look very different from real tokens
            router_probs[-padded:] = torch.nn.functional.one_hot(
                torch.zeros(padded, dtype=torch.long), num_experts).float()
        for layer_idx in idx:
            layer_idx[-padded:] = torch.arange(top_k)
    return probs, idx, mask


@checker("check_average_aux_loss")
def check_average_aux_loss(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(router_probs_per_layer, topk_idx_per_layer, mask)`` -> the model's aux loss."""
    cases = [(0, 3, 40, 4, 1, 0), (1, 3, 50, 8, 2, 0), (2, 4, 64, 8, 2, 16), (3, 1, 30, 4, 2, 5)]
    for seed, num_layers, num_tokens, num_experts, top_k, padded in cases:
        probs, idx, mask = _aux_case(seed, num_layers, num_tokens, num_experts, top_k, padded)
        expected = average_over_layers(
            [load_balancing_loss(p, i, mask) for p, i in zip(probs, idx, strict=True)])
        actual = fn([p.clone() for p in probs], [i.clone() for i in idx], mask)
        if not isinstance(actual, torch.Tensor):
            raise CheckFailed(f"return a scalar torch.Tensor, got {type(actual).__name__}.")
        if actual.dim() != 0:
            raise CheckFailed(f"return a scalar (shape ()), got shape {tuple(actual.shape)}.")
        ratio = float(actual) / float(expected)
        hint = ""
        if abs(ratio - num_layers) < 1e-4 and num_layers > 1:
            hint = "it is num_layers times too big: average the layers' losses, do not sum them."
        elif abs(ratio - top_k) < 1e-4 and top_k > 1:
            hint = ("it is K times too big: f_i is the share of the N*K assignments, so divide "
                    "the counts by K (Hugging Face's Mixtral loss keeps the factor K).")
        elif mask is not None:
            unmasked = average_over_layers([load_balancing_loss(p, i) for p, i in zip(probs, idx,
                                                                                    strict=True)])
            if torch.allclose(actual.double(), unmasked.double(), atol=1e-5):
                hint = "the padding counts: leave masked tokens out of both f_i and P_i."
        if not hint and num_layers > 1:
            pooled = load_balancing_loss(torch.cat(probs), torch.cat(idx),
                                         None if mask is None else mask.repeat(num_layers))
            if torch.allclose(actual.double(), pooled.double(), atol=1e-5):
                hint = ("you pooled the tokens of all layers into one loss: compute E * sum f P "
                        "per layer, then average the per-layer losses.")
        expect_close(actual, expected, f"the aux loss ({num_layers} layers, K={top_k}, "
                     f"{padded} padded tokens)", hint=hint)


@checker("check_mutual_information")
def check_mutual_information(fn: Callable[[torch.Tensor], float]) -> None:
    """``fn(counts)`` with counts (L, E) -> I(L; E) in bits, as a float or a scalar tensor."""
    generator = torch.Generator().manual_seed(0)
    deterministic = torch.diag(torch.tensor([30.0, 10.0, 20.0, 40.0]))  # label l -> expert l
    independent = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 1.0, 5.0, 2.0]))
    sparse = torch.tensor([[5.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    random_table = torch.randint(0, 20, (6, 8), generator=generator).double()
    cases = [("a deterministic mapping (I = H(L))", deterministic),
             ("an independent table (I = 0)", independent),
             ("a table with empty cells", sparse), ("a random table", random_table)]
    for what, counts in cases:
        expected = torch.tensor(mutual_information(counts), dtype=torch.float64)
        actual = fn(counts.clone())
        if isinstance(actual, (int, float)):
            actual = torch.tensor(float(actual), dtype=torch.float64)
        if not isinstance(actual, torch.Tensor) or actual.numel() != 1:
            raise CheckFailed(f"return one number (float or scalar tensor), got {actual!r}.")
        actual = actual.reshape(())
        hint = ""
        if torch.isnan(actual):
            hint = "you got NaN: cells with p(l, e) = 0 contribute 0 (0 log 0 = 0), skip them."
        elif float(expected) > 0 and abs(float(actual) / float(expected)
                                         - torch.log(torch.tensor(2.0)).item()) < 1e-4:
            hint = "the answer is in nats: use log2 for bits."
        elif abs(float(actual) - entropy_bits(counts / counts.sum())) < 1e-6:
            hint = "that is the joint entropy H(L, E); I(L; E) = H(L) + H(E) - H(L, E)."
        expect_close(actual, expected, f"I(L; E) for {what}", hint=hint, atol=1e-6)
