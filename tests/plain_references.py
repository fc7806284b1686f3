"""Plain references the tests compare against: one expert on one token, written out, and a
routing callable over fixed probabilities."""

import torch

from moe_lab import RouterOutput, topk_routing


def one_expert(experts, e, x_n):
    """Expert e of an :class:`moe_lab.Experts` bank on one token x_n (D,) -> (D,)."""
    if experts.activation == "swiglu":
        # (silu(x W_gate) * (x W_up)) W_down
        hidden = torch.nn.functional.silu(x_n @ experts.w_gate[e]) * (x_n @ experts.w_up[e])
    elif experts.activation == "gelu":
        hidden = torch.nn.functional.gelu(x_n @ experts.w_up[e])
    else:
        hidden = torch.relu(x_n @ experts.w_up[e])
    return hidden @ experts.w_down[e]


def fixed_layers(probs: torch.Tensor, top_k: int, calls: list | None = None):
    """A routing callable over L layers of fixed probabilities (L, T_max, E), cut to T tokens."""

    def route_ids(ids: torch.Tensor) -> list[RouterOutput]:
        if calls is not None:
            calls.append(ids)
        layers = []
        for p in probs[:, :len(ids)]:
            idx, weights = topk_routing(p, top_k)
            layers.append(RouterOutput(p.log(), p, idx, weights))
        return layers

    return route_ids
