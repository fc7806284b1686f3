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
# # 11 · Balance scope: where the balance is measured decides what experts learn, and a hunt through real MoE bugs
#
# **Goal.** Lesson 04 balanced the load over the batch in hand; lesson 05 asked whether the
# experts of a multilingual model specialise by language. Since 2025 the field knows the two are
# linked: *where* the balance is measured decides whether an expert may serve one language. A
# loss that balances every micro-batch (a few sequences, often one language each) pushes every
# sequence to use every expert; counting the expert shares over the **global batch** lets experts
# specialise and lowered perplexity (Qiu et al. 2025, used in Qwen3-MoE). DeepSeek-V3 goes the
# other way on purpose: its bias keeps the batch balanced and a tiny **sequence-wise** loss only
# stops any one sequence from collapsing. You will build the sequence-wise loss, the global-batch
# loss, measure all scopes and the bias on lesson 05's model over three seeds, work through
# DeepSeek-V3's details, and then hunt seven bugs that real MoE code shipped, each checked
# against its public thread. "Spot the bug" is a common interview format: the review lesson (12)
# links here.
#
# Prerequisites: lessons 04 (Switch loss, the bias) and 05 (the tiny LM, mutual information).
# About 35 minutes.

# %%
import copy
from dataclasses import replace

import torch
import torch.nn.functional as F

from moe_lab import (
    BiasBalancer,
    TopKRouter,
    count_assignments,
    load_balancing_loss,
    sequence_load_balancing_loss,
)
from moe_lab.checks.bughunt import (
    BUGS,
    check_aux_loss_added,
    check_aux_loss_full_softmax,
    check_aux_loss_padding,
    check_dropped_tokens,
    check_recompute_count,
    check_router_returns_logits,
    check_sigmoid_normalisation,
)
from moe_lab.checks.scope import check_sequence_balance_loss
from moe_lab.lm.balance_scope import (
    METRICS,
    SCOPE_MODEL,
    SCOPE_TRAIN,
    SCOPES,
    ScopeConfig,
    load_runs,
    measure,
    seed_values,
    separated,
    train_scope,
)
from moe_lab.lm.data import load_lesson_data
from moe_lab.systems.threads import torch_threads
from moe_lab.viz.balance_scope import scope_figure

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. The math
#
# One MoE layer, $E$ experts, top-$K$. A token $t$ has scores $s_{i,t}$ (softmax probabilities, or
# DeepSeek-V3's sigmoid scores) and chooses the experts $\mathrm{TopK}(t)$. Every balance loss here
# has lesson 04's shape $\sum_i f_i P_i$ (count share times mean score, the count not
# differentiable); they differ in **which tokens** $f$ and $P$ are counted over.
#
# **Micro-batch** (Switch, lesson 04), over the $N$ tokens in hand:
#
# $$f_i = \frac{E}{NK} \sum_{t} \mathbb{1}[i \in \mathrm{TopK}(t)], \qquad
# P_i = \frac{1}{N} \sum_t s_{i,t}, \qquad \mathcal{L} = \sum_i f_i P_i$$
#
# **Sequence-wise** (DeepSeek-V3, arXiv 2412.19437, eqs. 17-20): the same per sequence of $T$
# tokens, on scores normalised to sum 1, averaged over the sequences:
#
# $$s'_{i,t} = \frac{s_{i,t}}{\sum_j s_{j,t}}, \qquad
# f_i = \frac{E}{KT} \sum_{t=1}^{T} \mathbb{1}[i \in \mathrm{TopK}(t)], \qquad
# P_i = \frac{1}{T} \sum_{t=1}^{T} s'_{i,t}, \qquad
# \mathcal{L}_{\text{seq}} = \operatorname{mean}_{\text{sequences}} \sum_i f_i P_i$$
#
# **Global batch** (Qiu et al. 2025, arXiv 2501.11873): $f$ counted over all $M$ micro-batches of
# the optimizer step (or all data-parallel ranks: one all-reduce of $E$ counts), $P$ over the
# micro-batch in hand, the only differentiable part:
#
# $$c_i = \sum_{m=1}^{M} \#\{(t, k) \in \text{micro-batch } m : i_{t,k} = i\}, \qquad
# f_i^{\text{global}} = \frac{E\,c_i}{\sum_j c_j}, \qquad
# \mathcal{L}_m = \sum_i f_i^{\text{global}} P_i^{(m)}$$
#
# All three are 1 at uniform routing and $E$ at full collapse. They differ when each sequence
# favours its own experts while the batch as a whole is balanced: the global loss sees balance,
# the sequence-wise loss sees collapse.
#
# **Bias** (DeepSeek-V3 section 2.1.2; lesson 04): no loss; a bias $b_i$ enters the choice only,
# $\mathrm{TopK}(s_{\cdot,t} + b)$, updated once per optimizer step from the step's counts $c_i$,
# and re-centred to mean 0 (torchtitan):
#
# $$\delta_i = \gamma \operatorname{sign}(\bar c - c_i), \qquad b_i \leftarrow b_i + \delta_i -
# \tfrac{1}{E} \textstyle\sum_j \delta_j$$
#
# | symbol | code | shape | meaning |
# |---|---|---|---|
# | $s_{i,t}$, $s'_{i,t}$ | `router_probs` | $(N, E)$ | scores; normalised to sum 1 per token |
# | $\mathrm{TopK}(t)$ | `topk_idx` | $(N, K)$ | the experts token $t$ chose |
# | $T$ | `seq_len` | | tokens per sequence ($N = BT$, sequence-major) |
# | $f_i$, $P_i$ | | $(E,)$ | count share (times $E$), mean score |
# | $c_i$ | `expert_counts` | $(E,)$ | assignments to expert $i$ over the global batch |
# | $M$ | `micro_batches` | | micro-batches (stand-in data-parallel ranks) per step |
# | $b_i$, $\gamma$ | `score_correction_bias`, `gamma` | $(E,)$ | selection bias, its step |

# %% [markdown]
# ## 2. Build: the sequence-wise loss
#
# Write `sequence_balance_loss(router_probs, topk_idx, seq_len)`: `router_probs` (N, E) holds
# normalised scores in sequence-major order (tokens 0 to T-1 are sequence 0), `topk_idx` (N, K)
# the choices. Return the mean over sequences of $\sum_i f_i P_i$ as a 0-d tensor, with the
# gradient flowing through $P$ only. Reshaping to (B, T, E) does all sequences at once.

# %%
def sequence_balance_loss(router_probs, topk_idx, seq_len):
    raise NotImplementedError("your code here")


# %%
ok_sequence_balance_loss = check_sequence_balance_loss(sequence_balance_loss)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def sequence_balance_loss_solution(router_probs, topk_idx, seq_len):
    num_tokens, num_experts = router_probs.shape
    top_k = topk_idx.shape[1]
    probs = router_probs.view(-1, seq_len, num_experts)  # (B, T, E)
    chosen = torch.zeros_like(router_probs).scatter_add(
        1, topk_idx, torch.ones_like(topk_idx, dtype=router_probs.dtype))  # (N, E)
    counts = chosen.view(-1, seq_len, num_experts).sum(dim=1)  # (B, E)
    # f_i = E / (K T) * count_i ;  P_i = mean_t s'_{i,t}
    f = num_experts / (top_k * seq_len) * counts  # (B, E)
    p = probs.mean(dim=1)  # (B, E)
    return (f * p).sum(dim=-1).mean()


ok_solution = check_sequence_balance_loss(sequence_balance_loss_solution)

# %% [markdown]
# **In the package:** `moe_lab.sequence_load_balancing_loss` (also takes a padding `mask`: a
# sequence's $T$ counts its real tokens, a sequence with none is left out of the mean). It refuses
# scores that do not sum to 1, for a reason section 5 shows. The global batch is one keyword of
# lesson 04's loss: `load_balancing_loss(probs, topk_idx, expert_counts=c)` with `c` the counts
# summed by `moe_lab.count_assignments` over the micro-batches.
#
# The three scopes on one batch built to tell them apart: four sequences, each (one "language")
# routed to its own two experts out of eight, every expert used equally over the batch. The
# micro-batches are two sequences each.

# %%
# NBVAL_CHECK_OUTPUT
E, K, T = 8, 2, 16
language_experts = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]])  # sequence b -> its 2 experts
topk_idx = language_experts.repeat_interleave(T, dim=0)  # (N, K), N = 4 * T
probs = torch.full((4 * T, E), 0.02)
probs.scatter_(1, topk_idx, 0.44)  # each token: 0.44 on its two experts, 0.02 elsewhere (sum 1)
micro = [(probs[:2 * T], topk_idx[:2 * T]), (probs[2 * T:], topk_idx[2 * T:])]
counts = sum(count_assignments(idx, E) for _, idx in micro)  # the all-reduce over "ranks"
losses = {
    "sequence": sequence_load_balancing_loss(probs, topk_idx, T),
    "micro-batch": torch.stack([load_balancing_loss(p, i) for p, i in micro]).mean(),
    "global batch": torch.stack([load_balancing_loss(p, i, expert_counts=counts)
                                 for p, i in micro]).mean(),
}
for name, loss in losses.items():
    print(f"{name:>13}: {loss.item():.3f}")
uniform = torch.full((4 * T, E), 1 / E)
print("uniform routing, sequence-wise:", round(sequence_load_balancing_loss(
    uniform, (torch.arange(4 * T * K).view(-1, K) % E), T).item(), 6))

# %% [markdown]
# The same routing is collapse for the sequence-wise loss (each sequence uses $K$ of the $E$
# experts), half-collapse for a micro-batch of two languages, and perfect balance for the
# global-batch loss: exactly uniform routing's value, because over the whole batch every expert
# is chosen equally often. A gradient step on the sequence-wise or micro-batch loss pushes the
# Korean sequence towards the Hindi experts; the global-batch loss does not care which language
# an expert serves, only that all experts are busy.
#
# ## 3. The experiment: four scopes on lesson 05's multilingual model
#
# Lesson 05's MoE ($E = 8$ experts of $F = 64$, top-2, two layers) on the 28-language corpus, 400
# steps of 16 windows of 128 bytes, each window one language. Each step runs as $M = 4$
# micro-batches of 4 windows (stand-ins for data-parallel ranks). Four runs, three seeds each:
# `sequence` (DeepSeek-V3's loss, per window), `micro_batch` (Switch loss per micro-batch),
# `global_batch` (counts summed over the 4 micro-batches), all with coefficient 0.01, and `bias`
# (no balance loss; DeepSeek-V3's bias, $\gamma = 10^{-3}$, one update per step from the step's
# counts). After training, each run is measured on 8 validation windows per language: validation
# loss, $I(\text{language}; \text{expert})$ per layer (lesson 05), the load's max/mean over all
# validation tokens (global balance) and within each window (local balance). One command made
# them (`moe_lab/results/lesson11/README.md`):
#
# ```
# python -m moe_lab.lm.balance_scope --seeds 0 1 2 --threads 1
# ```

# %%
# NBVAL_CHECK_OUTPUT
runs = load_runs()
print(f"{len(runs)} scopes x {len(runs['sequence'])} seeds; H(language) = "
      f"{runs['sequence'][0]['final']['h_language']:.2f} bits")
for metric, label in METRICS.items():
    layers = [None] if metric == "val_loss" else [0, 1]
    print(f"\n{label}")
    for scope, logs in runs.items():
        cells = []
        for layer in layers:
            values = seed_values(logs, metric, layer)
            cells.append(f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]")
        print(f"  {scope:>12}: " + "   ".join(
            ("layer " + str(layer) + " " if layer is not None else "") + cell
            for layer, cell in zip(layers, cells, strict=True)))

# %% [markdown]
# Each entry is the mean over the three seeds, with the lowest and highest seed in brackets. Are
# the gaps real? A gap exceeds the seed spread here when every seed of one scope lies above every
# seed of the other (the seed ranges do not overlap): a strict test with three seeds.

# %%
# NBVAL_CHECK_OUTPUT
pairs = [("global_batch", "micro_batch"), ("global_batch", "sequence"),
         ("micro_batch", "sequence"), ("bias", "global_batch")]
for metric in ("val_loss", "mi_language", "window_load_max_over_mean", "load_max_over_mean"):
    print(metric)
    for a, b in pairs:
        va, vb = seed_values(runs[a], metric), seed_values(runs[b], metric)
        gap = sum(va) / len(va) - sum(vb) / len(vb)
        verdict = "exceeds the seed spread" if separated(va, vb) else "within the seed spread"
        print(f"  {a:>12} - {b:<12} {gap:+.3f}  {verdict}")

# %% [markdown]
# What the runs show, with the verdicts above:
#
# - **The scope decides how much the expert tells about the language.** $I(\text{language};
#   \text{expert})$ rises from the sequence-wise loss to the micro-batch loss to the global-batch
#   loss, and each of these gaps exceeds the seed spread; the bias, which has no loss at all,
#   lands with the global batch (within its spread). The local imbalance rises in the same order:
#   each loss balances exactly the tokens it counts, so the sequence-wise loss keeps every window
#   closest to uniform, and the global-batch loss and the bias let a window lean on a few experts.
# - **Over the whole validation set every scope is about equally balanced** (gaps within the
#   seed spread); the bias is the most even of all. Global balance, which is what expert
#   parallelism needs, does not require local balance.
# - **The validation loss hardly moves.** The three losses are within each other's seed spread;
#   the bias run is a little lower than the global-batch run, a gap that exceeds the spread but
#   is small next to what training longer gains. Qiu et al.'s perplexity gains came from
#   billions of tokens; two layers and 400 steps do not resolve them.
# - **The card's language experts.** Even the most specialised scope stays far below
#   $H(\text{language})$: no expert becomes "the Korean expert" here, and lesson 05 found that
#   what routing follows is mostly the script. But how much language an expert may carry is
#   set by the balance scope: the per-sequence balance that DeepSeek-V3 applies (with a tiny
#   coefficient, next to the bias) would, used as the main loss, erase a large part of it.
#
# A short live run of each scope, so you can watch them train here (15 steps of 8 windows of 64
# bytes, in 4 micro-batches of 2: far too short to specialise; the shipped runs above are the
# measurement):

# %%
# NBVAL_IGNORE_OUTPUT
data = load_lesson_data()
quick = replace(SCOPE_TRAIN, steps=15, batch_size=8, seq_len=64, eval_every=15,
                eval_windows_per_language=1)
for scope in SCOPES:
    with torch_threads(1):  # a model this small runs fastest on one thread (no thread contention)
        run = train_scope(SCOPE_MODEL, quick, ScopeConfig(scope=scope), data=data)
        final = measure(run, data, windows_per_language=1)
    balance = run.balance_loss[-1]
    print(f"{scope:>12}: lm loss {run.lm_loss[0]:.2f} -> {run.lm_loss[-1]:.2f}, balance loss "
          f"{'-' if balance is None else f'{balance:.3f}'}, I(lang;E) "
          f"{final['mi_language'][0]:.2f}/{final['mi_language'][1]:.2f} bits, "
          f"{run.wall_time:.1f} s")

# %% [markdown]
# ## 4. Visualise: specialisation against local balance
#
# One dot per seed. Left, how much the expert tells about the language; middle, how unevenly the
# experts are used inside one window; right, the validation loss.

# %%
# NBVAL_IGNORE_OUTPUT
scope_figure(runs)

# %% [markdown]
# ## 5. DeepSeek-V3's details
#
# ### The sequence-wise loss needs normalised scores
#
# DeepSeek-V3's scores are sigmoids, which need not sum to 1. On raw sigmoid scores the router
# can lower $\sum_i f_i P_i$ without balancing anything: push every logit down and every $P_i$
# shrinks. Normalising, $s' = s / \sum_j s_j$, removes that exit, and the package refuses
# unnormalised scores:

# %%
# NBVAL_CHECK_OUTPUT
generator = torch.Generator().manual_seed(1)
logits = torch.randn(4 * T, E, generator=generator)  # (N, E): 4 sequences of T tokens
idx = logits.topk(K, dim=-1).indices  # the sigmoid is monotone: same choice as its scores
for shift in (0.0, -3.0, -6.0):
    raw = torch.sigmoid(logits + shift)  # (N, E)
    normalised = raw / raw.sum(dim=-1, keepdim=True)
    raw_loss = sequence_load_balancing_loss(raw, idx, T, check_range=False)
    print(f"logits {shift:+.0f}: on raw sigmoid scores {raw_loss.item():.3f}, on normalised "
          f"{sequence_load_balancing_loss(normalised, idx, T).item():.3f}")
try:
    sequence_load_balancing_loss(torch.sigmoid(logits), idx, T)
except ValueError as error:
    print("ValueError:", str(error).split(";")[0])

# %% [markdown]
# Shifting every logit leaves the choice unchanged, yet the loss on raw scores falls towards 0;
# on normalised scores it does not move. (The same trap, through an epsilon, is bug 6 below.)
#
# ### The bias: once per optimizer step, and tokens counted twice
#
# The bias reads the counts of a whole optimizer step. Updated after every micro-batch instead, it
# moves up to $M$ times as far per step and follows each micro-batch's noise (a torchtitan pull
# request pointed out that an early version updated the bias on every micro-batch of gradient
# accumulation, pytorch/torchtitan#1304; torchtitan's update now runs in an optimizer hook, once
# per step). And if every token is counted twice, as under full activation recompute, where each
# MoE forward runs again in the backward (bug 7)?

# %%
# NBVAL_CHECK_OUTPUT
_ = torch.manual_seed(3)
router = TopKRouter(16, E, K)
step_counts = [count_assignments(router(torch.randn(32, 16)).topk_idx, E) for _ in range(4)]
once = BiasBalancer(TopKRouter(16, E, K), gamma=1e-3, recenter=True)
once.update(sum(step_counts))  # one update from the step's counts
per_micro = BiasBalancer(TopKRouter(16, E, K), gamma=1e-3, recenter=True)
for c in step_counts:
    per_micro.update(c)  # one update per micro-batch: 4 per step
twice = BiasBalancer(TopKRouter(16, E, K), gamma=1e-3, recenter=True)
twice.update(2 * sum(step_counts))  # every token counted twice
leaked = BiasBalancer(TopKRouter(16, E, K), gamma=1e-3, recenter=True)
leaked.update(sum(step_counts) + step_counts[0])  # one micro-batch counted twice
print("step counts      ", sum(step_counts).tolist())
for name, balancer in (("once per step", once), ("per micro-batch", per_micro),
                       ("all counted x2", twice), ("one micro x2", leaked)):
    bias = balancer.router.score_correction_bias
    print(f"{name:>16}: bias / gamma = {[round(v * 1e3, 3) for v in bias.tolist()]}")
for name, balancer in (("all counted x2", twice), ("one micro x2", leaked)):
    print(f"{name} gives the once-per-step bias:", torch.equal(
        balancer.router.score_correction_bias, once.router.score_correction_bias))

# %% [markdown]
# Counting every token twice changes nothing in the sign update: $\operatorname{sign}(2\bar c -
# 2c_i) = \operatorname{sign}(\bar c - c_i)$. What it breaks is every number computed from the
# counts' size: the expert-usage metrics a run logs, or an update proportional to the load gap.
# Counting only *some* tokens twice (one micro-batch, or an evaluation forward that leaks into
# the counts, pytorch/torchtitan#4148) changes the bias.
#
# ### The re-centred bias
#
# Adding one number to every bias never changes the top-$K$ choice. But $\sum_i \delta_i \ne 0$
# in general: with one overloaded expert and seven underloaded ones, seven biases rise and one
# falls every step, and the mean bias drifts up by $\frac{6}{8}\gamma$ per step, until the biases
# dwarf the scores they are added to, and float32 loses the small gaps between two scores plus
# their biases (the spacing of float32 numbers near 100 is printed last).
# torchtitan subtracts the mean change (pytorch/torchtitan#1506, where the maintainers explain
# why); `BiasBalancer(..., recenter=True)` does the same.

# %%
# NBVAL_CHECK_OUTPUT
import math

_ = torch.manual_seed(4)
skewed = torch.tensor([900, 100, 100, 100, 100, 100, 100, 100])  # one overloaded expert
base = TopKRouter(16, E, K)
plain = BiasBalancer(copy.deepcopy(base), gamma=1e-3)
centred = BiasBalancer(copy.deepcopy(base), gamma=1e-3, recenter=True)
for _ in range(1000):
    plain.update(skewed)
    centred.update(skewed)
for name, balancer in (("not re-centred", plain), ("re-centred", centred)):
    bias = balancer.router.score_correction_bias
    mean = bias.mean().item()
    centre = "|mean bias| < 1e-4" if abs(mean) < 1e-4 else f"mean bias {mean:.3f}"
    print(f"{name:>15}: {centre}, expert 0 minus expert 1 {(bias[0] - bias[1]).item():.3f}")
x = torch.randn(64, 16)
print("same top-k choice for every token:",
      torch.equal(plain.router(x).topk_idx, centred.router(x).topk_idx))
big = torch.tensor(100.0)
spacing = (torch.nextafter(big, big + 1) - big).item()  # a power of two: printed exactly
print(f"float32 spacing near a bias of 100: 2^{math.log2(spacing):.0f}")

# %% [markdown]
# ## 6. Spot the bug: seven real MoE bugs
#
# Each snippet below is written like the code it came from; each bug was reported in a public
# repository, and each thread was read before the bug was put here. Find the bug, fix the
# function in place, and run the checker under it: it runs your fix on small cases and names the
# mistake of a wrong one. The first run of each checker shows what the original does. The fix is
# in a collapsed cell.
#
# Two claims from the issue that set up this lesson were dropped after reading their threads:
# the Mixtral aux loss "silently off" (huggingface/transformers#44242) is the documented behaviour
# of `output_router_logits=False` (the config says the flag enables the aux loss) and its fix
# pull requests were closed unmerged; the same trap bit a training framework that forgot the
# flag (hiyouga/LlamaFactory#3276). And "the bias not re-centred" (pytorch/torchtitan#1506) is a
# question about torchtitan's re-centring, answered by its maintainer as a stability measure that
# changes no choice (section 5), not a bug report.
#
# ### Bug 1: the aux loss that never reaches the optimizer (jingyaogong/minimind#140)
#
# A training step of a small MoE language model. Every MoE layer computed its balance loss
# (`aux_loss`, already times its coefficient). The author confirmed in the thread that the first
# version forgot to use it.

# %%
def training_loss(logits, targets, loss_mask, aux_loss):
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                           reduction="none").view(targets.size())
    loss = (loss * loss_mask).sum() / loss_mask.sum()
    return loss


# %%
ok_bug1 = check_aux_loss_added(training_loss)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def training_loss_solution(logits, targets, loss_mask, aux_loss):
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                           reduction="none").view(targets.size())
    loss = (loss * loss_mask).sum() / loss_mask.sum()
    return loss + aux_loss  # the tensor, so its gradient reaches the router


ok_solution = check_aux_loss_added(training_loss_solution)

# %% [markdown]
# ### Bug 2: $P_i$ over the chosen experts only (paiml/aprender#2162)
#
# A loop version of the Switch loss, as in aprender (Rust, here in Python). The fix was merged.

# %%
def aux_loss(router_probs, topk_idx):
    num_tokens, num_experts = router_probs.shape
    top_k = topk_idx.shape[1]
    counts = [0.0] * num_experts
    prob_sums = [0.0] * num_experts
    for t in range(num_tokens):
        for i in topk_idx[t].tolist():
            counts[i] += 1
            prob_sums[i] = prob_sums[i] + router_probs[t, i]
    f = [c / (num_tokens * top_k) for c in counts]
    p = [s / num_tokens for s in prob_sums]
    return num_experts * sum(fi * pi for fi, pi in zip(f, p, strict=True))


# %%
ok_bug2 = check_aux_loss_full_softmax(aux_loss)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def aux_loss_solution(router_probs, topk_idx):
    num_tokens, num_experts = router_probs.shape
    top_k = topk_idx.shape[1]
    counts = [0.0] * num_experts
    prob_sums = [0.0] * num_experts
    for t in range(num_tokens):
        for i in topk_idx[t].tolist():
            counts[i] += 1  # f: hard top-k counts
        for i in range(num_experts):
            prob_sums[i] = prob_sums[i] + router_probs[t, i]  # P: the full softmax, every expert
    f = [c / (num_tokens * top_k) for c in counts]
    p = [s / num_tokens for s in prob_sums]
    return num_experts * sum(fi * pi for fi, pi in zip(f, p, strict=True))


ok_solution = check_aux_loss_full_softmax(aux_loss_solution)

# %% [markdown]
# ### Bug 3: padding counted in the balance loss (huggingface/transformers#28505)
#
# Mixtral's balance loss for one layer, before the fix (huggingface/transformers#28517 added the
# `attention_mask` argument). Mixtral's convention sums $f$ over the $K$ slots: $K$ times ours.

# %%
def load_balancing_loss_func(router_logits, top_k, attention_mask):
    num_experts = router_logits.shape[-1]
    routing_weights = torch.softmax(router_logits, dim=-1)  # (N, E)
    _, selected_experts = torch.topk(routing_weights, top_k, dim=-1)  # (N, K)
    expert_mask = F.one_hot(selected_experts, num_experts).float()  # (N, K, E)
    tokens_per_expert = expert_mask.mean(dim=0)  # (K, E): share of tokens per slot
    router_prob_per_expert = routing_weights.mean(dim=0)  # (E,)
    return num_experts * torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0))


# %%
ok_bug3 = check_aux_loss_padding(load_balancing_loss_func)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def load_balancing_loss_func_solution(router_logits, top_k, attention_mask):
    num_experts = router_logits.shape[-1]
    routing_weights = torch.softmax(router_logits, dim=-1)  # (N, E)
    _, selected_experts = torch.topk(routing_weights, top_k, dim=-1)  # (N, K)
    expert_mask = F.one_hot(selected_experts, num_experts).float()  # (N, K, E)
    real = attention_mask.reshape(-1).to(routing_weights.dtype)  # (N,), 1 for real tokens
    # means over the real tokens only
    tokens_per_expert = (expert_mask * real[:, None, None]).sum(dim=0) / real.sum()  # (K, E)
    router_prob_per_expert = (routing_weights * real[:, None]).sum(dim=0) / real.sum()  # (E,)
    return num_experts * torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0))


ok_solution = check_aux_loss_padding(load_balancing_loss_func_solution)

# %% [markdown]
# ### Bug 4: dropped tokens passed through (huggingface/transformers#37017)
#
# The Switch Transformer layer of transformers, top-1 with a capacity: a token whose expert is
# full has an all-zero row in `router_mask`. Fixed by huggingface/transformers#37123.

# %%
def sparse_mlp(hidden_states, router_mask, router_probs, experts):
    next_states = hidden_states.clone()
    for idx, expert in enumerate(experts):
        token_indices = router_mask[:, idx].bool()
        next_states[token_indices] = expert(hidden_states[token_indices])
    return router_probs * next_states


# %%
ok_bug4 = check_dropped_tokens(sparse_mlp)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def sparse_mlp_solution(hidden_states, router_mask, router_probs, experts):
    next_states = torch.zeros_like(hidden_states)  # a dropped token gets 0: the residual carries it
    for idx, expert in enumerate(experts):
        token_indices = router_mask[:, idx].bool()
        next_states[token_indices] = expert(hidden_states[token_indices])
    return router_probs * next_states


ok_solution = check_dropped_tokens(sparse_mlp_solution)

# %% [markdown]
# ### Bug 5: a softmax applied twice (huggingface/transformers#45120)
#
# A router whose forward reused the name `router_logits` for the probabilities and returned
# them; the balance loss, which expects logits, applied softmax again. Fixed by
# huggingface/transformers#45131.

# %%
def router_forward(hidden_states, weight, top_k):
    router_logits = F.linear(hidden_states, weight)  # (N, E)
    router_logits = torch.softmax(router_logits.float(), dim=-1)
    router_top_value, router_indices = torch.topk(router_logits, top_k, dim=-1)  # (N, K)
    router_top_value = router_top_value / router_top_value.sum(dim=-1, keepdim=True)
    return router_logits, router_top_value, router_indices


# %%
ok_bug5 = check_router_returns_logits(router_forward)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def router_forward_solution(hidden_states, weight, top_k):
    router_logits = F.linear(hidden_states, weight)  # (N, E), returned as they are
    router_probs = torch.softmax(router_logits.float(), dim=-1)  # its own name
    router_top_value, router_indices = torch.topk(router_probs, top_k, dim=-1)  # (N, K)
    router_top_value = router_top_value / router_top_value.sum(dim=-1, keepdim=True)
    return router_logits, router_top_value, router_indices


ok_solution = check_router_returns_logits(router_forward_solution)

# %% [markdown]
# How much signal was lost? The softmax of probabilities in $[0, 1]$ is close to uniform:

# %%
# NBVAL_CHECK_OUTPUT
logits = torch.randn(256, E, generator=torch.Generator().manual_seed(2)) * 3
probs = torch.softmax(logits, dim=-1)
probs_twice = torch.softmax(probs, dim=-1)
print(f"largest probability: once {probs.max().item():.3f}, twice {probs_twice.max().item():.3f} "
      f"(uniform {1 / E:.3f})")

# %% [markdown]
# ### Bug 6: a sigmoid router that lowers its aux loss by shrinking every score (NVIDIA/Megatron-LM#1545)
#
# The scores the aux loss reads, with a sigmoid score function. OLMo-core hit the hack with the
# same epsilon and fixed it (allenai/OLMo-core#255); the thread proposes a tiny epsilon or none.

# %%
def normalised_scores(router_logits):
    scores = torch.sigmoid(router_logits)
    scores = scores / (scores.sum(dim=-1, keepdim=True) + 1e-20)
    return scores


# %%
ok_bug6 = check_sigmoid_normalisation(normalised_scores)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def normalised_scores_solution(router_logits):
    scores = torch.sigmoid(router_logits)
    # an epsilon below every float32 score the router can reach (the smallest normal float)
    return scores / (scores.sum(dim=-1, keepdim=True) + torch.finfo(scores.dtype).tiny)


ok_solution = check_sigmoid_normalisation(normalised_scores_solution)

# %% [markdown]
# ### Bug 7: tokens counted twice under activation recompute (pytorch/torchtitan#1593)
#
# The once-per-step bias update of a training framework. Every MoE forward adds its counts to
# `tokens_per_expert`; with full activation recompute each forward runs a second time in the
# backward. The pull request "handles cases where tokens per expert are counted twice"; the
# counts are also the expert-usage metrics the run logs.

# %%
@torch.no_grad()
def update_expert_bias(expert_bias, tokens_per_expert, coeff, full_recompute):
    delta = coeff * torch.sign(tokens_per_expert.mean(dim=-1, keepdim=True) - tokens_per_expert)
    delta = delta - delta.mean(dim=-1, keepdim=True)  # re-centred: the bias keeps mean 0
    return expert_bias + delta, tokens_per_expert  # the new bias, the counts the step logs


# %%
ok_bug7 = check_recompute_count(update_expert_bias)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
@torch.no_grad()
def update_expert_bias_solution(expert_bias, tokens_per_expert, coeff, full_recompute):
    if full_recompute:
        tokens_per_expert = tokens_per_expert / 2  # each forward ran twice
    delta = coeff * torch.sign(tokens_per_expert.mean(dim=-1, keepdim=True) - tokens_per_expert)
    delta = delta - delta.mean(dim=-1, keepdim=True)
    return expert_bias + delta, tokens_per_expert


ok_solution = check_recompute_count(update_expert_bias_solution)

# %% [markdown]
# The seven bugs, and where each was reported:

# %%
# NBVAL_CHECK_OUTPUT
for number, bug in enumerate(BUGS, start=1):
    print(f"{number}. {bug.source:<32} {bug.effect}")

# %% [markdown]
# ## 7. Summary
#
# | scope | $f$ and $P$ counted over | lets an expert serve one language? | who |
# |---|---|---|---|
# | sequence | one sequence | no: every sequence must use every expert | DeepSeek-V3 (tiny $\alpha$, next to the bias) |
# | micro-batch | the tokens in hand (a few sequences) | hardly | the 2021 default (Switch, GShard) |
# | global batch | every micro-batch and rank of the step | yes: only the whole batch must be balanced | Qiu et al. 2025, Qwen3-MoE; Megatron-LM's global aux loss |
# | bias | (no loss) the step's counts | yes | DeepSeek-V3 |
#
# You built DeepSeek-V3's sequence-wise loss; the package has `sequence_load_balancing_loss`,
# the global-batch loss (`load_balancing_loss(..., expert_counts=)` with `count_assignments`),
# `BiasBalancer(..., recenter=True)` and the experiment (`moe_lab.lm.balance_scope`). Megatron-LM
# names the three losses `seq_aux_loss`, `aux_loss` and `global_aux_loss`. The bug hunt: an aux
# loss must be added as a tensor, its $P$ is the full softmax over all real tokens, a dropped
# token adds 0, the loss gets logits or probabilities as it expects, normalised sigmoid scores
# need an epsilon below every score, and counts must count each token once.

# %% [markdown]
# The numbers of this lesson, gathered from the cells above:

# %%
# NBVAL_IGNORE_OUTPUT
for name, loss in losses.items():
    print(f"constructed batch, {name} loss: {loss.item():.3f}")
for scope, logs in runs.items():
    mi = seed_values(logs, "mi_language")
    loss = seed_values(logs, "val_loss")
    print(f"{scope:>12} (shipped, 3 seeds): val loss {sum(loss) / 3:.3f}, I(lang;E) "
          f"{sum(mi) / 3:.3f} bits (layers averaged)")
print("bugs checked:", sum(bool(ok) for ok in (ok_bug1, ok_bug2, ok_bug3, ok_bug4, ok_bug5,
                                               ok_bug6, ok_bug7)), "of 7 fixed in your cells")

# %% [markdown]
# ## 8. Self-check quiz

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(11)

# %% [markdown]
# ## 9. Interview questions (self-check)
#
# <details><summary>1. 부하 균형 손실을 마이크로배치마다 계산하는 것과 글로벌 배치로 계산하는 것은 무엇이 다른가요?
# <br>(What changes when the balance loss is computed per micro-batch instead of over the global batch?)</summary>
#
# Which tokens must be balanced. Per micro-batch, the few sequences in hand (often one domain or
# language each) must use every expert, so an expert cannot specialise in a domain. With the
# counts summed over all micro-batches and data-parallel ranks (one all-reduce of $E$ numbers per
# layer), only the whole batch must be balanced; Qiu et al. 2025 report better perplexity and
# domain-specialised experts. The $P$ term stays local, so the gradient is the same shape.
# </details>
#
# <details><summary>2. DeepSeek-V3는 보조 손실 없는 편향 방식을 쓰는데 왜 시퀀스 단위 손실을 또 두나요?
# <br>(DeepSeek-V3 balances with a bias and no aux loss: why does it keep a sequence-wise loss?)</summary>
#
# The bias balances the batch, step by step, but says nothing about one sequence, which can still
# send all its tokens to a few experts. The complementary sequence-wise loss, with a tiny
# coefficient, is there to prevent extreme imbalance within any single sequence (the report's
# words) without forcing per-sequence uniformity: section 3 measured how much language
# specialisation a per-sequence balance erases when it is the main loss. Its scores are
# normalised so the router cannot lower it by shrinking every sigmoid.
# </details>
#
# <details><summary>3. 편향 업데이트에서 토큰을 두 번 세면 어떻게 되나요?
# <br>(What happens to the bias update if every token is counted twice?)</summary>
#
# Nothing to the bias: $\operatorname{sign}(2\bar c - 2c_i) = \operatorname{sign}(\bar c - c_i)$.
# The logged expert usage doubles, and any rule that uses the size of the gap would double its
# step. Counting only some tokens twice (one micro-batch, an evaluation forward) does change the
# bias. Full activation recompute doubles every count (torchtitan #1593).
# </details>
#
# <details><summary>4. 면접 형식 "버그 찾기": 이 MoE 학습 코드에서 부하 균형이 전혀 작동하지 않는다면 무엇부터 보겠습니까?
# <br>("Spot the bug": balancing does nothing in this MoE training code. What do you check first?)</summary>
#
# That the aux loss is added to the loss that is backpropagated, as a tensor (bug 1); that the
# router's flag or coefficient that enables it is set (LlamaFactory #3276); that $P$ is the mean
# of the full softmax (bug 2) on probabilities, not on probabilities softmaxed again (bug 5);
# that padding is masked (bug 3); with sigmoid scores, that they are normalised with a harmless
# epsilon (bug 6). Then measure: the loss is 1 at uniform routing and $E$ at collapse.
# </details>

# %% [markdown]
# ## 10. Further reading
#
# - Qiu et al. 2025, [*Demons in the Detail: On Implementing Load Balancing Loss for Training
#   Specialized Mixture-of-Expert Models*](https://arxiv.org/abs/2501.11873): global-batch balance.
# - DeepSeek-AI 2024, [*DeepSeek-V3 Technical Report*](https://arxiv.org/abs/2412.19437), section
#   2.1.2: auxiliary-loss-free balancing and the complementary sequence-wise loss (eqs. 17-20).
# - Wang et al. 2024, [*Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts*](https://arxiv.org/abs/2408.15664):
#   the bias update (Algorithm 1).
# - Fedus et al. 2021, [*Switch Transformers*](https://arxiv.org/abs/2101.03961): the batch loss.
# - The bug threads: [minimind #140](https://github.com/jingyaogong/minimind/issues/140),
#   [aprender #2162](https://github.com/paiml/aprender/pull/2162),
#   [transformers #28505](https://github.com/huggingface/transformers/issues/28505),
#   [transformers #37017](https://github.com/huggingface/transformers/issues/37017),
#   [transformers #45120](https://github.com/huggingface/transformers/issues/45120),
#   [Megatron-LM #1545](https://github.com/NVIDIA/Megatron-LM/issues/1545),
#   [torchtitan #1593](https://github.com/pytorch/torchtitan/pull/1593),
#   [torchtitan #1506](https://github.com/pytorch/torchtitan/issues/1506).
