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
# # 02 · Top-k sparse activation and capacity
#
# **Goal.** Turn the router's probabilities (lesson 01) into a sparse choice: $K$ experts per token
# and the weights that will mix their outputs. Compare the conventions of the models you will read
# (Mixtral, Switch, Qwen-MoE, DeepSeek-V3), then meet the first systems constraint of MoE: each
# expert has a fixed **capacity**, and tokens beyond it are **dropped**.

# %% [markdown]
# ## 1. The math
#
# $$\text{topk\_idx}_n = \operatorname{arg\,top}_K\; p_{n,\cdot} \qquad
# w_{n,k} = \frac{p_{n,\text{topk\_idx}_{n,k}}}{\sum_{j=1}^{K} p_{n,\text{topk\_idx}_{n,j}}}
# \quad\text{(renormalised, Mixtral)}$$
#
# $$C = \left\lceil \text{capacity\_factor} \cdot \frac{N K}{E} \right\rceil
# \qquad \text{keep}_{n,k} = \big[\text{position}_{n,k} < C\big]$$
#
# | symbol | code | shape | meaning |
# |---|---|---|---|
# | $p$ | `router_probs` | $(N, E)$ | softmax of the router logits (lesson 01) |
# | $K$ | `top_k` | | experts per token |
# | `topk_idx` | `topk_idx` | $(N, K)$ | chosen experts, best first |
# | $w$ | `topk_weights` | $(N, K)$ | combine weights of the chosen experts |
# | expert mask | `expert_mask` | $(N, E)$ | 1 where expert $e$ is among token $n$'s $K$ |
# | load | `tokens_per_expert` | $(E,)$ | assignments per expert; they sum to $NK$ |
# | $C$ | `capacity` | | most assignments one expert accepts |
# | position | `position` | $(N, K)$ | rank of an assignment among its expert's, in token order |

# %%
import torch
import torch.nn.functional as F

import moe_lab
from moe_lab import SparseMoE, TopKRouter, compute_capacity, make_routing_plan, topk_routing
from moe_lab.checks.topk import (
    check_capacity,
    check_keep_mask,
    check_tokens_per_expert,
    check_topk_routing,
)

torch.set_printoptions(precision=3, sci_mode=False)


# %% [markdown]
# ## 2. Build: top-k with renormalised weights (Mixtral)
#
# Write `route_topk(router_logits, top_k)` returning `(topk_idx, topk_weights)`: softmax over all
# $E$ experts, the $K$ largest probabilities (best first), divided by their sum so each token's
# weights sum to 1.
#
# *Hints:* `torch.topk(t, k, dim=-1)` returns `(values, indices)`, sorted largest first;
# `t.sum(dim=-1, keepdim=True)`.

# %%
def route_topk(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits (N, E) -> topk_idx (N, K) int64, topk_weights (N, K) summing to 1."""
    raise NotImplementedError("your code here")


# %%
ok_topk = check_topk_routing(route_topk)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def route_topk_solution(router_logits, top_k):
    router_probs = torch.softmax(router_logits, dim=-1)  # (N, E)
    topk_probs, topk_idx = torch.topk(router_probs, top_k, dim=-1)  # (N, K) x2
    topk_weights = topk_probs / topk_probs.sum(dim=-1, keepdim=True)  # (N, K)
    return topk_idx, topk_weights


solution_passed = check_topk_routing(route_topk_solution)

# %% [markdown]
# **In the package:** `moe_lab.routing.topk_routing`.
#
# The package: `moe_lab.topk_routing(router_probs, top_k, normalize=True)`, used inside
# `TopKRouter`; Hugging Face's Mixtral does the same. Mistral's reference code takes a different
# route to the same weights: the top-$K$ of the **logits**, then a softmax over those $K$. The two are equal, because the softmax is monotonic (the same experts
# win) and its normaliser cancels:
# $\frac{e^{\ell_i}/Z}{\sum_{j \in \text{top}K} e^{\ell_j}/Z} = \frac{e^{\ell_i}}{\sum_{j \in \text{top}K} e^{\ell_j}}$.
# Checked in code:

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
router_logits = 3 * torch.randn(1000, 64)  # (N, E)
topk_logits, idx_a = torch.topk(router_logits, 8, dim=-1)  # (N, K)
weights_a = torch.softmax(topk_logits, dim=-1)  # softmax(topk(logits))
idx_b, weights_b = topk_routing(torch.softmax(router_logits, dim=-1), 8)  # renormalised topk(softmax)
print("same experts:", torch.equal(idx_a, idx_b))
print("same weights:", torch.allclose(weights_a, weights_b, atol=1e-6))
mine = route_topk(router_logits, 8) if ok_topk else (idx_b, weights_b)
print("weights sum to 1:", torch.allclose(mine[1].sum(-1), torch.ones(1000)))


# %% [markdown]
# ## 3. Masks and expert load
#
# Each token's $K$ choices as a one-hot mask: `F.one_hot(topk_idx, E)` is $(N, K, E)$; summed over
# $K$ it is the $(N, E)$ `expert_mask`. Hugging Face's Mixtral permutes it to $(E, K, N)$ to loop
# over experts. Summing the mask over tokens gives each expert's load, `tokens_per_expert`, the
# quantity that capacity (below) and load balancing (lesson 04) are about.
#
# ### Build: tokens per expert
#
# Write `tokens_per_expert(topk_idx, num_experts)` $\to (E,)$: how many of the $NK$ assignments
# each expert received. *Hint:* flatten, then `torch.bincount(..., minlength=num_experts)`.

# %%
def tokens_per_expert(topk_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """topk_idx (N, K) -> assignments per expert (E,)."""
    raise NotImplementedError("your code here")


# %%
ok_load = check_tokens_per_expert(tokens_per_expert)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def tokens_per_expert_solution(topk_idx, num_experts):
    return torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)


solution_passed = check_tokens_per_expert(tokens_per_expert_solution)

# %% [markdown]
# **In the package:** `moe_lab.dispatch.make_routing_plan` (its `tokens_per_expert`).

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
router = TopKRouter(d_model=16, num_experts=4, top_k=2)
x = torch.randn(6, 16)  # (N, D)
with torch.no_grad():
    routing = router(x)
expert_mask = F.one_hot(routing.topk_idx, num_classes=4).sum(dim=1)  # (N, E)
print("topk_idx:", routing.topk_idx.tolist())
print("expert_mask (N, E):\n", expert_mask)
plan = make_routing_plan(routing.topk_idx, routing.topk_weights, num_experts=4)
load = tokens_per_expert(routing.topk_idx, 4) if ok_load else plan.tokens_per_expert
print("tokens_per_expert:", load.tolist(), "= mask summed over tokens:",
      expert_mask.sum(0).tolist())

# %% [markdown]
# ## 4. Conventions side by side
#
# The same router logits give different weights in different models:
#
# | model | scores | $K$ | weights |
# |---|---|---|---|
# | Mixtral | softmax over $E$ | 2 | renormalised over the $K$ (sum to 1) |
# | Switch Transformer | softmax over $E$ | 1 | the raw probability $p$ (not renormalised) |
# | Qwen-MoE `norm_topk_prob=False` (Qwen1.5/2-MoE) | softmax over $E$ | 4 (of 60) / 8 | raw probabilities (sum < 1) |
# | Qwen-MoE `norm_topk_prob=True` (Qwen3-MoE) | softmax over $E$ | 8 (of 128) | renormalised |
# | DeepSeek-V3 | **sigmoid** per expert | 8 (of 256) | sigmoid scores renormalised over the $K$, times a constant scale (2.5) |
#
# `TopKRouter` covers them with `top_k`, `normalize` and `scoring`. Below, one token through each
# (with 8 experts, $K = 4$ standing in for Qwen's and DeepSeek's larger $K$):

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
d_model, num_experts = 16, 8
gate = TopKRouter(d_model, num_experts, 1).weight.detach()  # one gate for all conventions
x = torch.randn(1, d_model)  # (1, D)
conventions = {
    "Mixtral": dict(top_k=2, normalize=True),
    "Switch (top-1)": dict(top_k=1, normalize=False),
    "Qwen norm_topk_prob=False": dict(top_k=4, normalize=False),
    "Qwen norm_topk_prob=True": dict(top_k=4, normalize=True),
    "DeepSeek-V3 (sigmoid)": dict(top_k=4, normalize=True, scoring="sigmoid"),
}
print(f"{'convention':>26} {'sum(p)':>7}  {'experts':<14} weights (sum)")
for name, kwargs in conventions.items():
    router = TopKRouter(d_model, num_experts, **kwargs)
    with torch.no_grad():
        router.weight.copy_(gate)
        out = router(x)
    weights = out.topk_weights[0]
    print(f"{name:>26} {out.probs.sum().item():>7.3f}  {str(out.topk_idx[0].tolist()):<14} "
          f"{[round(w, 3) for w in weights.tolist()]} ({weights.sum().item():.3f})")

# %% [markdown]
# What to notice:
#
# - The softmax conventions choose the same experts; only the weights differ.
# - With **sigmoid** scores (DeepSeek-V3) each expert's score is an independent number in (0, 1):
#   they do not sum to 1 over the experts (`sum(p)` above), so experts do not compete for
#   probability mass, and the renormalisation is needed to get a convex mix. The sigmoid is
#   monotonic, so on the same logits it picks the same experts; what changes the choice in
#   DeepSeek-V3 is a balancing bias added for the choice only (lesson 04), and a limit on how many
#   groups of experts (devices) a token may use.
# - **Switch does not renormalise its top-1 weight**, and for a good reason: renormalised, the one
#   weight would be exactly 1, the router's output would not depend on its probabilities, and the
#   router would get no gradient. The raw $p$ scales the expert's output and carries the gradient:

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
x = torch.randn(32, d_model)
for normalize in (False, True):
    router = TopKRouter(d_model, num_experts, 1, normalize=normalize)
    out = router(x)
    out.topk_weights.sum().backward()  # stands in for any loss of the weighted output
    first_weights = [round(w, 3) for w in out.topk_weights[:3, 0].tolist()]
    print(f"top-1, normalize={normalize!s:>5}: weights {first_weights} ..., "
          f"router gradient norm {router.weight.grad.norm().item():.4f}")


# %% [markdown]
# ## 5. Capacity and token dropping
#
# On accelerators an expert's batch has a fixed size, its **capacity**: with perfect balance each
# expert receives $NK/E$ assignments, and the capacity factor adds headroom,
# $C = \lceil \text{capacity\_factor} \cdot NK/E \rceil$ (GShard, Switch). An expert that receives
# more keeps the first $C$ and **drops** the rest: a dropped assignment contributes nothing, and the
# token passes the layer on the residual connection alone. Which ones are "first" is a choice; we
# rank in token order (token 0 first; within a token, slot 0 first), as Switch does. GShard ranks
# all first choices before any second choice.
#
# ### Build: the capacity
#
# Write `capacity(capacity_factor, num_tokens, top_k, num_experts)` $\to$ an `int`. *Hint:*
# `math.ceil`; a capacity must hold the mean load, so round up.

# %%
def capacity(capacity_factor: float, num_tokens: int, top_k: int, num_experts: int) -> int:
    """C = ceil(capacity_factor * N * K / E)."""
    raise NotImplementedError("your code here")


# %%
ok_capacity = check_capacity(capacity)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
import math


def capacity_solution(capacity_factor, num_tokens, top_k, num_experts):
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


solution_passed = check_capacity(capacity_solution)


# %% [markdown]
# **In the package:** `moe_lab.dispatch.compute_capacity`.
#
# ### Build: which assignments are kept
#
# Write `keep_mask(topk_idx, num_experts, capacity)` $\to (N, K)$ bool: rank each assignment among
# those of its expert in token order (position 0, 1, 2, ...) and keep it when its position is
# below $C$.
#
# *Hints:* flatten `topk_idx` to $(NK,)$ (this is token order, then slot); one-hot it to
# $(NK, E)$; a cumulative sum down the rows counts, for each assignment, how many assignments of
# the same expert came so far; positions count from 0.

# %%
def keep_mask(topk_idx: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """topk_idx (N, K) -> keep (N, K) bool: position within its expert (token order) < capacity."""
    raise NotImplementedError("your code here")


# %%
ok_keep = check_keep_mask(keep_mask)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def keep_mask_solution(topk_idx, num_experts, capacity):
    num_tokens, top_k = topk_idx.shape
    flat_expert = topk_idx.reshape(-1)  # (N*K,) token order, then slot
    one_hot = F.one_hot(flat_expert, num_experts)  # (N*K, E)
    # position = (number of earlier assignments to the same expert)
    position = (one_hot.cumsum(dim=0) - 1)[torch.arange(flat_expert.numel()), flat_expert]
    return (position < capacity).view(num_tokens, top_k)  # (N, K)


solution_passed = check_keep_mask(keep_mask_solution)

# %% [markdown]
# **In the package:** `moe_lab.dispatch.make_routing_plan` (its `keep`).
#
# The package: `compute_capacity(capacity_factor, N, K, E)` and
# `make_routing_plan(topk_idx, topk_weights, E, capacity)`, whose `keep` and `position` are these
# two steps (it ranks with a stable sort rather than a one-hot cumsum, which needs $NK \times E$
# memory). A small example, 6 tokens, 4 experts, $K = 2$, capacity factor 1.0:

# %%
# NBVAL_CHECK_OUTPUT
topk_idx = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0], [0, 2], [1, 0]])  # (N, K): expert 0 is popular
C = capacity(1.0, 6, 2, 4) if ok_capacity else compute_capacity(1.0, 6, 2, 4)
plan = make_routing_plan(topk_idx, torch.ones(6, 2), num_experts=4, capacity=C)
keep = keep_mask(topk_idx, 4, C) if ok_keep else plan.keep
print("capacity C =", C)
print("position:\n", plan.position)
print("keep:\n", keep)
print("kept per expert:", plan.tokens_per_expert.tolist(), "of demand",
      torch.bincount(topk_idx.reshape(-1), minlength=4).tolist())

# %% [markdown]
# Expert 0 is wanted 6 times and keeps 3: tokens 3, 4 and 5 lose it; token 3 and token 5 lose their
# *second* choice, token 4 its *first*. The whole layer does this with
# `SparseMoE(..., capacity_factor=...)`, and reports every dropped (token, slot) in `dropped`:

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
d_model, d_ff, num_experts, top_k, n_tokens = 32, 64, 8, 2, 512
dropless = SparseMoE(d_model, d_ff, num_experts, top_k)
x = torch.randn(n_tokens, d_model)  # (N, D)
with torch.no_grad():
    demand = dropless(x).tokens_per_expert
    print("demand per expert (dropless):", demand.tolist(), f"(mean {n_tokens * top_k // num_experts})")
    print(f"{'factor':>6} {'C':>4} {'dropped':>8} {'rate':>6}  kept per expert")
    for factor in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
        layer = SparseMoE(d_model, d_ff, num_experts, top_k, capacity_factor=factor)
        layer.load_state_dict(dropless.state_dict())  # same router and experts
        out = layer(x)
        print(f"{factor:>6} {layer.capacity(n_tokens):>4} {out.num_dropped:>8} "
              f"{out.num_dropped / (n_tokens * top_k):>6.1%}  {out.tokens_per_expert.tolist()}")

# %%
# NBVAL_CHECK_OUTPUT
# a token whose K assignments were all dropped gets y = 0: only the residual carries it on
with torch.no_grad():
    tight = SparseMoE(d_model, d_ff, num_experts, top_k, capacity_factor=0.5)
    tight.load_state_dict(dropless.state_dict())
    result = tight(x)
fully_dropped = result.dropped.all(dim=-1)  # (N,)
print("tokens with every assignment dropped:", int(fully_dropped.sum()))
print("their MoE output is exactly zero:", bool((result.y[fully_dropped] == 0).all()))

# %% [markdown]
# Even a random, untrained router is unbalanced enough to drop tokens at capacity factor 1.0: the
# busiest expert gets more than the mean. Raising the factor drops less but pads the less busy
# experts with empty slots (wasted FLOPs and memory on accelerators); Switch trained with factors
# of 1.0-1.25. Dropless MoE (MegaBlocks; DeepSeek-V3 drops no tokens in training or inference)
# avoids the trade-off by grouping tokens by expert into variable-size segments (lessons 03 and
# 06). Load balancing (lesson 04) attacks the cause.
#
# ## 6. Visualise: capacity and dropped tokens
#
# Slide the capacity factor: green cells are kept assignments, red ones dropped; the $x$ labels
# show kept/demand per expert. Change $K$, or type text with many repeated characters (each byte
# always routes the same way, so repeats pile onto the same experts).

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.capacity import CapacityGrid

grid = CapacityGrid()
grid

# %%
# NBVAL_CHECK_OUTPUT
for factor in (0.5, 1.0, 1.5, 2.0):
    grid.capacity_factor.value = factor  # what the slider does
    print(f"capacity factor {factor}: C = {grid.table.capacity}, "
          f"drop rate {grid.table.drop_rate:.1%}")
grid.capacity_factor.value = 1.0

# %% [markdown]
# ## Summary
#
# - Top-$k$: keep each token's $K$ most probable experts. Mixtral renormalises their probabilities
#   to sum to 1, which equals a softmax over the top-$k$ logits; Switch (top-1) and Qwen with
#   `norm_topk_prob=False` keep the raw probabilities; DeepSeek-V3 renormalises sigmoid scores.
#   Lesson 09 runs each of these conventions against the real transformers blocks.
# - `expert_mask` $(N, E)$ and `tokens_per_expert` $(E,)$ describe the load.
# - Capacity $C = \lceil \text{factor} \cdot NK/E \rceil$; assignments past position $C - 1$ of
#   their expert are dropped and contribute nothing. `SparseMoE(capacity_factor=...)` reports them
#   in `dropped`; `capacity_factor=None` is dropless.

# %% [markdown]
# ## Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/02.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package, and short answers reveal a model answer once you have written yours. The English /
# 한국어 buttons switch the language. A viewer without a kernel shows the questions with each
# answer in a collapsed block.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(2)

# %% [markdown]
# ## Exercises
#
# 1. Rewrite `keep_mask` in GShard's order (all first choices ranked before any second choice).
#    In the 6-token example, which assignments change? Which order is kinder to a token's best
#    expert?
# 2. With the widget at $K = 1$ and $K = 2$, find the smallest capacity factor with no drops for
#    the default sentence. Why does it differ?
# 3. Why must the capacity round **up**? Find $(N, K, E)$ and a factor of 1.0 for which rounding
#    down drops tokens even under perfectly balanced routing.
#
# ## Interview questions (self-check)
#
# <details><summary>1. Mixtral의 top-k 가중치 재정규화는 top-k 로짓에 대한 softmax와 왜 같은가요?
# <br>(Why does Mixtral's renormalisation of the top-k probabilities equal a softmax over the top-k logits?)</summary>
#
# The softmax is monotonic, so the same $K$ experts win, and dividing the chosen probabilities
# $e^{\ell_i}/Z$ by their sum cancels the full normaliser $Z$, leaving
# $e^{\ell_i}/\sum_{j\in\text{top}K} e^{\ell_j}$.
# </details>
#
# <details><summary>2. Switch Transformer는 top-1 가중치를 왜 재정규화하지 않나요?
# <br>(Why doesn't the Switch Transformer renormalise its top-1 weight?)</summary>
#
# A renormalised single weight is always 1: the output would not depend on the router's
# probabilities and the router would receive no gradient. Scaling the expert output by the raw
# probability keeps the router trainable.
# </details>
#
# <details><summary>3. capacity factor를 키우거나 줄이면 어떤 trade-off가 있나요? 토큰이 drop되면 어떻게 되나요?
# <br>(What is the trade-off in raising or lowering the capacity factor? What happens to a dropped token?)</summary>
#
# A larger factor drops fewer tokens but pads experts with empty slots (compute, memory and
# communication wasted); a smaller one is cheaper but drops more, which hurts quality. A dropped
# assignment contributes nothing: the token continues on the residual stream, skipping that
# expert (or the whole layer, if all its $K$ assignments drop).
# </details>
#
# ## Further reading
#
# - N. Shazeer et al., [*Outrageously Large Neural Networks*](https://arxiv.org/abs/1701.06538), 2017 (top-k gating).
# - D. Lepikhin et al., [*GShard*](https://arxiv.org/abs/2006.16668), 2020 (capacity, top-2 with ranked first choices).
# - W. Fedus, B. Zoph, N. Shazeer, [*Switch Transformers*](https://arxiv.org/abs/2101.03961), 2021 (top-1, capacity factor, drops).
# - A. Q. Jiang et al., [*Mixtral of Experts*](https://arxiv.org/abs/2401.04088), 2024; Qwen team, [*Qwen1.5-MoE*](https://qwenlm.github.io/blog/qwen-moe/) / [*Qwen3*](https://arxiv.org/abs/2505.09388) reports.
# - DeepSeek-AI, [*DeepSeek-V3 Technical Report*](https://arxiv.org/abs/2412.19437), 2024 (sigmoid gating, auxiliary-loss-free bias).
# - T. Gale et al., [*MegaBlocks: Efficient Sparse Training with Mixture-of-Experts*](https://arxiv.org/abs/2211.15841), 2022 (dropless).
#
# Next: **03 · the weighted sum**: run the kept assignments through their experts and combine.
