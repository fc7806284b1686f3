# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] tags=["launch"]
# *Colab and Binder links appear here once the course is published (its home is set in `tools/launch_cells.py`); until then run it on your machine: `bash run.sh course`.*

# %% tags=["launch"] jupyter={"source_hidden": true}
# NBVAL_IGNORE_OUTPUT
# Setup for Google Colab only: elsewhere (JupyterLab, Binder) this cell does nothing.
# Colab has torch and numpy; it lacks plotly >= 6 with anywidget (for the live figures), the
# corpus of lesson 05, transformers 5 (lesson 09) and the course package. Its ipywidgets 7 is
# kept: ipywidgets 8 breaks there.
import sys

if "google.colab" in sys.modules:
    import importlib.util
    import subprocess

    if importlib.util.find_spec("moe_lab") is None:
        raise RuntimeError("MoE Lab has no published home yet, so there is nothing to install it from. "
                           "Run the course on your machine (bash run.sh course, see the README), or "
                           "install the moe_lab package into this runtime yourself and run this cell again.")
    packages = ["plotly>=6", "anywidget", "pyyaml", "chatterbot-corpus>=1.3.3", "transformers>=5.0,<6"]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages], check=True)
    from google.colab import output

    output.enable_custom_widget_manager()

# %% [markdown]
# # 09 · Real models: your layer inside seven model families, and how two trained MoEs route
#
# **Goal.** Prove that the `SparseMoE` you built is the MoE block of Mixtral, Qwen2-MoE, Qwen3-MoE,
# OLMoE, DeepSeek-V3, gpt-oss and Llama 4: take each family's block from Hugging Face
# `transformers` (built from a config, random weights, nothing downloaded), convert it with
# `moe_lab.interop.from_transformers`, and compare outputs and chosen experts. The families differ
# in small, decisive ways (softmax or sigmoid, renormalised or not, a scaling factor, a bias that
# only picks, group-limited routing, a gated shared expert, the score applied to the expert's
# *input*); you will build three of them by hand. Then look at **real trained models**: how
# unevenly OLMoE-1B-7B and Mixtral-8x7B load their experts, whether their experts specialise by
# text domain, and how to place their experts on 8 devices.
#
# Prerequisites: lessons 01-04 (router, top-$k$, combine, balancing), 07 (expert parallelism) and
# 08 (shared experts).

# %% [markdown]
# ## 1. The math
#
# Every family computes, for token $x$, router logits $\ell = W_r x\,(+\,b_r)$, scores $s$, a
# choice $\mathcal{T}$ of $K$ experts, weights $w$, and
#
# $$y = \sum_{k \in \mathcal{T}} w_k\, E_k(x) \;+\; g(x)\, S(x)
# \qquad\text{or, Llama 4:}\qquad y = \sum_{k \in \mathcal{T}} E_k(w_k\, x) \;+\; S(x)$$
#
# with $S$ the shared expert(s) and $g$ an optional gate. What changes from family to family:
#
# - **scores**: $s = \operatorname{softmax}(\ell)$ (Mixtral, Qwen, OLMoE, gpt-oss) or
#   $s = \sigma(\ell)$ elementwise (DeepSeek-V3, Llama 4);
# - **choice**: $\mathcal{T} = \operatorname{top}_K(s + b)$ where the bias $b$ (DeepSeek-V3's
#   `e_score_correction_bias`) changes the choice only, and, with **group-limited routing**, only
#   experts of the $M$ best of $G$ groups compete, a group scoring the sum of its two best $s + b$;
# - **weights**: $w_k = s_k / \sum_{j \in \mathcal{T}} s_j$ (renormalised) or $w_k = s_k$, times a
#   scaling factor $\gamma$ (DeepSeek-V3's `routed_scaling_factor`, 2.5 in the released model).
#   Softmax over the $K$ chosen logits (gpt-oss) equals softmax-then-renormalise, and top-$k$ of the
#   logits then $\sigma$ (Llama 4) equals $\sigma$-then-top-$k$: $\sigma$ and $\exp$ are monotone.
#
# | symbol | code | shape | meaning |
# |---|---|---|---|
# | $\ell$ | `router_logits` | $(N, E)$ | router logits (with `router.bias` for gpt-oss) |
# | $s$ | `router_probs` | $(N, E)$ | softmax or sigmoid scores |
# | $b$ | `router.score_correction_bias` | $(E,)$ | selection bias: choice only |
# | $G, M$ | `num_groups`, `topk_groups` | | expert groups, groups kept per token |
# | $\mathcal{T}$ | `topk_idx` | $(N, K)$ | chosen experts |
# | $w$ | `topk_weights` | $(N, K)$ | combine weights (times `scaling_factor` $\gamma$) |
# | $S, g$ | `shared_experts`, `shared_expert_gate` | | always-on experts, Qwen2-MoE's sigmoid gate |
# | $c_{d,i}$ | `expert_counts[domain][layer]` | $(E,)$ | real models: assignments to expert $i$ |

# %%
import json
import math
import warnings

import torch

from moe_lab import Experts, SparseMoE
from moe_lab.analysis.placement import (
    balanced_packing,
    contiguous_placement,
    device_loads,
    greedy_placement,
    replicated_placement,
)
from moe_lab.analysis.real_routing import (
    COMMON_DOMAINS,
    DATA_DIR,
    coactivation_information,
    load_entropy_bits,
    load_imbalance,
    load_real_routing,
    specialisation_summary,
)
from moe_lab.checks.real_models import (
    check_convert_mixtral_experts,
    check_greedy_packing,
    check_group_limited_topk,
    check_input_weighted_combine,
)
from moe_lab.interop import (
    FAMILIES,
    block_output,
    block_topk_idx,
    conventions,
    from_transformers,
    mixtral_expert_weights,
    tiny_block,
)
from moe_lab.lm.stats import max_over_mean_load
from moe_lab.routing import topk_routing

warnings.filterwarnings("ignore", module="transformers")  # config notes about unused fields

# %% [markdown]
# ## 2. Seven families, one layer: the conventions table
#
# For each family: a tiny block (16-wide tokens, 8 experts, random weights drawn by
# `moe_lab.interop.tiny_block`), converted with `moe_lab.interop.from_transformers`, run on the same
# 2 x 7 tokens. The block's own top-$k$ indices come from its router (`block_topk_idx`).

# %%
# NBVAL_IGNORE_OUTPUT
import transformers

print("transformers", transformers.__version__, "| torch", torch.__version__)

# %%
torch.manual_seed(0)
x = torch.randn(2, 7, 16)  # (B, T, D)
parity = {}
for family in FAMILIES:
    block = tiny_block(family.name, seed=0)
    layer = from_transformers(block)
    out = layer(x)
    gap = (out.y - block_output(block, x)).abs().max().item()
    same_experts = torch.equal(out.router.topk_idx.sort(-1).values, block_topk_idx(block, x))
    parity[family.name] = (gap, same_experts, conventions(block))

# %%
# NBVAL_IGNORE_OUTPUT
# the exact gaps depend on the machine's float kernels; the next cell checks them against 1e-5
for name, (gap, same, _) in parity.items():
    print(f"{name:12s} largest |y - y_block| = {gap:.1e}   same experts: {same}")

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'family':12s} {'|y - y_block| < 1e-5':>21s} {'same experts':>13s}")
for name, (gap, same, _) in parity.items():
    print(f"{name:12s} {str(gap < 1e-5):>21s} {str(same):>13s}")
# the conventions in two tables of aligned columns (one long line per family would wrap)
for fields in (("scoring", "normalisation", "scaling", "bias"),
               ("group_limit", "shared_expert", "activation", "weights_on")):
    rows = [[name] + [getattr(conv, f) for f in fields] for name, (_, _, conv) in parity.items()]
    widths = [max(len(str(row[i])) for row in [["family", *fields], *rows]) for i in range(5)]
    print()
    for row in [["family", *fields], *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())

# %% [markdown]
# Seven blocks, one class: every row is a `SparseMoE` with a few options set (read them with
# `print(from_transformers(block))`). The sizes in the rows are the tiny blocks' (8 experts of
# width 16-40), not the real models': DeepSeek-V3 itself has 256 routed experts of width 2048
# in 8 groups, top-8 from the best 4 groups, 1 shared expert and a scaling factor of 2.5
# (arXiv:2412.19437, section 4.2; the factor 2.5 is its published config's
# `routed_scaling_factor`); the table shows the same kinds of options at a size that runs
# here. The tests (`tests/test_interop.py`) repeat this at several
# configurations and two seeds, and compare the gradients with respect to $x$ too.
#
# Two conventions deserve a closer look, because a reimplementation that gets them wrong still
# runs and still looks plausible: DeepSeek-V3's group limit and Llama 4's input scaling.

# %% [markdown]
# ## 3. Build: DeepSeek-V3's group-limited selection
#
# DeepSeek-V3 (arXiv:2412.19437, section 2.1.2) splits its 256 routed experts into $G = 8$ groups
# (one per node) and lets each token use experts of at most $M = 4$ groups, so a token's rows
# travel to at most 4 nodes. In `transformers` (`DeepseekV3TopkRouter.forward`):
#
# 1. `scores_for_choice` $= s + b$, shape $(N, E)$, viewed as $(N, G, E/G)$;
# 2. a group's score is the **sum of its two highest** `scores_for_choice`;
# 3. keep the $M$ best groups; the other experts get $-\infty$;
# 4. `topk` over what is left.
#
# Write `group_limited_topk(scores_for_choice, top_k, num_groups, topk_groups)` returning
# `topk_idx` $(N, K)$ (the order within a token does not matter). *Hints:* `tensor.view`,
# `topk(2, dim=-1).values.sum(-1)`, `scatter`, `masked_fill(~mask, float("-inf"))`. Scores can be
# negative (the bias is): what does that mean for the value you mask with?

# %%
def group_limited_topk(scores_for_choice: torch.Tensor, top_k: int, num_groups: int,
                       topk_groups: int) -> torch.Tensor:
    """scores_for_choice (N, E) -> topk_idx (N, K), experts only from the topk_groups best groups."""
    raise NotImplementedError("your code here")


# %%
ok_groups = check_group_limited_topk(group_limited_topk)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def group_limited_topk_solution(scores_for_choice: torch.Tensor, top_k: int, num_groups: int,
                                topk_groups: int) -> torch.Tensor:
    num_tokens, num_experts = scores_for_choice.shape
    grouped = scores_for_choice.view(num_tokens, num_groups, num_experts // num_groups)  # (N, G, E/G)
    # group score = sum of the group's two best scores
    group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G)
    best_groups = group_scores.topk(topk_groups, dim=-1).indices  # (N, M)
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, best_groups, True)  # (N, G)
    keep = keep.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)  # (N, E)
    return scores_for_choice.masked_fill(~keep, float("-inf")).topk(top_k, dim=-1).indices  # (N, K)


solution_passed = check_group_limited_topk(group_limited_topk_solution)

# %% [markdown]
# **In the package:** `moe_lab.routing.topk_routing` (its `num_groups`, `topk_groups`; the mask is
# `moe_lab.routing.limit_to_top_groups`).
#
# How often does the limit change a token's experts? Route 4,096 random tokens through a tiny
# DeepSeek-V3 router (64 experts in 8 groups, top-6 from the best 3 groups) with and without it.

# %%
# NBVAL_CHECK_OUTPUT
group_topk = group_limited_topk if ok_groups else group_limited_topk_solution
torch.manual_seed(0)
scores = torch.sigmoid(torch.randn(4096, 64) * 2)  # (N, E)
limited = group_topk(scores, 6, 8, 3).sort(-1).values  # (N, K)
free, _ = topk_routing(scores, 6)  # no group limit
changed = (limited != free.sort(-1).values).any(-1).float().mean().item()
nodes = torch.tensor([len(set((row // 8).tolist())) for row in limited])
print(f"tokens whose experts change under the limit: {100 * changed:.1f} %")
print("groups (nodes) a token reaches: at most", int(nodes.max()), "| without the limit up to",
      max(len(set((row // 8).tolist())) for row in free))

# %% [markdown]
# Read the percentage as a fact about the mechanism, not about DeepSeek-V3: these scores are
# random, with no structure, so a token's 6 best experts almost never fall in 3 of the 8 groups
# by chance and the limit nearly always binds. A trained router sees the limit during training
# and can learn to put a token's best experts in few groups; how often it binds in the real
# model is not measured here. What holds for any scores is the second line: under the limit a
# token's rows travel to at most 3 groups (nodes).

# %% [markdown]
# ## 4. Build: Llama 4 scales the expert's input
#
# Llama 4's text MoE (`Llama4TextMoe.forward`) computes `routed_in = hidden_states *
# router_scores`, runs the experts on that, and sums their outputs: the router's score
# $g = \sigma(\ell)$ multiplies what the expert **reads**, $E(g\,x)$, where Mixtral multiplies what
# it **writes**, $g\,E(x)$. For a linear expert the two agree; a SwiGLU expert is not linear (nor
# homogeneous: $E(g x) = \operatorname{silu}(g\,xW_g) \odot (g\,xW_u)\,W_d$). By how much do they
# differ?

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
expert = Experts(1, 16, 32)  # one SwiGLU expert
x = torch.randn(1000, 16)  # (N, D)
with torch.no_grad():
    h = expert.forward_expert(x, 0)  # E(x): (N, D)
    for g in (1.0, 0.9, 0.5, 0.1):
        gap = (g * h - expert.forward_expert(g * x, 0)).norm() / (g * h).norm()
        print(f"g = {g}: |g E(x) - E(g x)| / |g E(x)| = {gap:.3f}")

# %% [markdown]
# Equal only at $g = 1$; at $g = 0.5$ the relative gap is large, and it grows as $g$ shrinks
# (for small $g$, $E(g x) \approx g^2 \cdot \tfrac12\, (xW_g \odot xW_u) W_d$: quadratic, not
# linear). A converted Llama 4 checkpoint run with Mixtral's order would be a different model.
#
# Write `input_weighted_combine(x, topk_idx, topk_weights, experts)`:
# $y_n = \sum_k E_{i_{n,k}}(w_{n,k}\, x_n)$, using `experts.forward_expert(rows, e)`. Keep the
# weights in the autograd graph: they are how the router learns.

# %%
def input_weighted_combine(x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor,
                           experts) -> torch.Tensor:
    """x (N, D), topk_idx (N, K), topk_weights (N, K) -> y (N, D) = sum_k E_{i_k}(w_k x)."""
    raise NotImplementedError("your code here")


# %%
ok_input = check_input_weighted_combine(input_weighted_combine)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def input_weighted_combine_solution(x: torch.Tensor, topk_idx: torch.Tensor,
                                    topk_weights: torch.Tensor, experts) -> torch.Tensor:
    y = torch.zeros_like(x)  # (N, D)
    for e in range(experts.num_experts):
        token_idx, slot = torch.where(topk_idx == e)  # (n,), (n,)
        # the weight scales the expert's input: E_e(w x)
        rows = x[token_idx] * topk_weights[token_idx, slot].unsqueeze(-1)  # (n, D)
        y = y.index_add(0, token_idx, experts.forward_expert(rows, e))
    return y


solution_passed = check_input_weighted_combine(input_weighted_combine_solution)

# %% [markdown]
# **In the package:** `moe_lab.layer.SparseMoE` (`weight_inputs=True`: every (token, slot) becomes
# one row $w\,x$, run by the same dispatch strategies as the ordinary layer).

# %% [markdown]
# ## 5. Build: convert Mixtral's weights by hand
#
# `transformers` 5 stores all experts of a block in two tensors (`MixtralExperts`):
# `gate_up_proj` $(E, 2F, D)$ and `down_proj` $(E, D, F)$, used as
#
# ```python
# gate, up = F.linear(x, gate_up_proj[e]).chunk(2, dim=-1)   # x @ W.T, then split in two
# y = F.linear(act_fn(gate) * up, down_proj[e])
# ```
#
# `moe_lab.Experts` computes `(silu(x @ w_gate[e]) * (x @ w_up[e])) @ w_down[e]` with `w_gate`,
# `w_up` $(E, D, F)$ and `w_down` $(E, F, D)$. Write `convert_mixtral_experts(gate_up_proj,
# down_proj)` returning `(w_gate, w_up, w_down)`.

# %%
def convert_mixtral_experts(gate_up_proj: torch.Tensor, down_proj: torch.Tensor):
    """(E, 2F, D), (E, D, F) -> w_gate (E, D, F), w_up (E, D, F), w_down (E, F, D)."""
    raise NotImplementedError("your code here")


# %%
ok_convert = check_convert_mixtral_experts(convert_mixtral_experts)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def convert_mixtral_experts_solution(gate_up_proj: torch.Tensor, down_proj: torch.Tensor):
    gate, up = gate_up_proj.chunk(2, dim=1)  # (E, F, D) each: the first F rows are the gate
    # F.linear(x, W) = x @ W.T: transpose the last two dimensions
    return gate.transpose(1, 2), up.transpose(1, 2), down_proj.transpose(1, 2)


solution_passed = check_convert_mixtral_experts(convert_mixtral_experts_solution)

# %% [markdown]
# **In the package:** `moe_lab.interop.from_transformers` (the tensors: `moe_lab.interop.mixtral_expert_weights`).
#
# Now use your conversion on a real `MixtralSparseMoeBlock`: a `SparseMoE` with the router's
# weight and the three expert tensors copied in gives the block's output.

# %%
# NBVAL_CHECK_OUTPUT
convert = convert_mixtral_experts if ok_convert else mixtral_expert_weights
block = tiny_block("Mixtral", seed=1)  # 8 experts, top-2, D = 16, F = 24
by_hand = SparseMoE(16, 24, 8, 2)
with torch.no_grad():
    by_hand.router.weight.copy_(block.gate.weight)  # (E, D), as nn.Linear stores it
    w_gate, w_up, w_down = convert(block.experts.gate_up_proj, block.experts.down_proj)
    by_hand.experts.w_gate.copy_(w_gate)
    by_hand.experts.w_up.copy_(w_up)
    by_hand.experts.w_down.copy_(w_down)
    x = torch.randn(3, 5, 16)  # (B, T, D)
    gap = (by_hand(x).y - block_output(block, x)).abs().max().item()
print("converted by hand equals MixtralSparseMoeBlock (max |gap| < 1e-5):", gap < 1e-5)

# %% [markdown]
# ## 6. How two trained MoEs route: load and specialisation
#
# `moe_lab.analysis.real_routing.load_real_routing` reads counts shipped with the package (from the
# [OLMoE repository](https://github.com/allenai/OLMoE), Apache-2.0): how often each expert of
# **OLMoE-1B-7B** (64 experts, top-8, trained from scratch) and **Mixtral-8x7B** (8 experts,
# top-2) was chosen at layers 0, 7 and 15 (of 16 layers in OLMoE, of 32 in Mixtral: for Mixtral
# these are its first half only), over 208,896 tokens of each of five domains (arXiv,
# books, C4, GitHub, Wikipedia; OLMoE's counts have a sixth, Tulu, which Mixtral's lack, so the
# lesson uses the five both share), plus same-slot co-occurrence between layers. Counts of one layer
# sum to tokens $\times K$ (the loader checks).
#
# **Load imbalance.** For a load vector $c$ (E,): $\max_i c_i / \operatorname{mean}_i c_i$ (1 when
# balanced; at worst $E/K$, when one expert is in every token's top-$K$: $c_i$ = tokens, the mean
# = tokens $\times K / E$; 8 for OLMoE, 4 for Mixtral) and the entropy of the load share, $H = -\sum_i p_i \log_2 p_i$ with
# $p = c / \sum c$, divided by $\log_2 E$ (1 when uniform). For comparison: lesson 05's tiny MoE
# (8 experts, top-2) on its last training batch (`moe_lab/results/lesson05/moe.json`).

# %%
# NBVAL_CHECK_OUTPUT
real = load_real_routing()
for routing in real.values():
    print(f"{routing.model}: E = {routing.num_experts}, K = {routing.top_k}, domains {routing.domains}")
print()
print(f"{'model':13s} {'layer':>5s}  max/mean load per domain ({', '.join(COMMON_DOMAINS)})"
      "   normalised entropy (min-max)")
for routing in real.values():
    rows = load_imbalance(routing)
    for layer in routing.layers:
        at = [r for r in rows if r.layer == layer]
        ratios = " ".join(f"{r.max_over_mean:5.2f}" for r in at)
        entropy = [r.entropy_bits / r.max_entropy_bits for r in at]
        print(f"{routing.model:13s} {layer:5d}  {ratios}   {min(entropy):.3f}-{max(entropy):.3f}")
lesson05_log = DATA_DIR.parents[1] / "results" / "lesson05" / "moe.json"  # shipped with the package
lesson05 = json.loads(lesson05_log.read_text())["final_tokens_per_expert"]  # (layers, E)
for layer, counts in enumerate(lesson05):
    counts = torch.tensor(counts)
    print(f"{'lesson 05 MoE':13s} {layer:5d}  {max_over_mean_load(counts):5.2f} (one training batch)"
          f"   {load_entropy_bits(counts) / 3:.3f}")
print(f"{'uniform':13s} {'any':>5s}  {1.0:5.2f}   1.000")
for routing in real.values():
    worst = routing.num_experts / routing.top_k  # one expert in every token's top-K
    highest = max(r.max_over_mean for r in load_imbalance(routing))
    print(f"{routing.model}: worst case E/K = {worst:.0f}; its highest max/mean above is "
          f"{highest:.2f}, {100 * highest / worst:.0f} % of the worst case")

# %% [markdown]
# Mixtral's 8 experts stay close to the mean on every domain, like lesson 05's tiny model (at
# the three layers measured, all in its first half). OLMoE's 64 experts are far less even *per
# domain*: at layer 0 one expert takes almost every arXiv token (its max/mean is close to the
# worst case $E/K$), yet the normalised entropies stay high: the imbalance sits in a few hot experts
# per domain. The hot experts differ from domain to domain, which is how a model trained with a
# load-balancing loss over mixed batches can be this uneven within one domain.
#
# **Domain specialisation, measured as the OLMoE paper did** (Muennighoff et al. 2024, section 5,
# its Figure 22, drawn by `scripts/plot_routing_analysis_v2.ipynb` from these very files): for each
# expert $i$ and domain $D$, the share of $D$'s tokens routed to $i$, $100\, c_i(D) / \text{tokens}(D)$
# percent, against uniform routing's $100K/E$ (12.5 % for OLMoE, 25 % for Mixtral). One number per
# layer as well: the mutual information $I(\text{domain}; \text{expert})$ of the assignment counts
# (lesson 05's measure, `moe_lab.lm.specialisation.mutual_information`), at most
# $H(\text{domain}) = \log_2 5 = 2.32$ bits.

# %%
# NBVAL_CHECK_OUTPUT
summaries = {key: specialisation_summary(routing) for key, routing in real.items()}
print(f"{'model':13s} {'layer':>5s} {'I(domain; expert)':>18s} {'max share':>10s} {'uniform':>8s}"
      f" {'experts > 2x uniform':>21s}")
for key, rows in summaries.items():
    for r in rows:
        print(f"{r.model:13s} {r.layer:5d} {r.mutual_information_bits:13.4f} bits "
              f"{r.max_specialisation:8.1f} % {r.uniform:6.1f} % "
              f"{r.experts_over_twice_uniform:>12d} of {real[key].num_experts}")
ratio = [a.mutual_information_bits / b.mutual_information_bits
         for a, b in zip(summaries["olmoe"], summaries["mistral"], strict=True)]
print("OLMoE / Mixtral mutual information per layer:", [f"{q:.0f}x" for q in ratio])
print("agrees with the paper (OLMoE's experts far more domain-specialised than Mixtral's):",
      all(q > 10 for q in ratio) and all(r.experts_over_twice_uniform == 0 for r in summaries["mistral"]))
for routing in real.values():
    # n = fewest assignments of a domain (tokens x K); bias of I ~ (D - 1)(E - 1) / (2 n ln 2) bits
    n = min(routing.tokens.values()) * routing.top_k
    bias = (len(routing.domains) - 1) * (routing.num_experts - 1) / (2 * n * math.log(2))
    print(f"{routing.model}: at least {n / 1e6:.2f} million assignments per domain, "
          f"sampling bias of I < {10.0 ** math.ceil(math.log10(bias)):.0e} bits")

# %% [markdown]
# The numbers agree with the paper's reading of its figure: OLMoE's experts depend on the domain
# (tens of experts carry more than twice the uniform share of some domain, and the dependence
# grows with depth), while Mixtral's routing hardly depends on the domain at all (no expert
# reaches twice the uniform share; the mutual information is more than ten times smaller at every
# layer). The sampling bias of the mutual information, about $(D-1)(E-1) / (2 n \ln 2)$ bits for
# $n$ assignments per domain (printed above), is far below both models' values. Why they differ (Mixtral is
# widely believed to be upcycled from a dense model, lesson 08; OLMoE was trained from scratch
# with fine-grained experts) is a hypothesis these counts cannot test.

# %% [markdown]
# ## 7. Build: place the experts on 8 devices
#
# With expert parallelism (lesson 07) each device runs the experts it holds, and the layer waits
# for the busiest device, so the number to watch is **busiest device load / mean device load**.
# Three placements, each device holding the same number of expert slots:
#
# - **contiguous**: experts $0..E/G-1$ on device 0, and so on;
# - **greedy packing**: experts by decreasing load, each onto the least-loaded device that still
#   has a free slot (DeepSeek's [EPLB](https://github.com/deepseek-ai/EPLB) `balanced_packing`);
# - **replicated**: EPLB's redundant experts: first hand the spare slots one by one to the
#   expert with the highest load per copy (its tokens split evenly across its copies), then pack
#   the copies greedily.
#
# Write `greedy_packing(expert_load, num_devices)`: a list of `num_devices` lists of expert ids,
# each exactly $E/G$ long.

# %%
def greedy_packing(expert_load: torch.Tensor, num_devices: int) -> list[list[int]]:
    """expert_load (E,) -> for each of the G devices, the E/G experts it holds."""
    raise NotImplementedError("your code here")


# %%
ok_packing = check_greedy_packing(greedy_packing)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def greedy_packing_solution(expert_load: torch.Tensor, num_devices: int) -> list[list[int]]:
    slots = expert_load.numel() // num_devices
    devices, totals = [[] for _ in range(num_devices)], [0.0] * num_devices
    for e in torch.argsort(expert_load, descending=True, stable=True).tolist():  # heaviest first
        # the least-loaded device that still has a free slot
        g = min((d for d in range(num_devices) if len(devices[d]) < slots), key=lambda d: totals[d])
        devices[g].append(e)
        totals[g] += float(expert_load[e])
    return devices


solution_passed = check_greedy_packing(greedy_packing_solution)

# %% [markdown]
# **In the package:** `moe_lab.analysis.placement.balanced_packing` (and `greedy_placement`,
# `contiguous_placement`, `replicated_placement` around it).
#
# The real loads, summed over the five domains, on $G = 8$ devices: OLMoE has 8 experts per
# device (9 slots with replication: 8 spare slots in all), Mixtral 1 expert per device (2 slots
# with replication). Replication costs memory (one more expert per device), which is what it buys
# balance with.

# %%
# NBVAL_CHECK_OUTPUT
packing = greedy_packing if ok_packing else balanced_packing
num_devices = 8
print(f"{'model':13s} {'layer':>5s} {'contiguous':>11s} {'greedy':>7s} {'replicated':>11s}  (busiest / mean)")
placements = {}
for key, routing in real.items():
    slots = routing.num_experts + num_devices  # one spare slot per device for replicas
    for i, layer in enumerate(routing.layers):
        load = sum(routing.expert_counts[d][i] for d in COMMON_DOMAINS).double()  # (E,)
        packed = device_loads(packing(load, num_devices), torch.ones(len(load), dtype=torch.long), load)
        row = (contiguous_placement(load, num_devices).busiest_over_mean,
               float(packed.max() / packed.mean()),
               replicated_placement(load, num_devices, slots).busiest_over_mean)
        placements[key, layer] = row
        print(f"{routing.model:13s} {layer:5d} {row[0]:11.3f} {row[1]:7.3f} {row[2]:11.3f}")

# %% [markdown]
# Packing fixes most of OLMoE's imbalance because it has many experts to shuffle; Mixtral, one
# expert per device, has nothing to shuffle, and only replication helps. But a placement is made
# from **past** loads. Place OLMoE's layer 7 from C4 alone, then serve each domain with it:

# %%
# NBVAL_CHECK_OUTPUT
olmoe = real["olmoe"]
layer_7 = olmoe.layer_index(7)
fitted = {"greedy": greedy_placement(olmoe.expert_counts["c4"][layer_7].double(), num_devices),
          "replicated": replicated_placement(olmoe.expert_counts["c4"][layer_7].double(), num_devices, 72)}
print("OLMoE layer 7, placed from C4 loads; busiest / mean when serving:")
for domain in COMMON_DOMAINS:
    load = olmoe.expert_counts[domain][layer_7].double()
    cells = []
    for name, p in fitted.items():
        served = device_loads(p.experts, p.replicas, load)  # (G,)
        cells.append(f"{name} {float(served.max() / served.mean()):.3f}")
    cells.append(f"contiguous {contiguous_placement(load, num_devices).busiest_over_mean:.3f}")
    print(f"  {domain:10s} " + "   ".join(cells))

# %% [markdown]
# Fitted to C4, both placements are close to perfect on C4 and lose most of their advantage on
# the other domains; on some they are worse than the contiguous placement, because the spare
# slots went to C4's hot experts. A placement is only as good as the loads it was made from: EPLB
# recomputes it periodically from recent traffic.

# %% [markdown]
# ## 8. Visualise: domain specialisation and co-activation
#
# Pick a model, a view and a layer. **Domain specialisation**: domains down, experts across, the
# % of the domain's tokens routed to each expert (uniform: 12.5 % for OLMoE, 25 % for Mixtral).
# **Co-activation**: for the same slot $k$ of a token, $P(\text{expert } j \text{ at the later
# layer} \mid \text{expert } i \text{ at the earlier layer})$, summed over the five domains
# (uniform: $1/E$). Expert ids mean nothing across layers, so look for rows far from uniform: a
# row with a few bright cells says that a token's expert at the earlier layer largely predicts
# its expert at the later one.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.real_routing import RealRoutingExplorer

explorer = RealRoutingExplorer(real, model="olmoe", view="domain specialisation")
explorer

# %%
# NBVAL_IGNORE_OUTPUT
RealRoutingExplorer(real, model="olmoe", view="co-activation")

# %% [markdown]
# How much the earlier layer's choice tells about the later one, in bits (mutual information of
# the same-slot co-occurrence counts; at most $\log_2 E$: 6 bits for OLMoE, 3 for Mixtral):

# %%
# NBVAL_CHECK_OUTPUT
for routing in real.values():
    for pair, (a, b) in enumerate(routing.crosslayer_pairs):
        bits = coactivation_information(routing, pair)
        print(f"{routing.model:13s} layers {a:2d} -> {b:2d}: {bits:.3f} bits "
              f"of at most {math.log2(routing.num_experts):.0f}")

# %% [markdown]
# ## 9. Your layer inside a whole model
#
# Equal blocks are a start; a user takes the next step: put the layer into the whole model and
# generate. `moe_lab.interop.swap_moe_blocks(model)` replaces, in place, every MoE block of a
# transformers model by a `SparseMoE` that **shares** the block's parameters: the router,
# experts and shared experts are views of the model's own tensors under the model's own names.
# Nothing is copied, so gradients reach the model's parameters, `save_pretrained` writes the
# family's names, and each parameter keeps its dtype (DeepSeek-V3 keeps its router in float32
# inside a bfloat16 model). The swapped block also reports its router logits to transformers, so
# `output_router_logits=True` and the auxiliary loss work. `restore_moe_blocks(model)` undoes it.
#
# For each family, a tiny causal LM (2 layers, random weights, $E$ from 3 to 8, $K = 1$ in OLMoE and
# $K = E$ in Qwen3-MoE, dense layers between MoE layers in three of them) reads the prompt as
# bytes and greedily writes 20 more, before and after the swap:

# %%
from moe_lab.interop import restore_moe_blocks, swap_moe_blocks, tiny_model
from moe_lab.lm.tokenizer import ByteTokenizer

transformers.logging.set_verbosity_error()  # the tiny configs' notes (e.g. RoPE scaling)
prompt = torch.tensor([ByteTokenizer().encode("Mixture of experts ")])  # (1, T)
whole = {}
for family in FAMILIES:
    model = tiny_model(family.name)
    parameters = dict(model.named_parameters())
    before = model(prompt, output_router_logits=True)
    text_before = model.generate(prompt, max_new_tokens=20, do_sample=False)
    swap_moe_blocks(model)
    after = model(prompt, output_router_logits=True)
    text_after = model.generate(prompt, max_new_tokens=20, do_sample=False)
    moe_blocks = [m for m in model.modules() if isinstance(m, SparseMoE)]
    whole[family.name] = dict(
        blocks=len(moe_blocks), experts=moe_blocks[0].num_experts, top_k=moe_blocks[0].top_k,
        shared=all(p is parameters[name] for name, p in model.named_parameters()),
        gap=(after.logits - before.logits).abs().max().item(),
        same_text=torch.equal(text_after, text_before),
        aux=("-" if before.aux_loss is None else
             str(bool(torch.allclose(after.aux_loss, before.aux_loss, atol=1e-6)))),
        texts=[text[0, prompt.shape[1]:].tolist() for text in (text_before, text_after)])
    restore_moe_blocks(model)

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'family':12s} E  K  MoE blocks  params shared  logits < 1e-5  same 20 tokens  aux loss equal")
for name, row in whole.items():
    print(f"{name:12s} {row['experts']}  {row['top_k']}  {row['blocks']:10d}  {str(row['shared']):13s}"
          f"  {str(row['gap'] < 1e-5):13s}"
          f"  {str(row['same_text']):14s}  {row['aux']}")

# %%
# NBVAL_IGNORE_OUTPUT
# random weights write random bytes (shown as hex); the point is that both runs write the same
for name, row in whole.items():
    before, after = (bytes(text).hex(" ") for text in row["texts"])
    print(f"{name:12s} before: {before}\n{'':12s} after:  {after}")

# %% [markdown]
# ("-": DeepSeek-V3's and Llama 4's causal LMs return the router logits but add no auxiliary
# loss.) The tests (`tests/test_swap.py`) add gradients, a left-padded batch, bfloat16 as each
# family loads it, `save_pretrained` / `from_pretrained`, and `torch.compile(fullgraph=True)`;
# transformers' own test files for Mixtral, Qwen2-MoE and OLMoE also run with the blocks swapped
# (`tools/transformers_model_tests.py`).
#
# **The router's dtype.** Lesson 01 computes the router in float32 whatever the input's dtype.
# transformers' Mixtral, Qwen, OLMoE, gpt-oss and Llama 4 compute the logits in the model's
# dtype and the softmax (or sigmoid) in float32 (gpt-oss its softmax over the $K$ chosen logits
# in the model's dtype too); DeepSeek-V3 computes its router in
# float32. To route as the family does in every dtype, the swapped router takes the option
# `router_dtype=None` ("the input's dtype"). How many tokens would the course's float32 router
# send elsewhere? A Qwen3-MoE block with 128 experts, top-8, 8192 tokens, in bfloat16:

# %%
block = tiny_block("Qwen3-MoE", d_model=64, num_experts=128, num_experts_per_tok=8,
                   moe_intermediate_size=16)
tokens = torch.randn(8192, 64, generator=torch.Generator().manual_seed(0))  # (N, D)
choice_fp32_model = block_topk_idx(block, tokens)  # the same block, all in float32
block = block.to(torch.bfloat16)
tokens = tokens.to(torch.bfloat16)
choice_family = block_topk_idx(block, tokens)
layer = from_transformers(block)  # router_dtype=None: logits in bf16, softmax in fp32
choice_ours = layer.router(tokens).topk_idx.sort(-1).values
layer.router.router_dtype = torch.float32  # the course's router, on the same bf16 weights
choice_course = layer.router(tokens).topk_idx.sort(-1).values


def tokens_routed_differently(a, b):
    return int((a != b).any(dim=-1).sum())


flips = {"family dtype vs the block": tokens_routed_differently(choice_ours, choice_family),
         "fp32 router vs the block": tokens_routed_differently(choice_course, choice_family),
         "bf16 block vs fp32 model": tokens_routed_differently(choice_family, choice_fp32_model),
         "fp32 router vs fp32 model": tokens_routed_differently(choice_course, choice_fp32_model)}

# %%
# NBVAL_IGNORE_OUTPUT
# the counts depend on the machine's bfloat16 kernels; the next cell checks what holds anywhere
for what, count in flips.items():
    print(f"{what:27s} {count:5d} of 8192 tokens pick another set of experts")

# %%
# NBVAL_CHECK_OUTPUT
print("computing as the family does, no token differs:", flips["family dtype vs the block"] == 0)
print("the float32 router sends some tokens elsewhere:", flips["fp32 router vs the block"] > 0)
print("the float32 router is closer to the float32 model:",
      flips["fp32 router vs fp32 model"] < flips["bf16 block vs fp32 model"])

# %% [markdown]
# Both facts matter. Parity with a model run in bfloat16 needs its own arithmetic: some
# tokens sit so close to a tie between their $K$-th and $(K{+}1)$-th expert that the 8-bit
# mantissa of bf16 logits decides. And the float32 router is closer to the float32 model: its
# choices match more of the same model's choices in float32, because only the weights and
# inputs were rounded, not the logits (a model *trained* with bf16 logits learned with their
# rounding, which is why interop reproduces it). That is why the course keeps `router_dtype=torch.float32` as the default (the
# router is $D \times E$ weights, a negligible cost), and interop switches to the family's dtype
# only to reproduce a model exactly.
#
# **Bit for bit in bfloat16.** Routing the same tokens is not all a bf16 model needs: it rounds
# after every product and every sum, and greedy generation follows the rounded logits, so two
# computations that round in another order can write other text where two tokens nearly tie.
# transformers hands Mixtral's and DeepSeek-V3's combine weights to the experts in float32, and
# those of Qwen-MoE, OLMoE, gpt-oss and Llama 4 in the model's dtype; its `"eager"` experts add
# one expert's weighted rows at a time into a bf16 sum, its grouped kernels (`"grouped_mm"`, the
# default) sum a token's $K$ weighted rows in float32 and round once. A swapped block does the
# same: its family's router hands over the weights in the family's dtype, and its `dispatch`
# follows the model's experts implementation (`"loop"` for eager, `"sorted"` for grouped, and
# `"sorted"` under `torch.compile`, which cannot trace the loop in one graph; an assigned
# `dispatch` is kept). Each family in bfloat16 (its $E$ and $K$ as in the table above, wider
# layers), with weights large enough that every rounding shows: the largest difference of the logits before and after the swap (0 means the
# same bits), then with the other order of sums pinned (loop for grouped, sorted for eager), and
# whether the greedy text stays the same with that other order. The other order moves the logits
# where the two orders round differently: with float32 weights (Mixtral, DeepSeek-V3) or more
# than two bf16 rows per token (Qwen3-MoE, $K = 7$); two bf16 products sum to the same bits
# either way (Qwen2-MoE, gpt-oss, $K = 2$), and $K = 1$ has no sum (OLMoE, Llama 4 here). The text
# survives it here, because no two candidate tokens are that close; where two are closer than
# the gap, it would not:

# %%
# NBVAL_IGNORE_OUTPUT
# the same bits need the same kernels in both runs (true where this notebook was stored)
import tempfile

transformers.utils.logging.disable_progress_bar()  # saving and loading, quietly
aligned = dict(hidden_size=64, intermediate_size=32, moe_intermediate_size=32,
               shared_expert_intermediate_size=32)
tokens = torch.randint(3, 256, (4, 16), generator=torch.Generator().manual_seed(0))  # (B, T)


def bf16_model(family, implementation):
    """A tiny model of the family loaded in bfloat16 as the family loads it (DeepSeek-V3 keeps
    its router in float32), its weights drawn with std 0.3 (not 0.02: the experts must change
    the logits), running transformers' experts ``implementation`` (None: Llama 4's own)."""
    model = tiny_model(family, **aligned, **({"head_dim": 32} if family == "OLMoE" else {}))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    options = {} if implementation is None else {"experts_implementation": implementation}
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return type(model).from_pretrained(folder, dtype=torch.bfloat16, **options).eval()


def largest_gap(a, b):
    return (a.float() - b.float()).abs().max().item()


print(f"{'family':12s} {'experts':10s} {'matched':>8s} {'other order':>12s}  same 20 tokens")
for family in FAMILIES:
    # Llama 4 runs every expert on every token with one bmm: it has no other implementation
    for implementation in [None] if family.name == "Llama 4" else ["grouped_mm", "eager"]:
        model = bf16_model(family.name, implementation)
        expected = model(tokens).logits
        expected_text = model.generate(tokens[:1], max_new_tokens=20, do_sample=False)
        swap_moe_blocks(model)
        matched = largest_gap(model(tokens).logits, expected)
        for block in model.modules():  # the other order of sums: loop <-> sorted
            if isinstance(block, SparseMoE):
                block.dispatch = "sorted" if block.dispatch == "loop" else "loop"
        other = largest_gap(model(tokens).logits, expected)
        same_text = torch.equal(model.generate(tokens[:1], max_new_tokens=20, do_sample=False),
                                expected_text)
        print(f"{family.name:12s} {implementation or 'its own':10s} {matched:8g} {other:12g}"
              f"  {same_text}")

# %% [markdown]
# **A real trained model** (optional: it needs the weights in your local Hugging Face cache, e.g.
# after `hf download allenai/OLMoE-1B-7B-0924`, about 14 GB in bfloat16, so a machine with
# about 16 GB of free memory: more than Colab's free CPU runtime has;
# nothing is downloaded here):

# %%
# NBVAL_IGNORE_OUTPUT
REAL_MODEL = "allenai/OLMoE-1B-7B-0924"
try:
    real_model = transformers.AutoModelForCausalLM.from_pretrained(
        REAL_MODEL, dtype=torch.bfloat16, local_files_only=True).eval()
    real_tokenizer = transformers.AutoTokenizer.from_pretrained(REAL_MODEL, local_files_only=True)
except (OSError, ValueError) as error:
    print(f"skipped: {REAL_MODEL} is not in the local Hugging Face cache ({type(error).__name__})")
else:
    inputs = real_tokenizer("A mixture of experts is", return_tensors="pt")
    texts = []
    for swapped in (False, True):
        if swapped:
            swap_moe_blocks(real_model)
        ids = real_model.generate(**inputs, max_new_tokens=20, do_sample=False)
        texts.append(real_tokenizer.decode(ids[0], skip_special_tokens=True))
    print("before:", texts[0], "\nafter: ", texts[1], "\nsame text:", texts[0] == texts[1])

# %% [markdown]
# **The activation is a word.** transformers' configs name the experts' gate activation
# (`hidden_act`): SiLU gives SwiGLU, GELU gives GeGLU (Shazeer 2020 compares both). In moe_lab it
# is the one option `activation` of `Experts` (and of `SparseMoE`, shared experts included); the
# same weights, the other gate:

# %%
# NBVAL_CHECK_OUTPUT
swiglu, geglu = Experts(1, 16, 32), Experts(1, 16, 32, activation="geglu")
geglu.load_state_dict(swiglu.state_dict())  # the same W_gate, W_up, W_down
tokens = torch.randn(5, 16)
print("GeGLU differs from SwiGLU on the same weights:",
      bool((geglu.forward_expert(tokens, 0) - swiglu.forward_expert(tokens, 0)).abs().max() > 1e-3))

# %% [markdown]
# ## 10. Summary
#
# - Seven families' MoE blocks are one `SparseMoE` with options: scoring (softmax, sigmoid),
#   renormalisation, a scaling factor, a logit bias, a selection-only bias, group-limited
#   selection, shared experts (gated or not), clamped SwiGLU with biases, and the weight on the
#   expert's input or output. `moe_lab.interop.from_transformers` converts each one, equal to
#   float rounding (outputs, chosen experts and input gradients; `tests/test_interop.py`), and
#   `swap_moe_blocks` puts the layer into whole models that generate the same text.
# - In bfloat16 a router decides near-ties by its arithmetic: computing the logits in bf16, as
#   most families do, moved some tokens to other experts (section 9); the course keeps float32.
# - Equivalent forms are worth recognising: top-$k$ then softmax = softmax, top-$k$, renormalise;
#   top-$k$ of logits then sigmoid = sigmoid then top-$k$. Non-equivalent ones are worth testing:
#   $E(g x) \ne g E(x)$ for any non-linear expert.
# - Real trained routing is uneven per domain (OLMoE far more than Mixtral) and, for OLMoE,
#   domain-specialised, as its paper reported; the numbers come from the counts shipped with the
#   package. The closing cell prints the measured values.
# - Placement matters at deployment: greedy packing removes most of a fine-grained model's
#   imbalance; replicating hot experts (EPLB) handles what packing cannot, for memory; both rely on
#   loads that drift with the traffic.

# %%
# NBVAL_CHECK_OUTPUT
print("parity (largest |y - y_block| < 1e-5 and the same experts):",
      {name: bool(gap < 1e-5 and same) for name, (gap, same, _) in parity.items()})
for key, routing in real.items():
    worst = max(load_imbalance(routing), key=lambda r: r.max_over_mean)
    rows = summaries[key]
    print(f"{routing.model}: worst max/mean load {worst.max_over_mean:.2f} ({worst.domain}, layer "
          f"{worst.layer}); I(domain; expert) " + ", ".join(
              f"L{r.layer} {r.mutual_information_bits:.3f}" for r in rows) + " bits")
    for layer in routing.layers:
        row = placements[key, layer]
        print(f"  layer {layer:2d} on 8 devices, busiest/mean: contiguous {row[0]:.3f}, "
              f"greedy {row[1]:.3f}, replicated {row[2]:.3f}")

# %% [markdown]
# ## 11. Self-check quiz
#
# Answer in English or Korean; numeric answers are computed by the package.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(9)

# %% [markdown]
# ## 12. Interview questions (self-check)
#
# <details><summary>Mixtral의 라우팅과 DeepSeek-V3의 라우팅은 무엇이 다른가요? (How does DeepSeek-V3's routing differ from Mixtral's?)</summary>
#
# Mixtral: softmax over 8 experts, top-2, renormalised. DeepSeek-V3: sigmoid scores per expert; a
# bias added for the choice only (auxiliary-loss-free balancing); the choice limited to the 4 best
# of 8 groups (a group scoring the sum of its two best), so a token reaches at most 4 nodes; the 8
# weights renormalised and scaled by 2.5; one shared expert on every token. (Mixtral: 소프트맥스,
# top-2, 재정규화. DeepSeek-V3: 시그모이드 점수, 선택에만 쓰는 바이어스, 그룹 제한 top-k, 스케일링,
# 공유 전문가.)
# </details>
#
# <details><summary>Llama 4처럼 게이트 값을 전문가의 입력에 곱하면 출력에 곱하는 것과 같은가요? (Is scaling the expert's input the same as scaling its output?)</summary>
#
# Only for a linear expert, or at $g = 1$. SwiGLU is neither linear nor homogeneous, so
# $E(g x) \ne g E(x)$; section 4 measured the gap. Converting weights between the two conventions
# without changing the order gives a different model. (선형 전문가일 때만 같습니다. SwiGLU에서는
# 다르며, 4절에서 그 차이를 측정했습니다.)
# </details>
#
# <details><summary>학습된 MoE의 부하 불균형을 배포할 때 어떻게 다루나요? (How do you handle a trained MoE's load imbalance at deployment?)</summary>
#
# Measure loads per expert on real traffic; place experts so devices are balanced (greedy packing
# with equal slots per device); replicate the hottest experts into spare slots and split their
# tokens (DeepSeek's EPLB); recompute periodically, because loads drift with the traffic mix
# (section 7's C4-fitted placement on other domains). (실제 트래픽으로 부하를 측정하고, 그리디
# 패킹과 핫 전문가 복제(EPLB)로 배치하며, 부하가 변하므로 주기적으로 다시 계산합니다.)
# </details>
#
# <details><summary>전문가가 도메인별로 특화되었는지 어떻게 측정하나요? (How do you measure whether experts specialise by domain?)</summary>
#
# Count assignments per (domain, expert); compare each domain's share per expert with uniform
# $K/E$ (the OLMoE paper's domain specialisation), and summarise with the mutual information
# between domain and expert (against a shuffled baseline when samples are few). OLMoE's experts
# specialise; Mixtral's barely do. (도메인-전문가 할당 수를 세어 균등 분포와 비교하고, 상호정보량으로
# 요약합니다.)
# </details>

# %% [markdown]
# ## 13. Further reading
#
# - Muennighoff et al. 2024, [*OLMoE: Open Mixture-of-Experts Language Models*](https://arxiv.org/abs/2409.02060): section 5 (routing analysis, domain specialisation); the data of section 6 and its [plotting notebook](https://github.com/allenai/OLMoE/blob/main/scripts/plot_routing_analysis_v2.ipynb).
# - Jiang et al. 2024, [*Mixtral of Experts*](https://arxiv.org/abs/2401.04088).
# - DeepSeek-AI 2024, [*DeepSeek-V3 Technical Report*](https://arxiv.org/abs/2412.19437): sigmoid gating, auxiliary-loss-free bias, node-limited routing, redundant experts.
# - Dai et al. 2024, [*DeepSeekMoE*](https://arxiv.org/abs/2401.06066): fine-grained and shared experts.
# - Qwen Team 2024, [*Qwen2 Technical Report*](https://arxiv.org/abs/2407.10671) (Qwen2-MoE); Yang et al. 2025, [*Qwen3 Technical Report*](https://arxiv.org/abs/2505.09388).
# - OpenAI 2025, [*gpt-oss-120b & gpt-oss-20b Model Card*](https://arxiv.org/abs/2508.10925).
# - Meta 2025, [*The Llama 4 herd*](https://ai.meta.com/blog/llama-4-multimodal-intelligence/).
# - DeepSeek, [EPLB: Expert Parallelism Load Balancer](https://github.com/deepseek-ai/EPLB) (`eplb.py`: `balanced_packing`, `replicate_experts`).
# - The transformers sources read for this lesson (version 5.25.0): [Mixtral](https://github.com/huggingface/transformers/blob/main/src/transformers/models/mixtral/modeling_mixtral.py), [Qwen2-MoE](https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen2_moe/modeling_qwen2_moe.py), [Qwen3-MoE](https://github.com/huggingface/transformers/blob/main/src/transformers/models/qwen3_moe/modeling_qwen3_moe.py), [OLMoE](https://github.com/huggingface/transformers/blob/main/src/transformers/models/olmoe/modeling_olmoe.py), [DeepSeek-V3](https://github.com/huggingface/transformers/blob/main/src/transformers/models/deepseek_v3/modeling_deepseek_v3.py), [gpt-oss](https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt_oss/modeling_gpt_oss.py), [Llama 4](https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama4/modeling_llama4.py).
