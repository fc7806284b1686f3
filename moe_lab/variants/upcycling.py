"""Sparse upcycling: start an MoE from a trained dense FFN. Lesson 08.

Komatsuzaki et al. 2022, "Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints"
(arXiv 2212.05055), section 3: every expert of the new MoE layer is a copy of the dense FFN, the
router is new (random), and training goes on from there. At step 0, with the top-k weights
renormalised to sum to 1 and nothing dropped,

    y_n = sum_k w_{n,k} Expert_{i_{n,k}}(x_n) = (sum_k w_{n,k}) FFN(x_n) = FFN(x_n)

so the upcycled model computes exactly what the dense model computed: no loss spike, the training
resumes where the dense run stopped and the experts drift apart from there. Without
renormalisation the output would be scaled by the sum of the K chosen probabilities (about K / E
for a fresh router: a large shrink of every FFN output), and with a capacity the dropped tokens
would lose their FFN output: both would throw away part of what the dense model learned.
"""

from __future__ import annotations

import torch
from torch import nn

from moe_lab.experts import Experts
from moe_lab.layer import SparseMoE


def upcycle(dense_ffn: nn.Module, num_experts: int, top_k: int, **moe_kwargs: object) -> SparseMoE:
    """A dropless, renormalised ``SparseMoE`` whose E experts are copies of ``dense_ffn`` (an
    :class:`Experts` bank with one expert, or a module holding one as ``.experts``) and whose
    router is freshly initialised. Other keyword arguments go to :class:`SparseMoE`; those that
    would break the step-0 equality (a scaling factor, input weighting, a capacity, shared
    experts, unrenormalised weights) are refused by name, and so is a family's experts bank."""
    bank = getattr(dense_ffn, "experts", dense_ffn)
    if not isinstance(bank, Experts) or bank.num_experts != 1:
        raise TypeError("dense_ffn must be an Experts bank with num_experts=1 (or a module with "
                        f"one as .experts, e.g. moe_lab.lm.model.DenseFFN), got {type(dense_ffn).__name__}")
    if type(bank) is not Experts:  # a family's experts (interop) hold other weights: not copied
        raise TypeError(f"upcycle copies a plain moe_lab.Experts bank; got {type(bank).__name__} "
                        "(a family's experts from moe_lab.interop carry biases or fused weights "
                        "that the core's experts do not have)")
    fixed = {"normalize": "True", "capacity_factor": "None", "num_shared_experts": "0",
             "activation": "the dense FFN's", "scaling_factor": "1.0", "weight_inputs": "False"}
    for name, value in fixed.items():
        if name in moe_kwargs:
            raise ValueError(f"{name} is fixed by upcycling ({value}): any other value breaks "
                             f"the step-0 equality MoE(x) = FFN(x); got {name}={moe_kwargs[name]!r}")
    moe = SparseMoE(bank.d_model, bank.d_ff, num_experts, top_k, activation=bank.activation,
                    normalize=True, capacity_factor=None, **moe_kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        for name, weight in moe.experts.named_parameters():
            # every expert e: W[e] = W_dense
            weight.copy_(getattr(bank, name).detach().expand_as(weight))
    return moe
