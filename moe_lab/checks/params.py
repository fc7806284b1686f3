"""Checker for lesson 00: the stored and active parameters of a model's MoE layers.

- :func:`check_moe_ffn_params`: ``moe_ffn_params(config) -> (total, active)``, the parameters of
  the routers and experts of all ``config.num_layers`` layers of a
  :class:`moe_lab.systems.params.TransformerConfig`: stored (all E experts) and run per token (K of them),
  compared with :func:`moe_lab.systems.params.count_parameters`.

The cases run from a dense model (E = K = 1: no router) to a DeepSeek-V3-sized stack whose counts
do not fit in 32 bits; a wrong answer is recomputed with the usual mistakes to say which one it
looks like.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable

from moe_lab.checks.core import CheckFailed, call, checker, set_case
from moe_lab.systems.params import MIXTRAL_8X7B, TransformerConfig, count_parameters, ffn_params

CASES = (
    ("Mixtral 8x7B", MIXTRAL_8X7B),
    # a dense model: one expert, nothing to route
    ("a dense model (E = K = 1)", dataclasses.replace(MIXTRAL_8X7B, num_experts=1, top_k=1)),
    # every expert on: K = E
    ("a tiny model with K = E = 2", TransformerConfig(
        vocab_size=100, d_model=8, num_layers=1, d_ff=16, num_heads=2, num_kv_heads=2,
        head_dim=4, num_experts=2, top_k=2)),
    # Switch-style: top-1 of many experts, a two-matrix (GELU) FFN
    ("a Switch-style model (E = 128, K = 1, 2-matrix FFN)", TransformerConfig(
        vocab_size=32128, d_model=768, num_layers=12, d_ff=3072, num_heads=12, num_kv_heads=12,
        head_dim=64, num_experts=128, top_k=1, ffn_matrices=2)),
    # DeepSeek-V3-sized routed experts on every layer: counts far above 2**32
    ("a DeepSeek-V3-sized stack (E = 256, K = 8, F = 2048)", TransformerConfig(
        vocab_size=129280, d_model=7168, num_layers=61, d_ff=2048, num_heads=128,
        num_kv_heads=128, head_dim=128, num_experts=256, top_k=8)),
)


def reference_moe_ffn_params(config: TransformerConfig) -> tuple[int, int]:
    """(total, active) of the routers and experts, from :func:`moe_lab.systems.params.count_parameters`."""
    counts = count_parameters(config)
    return (counts["router"].total + counts["experts"].total,
            counts["router"].active + counts["experts"].active)


def _suspects(config: TransformerConfig) -> list[tuple[tuple[int, int], str]]:
    """(what a usual mistake returns, the hint naming it), most specific first."""
    c = config
    L, D, F, E, K = c.num_layers, c.d_model, c.d_ff, c.num_experts, c.top_k
    expert = ffn_params(D, F, c.ffn_matrices)
    router = D * E if E > 1 else 0
    total, active = reference_moe_ffn_params(c)
    return [
        ((L * (D * E + E * expert), L * (D * E + K * expert)),
         "A dense model (E = 1) has no router: with one expert there is nothing to choose."),
        ((total - L * router, active - L * router),
         "The routers are missing: each layer's router is a D x E matrix, stored and run for "
         "every token."),
        ((total, active - L * router),
         "The router runs for every token: count its D x E weights in the active parameters too."),
        ((total, L * (router + E * expert)),
         "Active equals total: a token runs only K of the E experts."),
        ((L * (router + K * expert), active),
         "Total uses K experts: every one of the E experts is stored."),
        ((total // L, active // L),
         "That is one layer: each of the L layers has its own router and experts."),
        ((L * (router + E * 3 * D * F), L * (router + K * 3 * D * F)),
         "An expert has config.ffn_matrices weight matrices (3 for SwiGLU, 2 for a GELU FFN), "
         "not always 3."),
        ((active, total), "Returned (active, total): return (total, active)."),
    ]


def _check_types(out: object) -> tuple[int, int]:
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise CheckFailed(f"Return a pair (total, active), got {type(out).__name__}.")
    for what, value in zip(("total", "active"), out, strict=True):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy ints too
            raise CheckFailed(f"Return {what} as a Python int, got {type(value).__name__}"
                              + (" (use int(...) or .item())." if hasattr(value, "item") else "."))
    return int(out[0]), int(out[1])


@checker("check_moe_ffn_params")
def check_moe_ffn_params(moe_ffn_params: Callable[[TransformerConfig], object]) -> None:
    for name, config in CASES:
        set_case(name)
        total, active = _check_types(call(moe_ffn_params, config, names=()))
        expected = reference_moe_ffn_params(config)
        if (total, active) == expected:
            continue
        where = f"For {name} the reference is (total, active) = {expected}, got {(total, active)}."
        for answer, hint in _suspects(config):
            if (total, active) == answer and answer != expected:
                raise CheckFailed(f"{where} {hint}")
        if any(v != e and (v - e) % 2**32 == 0 for v, e in zip((total, active), expected, strict=True)):
            raise CheckFailed(f"{where} The count wrapped around 2**32: a 32-bit integer "
                              "overflowed. Compute with Python ints.")
        raise CheckFailed(where)
