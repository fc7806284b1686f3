"""MoE Lab: Mixture-of-Experts routing, built piece by piece. The package behind the course.

Data flows one way: tokens -> router -> routing plan -> experts -> combine -> output
(+ auxiliary losses).

Shape legend, used in every trailing comment of the package:

    B batch          T sequence length      N = B*T tokens
    D model width    F expert hidden width
    E experts        K experts per token    C capacity (assignments per expert)
    M kept assignments (N*K minus the dropped ones)

The tree is the architecture. At the top, the core that lessons 00-04 and 06 build:

    routing       TopKRouter, RouterOutput                     notebooks/01, 02
    experts       Experts                                      notebooks/00, 03
    grouped_gemm  the sorted dispatch's grouped GEMM, its kernel  notebooks/06
    dispatch      dense / loop / sorted / padded, capacity     notebooks/02, 03, 06
    layer         SparseMoE, MoEOutput (+ shared experts)      notebooks/03, 08
    losses        load_balancing_loss, router_z_loss, ...      notebooks/04, 11
    balancing     BiasBalancer (DeepSeek-V3)                   notebooks/04
    validation    the argument checks every public function runs first

Then folders, each named for what it is (each folder's docstring lists its modules):

    variants/     expert choice, Soft MoE, upcycling, causality               notebooks/08
    lm/           tokenizer, text routing, toy task, corpus, model, training,  notebooks/03-05
                  specialisation (language x expert, mutual information)
    analysis/     real OLMoE / Mixtral routing, expert placement              notebooks/09
    inference/    decoding, FLOPs vs bytes, expert caches, replay             notebooks/10
    systems/      device, params and FLOPs, bench, syncs, threads, parallel   notebooks/00, 06, 07
    interop/      transformers MoE blocks -> moe_lab layers                   notebooks/09
    viz/          plotly figures from plain data (no widget)
    widgets/      ipywidgets wiring the core and the figures
    checks/       the exercise checkers, ``moe_lab.checks.check_*``
    quizzes/      self-check quizzes (``quizzes/NN.yaml``), loader, grading
    course/       the course's machinery: JupyterLab contents manager, gpu_check

    bench.py, train.py, gpu_check.py   the commands ``python -m moe_lab.bench`` (``.train``,
                                       ``.gpu_check``); each is its folder's module

Layering (docs/architecture.md, section 2; tests/test_layering.py holds it), bottom to top:
core; variants/, systems/, interop/ (the core only); lm/ (+ variants, systems); analysis/ and
inference/ (+ lm); viz/ (no widget); widgets/; checks/ and quizzes/; course/ (anything).
Nothing imports a notebook.
"""

from moe_lab.balancing import BiasBalancer
from moe_lab.dispatch import DISPATCH_STRATEGIES, RoutingPlan, compute_capacity, make_routing_plan
from moe_lab.experts import Experts
from moe_lab.inference import expected_distinct_experts, simulate_expert_cache
from moe_lab.layer import MoEOutput, SparseMoE
from moe_lab.losses import (
    average_over_layers,
    count_assignments,
    cv_squared,
    importance_loss,
    load_balancing_loss,
    router_z_loss,
    sequence_load_balancing_loss,
)
from moe_lab.routing import RouterOutput, TopKRouter, topk_routing
from moe_lab.systems.device import environment_summary, pick_device, print_environment, seed_everything
from moe_lab.variants.expert_choice import ExpertChoiceMoE, ExpertChoiceOutput
from moe_lab.variants.soft_moe import SoftMoE, SoftMoEOutput
from moe_lab.variants.upcycling import upcycle

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
    "count_assignments",
    "cv_squared",
    "environment_summary",
    "expected_distinct_experts",
    "importance_loss",
    "load_balancing_loss",
    "make_routing_plan",
    "pick_device",
    "print_environment",
    "router_z_loss",
    "seed_everything",
    "simulate_expert_cache",
    "sequence_load_balancing_loss",
    "topk_routing",
    "upcycle",
]
__version__ = "0.1.0"
