"""Checkers for lesson 05 (training a tiny MoE language model).

- :func:`check_average_aux_loss`: the load-balancing loss of a model with several MoE layers,
  computed per layer (with the padding mask) and averaged over layers.
- :func:`check_mutual_information`: I(L; E) in bits from a (label, expert) count table.

Cases: one layer and several, N = 1, padding (a bool mask, an int 0/1 mask, and a batch that is
all padding, whose loss is 0); tables with empty cells, an empty row, one row, int counts. The
inputs are fresh copies that must come back unchanged; the aux loss's gradient is compared with
the reference's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    expect_close,
    expect_same_grad,
    fresh,
    set_case,
)
from moe_lab.lm.specialisation import entropy_bits, mutual_information
from moe_lab.losses import average_over_layers, load_balancing_loss


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


# seed, layers, N, E, K, padded tokens, mask dtype
_AUX_CASES = [(0, 3, 40, 4, 1, 0, None), (1, 3, 50, 8, 2, 0, None),
              (2, 4, 64, 8, 2, 16, torch.bool), (3, 1, 30, 4, 2, 5, torch.bool),
              (4, 2, 1, 4, 2, 0, None), (5, 2, 24, 6, 2, 6, torch.int64),
              (6, 2, 12, 4, 2, 12, torch.bool)]


@checker("check_average_aux_loss")
def check_average_aux_loss(fn: Callable[..., torch.Tensor]) -> None:
    """``fn(router_probs_per_layer, topk_idx_per_layer, mask)`` -> the model's aux loss."""
    for seed, num_layers, num_tokens, num_experts, top_k, padded, mask_dtype in _AUX_CASES:
        probs, idx, mask = _aux_case(seed, num_layers, num_tokens, num_experts, top_k, padded)
        if mask is not None:
            mask = mask.to(mask_dtype)
        where = (f"the aux loss ({num_layers} layers, N={num_tokens}, K={top_k}, {padded} padded "
                 f"tokens" + (", an int 0/1 mask)" if mask_dtype == torch.int64 else ")"))
        set_case(where[13:-1])
        probs_ref = [p.clone().requires_grad_(True) for p in probs]
        expected = average_over_layers(
            [load_balancing_loss(p, i, mask) for p, i in zip(probs_ref, idx, strict=True)])
        probs_in = list(fresh(*probs, grad=True))
        actual = call(fn, probs_in, list(fresh(*idx)), None if mask is None else fresh(mask)[0],
                      names=("router_probs_per_layer", "topk_idx_per_layer", "mask"))
        if not isinstance(actual, torch.Tensor):
            raise CheckFailed(f"Return a scalar torch.Tensor, got {type(actual).__name__}.")
        if actual.dim() != 0:
            raise CheckFailed(f"Return a scalar (shape ()), got shape {tuple(actual.shape)}.")
        if mask is not None and not bool(mask.any()) and not bool(torch.isfinite(actual)):
            raise CheckFailed(f"{where} is {actual.detach().item()}: with every token padding, dividing "
                              f"by mask.sum() is 0 / 0. Divide by mask.sum().clamp_min(1): a "
                              f"batch with no real token has nothing to balance (the reference "
                              f"gives 0).")
        value, reference = float(actual.detach()), float(expected.detach())
        ratio = value / reference if reference else float("nan")
        hint = ""
        if abs(ratio - num_layers) < 1e-4 and num_layers > 1:
            hint = "It is num_layers times too big: average the layers' losses, do not sum them."
        elif abs(ratio - top_k) < 1e-4 and top_k > 1:
            hint = ("It is K times too big: f_i is the share of the N*K assignments, so divide "
                    "the counts by K (Hugging Face's Mixtral loss keeps the factor K).")
        elif mask is not None:
            unmasked = average_over_layers([load_balancing_loss(p, i) for p, i in zip(probs, idx,
                                                                                    strict=True)])
            as_index = average_over_layers([load_balancing_loss(p[mask], i[mask]) for p, i in
                                            zip(probs, idx, strict=True)])
            if torch.allclose(actual.detach().double(), unmasked.double(), atol=1e-5):
                hint = "The padding counts: leave masked tokens out of both f_i and P_i."
            elif mask.dtype != torch.bool and torch.allclose(actual.detach().double(),
                                                             as_index.double(), atol=1e-5):
                hint = ("The mask here is an int 0/1 tensor, and indexing with it (x[mask]) "
                        "picks rows 0 and 1, not the real tokens: use mask.bool(), or weight "
                        "by mask.float().")
        if not hint and num_layers > 1:
            pooled = load_balancing_loss(torch.cat(probs), torch.cat(idx),
                                         None if mask is None else mask.repeat(num_layers))
            if torch.allclose(actual.detach().double(), pooled.double(), atol=1e-5):
                hint = ("You pooled the tokens of all layers into one loss: compute E * sum f P "
                        "per layer, then average the per-layer losses.")
        expect_close(actual, expected.detach(), where, hint=hint)
        expect_same_grad(actual, expected,
                         {f"router_probs_per_layer[{i}]": p for i, p in enumerate(probs_in)},
                         {f"router_probs_per_layer[{i}]": p for i, p in enumerate(probs_ref)},
                         where)


@checker("check_mutual_information")
def check_mutual_information(fn: Callable[[torch.Tensor], float]) -> None:
    """``fn(counts)`` with counts (L, E) -> I(L; E) in bits, as a float or a scalar tensor."""
    generator = torch.Generator().manual_seed(0)
    deterministic = torch.diag(torch.tensor([30.0, 10.0, 20.0, 40.0]))  # label l -> expert l
    independent = torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 1.0, 5.0, 2.0]))
    sparse = torch.tensor([[5.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    random_table = torch.randint(0, 20, (6, 8), generator=generator).double()
    empty_row = torch.tensor([[4.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 6.0]])
    cases = [("a deterministic mapping (I = H(L))", deterministic),
             ("an independent table (I = 0)", independent),
             ("a table with empty cells", sparse), ("a random table", random_table),
             ("a label never seen (an empty row)", empty_row),
             ("one label (I = 0)", torch.tensor([[3.0, 5.0, 2.0]])),
             ("integer counts", torch.randint(0, 9, (3, 4), generator=generator))]
    for what, counts in cases:
        set_case(what)
        expected = torch.tensor(mutual_information(counts.double()), dtype=torch.float64)
        actual = call(fn, *fresh(counts), names=("counts",))
        if isinstance(actual, (int, float)):
            actual = torch.tensor(float(actual), dtype=torch.float64)
        if not isinstance(actual, torch.Tensor) or actual.numel() != 1:
            raise CheckFailed(f"Return one number (float or scalar tensor), got {actual!r}.")
        actual = actual.detach().reshape(()).double()
        hint = ""
        if torch.isnan(actual):
            hint = "You got NaN: cells with p(l, e) = 0 contribute 0 (0 log 0 = 0), skip them."
        elif float(expected) > 0 and abs(float(actual) / float(expected)
                                         - torch.log(torch.tensor(2.0)).item()) < 1e-4:
            hint = "The answer is in nats: use log2 for bits."
        elif abs(float(actual) - entropy_bits(counts.double() / counts.sum())) < 1e-6:
            hint = "That is the joint entropy H(L, E); I(L; E) = H(L) + H(E) - H(L, E)."
        expect_close(actual, expected, f"I(L; E) for {what}", hint=hint, atol=1e-6,
                     inputs={"counts": counts})
