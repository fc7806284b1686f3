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
# # 04 · Load balancing: keeping every expert busy
#
# **Goal.** Left alone, a router tends to send more and more tokens to the experts that learned
# first: the others get no tokens, no gradient, and never catch up. This is **routing collapse**.
# You will reproduce it on a toy task, watch it live on a training dashboard, and fix it four ways:
# the Switch Transformer's auxiliary loss $E \sum_i f_i P_i$ (and why it multiplies a count by a
# probability), Shazeer's $CV^2$ importance loss, the ST-MoE router z-loss (which keeps the logits
# small rather than the load even) and DeepSeek-V3's bias balancing, which needs no auxiliary loss
# at all. Along the way: the Hugging Face Mixtral convention, which is $K$ times ours, and why a
# model with several MoE layers averages its per-layer losses.
#
# Prerequisites: lessons 01-03 (router, top-$k$, the combine, how the router learns).

# %% [markdown]
# ## 1. The math
#
# Over a batch of $N$ tokens with router probabilities $p_{n,i}$ and top-$K$ choices $i_{n,k}$:
#
# $$f_i = \frac{1}{NK} \sum_{n=1}^{N} \sum_{k=1}^{K} \mathbb{1}[i_{n,k} = i]
# \qquad P_i = \frac{1}{N} \sum_{n=1}^{N} p_{n,i}
# \qquad \mathcal{L}_{\text{Switch}} = E \sum_{i=1}^{E} f_i P_i$$
#
# $$\mathcal{L}_{\text{importance}} = CV^2\Big(\textstyle\sum_n p_{n,\cdot}\Big)
# = \frac{\operatorname{Var}_i(I_i)}{\operatorname{Mean}_i(I_i)^2}, \quad I_i = \sum_n p_{n,i}
# \qquad \mathcal{L}_z = \frac{1}{N} \sum_{n} \Big(\log \sum_{i} e^{\ell_{n,i}}\Big)^2$$
#
# DeepSeek-V3 instead adds a bias $b_i$ to the scores **for the choice only** and, after each step,
# outside autograd: $b_i \leftarrow b_i + \gamma \operatorname{sign}(\bar{c} - c_i)$.
#
# | symbol | code | shape | meaning |
# |---|---|---|---|
# | $p$ | `router_probs` | $(N, E)$ | full router probabilities |
# | $\ell$ | `router_logits` | $(N, E)$ | router logits |
# | $i_{n,k}$ | `topk_idx` | $(N, K)$ | chosen experts |
# | $f_i$ | `f` | $(E,)$ | share of the $NK$ assignments sent to expert $i$ (a count) |
# | $P_i$ | `P` | $(E,)$ | mean probability of expert $i$ (differentiable) |
# | $c_i$ | `tokens_per_expert` | $(E,)$ | assignments per expert this step; $\bar c$ their mean |
# | $b_i$ | `router.score_correction_bias` | $(E,)$ | DeepSeek-V3 selection bias |
# | $\gamma$ | `gamma` | scalar | bias update speed |
#
# Reading the dashboard: **max/mean load** $= \max_i c_i / \bar c$ is 1 when balanced and $E$ when
# every token goes to one expert; **router entropy** $= -\frac1N\sum_n \sum_i p_{n,i}\log_2 p_{n,i}$
# (in bits, as every entropy of the course) is $\log_2 E$ for a uniform router and 0 for a
# certain one.

# %%
import math

import torch
import torch.nn.functional as F

import moe_lab
from moe_lab import cv_squared, importance_loss, load_balancing_loss
from moe_lab.checks.balance import (
    check_bias_update,
    check_model_balance_loss,
    check_switch_loss,
    check_z_loss,
)
from moe_lab.lm.toy import ToyConfig, train_toy
from moe_lab.viz.dashboard import compare_runs_figure
from moe_lab.widgets.dashboard import TrainingDashboard

# %% [markdown]
# ## 2. Routing collapse, reproduced
#
# The toy task (`moe_lab.lm.toy`): 64 token ids in 8 groups, and the model must output a random,
# group-specific permutation of its input. The model is an embedding, one `SparseMoE` with 8
# experts and top-1 routing weighted by the raw router probability (Switch style, lesson 03), and a
# linear head; no residual, so everything goes through the experts. Every token's input shares one
# common direction, as real hidden states do, so what the router learns for one token it learns
# for all. 150 steps of 256 tokens, no balancing loss. Each run below gets its own dashboard
# (`moe_lab.widgets.dashboard.TrainingDashboard`), drawn while it trains; this first one redraws
# every 15 steps and pauses a moment after each redraw, so you can watch the collapse happen. When
# the run ends the cell keeps the dashboard of the finished run.

# %%
# NBVAL_IGNORE_OUTPUT
runs = {}
dashboard = TrainingDashboard(num_experts=8, title="no balancing loss", redraw_every=15,
                              pace_s=0.3)
dashboard.show()
runs["none"] = train_toy(ToyConfig(balance="none"), callbacks=[dashboard], description="none")
dashboard.finish()

# %%
# NBVAL_CHECK_OUTPUT
first, last = runs["none"].history[0], runs["none"].final
print("load share at step 0:  ", [round(v, 2) for v in first.load])
print("load share at the end: ", [round(v, 2) for v in last.load])
print(f"max/mean load: {first.max_over_mean:.2f} -> {last.max_over_mean:.2f} (E = 8 is total "
      "collapse)")
print(f"router entropy: {first.router_entropy:.2f} -> {last.router_entropy:.2f} bits "
      f"(log2 E = {torch.log2(torch.tensor(8.0)).item():.2f})")
print(f"task loss at the end: {last.losses['task']:.3f}")


# %% [markdown]
# The load starts uneven (a random router with a shared input direction) and gets **worse**: the
# busiest expert gets the most gradient, learns fastest, and the router, which learns only through
# the weights (lesson 03), raises its probability for every token. The task is easy enough that
# the task loss still falls (its final value is printed above), so nothing in it complains; in a real model the collapsed
# layer has the capacity of one expert, and in expert-parallel training one device does all the
# work while the others wait.
#
# ## 3. The Switch loss $E \sum_i f_i P_i$
#
# ### Build: the Switch loss
#
# Write `switch_loss(router_probs, topk_idx)`: $f_i$ counted from `topk_idx` as a share of the
# $N K$ assignments, $P_i$ the mean of the **full** router probabilities, times $E$.
#
# *Hints:* `torch.bincount(topk_idx.reshape(-1), minlength=E)` counts the assignments; $P$ uses
# every expert's probability, not just the chosen ones; the result is a 0-d tensor.

# %%
def switch_loss(router_probs: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
    """router_probs (N, E), topk_idx (N, K) -> E * sum_i f_i * P_i (a 0-d tensor)."""
    raise NotImplementedError("your code here")


# %%
ok_switch = check_switch_loss(switch_loss)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def switch_loss_solution(router_probs: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
    num_experts = router_probs.shape[1]
    counts = torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)
    f = counts.float() / topk_idx.numel()  # (E,) share of the N*K assignments
    P = router_probs.mean(dim=0)  # (E,)
    # loss = E * sum_i f_i P_i
    return num_experts * torch.sum(f * P)


solution_passed = check_switch_loss(switch_loss_solution)

# %% [markdown]
# **In the package:** `moe_lab.losses.load_balancing_loss`.
#
# From here on: `moe_lab.load_balancing_loss(router_probs, topk_idx)`. Exact values at known
# points: a uniform router with an even choice gives **1.0** (whatever $K$), and every token sent
# to one expert with probability 1 gives **$E$**:

# %%
# NBVAL_CHECK_OUTPUT
balance_loss = switch_loss if ok_switch else load_balancing_loss
N, E = 16, 4
uniform_probs = torch.full((N, E), 1 / E)  # (N, E)
for K in (1, 2):
    round_robin = (torch.arange(N * K) % E).view(N, K)  # (N, K) every expert equally often
    print(f"uniform, K={K}:", round(balance_loss(uniform_probs, round_robin).item(), 4))
collapsed_probs = F.one_hot(torch.zeros(N, dtype=torch.long), E).float()  # (N, E)
print("collapsed onto expert 0:", round(balance_loss(collapsed_probs,
                                                     torch.zeros(N, 1, dtype=torch.long)).item(), 4))

# %% [markdown]
# ### Why $f \cdot P$, and not just $f$?
#
# $f_i$ is what we want to even out, but it is a **count**: it comes from `topk_idx`, an integer
# tensor, so it has no gradient (lesson 03). $P_i$ is a differentiable stand-in that moves with
# it: raise $P_i$ and expert $i$ gets chosen more. In the product, $f$ acts as a constant weight:
#
# $$\frac{\partial \mathcal{L}}{\partial p_{n,i}} = \frac{E\, f_i}{N}$$
#
# so the gradient pushes down the probabilities of the **overloaded** experts hardest. And since
# the router mostly chooses where its probability is ($f_i \approx P_i$), the loss behaves like
# $E \sum_i P_i^2$, smallest (1) when $P$ is uniform (Switch Transformers, section 2.2). Check the
# gradient:

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
router_probs = torch.softmax(torch.randn(32, 4) + torch.tensor([2.0, 0.0, 0.0, -1.0]), dim=-1)
router_probs.requires_grad_(True)
topk_idx = router_probs.topk(2, dim=-1).indices  # (N, K)
f = torch.bincount(topk_idx.reshape(-1), minlength=4).float() / topk_idx.numel()  # (E,)
print("f (from counts) requires grad:", f.requires_grad, "| f =", [round(v, 3) for v in f.tolist()])
loss = load_balancing_loss(router_probs, topk_idx)
loss.backward()
print("N/E * dL/dp for token 0:", [round(v, 3) for v in (32 / 4 * router_probs.grad[0]).tolist()])

# %% [markdown]
# ### The Hugging Face Mixtral convention: $K$ times ours
#
# `transformers`' `load_balancing_loss_func` one-hot encodes the choice as $(N, K, E)$ and averages
# over tokens only, so it gets one share per slot, each slot's shares summing to 1, and sums all
# $K$ of them. Written inline here (one layer, no padding mask; `transformers` also concatenates
# the tokens of all layers first, see section 6):

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
router_probs = torch.softmax(torch.randn(64, 8), dim=-1)  # (N, E)
for K in (1, 2, 4):
    topk_idx = router_probs.topk(K, dim=-1).indices  # (N, K)
    # transformers (Mixtral): expert_mask (N, K, E) -> tokens_per_expert (K, E) -> sum over K too
    expert_mask = F.one_hot(topk_idx, num_classes=8).float()  # (N, K, E)
    tokens_per_expert = expert_mask.mean(dim=0)  # (K, E)
    router_prob_per_expert = router_probs.mean(dim=0)  # (E,)
    hf_loss = 8 * torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0))
    ours = load_balancing_loss(router_probs, topk_idx)
    print(f"K={K}: HF {hf_loss.item():.4f} | ours {ours.item():.4f} | ratio "
          f"{(hf_loss / ours).item():.2f}")

# %% [markdown]
# Neither is wrong; the coefficient just means different things. With HF's convention a uniform
# top-2 router scores 2.0, so the `router_aux_loss_coef = 0.02` of the released Mixtral-8x7B
# `config.json` (`transformers`' own `MixtralConfig` default is 0.001) is our 0.04. When you copy a
# coefficient from a paper or a config, check which convention it was tuned for.
#
# Now train the toy again with $0.1 \cdot \mathcal{L}_{\text{Switch}}$ added (the toy's default
# coefficient; large models use about 0.01):

# %%
# NBVAL_IGNORE_OUTPUT
dashboard = TrainingDashboard(num_experts=8, title="Switch loss (aux_coef = 0.1)", redraw_every=75)
dashboard.show()
runs["switch"] = train_toy(ToyConfig(balance="switch"), callbacks=[dashboard],
                           description="switch")
dashboard.finish()

# %%
# NBVAL_CHECK_OUTPUT
for name in ("none", "switch"):
    final = runs[name].final
    print(f"{name:>7}: max/mean load {final.max_over_mean:.2f}, entropy (bits) "
          f"{final.router_entropy:.2f}, task loss {final.losses['task']:.3f}")

# %% [markdown]
# ## 4. Shazeer's importance loss, $CV^2$
#
# Shazeer et al. 2017 balance the **importance** $I_i = \sum_n p_{n,i}$ (the paper sums the sparse
# gate values; we use the full probabilities, which give every expert a gradient) by penalising its
# squared coefficient of variation, 0 when all experts are equally important. It has no count in
# it, so it is differentiable as it stands, but it balances *probability mass*, not the number of
# tokens: a router can give every expert the same mass while its top-1 choices still pile up. (The
# paper adds a second, smooth *load* loss for that.)

# %%
# NBVAL_CHECK_OUTPUT
print("CV^2 of [1, 1, 1, 1]:", round(cv_squared(torch.tensor([1.0, 1.0, 1.0, 1.0])).item(), 4))
print("CV^2 of [4, 0, 0, 0]:", round(cv_squared(torch.tensor([4.0, 0.0, 0.0, 0.0])).item(), 4),
      "(= E - 1, population variance)")
print("importance loss, collapsed router:", round(importance_loss(collapsed_probs).item(), 4))

# %%
# NBVAL_IGNORE_OUTPUT
dashboard = TrainingDashboard(num_experts=8, redraw_every=75,
                              title="importance loss (CV^2, coef 0.1)")
dashboard.show()
runs["importance"] = train_toy(ToyConfig(balance="importance"), callbacks=[dashboard],
                               description="importance")
dashboard.finish()


# %% [markdown]
# ## 5. The router z-loss: keeping the logits small
#
# Collapse has a second symptom: the router's logits grow, making its softmax ever more certain.
# Large logits are a numerical hazard in low precision (lesson 01: bf16 flips close choices, and
# `exp` of large logits overflows), and ST-MoE (Zoph et al. 2022) found them behind training
# instabilities. The z-loss penalises $\log \sum_i e^{\ell_{n,i}}$ squared.
#
# ### Build: the z-loss
#
# Write `z_loss(router_logits)`: the mean over tokens of the squared `logsumexp` over experts.
#
# *Hints:* `torch.logsumexp(router_logits, dim=-1)` is stable; square each token's value, then
# average (not the square of the average, not a sum).

# %%
def z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """router_logits (N, E) -> mean_n logsumexp(logits_n)^2 (a 0-d tensor)."""
    raise NotImplementedError("your code here")


# %%
ok_z = check_z_loss(z_loss)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def z_loss_solution(router_logits: torch.Tensor) -> torch.Tensor:
    # z_n = log sum_i exp(l_{n,i});  loss = mean_n z_n^2
    return torch.logsumexp(router_logits, dim=-1).square().mean()


solution_passed = check_z_loss(z_loss_solution)

# %% [markdown]
# **In the package:** `moe_lab.losses.router_z_loss`.
#
# Every run above already *recorded* the z-loss (`losses["z"]`) without training on it. Train once
# more with $0.01 \cdot \mathcal{L}_z$ added and compare the logit growth:

# %%
# NBVAL_IGNORE_OUTPUT
dashboard = TrainingDashboard(num_experts=8, redraw_every=75,
                              title="router z-loss only (z_coef = 0.01)")
dashboard.show()
runs["z-loss"] = train_toy(ToyConfig(z_coef=1e-2), callbacks=[dashboard], description="z-loss")
dashboard.finish()

# %%
# NBVAL_CHECK_OUTPUT
steps = (0, 50, 100, 149)
for name in ("none", "z-loss"):
    z = [runs[name].history[s].losses["z"] for s in steps]
    print(f"{name:>6}: z-loss at steps {steps}: {[round(v, 2) for v in z]}, final max/mean "
          f"load {runs[name].final.max_over_mean:.2f}")


# %% [markdown]
# Without it, $\mathcal{L}_z$ (the squared log-partition function) grows several times over; with
# it, it collapses to almost 0. But the **load stays collapsed**: the z-loss is for numerical
# stability, not balance. ST-MoE uses both (z-loss coefficient 0.001, balance 0.01).
#
# ## 6. Several MoE layers: average, don't pool
#
# A model has one router per MoE layer. Each layer's balance is its own problem: compute each
# layer's loss on that layer's tokens, then **average** over layers (`moe_lab.average_over_layers`),
# so the coefficient means the same at any depth.
#
# ### Build: the model's balance loss
#
# Write `model_balance_loss(per_layer_probs, per_layer_idx)`: lists of $L$ tensors $(N, E)$ and
# $(N, K)$; return the mean over layers of `load_balancing_loss`.

# %%
def model_balance_loss(per_layer_probs: list, per_layer_idx: list) -> torch.Tensor:
    """L layers of router_probs (N, E) and topk_idx (N, K) -> the mean per-layer Switch loss."""
    raise NotImplementedError("your code here")


# %%
ok_layers = check_model_balance_loss(model_balance_loss)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def model_balance_loss_solution(per_layer_probs: list, per_layer_idx: list) -> torch.Tensor:
    per_layer = [load_balancing_loss(p, i)
                 for p, i in zip(per_layer_probs, per_layer_idx, strict=True)]
    return moe_lab.average_over_layers(per_layer)


solution_passed = check_model_balance_loss(model_balance_loss_solution)

# %% [markdown]
# **In the package:** `moe_lab.losses.average_over_layers`.
#
# Why not concatenate the tokens of all layers (as `transformers`' Mixtral code does) or sum? Two
# layers, each fully collapsed, onto **different** experts:

# %%
# NBVAL_CHECK_OUTPUT
N, E = 16, 4
layer_probs = [F.one_hot(torch.full((N,), e), E).float() for e in (0, 1)]  # (N, E) each
layer_idx = [torch.full((N, 1), e) for e in (0, 1)]  # (N, K=1) each
per_layer = [load_balancing_loss(p, i) for p, i in zip(layer_probs, layer_idx, strict=True)]
print("per layer:", [round(v.item(), 2) for v in per_layer], "(E = 4: both collapsed)")
print("averaged: ", round(moe_lab.average_over_layers(per_layer).item(), 2))
print("pooled:   ", round(load_balancing_loss(torch.cat(layer_probs), torch.cat(layer_idx)).item(), 2),
      "(the layers' collapses hide each other)")
print("summed:   ", round(sum(per_layer).item(), 2), "(grows with depth)")


# %% [markdown]
# ## 7. DeepSeek-V3: balancing without an auxiliary loss
#
# An auxiliary loss fights the task loss: its gradient changes what the router learns, which can
# cost quality. DeepSeek-V3 (following Wang et al. 2024) steers the load with a per-expert bias
# added to the scores **for the top-$k$ choice only**; the combine weights still come from the
# unbiased scores, and the bias is updated by a rule, not by gradient descent. (DeepSeek-V3 scores
# experts with a sigmoid rather than a softmax, `TopKRouter(scoring="sigmoid")`, and keeps a very
# small sequence-wise balance loss as a safeguard; the toy below uses the softmax router and the
# bias alone.)
#
# ### Build: one bias update
#
# Write `bias_update(bias, tokens_per_expert, gamma)`: return
# $b_i + \gamma\,\operatorname{sign}(\bar c - c_i)$.
#
# *Hints:* $\bar c$ is the mean load; an overloaded expert's bias goes **down**; every bias moves
# by exactly $\gamma$ (or 0 at the mean).

# %%
def bias_update(bias: torch.Tensor, tokens_per_expert: torch.Tensor,
                gamma: float) -> torch.Tensor:
    """bias (E,), tokens_per_expert (E,) -> the new bias (E,)."""
    raise NotImplementedError("your code here")


# %%
ok_bias = check_bias_update(bias_update)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def bias_update_solution(bias: torch.Tensor, tokens_per_expert: torch.Tensor,
                         gamma: float) -> torch.Tensor:
    load = tokens_per_expert.float()  # (E,)
    # b_i <- b_i + gamma * sign(mean_load - load_i)
    return bias + gamma * torch.sign(load.mean() - load)


solution_passed = check_bias_update(bias_update_solution)

# %% [markdown]
# **In the package:** `moe_lab.balancing.BiasBalancer`.
#
# The package's `moe_lab.BiasBalancer(router, gamma=...)` applies this update to the router's
# `score_correction_bias` after each optimiser step (`train_toy(ToyConfig(balance="bias"))` calls
# `balancer.update(tokens_per_expert)`). The bias changes the choice but not the weights:

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
router = moe_lab.TopKRouter(8, 4, 1, normalize=False)
x = torch.randn(6, 8)  # (N, D)
with torch.no_grad():
    before = router(x)
    router.score_correction_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.15]))  # favour expert 3
    after = router(x)
print("choices before:", before.topk_idx.flatten().tolist())
print("choices after: ", after.topk_idx.flatten().tolist())
print("weights are the unbiased probabilities of the chosen experts:",
      bool(torch.allclose(after.topk_weights, after.probs.gather(1, after.topk_idx))))

# %%
# NBVAL_IGNORE_OUTPUT
dashboard = TrainingDashboard(num_experts=8, redraw_every=75,
                              title="DeepSeek-V3 bias balancing (gamma = 0.05), no aux loss")
dashboard.show()
runs["bias"] = train_toy(ToyConfig(balance="bias"), callbacks=[dashboard], description="bias")
dashboard.finish()

# %%
# NBVAL_CHECK_OUTPUT
bias = runs["bias"].model.moe.router.score_correction_bias
print("final bias:", [round(v, 2) for v in bias.tolist()])
print(f"final max/mean load: {runs['bias'].final.max_over_mean:.2f}")

# %% [markdown]
# ## 8. Visualise: all runs side by side
#
# Max/mean load per step for every run (1 = perfectly balanced, 8 = total collapse), then the
# final numbers:

# %%
# NBVAL_IGNORE_OUTPUT
compare_runs_figure({name: run.history for name, run in runs.items()}, "max_over_mean",
                    title="max / mean expert load per step")

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'run':>10} | max/mean load | entropy (bits) | z-loss | task loss")
for name, run in runs.items():
    final = run.final
    print(f"{name:>10} | {final.max_over_mean:13.2f} | {final.router_entropy:14.2f} | "
          f"{final.losses['z']:6.2f} | {final.losses['task']:9.3f}")
# what the table says, computed from it: which runs end at under half the unbalanced run's max/mean
# load, and the worst task loss at the end against chance (a uniform guess over the 64 ids)
collapsed = runs["none"].final.max_over_mean
balanced = [name for name, run in runs.items() if run.final.max_over_mean < collapsed / 2]
worst = max(runs, key=lambda name: runs[name].final.losses["task"])
print(f"\nunder half the unbalanced max/mean load ({collapsed:.2f}): {', '.join(balanced) or 'none'}")
print(f"highest task loss at the end: {worst}, {runs[worst].final.losses['task']:.3f} nats "
      f"(chance: log 64 = {math.log(64):.2f})")

# %% [markdown]
# The two lines under the table are computed from it: which methods brought the load back from
# collapse towards 1 on this seed, and how far the worst final task loss is from chance. The
# numbers are from one seed of a tiny task: change `ToyConfig(seed=...)`, the coefficients or
# `top_k` and see how robust each method is (exercise 2).
#
# ## 9. Summary
#
# - Without balancing, routing collapses: the busiest experts learn fastest and attract more
#   tokens (max/mean load grows towards $E$, router entropy falls).
# - Switch loss $E \sum_i f_i P_i$: $f$ (a count) says who is overloaded, $P$ carries the
#   gradient, $\partial \mathcal{L}/\partial p_{n,i} = E f_i / N$. Exactly 1 when uniform, $E$ when
#   collapsed. Hugging Face's Mixtral loss is $K$ times this value.
# - $CV^2$ importance loss (Shazeer 2017) balances probability mass; the z-loss (ST-MoE) keeps the
#   logits small and is not a balancing loss.
# - With several layers, average the per-layer losses; pooling lets layers hide each other's
#   collapse, summing makes the coefficient depend on depth.
# - DeepSeek-V3: a selection-only bias, updated by $\pm\gamma$ from the observed load, balances
#   without a gradient that competes with the task.

# %% [markdown]
# ## 10. Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/04.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package, and short answers reveal a model answer once you have written yours. The English /
# 한국어 buttons switch the language. A viewer without a kernel shows the questions with each
# answer in a collapsed block.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(4)

# %% [markdown]
# ## 11. Exercises
#
# 1. *(code)* Set `P` to the mean of the top-$k$ weights instead of the full probabilities in
#    your `switch_loss` and run the checker. Then explain why the unchosen experts would get no
#    gradient.
# 2. *(code)* Rerun the comparison with `ToyConfig(seed=1)`, `top_k=2, normalize=True`, and with
#    `aux_coef=0.01`. Which conclusions survive?
# 3. *(code)* Add the z-loss to the Switch run (`ToyConfig(balance="switch", z_coef=1e-2)`): does
#    the balance suffer?
#
# ## 12. Interview questions (self-check)
#
# <details><summary>1. Switch의 보조 손실은 왜 f_i²가 아니라 f_i · P_i를 사용하나요?
# <br>(Why does the Switch auxiliary loss use f_i · P_i instead of penalising f_i² directly?)</summary>
#
# $f_i$ is counted from the top-$k$ choice, an integer index: it has no gradient, so a loss of
# $f$ alone could not move the router. $P_i$, the mean router probability, is differentiable and
# moves with $f$; in $\sum_i f_i P_i$ the counts act as constant weights, so
# $\partial \mathcal{L}/\partial p_{n,i} = E f_i / N$ pushes hardest on the overloaded experts.
# </details>
#
# <details><summary>2. Mixtral의 config에서 router_aux_loss_coef = 0.02를 가져와 이 강의의 손실(top-2)에 쓰려면 계수를 얼마로 해야 같은 신호가 되나요?
# <br>(You take router_aux_loss_coef = 0.02 from a Mixtral config for this lesson's loss with
# top-2. What coefficient gives the same signal?)</summary>
#
# 0.04. Hugging Face's `load_balancing_loss_func` sums the per-slot shares over the $K$ slots, so
# its value is $K$ times ours (2.0 for uniform top-2 routing against our 1.0).
# </details>
#
# <details><summary>3. DeepSeek-V3의 보조 손실 없는 균형 조정은 라우터 logit에 학습 가능한 bias를 더하는 것과 무엇이 다른가요?
# <br>(How does DeepSeek-V3's auxiliary-loss-free balancing differ from adding a learned bias to the
# router logits?)</summary>
#
# The bias is added only for the top-$k$ *choice*; the combine weights use the unbiased scores,
# so the output is not distorted. It is updated by a rule from the observed load,
# $b_i \mathrel{+}= \gamma \operatorname{sign}(\bar c - c_i)$, not by the task gradient (which
# would learn whatever bias lowers the loss, not one that balances the load).
# </details>
#
# <details><summary>4. MoE 층이 24개인 모델이 층별 균형 손실을 합산합니다. 깊이를 48로 늘리면 무슨 문제가 생기나요?
# <br>(A 24-layer MoE model sums its per-layer balance losses. What goes wrong at 48 layers?)</summary>
#
# The auxiliary term doubles while the task loss does not, so the same coefficient now weighs
# balance twice as much against quality. Averaging over layers keeps the coefficient's meaning
# independent of depth. (Pooling all layers' tokens into one loss is worse still: the layers'
# imbalances can cancel, as section 6 showed.)
# </details>
#
# ## 13. Further reading
#
# - Shazeer et al. 2017, [*Outrageously Large Neural Networks*](https://arxiv.org/abs/1701.06538), section 4 and appendix A:
#   importance and load losses ($CV^2$).
# - Lepikhin et al. 2020, [*GShard*](https://arxiv.org/abs/2006.16668): the auxiliary loss with a differentiable mean gate.
# - Fedus, Zoph, Shazeer 2021, [*Switch Transformers*](https://arxiv.org/abs/2101.03961), eq. (4)-(6): $\alpha N \sum_i f_i P_i$.
# - Zoph et al. 2022, [*ST-MoE*](https://arxiv.org/abs/2202.08906), eq. (5): the router z-loss.
# - Jiang et al. 2024, [*Mixtral of Experts*](https://arxiv.org/abs/2401.04088), and [`transformers`' `load_balancing_loss_func`](https://github.com/huggingface/transformers/blob/main/src/transformers/models/mixtral/modeling_mixtral.py).
# - Wang et al. 2024, [*Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts*](https://arxiv.org/abs/2408.15664);
#   DeepSeek-AI 2024, [*DeepSeek-V3 Technical Report*](https://arxiv.org/abs/2412.19437), section 2.1.2.
