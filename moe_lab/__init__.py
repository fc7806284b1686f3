"""MoE Lab: Mixture-of-Experts routing, built piece by piece. The package behind the course.

Data flows one way: tokens -> router -> routing plan -> experts -> combine -> output
(+ auxiliary losses).

Shape legend, used in every trailing comment of the package:

    B batch          T sequence length      N = B*T tokens
    D model width    F expert hidden width
    E experts        K experts per token    C capacity (assignments per expert)
    M kept assignments (N*K minus the dropped ones)

Where each piece is introduced in the course:

    routing    TopKRouter, RouterOutput                       notebooks/01, 02
    experts    Experts                                        notebooks/00, 03
    dispatch   dense / loop / sorted / padded, capacity       notebooks/02, 03, 06
    layer      SparseMoE, MoEOutput                           notebooks/03
    losses     load_balancing_loss, router_z_loss, ...        notebooks/04
    balancing  BiasBalancer (DeepSeek-V3)                     notebooks/04
    device     pick_device, seed_everything                   notebooks/00
    bench      python -m moe_lab.bench                        notebooks/06
"""

from moe_lab.balancing import BiasBalancer
from moe_lab.device import environment_summary, pick_device, print_environment, seed_everything
from moe_lab.dispatch import DISPATCH_STRATEGIES, RoutingPlan, compute_capacity, make_routing_plan
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

__all__ = [
    "DISPATCH_STRATEGIES",
    "BiasBalancer",
    "Experts",
    "MoEOutput",
    "RouterOutput",
    "RoutingPlan",
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
]
__version__ = "0.1.0"
