"""The plain reference the layer tests compare against: one expert on one token, written out."""

import torch


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
