"""Exercise checkers: run the learner's function on small seeded inputs, compare it with the
package's reference, and explain a wrong answer with the likely mistake.

Each lesson's checkers live in their own module and are built with
:func:`moe_lab.checks.core.checker`; all are importable from here as ``moe_lab.checks.check_*``.
A stub that still raises ``NotImplementedError`` gets a friendly "not implemented yet" line, not
a traceback, and the checker returns a falsy result, so the lesson can go on with the reference
implementation.

    lesson 00  params.py      check_moe_ffn_params
    lesson 01  router.py      check_router_probs, check_noisy_topk_logits, check_jitter
    lesson 02  topk.py        check_topk_routing, check_tokens_per_expert, check_capacity,
                              check_keep_mask
    lesson 03  combine.py     check_combine_loop, check_scatter_combine, check_gate_weights
    lesson 04  balance.py     check_switch_loss, check_z_loss, check_model_balance_loss,
                              check_bias_update
    lesson 05  lm.py          check_average_aux_loss, check_mutual_information
    lesson 06  efficiency.py  check_sort_by_expert
    lesson 07  parallel.py    check_send_splits, check_local_expert_order
    lesson 08  beyond_topk.py check_fine_grained_layout, check_expert_choice_select,
                              check_soft_moe_weights
    lesson 09  real_models.py check_group_limited_topk, check_input_weighted_combine,
                              check_convert_mixtral_experts, check_greedy_packing
    lesson 10  inference.py   check_expected_distinct_experts, check_lru_cache
    lesson 11  scope.py       check_sequence_balance_loss
               bughunt.py     check_aux_loss_added, check_aux_loss_full_softmax,
                              check_aux_loss_padding, check_dropped_tokens,
                              check_router_returns_logits, check_sigmoid_normalisation,
                              check_recompute_count (real bugs; BUGS cites each)
"""

from moe_lab.checks.balance import (
    check_bias_update,
    check_model_balance_loss,
    check_switch_loss,
    check_z_loss,
)
from moe_lab.checks.beyond_topk import (
    check_expert_choice_select,
    check_fine_grained_layout,
    check_soft_moe_weights,
)
from moe_lab.checks.bughunt import (
    check_aux_loss_added,
    check_aux_loss_full_softmax,
    check_aux_loss_padding,
    check_dropped_tokens,
    check_recompute_count,
    check_router_returns_logits,
    check_sigmoid_normalisation,
)
from moe_lab.checks.combine import check_combine_loop, check_gate_weights, check_scatter_combine
from moe_lab.checks.core import CheckFailed, CheckResult, checker, expect_close
from moe_lab.checks.efficiency import check_sort_by_expert
from moe_lab.checks.inference import check_expected_distinct_experts, check_lru_cache
from moe_lab.checks.lm import check_average_aux_loss, check_mutual_information
from moe_lab.checks.parallel import check_local_expert_order, check_send_splits
from moe_lab.checks.params import check_moe_ffn_params
from moe_lab.checks.real_models import (
    check_convert_mixtral_experts,
    check_greedy_packing,
    check_group_limited_topk,
    check_input_weighted_combine,
)
from moe_lab.checks.router import check_jitter, check_noisy_topk_logits, check_router_probs
from moe_lab.checks.scope import check_sequence_balance_loss
from moe_lab.checks.topk import (
    check_capacity,
    check_keep_mask,
    check_tokens_per_expert,
    check_topk_routing,
)

__all__ = [
    "CheckFailed",
    "CheckResult",
    "check_average_aux_loss",
    "check_aux_loss_added",
    "check_aux_loss_full_softmax",
    "check_aux_loss_padding",
    "check_bias_update",
    "check_capacity",
    "check_combine_loop",
    "check_expected_distinct_experts",
    "check_expert_choice_select",
    "check_fine_grained_layout",
    "check_convert_mixtral_experts",
    "check_dropped_tokens",
    "check_gate_weights",
    "check_greedy_packing",
    "check_group_limited_topk",
    "check_input_weighted_combine",
    "check_jitter",
    "check_keep_mask",
    "check_local_expert_order",
    "check_lru_cache",
    "check_model_balance_loss",
    "check_moe_ffn_params",
    "check_mutual_information",
    "check_noisy_topk_logits",
    "check_recompute_count",
    "check_router_probs",
    "check_router_returns_logits",
    "check_scatter_combine",
    "check_send_splits",
    "check_sequence_balance_loss",
    "check_sigmoid_normalisation",
    "check_soft_moe_weights",
    "check_sort_by_expert",
    "check_switch_loss",
    "check_tokens_per_expert",
    "check_topk_routing",
    "check_z_loss",
    "checker",
    "expect_close",
]
