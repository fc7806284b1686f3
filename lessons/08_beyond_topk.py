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
#
# %% [markdown]
# # 08 · Beyond token-choice top-k: shared and fine-grained experts, expert choice, Soft MoE, upcycling
#
# **Goal.** Lessons 00-07 built the 2021 MoE: each token picks its top-$k$ experts (Switch,
# GShard, Mixtral). The models you will read now are built differently. DeepSeek-V3, Qwen-MoE and
# Llama 4 run **shared experts** on every token; DeepSeek and Qwen3 cut their experts into many
# **fine-grained** ones; papers and interviews compare token choice with **expert choice** (each
# expert picks its tokens) and **Soft MoE** (experts see weighted averages of tokens); and many
# MoEs are not trained from scratch but **upcycled** from a dense checkpoint. You will build the
# key piece of each, measure what each costs (equal compute, causality), and train the three
# layouts on lesson 05's corpus.
#
# Prerequisites: lessons 02-03 (top-$k$, capacity, the combine) and 05 (the tiny LM, mutual
# information). About 30 minutes.

# %%
from dataclasses import replace

import torch

from moe_lab import ExpertChoiceMoE, SoftMoE, SparseMoE, upcycle
from moe_lab.checks.beyond_topk import (
    check_expert_choice_select,
    check_fine_grained_layout,
    check_soft_moe_weights,
)
from moe_lab.lm.data import eval_batches, load_lesson_data
from moe_lab.lm.model import DenseFFN, TinyLM, upcycle_model
from moe_lab.lm.seeds import compare_seeds
from moe_lab.lm.tokenizer import ByteTokenizer
from moe_lab.lm.train import (
    BASE_TRAIN,
    LESSON08_RESULTS_DIR,
    LESSON08_RUNS,
    RESULTS_DIR,
    evaluate,
    load_checkpoint,
    load_log,
    train,
)
from moe_lab.systems.params import QWEN3_30B_A3B, count_parameters, fine_grained_config
from moe_lab.variants.causality import last_token_perturbation
from moe_lab.viz.beyond_topk import slot_weights_heatmap_figure
from moe_lab.viz.lm import loss_curves_figure
from moe_lab.widgets.expert_choice import ExpertChoiceExplorer

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. The math
#
# **Shared experts** (DeepSeekMoE, Dai et al. 2024, section 3.2). Besides the $K$ routed experts,
# $S$ experts run on every token, unweighted:
#
# $$y_n = \sum_{s=1}^{S} \operatorname{Shared}_s(x_n) + \sum_{k=1}^{K} w_{n,k}\,
# \operatorname{Expert}_{i_{n,k}}(x_n)$$
#
# Knowledge every token needs (syntax, frequent words) lives once in the shared experts instead of
# being copied into every routed one.
#
# **Fine-grained experts** (DeepSeekMoE, section 3.1). Cut each of the $E$ experts of width $F$
# into $m$ experts of width $F/m$ and route to $mK$ of them. The hidden units stored ($E F$) and
# run per token ($K F$) do not change, so neither do the parameters or the FLOPs, but the number
# of ways to combine experts explodes: $\binom{8}{2} = 28$ against $\binom{32}{8} \approx 10^7$.
# Taking $S$ of the fine experts out of routing as shared ones keeps the budget:
#
# $$(E, K, F) \;\to\; (mE - S \text{ routed},\; mK - S \text{ per token},\; F/m),\; S \text{ shared}$$
#
# **Expert choice** (Zhou et al. 2022). Turn the score matrix around: expert $e$ takes the $C$
# tokens with the highest $p_{n,e}$,
#
# $$C = \left\lceil c \cdot N / E \right\rceil, \qquad (\text{gates}_e, \text{token\_idx}_e) =
# \operatorname{top}_C\big(p_{\cdot, e}\big), \qquad y_n = \sum_{(e,j):\, \text{token\_idx}_{e,j} = n}
# \text{gates}_{e,j} \operatorname{Expert}_e(x_n)$$
#
# Every expert is exactly full; a token gets anything from 0 to $E$ experts.
#
# **Soft MoE** (Puigcerver et al. 2023, section 2.1). With slot parameters $\Phi \in
# \mathbb{R}^{D \times ES}$ and logits $L = X\Phi$ for one sequence $X \in \mathbb{R}^{T \times D}$:
#
# $$D_{t,j} = \frac{e^{L_{t,j}}}{\sum_{t'} e^{L_{t',j}}}, \quad \tilde X = D^\top X, \quad
# \tilde Y_j = \operatorname{Expert}_{\lfloor j/S \rfloor}(\tilde X_j), \quad
# C_{t,j} = \frac{e^{L_{t,j}}}{\sum_{j'} e^{L_{t,j'}}}, \quad Y = C \tilde Y$$
#
# **Sparse upcycling** (Komatsuzaki et al. 2022). Every expert starts as a copy of a trained dense
# FFN, with a fresh router. With renormalised weights ($\sum_k w_{n,k} = 1$) and no drops,
# $y_n = \sum_k w_{n,k} \operatorname{FFN}(x_n) = \operatorname{FFN}(x_n)$: the MoE starts exactly
# where the dense model stopped.
#
# | symbol | code | shape | meaning |
# |---|---|---|---|
# | $x$ | `x` | $(N, D)$ or $(B, T, D)$ | the tokens |
# | $E, K, F$ | `num_experts`, `top_k`, `d_ff` | | routed experts, per token, width |
# | $m$ | `granularity` | | each expert cut into $m$ |
# | $S$ | `num_shared_experts` | | shared experts (always on) |
# | $p$ | `router_probs` | $(N, E)$ | router probabilities |
# | $c$ | `capacity_factor` | | expert choice: mean experts per token |
# | $C$ | `capacity` | | expert choice: tokens per expert |
# | token_idx, gates | `token_idx`, `gates` | $(E, C)$ | each expert's tokens and weights |
# | $L$ | `slot_logits` | $(B, T, ES)$ | Soft MoE slot logits $X\Phi$ |
# | $D$, $C$ | `dispatch_weights`, `combine_weights` | $(B, T, ES)$ | softmax over tokens, over slots |
# | $\tilde X$ | `slots` | $(B, ES, D)$ | what the experts see |

# %% [markdown]
# ## 2. Build: fine-grained and shared experts at equal compute
#
# Write `fine_grained_layout(num_experts, top_k, d_ff, granularity, num_shared_experts)` that
# returns the new `(num_experts, top_k, d_ff)` of the **routed** experts (three Python ints) for
# the rule above. The shared experts have the fine width too.

# %%
def fine_grained_layout(num_experts, top_k, d_ff, granularity, num_shared_experts):
    raise NotImplementedError("your code here")


# %%
ok_fine_grained_layout = check_fine_grained_layout(fine_grained_layout)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def fine_grained_layout_solution(num_experts, top_k, d_ff, granularity, num_shared_experts):
    # m*E experts of width F/m, m*K per token; S of them become shared, out of both budgets
    return (granularity * num_experts - num_shared_experts,
            granularity * top_k - num_shared_experts,
            d_ff // granularity)


ok_solution = check_fine_grained_layout(fine_grained_layout_solution)

# %% [markdown]
# **In the package:** `moe_lab.systems.params.fine_grained` (it returns an `ExpertLayout`), and
# `SparseMoE(..., num_shared_experts=S)` holds the shared experts as an `Experts` bank,
# `layer.shared_experts`, whose output is added to the routed sum.
#
# Lesson 05's MoE has $E = 8$ experts of $F = 64$, top-2. Cut by $m = 4$ it becomes 32 experts of
# width 16, top-8; with one shared expert, 31 routed, top-7. The three tiny LMs below (the runs of
# `moe_lab.lm.train.LESSON08_RUNS`) store and run the same expert hidden units; only the router grows.

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'run':>13} {'E':>3} {'K':>2} {'S':>2} {'F':>3} {'total':>8} {'active':>8} {'router':>7}")
for name, (config, _) in LESSON08_RUNS.items():
    model = TinyLM(config)
    router = sum(block.ffn.router.weight.numel() for block in model.blocks)
    print(f"{name:>13} {config.num_experts:>3} {config.top_k:>2} {config.num_shared_experts:>2} "
          f"{config.d_ff:>3} {model.num_parameters():>8,} {model.num_active_parameters():>8,} "
          f"{router:>7,}")
layer = SparseMoE(64, 16, 31, 7, num_shared_experts=1)
print("shared experts of the last layout:", layer.shared_experts)

# %% [markdown]
# The same rule on a published model. Qwen3-30B-A3B (Qwen team 2025) has 48 layers of 128 experts
# of width 768, 8 per token, no shared expert; its model card says 30.5B parameters, 3.3B active.
# The calculator of lesson 00 (`moe_lab.systems.params.count_parameters`, now with shared and fine-grained
# settings) reproduces it, and shows that cutting finer or adding shared experts at equal budget
# moves only the router:

# %%
# NBVAL_CHECK_OUTPUT
for label, config in [("Qwen3-30B-A3B", QWEN3_30B_A3B),
                      ("  cut m=2", fine_grained_config(QWEN3_30B_A3B, 2)),
                      ("  m=2, 2 shared", fine_grained_config(QWEN3_30B_A3B, 2, 2))]:
    counts = count_parameters(config)
    print(f"{label:<16} E={config.num_experts:>3} K={config.top_k:>2} S={config.num_shared_experts} "
          f"F={config.d_ff:>3}: total {counts.total / 1e9:.2f}B, active {counts.active / 1e9:.2f}B, "
          f"router {counts['router'].total / 1e6:.1f}M")

# %% [markdown]
# ### The experiment: three layouts on lesson 05's corpus
#
# The full runs were made by one command (400 steps each, three seeds; see
# `moe_lab/results/lesson08/README.md`):
#
# ```
# python -m moe_lab.train --suite lesson08 --seeds 0 1 2 --threads 1 --no-progress
# ```
#
# Each log holds the validation loss and, measured on validation windows after training, the
# mutual information $I(\text{language}; \text{expert})$ of lesson 05 per layer (routed experts
# only: the shared expert takes every token), next to the shuffled-router baseline (the same
# expert choices given to random tokens). Mind the comparison: $I \le \log_2 E$ is 3 bits for 8
# experts and 5 bits for 32, so compare each run with its own baseline.

# %%
# NBVAL_CHECK_OUTPUT
SEEDS = (0, 1, 2)
shipped = {name: [load_log(f"{name}_seed{s}", LESSON08_RESULTS_DIR) for s in SEEDS]
           for name in LESSON08_RUNS}
print(f"{'run':>13} {'val loss (3 seeds)':>22} {'mean':>6}   I(lang;E) layer 0/1 [random]")
for name, logs in shipped.items():
    losses = [log["evals"][-1]["val_loss"] for log in logs]
    mi = [sum(log["specialisation"]["mi_language"][i] for log in logs) / len(logs) for i in (0, 1)]
    base = [sum(log["specialisation"]["baseline_mi_language"][i] for log in logs) / len(logs)
            for i in (0, 1)]
    print(f"{name:>13} {' '.join(f'{v:.3f}' for v in losses):>22} {sum(losses) / 3:.3f}   "
          f"{mi[0]:.3f} / {mi[1]:.3f} [{base[0]:.3f} / {base[1]:.3f}]")
print(f"H(language) = {shipped['moe'][0]['specialisation']['h_language']:.2f} bits")
final_loss = {name: [log["evals"][-1]["val_loss"] for log in logs] for name, logs in shipped.items()}
mi_last = {name: [log["specialisation"]["mi_language"][1] for log in logs]
           for name, logs in shipped.items()}
for name in ("fine_grained", "shared"):
    print("val loss,", compare_seeds(final_loss["moe"], final_loss[name]).verdict("moe", name))
    print("I(lang;E) layer 1,", compare_seeds(mi_last["moe"], mi_last[name]).verdict("moe", name))

# %%
# NBVAL_IGNORE_OUTPUT
# (draws the shipped logs whose final losses the cell above prints)
loss_curves_figure({name: logs[0] for name, logs in shipped.items()},
                   title="validation loss, seed 0 (shipped runs)")

# %% [markdown]
# Read the table with the seeds in mind: at this scale (two layers, 400 steps, 100K active
# parameters) no gap between layouts in validation loss exceeds the seed spread (the verdict
# lines above), so the run shows that the three layouts train about equally well at equal
# compute, not which one is better; DeepSeekMoE's gains were measured with billions of tokens.
# The languages are visible in the routing of every layout (each far above its baseline); the
# verdicts on $I(\text{lang}; E)$ say whether a layout's lead there exceeds the seed spread,
# and a lead of the 32-expert layouts must also be read against their larger ceiling
# ($\log_2 32$ against $\log_2 8$ bits) and their larger sampling bias. The costs are real at any scale: the
# router is 4x larger, and a token's work is split into 8 small matmuls instead of 2 (lesson 06:
# small experts need a grouped GEMM to run fast). Below, a short live run of each (30 steps, a
# smaller batch) so you can see them train here. Its times are wall-clock seconds of one run
# each on this machine: on a machine shared with other jobs they vary several-fold from one run
# of the cell to the next, so they say nothing about the layouts' speed.

# %%
# NBVAL_IGNORE_OUTPUT
data = load_lesson_data()
quick = replace(BASE_TRAIN, steps=30, batch_size=8, eval_every=30, eval_windows_per_language=1)
for name, (config, _) in LESSON08_RUNS.items():
    result = train(config, quick, data=data, progress=False)
    last = result.evals[-1]
    print(f"{name:>13}: val loss after 30 steps {last.val_loss:.3f} ({last.wall_time:.1f} s)")

# %% [markdown]
# ## 3. Build: expert choice, the selection
#
# Write `expert_choice_select(router_probs, capacity)` that returns `(token_idx, gates)`, each of
# shape $(E, C)$: row $e$ holds the $C$ tokens with the largest `router_probs[:, e]` and those
# probabilities. The gates must keep their gradient (the router learns through them).

# %%
def expert_choice_select(router_probs, capacity):
    raise NotImplementedError("your code here")


# %%
ok_expert_choice_select = check_expert_choice_select(expert_choice_select)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def expert_choice_select_solution(router_probs, capacity):
    # each row of router_probs.T is one expert's scores over the N tokens
    gates, token_idx = torch.topk(router_probs.t(), capacity, dim=-1)  # (E, C)
    return token_idx, gates


ok_solution = check_expert_choice_select(expert_choice_select_solution)

# %% [markdown]
# **In the package:** `moe_lab.variants.expert_choice.expert_choice_routing`, used by
# `moe_lab.ExpertChoiceMoE`, which runs every expert on its $C$ tokens as one $(E, C, D)$ batch and
# adds `gates * Expert_e(x)` back to each picked token.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
layer = ExpertChoiceMoE(16, 32, 8, capacity_factor=2.0)
out = layer(torch.randn(64, 16))
print("tokens per expert:", out.tokens_per_expert.tolist(), " C =", layer.capacity(64))
print("experts per token: min", int(out.experts_per_token.min()), "max",
      int(out.experts_per_token.max()), "mean", f"{out.experts_per_token.float().mean():.2f}")
print("tokens no expert took:", int((out.experts_per_token == 0).sum()), "of 64")

# %% [markdown]
# ## 4. Visualise: tokens per expert against experts per token
#
# The same toy router routes a text both ways. Left: token choice loads vary from expert to
# expert (the busiest one sets the capacity you must pay for, lesson 02), expert choice loads are
# all $C$. Right: token choice gives every token exactly $K$ experts; expert choice gives some
# tokens many and some none (the line above the figure counts them). It starts at $c = K = 1$,
# where the two spend the same compute; slide both up together to keep them equal. Each byte of
# the text is one token, and the toy routes the first 64.

# %%
# NBVAL_IGNORE_OUTPUT
ExpertChoiceExplorer("the cat sat on the mat, and the dog sat too", capacity_factor=1.0, top_k=1)

# %% [markdown]
# ### Causality: does a later token change an earlier token's output?
#
# A decoder generates token $t+1$ from tokens $\le t$ and caches what earlier tokens computed; a
# layer whose output at position $t$ depends on a later token would compute something at
# generation time that differs from what it computed in training. We perturb the last token of
# sequence 0 in a batch of 4 sequences of 32 tokens (`moe_lab.variants.causality.last_token_perturbation`)
# and measure how many outputs move, at the earlier positions of sequence 0 and in the other
# three sequences. Each layer has 4 experts and spends the compute of top-2.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
x = torch.randn(4, 32, 16)
designs = {
    "token choice, dropless": SparseMoE(16, 32, 4, 2),
    "token choice, capacity 1.0": SparseMoE(16, 32, 4, 2, capacity_factor=1.0),
    "expert choice, c = 2": ExpertChoiceMoE(16, 32, 4, capacity_factor=2.0),
    "Soft MoE, S = 2": SoftMoE(16, 32, 4, slots_per_expert=2),
}
print(f"{'design':<27} {'earlier positions changed':>26} {'other sequences changed':>24}")
causality = {}
for name, design in designs.items():
    report = last_token_perturbation(lambda v, d=design: d(v).y, x)
    causality[name] = report
    print(f"{name:<27} {report.share_changed_earlier:>14.0%} (max {report.max_change_earlier:.2f})"
          f" {report.share_changed_other_sequences:>12.0%} (max {report.max_change_other_sequences:.2f})")

# %% [markdown]
# What the table says:
#
# - **Dropless token choice** is exactly causal (0 %, max exactly 0): a token's experts depend on
#   that token alone. This is why the decoder LLMs of this course (Mixtral, DeepSeek-V3,
#   Qwen3, OLMoE, Llama 4, gpt-oss) all route by token choice.
# - **Token choice with a capacity** does not touch the earlier positions of its own sequence
#   here, because `moe_lab` drops in token order (later tokens lose): the perturbed last token
#   comes after them. But it changes the outputs of *other sequences* of the batch, which are
#   ranked after it: in a served model, another user's request changes your tokens. With GShard's
#   priority order (all first choices before any second choice) even the earlier tokens change.
# - **Expert choice** ranks all tokens of the batch for every expert: a new last token can take an
#   earlier token's place in an expert, so earlier outputs change, in its own sequence and in the
#   others. At decoding time the future tokens do not exist yet, so the routing cannot be computed
#   as in training. Zhou et al. pretrained decoder LMs with it but evaluated them by fine-tuning,
#   and name auto-regressive generation as its limitation (the top-$C$ looks at past and future
#   tokens); it suits encoders (BERT-style, vision), where all tokens are known at once.
# - **Soft MoE** mixes every token of a sequence into every slot: every earlier output changes
#   (100 %), but never across sequences (the softmax runs over the tokens of one sequence).
#   Puigcerver et al. present it for ViTs and discuss why causal (decoder) use is an open problem.

# %% [markdown]
# ## 5. Build: Soft MoE dispatch and combine weights
#
# Write `soft_moe_weights(slot_logits)` for `slot_logits` of shape $(B, T, ES)$ returning
# `(dispatch_weights, combine_weights)`, both $(B, T, ES)$: a softmax over the **tokens of each
# sequence** for dispatch, over the **slots of each token** for combine. Large logits must not
# give `inf` or `NaN`.

# %%
def soft_moe_weights(slot_logits):
    raise NotImplementedError("your code here")


# %%
ok_soft_moe_weights = check_soft_moe_weights(soft_moe_weights)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def soft_moe_weights_solution(slot_logits):
    # dispatch: each slot's weights over the T tokens of its sequence; combine: each token's
    # weights over the slots. torch.softmax subtracts the max, so large logits stay finite.
    return torch.softmax(slot_logits, dim=-2), torch.softmax(slot_logits, dim=-1)


ok_solution = check_soft_moe_weights(soft_moe_weights_solution)

# %% [markdown]
# **In the package:** `moe_lab.variants.soft_moe.soft_moe_weights`, used by `moe_lab.SoftMoE`.
#
# Below, the dispatch weights of a Soft MoE layer (4 experts, 2 slots each) over the bytes of a
# sentence, with lesson 05's trained embeddings as the tokens. $\Phi$ is freshly initialised, not
# trained, so the pattern is not meaningful yet; what matters is its form: every slot is a convex
# mix of *all* tokens (every column of weights sums to 1 and no weight is 0).

# %%
# NBVAL_CHECK_OUTPUT
tokenizer = ByteTokenizer()
sentence = "Soft MoE never drops a token."
ids = tokenizer.encode_tensor(sentence).unsqueeze(0)  # (1, T)
lm = load_checkpoint(RESULTS_DIR / "moe.pt")
with torch.no_grad():
    tokens = lm.embed(ids) + lm.pos_embed[: ids.shape[1]]  # (1, T, 64)
    torch.manual_seed(0)
    soft = SoftMoE(64, 64, 4, slots_per_expert=2)
    soft_out = soft(tokens)
dispatch = soft_out.dispatch_weights[0]  # (T, E*S)
print(f"T = {ids.shape[1]} tokens, {soft.num_slots} slots: each expert runs on 2 slots, whatever T is")
print("dispatch: sums over tokens", dispatch.sum(0).round(decimals=4).unique().tolist(),
      "| smallest weight > 0:", bool(dispatch.min() > 0))
print("combine: sums over slots", soft_out.combine_weights[0].sum(-1).round(decimals=4).unique().tolist())

# %%
# NBVAL_CHECK_OUTPUT
# what the heatmap below shows, rounded: the token each slot weighs most, and that weight
pieces = tokenizer.pieces(sentence)
top_weight, top_token = dispatch.max(dim=0)  # (E*S,), (E*S,)
for slot, (weight, token) in enumerate(zip(top_weight.tolist(), top_token.tolist(), strict=True)):
    print(f"slot {slot}: most weight on token {token:>2} {pieces[token]!r:>5} ({weight:.2f}; "
          f"uniform 1/T = {1 / len(pieces):.2f})")

# %%
# NBVAL_IGNORE_OUTPUT
slot_weights_heatmap_figure(dispatch, tokenizer.pieces(sentence), slots_per_expert=2,
                            title="Soft MoE dispatch weights (untrained Phi)")

# %% [markdown]
# No token is ever dropped: every token reaches every slot with some weight, and every output is
# a mix of all slot outputs. And it is not sparse in the token-choice sense: each expert does a
# fixed amount of work ($S$ slots per sequence, whatever $T$), but no expert skips a token; the
# "sparsity" is that $ES \ll T$ slots carry the sequence through the experts. The price is the
# causality above, and the fixed $ES$ slots per sequence: lesson 06's dispatch is replaced by two
# dense $(T \times ES)$ matmuls.

# %% [markdown]
# ## 6. Upcycling: start the MoE from a dense checkpoint
#
# Lesson 05's dense model (`dense.pt`, one SwiGLU FFN of width 128 per block, trained 400 steps)
# becomes an MoE of 8 copies of that FFN, top-2 renormalised, with fresh routers
# (`moe_lab.lm.model.upcycle_model`, built on `moe_lab.upcycle`). At step 0 the two are the same
# function:

# %%
# NBVAL_CHECK_OUTPUT
dense = load_checkpoint(RESULTS_DIR / "dense.pt")
torch.manual_seed(0)
upcycled = upcycle_model(dense, num_experts=8, top_k=2).eval()
valid = eval_batches(data.valid, 32, 128, max_windows_per_language=1)
batch = valid[0]
with torch.no_grad():
    gap = (upcycled(batch.input_ids).logits - dense(batch.input_ids).logits).abs().max().item()
print(f"max |logits(upcycled) - logits(dense)| < 1e-4: {gap < 1e-4} (float rounding only)")
loss_dense = evaluate(dense, valid, data.languages)[0]
loss_upcycled = evaluate(upcycled, valid, data.languages)[0]
print(f"val loss: dense {loss_dense:.3f}, upcycled at step 0 {loss_upcycled:.3f} "
      f"(|gap| < 1e-4: {abs(loss_upcycled - loss_dense) < 1e-4})")
ffn = DenseFFN(64, 128)
raw = SparseMoE(64, 128, 8, 2, normalize=False)
raw.experts.load_state_dict(upcycle(ffn, 8, 2).experts.state_dict())
h = torch.randn(256, 64)
with torch.no_grad():
    print(f"without renormalising: output norm / dense norm = {(raw(h).y.norm() / ffn(h).norm()):.2f}")

# %% [markdown]
# Why the renormalised weights matter: with raw probabilities (Switch style) every expert output
# would be scaled by the sum of the two chosen probabilities (never less than $2/8$, the last line
# above measures it), so the upcycled model would start far from the dense one and spend its
# first steps recovering.
# Drops would do the same to the dropped tokens. Now a short run, 40 steps: the upcycled MoE
# against the same MoE from scratch.

# %%
# NBVAL_IGNORE_OUTPUT
short = replace(BASE_TRAIN, steps=40, batch_size=8, eval_every=10, eval_windows_per_language=1,
                lr=1e-3, warmup_steps=5)
curves = {}
for name, start in [("upcycled", upcycled), ("from scratch", None)]:
    torch.manual_seed(short.seed)  # as train() does before it builds a fresh model
    initial = start if start is not None else TinyLM(upcycled.config)
    step_0 = evaluate(initial, valid, data.languages)[0]
    result = train(upcycled.config, short, data=data, progress=False, init_model=start)
    curves[name] = result.to_log(name, "lesson 08, live")
    curves[name]["evals"].insert(0, {"step": 0, "wall_time": 0.0, "val_loss": step_0})
    points = " ".join(f"{e['val_loss']:.3f}" for e in curves[name]["evals"])
    print(f"{name:>12}: val loss at steps 0, 10, ..., 40: {points}")

# %%
# NBVAL_IGNORE_OUTPUT
loss_curves_figure(curves, title="upcycled vs from scratch (same MoE, 40 steps)")

# %% [markdown]
# On that scale the upcycled curve looks flat. Alone, on its own scale:

# %%
# NBVAL_IGNORE_OUTPUT
loss_curves_figure({"upcycled": curves["upcycled"]}, title="upcycled alone (its own scale)")

# %% [markdown]
# The upcycled model starts at the dense model's loss (step 0, printed above). Its loss rises a
# little over the first steps (a few hundredths in the run this notebook shipped with: one short
# run, so read the shape, not the size), while the fresh routers start to split the copies and AdamW starts
# without its moment estimates, then comes back down; the scratch MoE starts at $\ln 256 \approx
# 5.5$ nats and is still far behind after 40 steps (it has not had the dense model's 400).
# Komatsuzaki et al. report on T5 and ViT that upcycled models beat continuing the dense model,
# and that an MoE trained from scratch needs a large extra budget to catch up.

# %% [markdown]
# ## 7. Summary
#
# | design | who uses it | what it fixes | what it costs |
# |---|---|---|---|
# | shared experts | DeepSeekMoE / V2 / V3, Qwen1.5/2-MoE, Llama 4 | common knowledge stored once, not in every expert | $S$ FFNs run on every token; less routed capacity at equal compute |
# | fine-grained experts | DeepSeekMoE/V3 (256 routed, top-8), Qwen3 (128, top-8), OLMoE | many more expert combinations, sharper specialisation | bigger router, many small matmuls (grouped GEMM needed), more all-to-all |
# | expert choice | Zhou et al. 2022; the Soft MoE paper's ViT baselines; encoders | perfect load balance, no drops by construction, variable experts per token | not causal: unsuited to decoding; some tokens get no expert |
# | Soft MoE | Puigcerver et al. 2023 (ViTs) | no drops, fully differentiable, no balancing loss | not causal within a sequence; every token touches every slot |
# | sparse upcycling | Komatsuzaki et al. 2022; reported for Qwen1.5-MoE | reuses a dense checkpoint's training; equal at step 0 | experts start identical and must diverge; total parameters grow $E$-fold |
#
# You built the fine-grained layout rule, the expert-choice selection and the Soft MoE weights;
# the package has `SparseMoE(..., num_shared_experts=...)`, `moe_lab.systems.params.fine_grained`,
# `ExpertChoiceMoE`, `SoftMoE`, `upcycle` and `upcycle_model`.

# %% [markdown]
# The numbers of this lesson, gathered from the cells above (shipped runs and this run):

# %%
# NBVAL_IGNORE_OUTPUT
print("three layouts at equal compute (shipped, 3 seeds): mean val loss, mean I(lang;E) layers 0/1")
for name, logs in shipped.items():
    mean_loss = sum(log["evals"][-1]["val_loss"] for log in logs) / len(logs)
    mi = [sum(log["specialisation"]["mi_language"][i] for log in logs) / len(logs) for i in (0, 1)]
    print(f"  {name:>13}: {mean_loss:.3f}, {mi[0]:.2f} / {mi[1]:.2f} bits")
print("causality (share of outputs changed: earlier positions / other sequences)")
for name, report in causality.items():
    print(f"  {name:<27} {report.share_changed_earlier:.0%} / {report.share_changed_other_sequences:.0%}")
for name, log in curves.items():
    first, last = log["evals"][0], log["evals"][-1]
    print(f"{name}: val loss {first['val_loss']:.3f} at step 0 -> {last['val_loss']:.3f} at step "
          f"{last['step']}")

# %% [markdown]
# ## 8. Self-check quiz

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(8)

# %% [markdown]
# ## 9. Interview questions (self-check)
#
# <details><summary>1. 공유 전문가(shared expert)는 무엇을 해결하나요? 같은 연산량에서 무엇을 포기하나요?
# <br>(What do shared experts fix, and what do they give up at equal compute?)</summary>
#
# Every routed expert would otherwise learn the same common knowledge (frequent tokens, syntax):
# DeepSeekMoE calls this redundancy. A shared expert that every token runs stores it once, and the
# routed experts can specialise. At equal active compute the shared expert's width comes out of
# the routed budget ($mK - S$ routed experts per token), so there are fewer routed combinations,
# and the shared expert's FFN is a dense cost on every token (it is also the natural piece to
# keep on every device in expert parallelism).
# </details>
#
# <details><summary>2. 전문가를 잘게 나누면(fine-grained) 파라미터와 FLOPs가 그대로인데 왜 좋아지나요? 비용은?
# <br>(Fine-grained experts keep parameters and FLOPs: why would they help, and what do they cost?)</summary>
#
# The number of expert subsets a token can use grows from $\binom{E}{K}$ to $\binom{mE}{mK}$
# (28 to about $10^7$ for $m = 4$, $E = 8$, $K = 2$), so each token's FFN is assembled more
# precisely and experts can specialise more narrowly (DeepSeekMoE, section 3.1). The costs: a
# router $m$ times larger, $m$ times more and smaller matmuls (bad for a per-expert loop, fine for
# a grouped GEMM), and more tokens sent per layer in expert parallelism.
# </details>
#
# <details><summary>3. Expert choice는 부하 균형 문제를 어떻게 없애나요? 왜 디코더에서 쓰지 않나요?
# <br>(How does expert choice remove the load-balancing problem, and why is it not used in decoders?)</summary>
#
# Each expert takes exactly $C = \lceil cN/E \rceil$ tokens, so loads are equal by construction: no
# auxiliary loss, no drops from overfull experts. But a token's experts depend on every other
# token of the batch, including later ones: the layer is not causal (measured in section 4), and
# at decoding time the future tokens do not exist. Some tokens also get no expert at all.
# </details>
#
# <details><summary>4. Soft MoE는 토큰을 버리지 않습니다. 그런데 왜 "sparse"하다고 할 수 있나요?
# <br>(Soft MoE never drops a token: in what sense is it still sparse?)</summary>
#
# Each expert runs on $S$ slots per sequence, weighted averages of all tokens, not on the tokens
# themselves: the expert compute is fixed by $E \cdot S$, not by $T$, and with $ES < T$ it is less
# than running one FFN per token. It is not sparse per token (every token reaches every slot), and
# it is not causal within a sequence.
# </details>
#
# <details><summary>5. 업사이클링에서 top-k 가중치를 다시 정규화해야 하는 이유는?
# <br>(Why must an upcycled MoE renormalise its top-k weights?)</summary>
#
# All experts are copies of the dense FFN, so the output is $(\sum_k w_{n,k})\,\mathrm{FFN}(x_n)$.
# Only with $\sum_k w_{n,k} = 1$ (and no dropped assignments) is that exactly the dense output, so
# the MoE starts at the dense model's loss. With raw probabilities the output shrinks by the sum
# of the $K$ largest probabilities (at least $K/E$) and the first steps undo the damage.
# </details>
#
# <details><summary>6. 같은 활성 파라미터에서 세 구성(8×top-2, 32×top-8, 1 shared + 31×top-7)을 비교할 때 무엇을 조심해야 하나요?
# <br>(Comparing the three layouts at equal active parameters: what must you be careful about?)</summary>
#
# Seeds: at the lesson's scale the seed-to-seed spread is as large as the differences between
# layouts, so one run per layout proves nothing. Mutual information: with more experts $I \le
# \log_2 E$ is higher and so is the finite-sample bias, so compare each run with its shuffled
# baseline. And wall time: equal FLOPs is not equal time when the experts are small.
# </details>

# %% [markdown]
# ## 10. Further reading
#
# - Dai et al. 2024, [*DeepSeekMoE: Towards Ultimate Expert Specialization in Mixture-of-Experts
#   Language Models*](https://arxiv.org/abs/2401.06066): fine-grained segmentation (section 3.1) and
#   shared expert isolation (section 3.2).
# - DeepSeek-AI 2024, [*DeepSeek-V3 Technical Report*](https://arxiv.org/abs/2412.19437): 1 shared +
#   256 routed experts, top-8.
# - Qwen team 2025, [*Qwen3 Technical Report*](https://arxiv.org/abs/2505.09388): 128 experts,
#   top-8, no shared expert; the Qwen3-30B-A3B
#   [model card](https://huggingface.co/Qwen/Qwen3-30B-A3B) gives 30.5B total, 3.3B activated.
# - Zhou et al. 2022, [*Mixture-of-Experts with Expert Choice
#   Routing*](https://arxiv.org/abs/2202.09368): each expert picks its top-$C$ tokens.
# - Puigcerver et al. 2023, [*From Sparse to Soft Mixtures of Experts*](https://arxiv.org/abs/2308.00951):
#   slots as convex mixes of tokens.
# - Komatsuzaki et al. 2022, [*Sparse Upcycling: Training Mixture-of-Experts from Dense
#   Checkpoints*](https://arxiv.org/abs/2212.05055).
# - Muennighoff et al. 2024, [*OLMoE: Open Mixture-of-Experts Language
#   Models*](https://arxiv.org/abs/2409.02060): 64 fine-grained experts, top-8, ablations of
#   shared experts and upcycling.
