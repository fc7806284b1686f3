"""MoE Lab: Mixture-of-Experts routing, built piece by piece. The package behind the course.

Data flows one way: tokens -> router -> routing plan -> experts -> combine -> output
(+ auxiliary losses).

Shape legend, used in every trailing comment of the package:

    B batch          T sequence length      N = B*T tokens
    D model width    F expert hidden width
    E experts        K experts per token    C capacity (assignments per expert)
    M kept assignments (N*K minus the dropped ones)

Where each piece is introduced in the course (the core first, then what stands on it):

    routing       TopKRouter, RouterOutput                     notebooks/01, 02
    experts       Experts                                      notebooks/00, 03
    dispatch      dense / loop / sorted / padded, capacity     notebooks/02, 03, 06
    layer         SparseMoE, MoEOutput (+ shared experts)      notebooks/03, 08
    expert_choice ExpertChoiceMoE (Zhou et al. 2022)           notebooks/08
    soft_moe      SoftMoE (Puigcerver et al. 2023)             notebooks/08
    upcycling     upcycle: an MoE from a dense FFN             notebooks/08
    losses        load_balancing_loss, router_z_loss, ...      notebooks/04
    balancing     BiasBalancer (DeepSeek-V3)                   notebooks/04
    device        pick_device, seed_everything                 notebooks/00
    params        total vs active parameters and FLOPs         notebooks/00
                  fine_grained: (E, K, F) -> (mE - S, mK - S, F/m) notebooks/08
    tokenizer     ByteTokenizer (UTF-8 bytes)                  notebooks/03, 05
    text_routing  route_text, TextRouting: a text's routing    notebooks/01, 02, 03, 05
    toy, stats    the toy task and the per-step routing stats  notebooks/04
    model, data   a tiny MoE transformer, the multilingual corpus          notebooks/05
    train         training loop, ``python -m moe_lab.train``               notebooks/05
    specialisation  language x expert counts, mutual information           notebooks/05
    causality     does a later token change an earlier output?               notebooks/08
    bench         ``python -m moe_lab.bench``                  notebooks/06
    parallel      expert parallelism over torch.distributed    notebooks/07
    syncs         count host syncs (CPU waits for the GPU)     issue 14
    gpu_check     ``python -m moe_lab.gpu_check``: the whole course on a GPU
    interop       transformers MoE blocks -> SparseMoE          notebooks/09
    real_routing  OLMoE / Mixtral expert counts, their stats  notebooks/09
    placement     experts on devices: packing, replication    notebooks/09
    viz, widgets  figures from plain data; live widgets on top of them
    checks        the exercise checkers, ``moe_lab.checks.check_*``
    quizzes       self-check quizzes (``quizzes/NN.yaml``), loader, grading   every lesson; notebooks/10

Layering: the core (routing, experts, dispatch, layer, losses, balancing, expert_choice,
soft_moe, upcycling) imports nothing of plotting, widgets, checks or training.
"""

from moe_lab.balancing import BiasBalancer
from moe_lab.device import environment_summary, pick_device, print_environment, seed_everything
from moe_lab.dispatch import DISPATCH_STRATEGIES, RoutingPlan, compute_capacity, make_routing_plan
from moe_lab.expert_choice import ExpertChoiceMoE, ExpertChoiceOutput
from moe_lab.experts import Experts
from moe_lab.layer import MoEOutput, SparseMoE
from moe_lab.losses import (
    average_over_layers,
    cv_squared,
    importance_loss,
    load_balancing_loss,
    router_z_loss,
)
from moe_lab.routing import RouterOutput, TopKRouter, topk_routing
from moe_lab.soft_moe import SoftMoE, SoftMoEOutput
from moe_lab.upcycling import upcycle

__all__ = [
    "DISPATCH_STRATEGIES",
    "BiasBalancer",
    "ExpertChoiceMoE",
    "ExpertChoiceOutput",
    "Experts",
    "MoEOutput",
    "RouterOutput",
    "RoutingPlan",
    "SoftMoE",
    "SoftMoEOutput",
    "SparseMoE",
    "TopKRouter",
    "average_over_layers",
    "compute_capacity",
    "cv_squared",
    "environment_summary",
    "importance_loss",
    "load_balancing_loss",
    "make_routing_plan",
    "pick_device",
    "print_environment",
    "router_z_loss",
    "seed_everything",
    "topk_routing",
    "upcycle",
]
__version__ = "0.1.0"
