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
# # 05 · Train a tiny MoE language model on 28 languages
#
# **Goal.** Put the `SparseMoE` layer of lessons 01-04 inside a real (tiny) transformer, train it on
# real multilingual text, and test two claims you will hear in every MoE interview:
#
# 1. *MoE buys capacity at the same compute*: an MoE model with the same **active** FLOPs per token
#    as a dense model reaches a lower loss.
# 2. *Experts specialise*, for instance **by language** in a multilingual model. ST-MoE (Zoph et al.
#    2022) looked and found encoder experts specialising by **token type** (punctuation, proper
#    nouns, numbers) rather than by language. Which does our model show?
#
# On the way: the model's auxiliary losses with padding, the capacity factor's effect on quality, and
# the mutual information between language and expert choice, measured against a random router.
# Every number below comes from code in this repository: a short run trains live, the full runs
# were made by one command and are shipped with the package.
#
# Prerequisites: lessons 01-04 (router, top-$k$, combine, balancing losses).

# %% [markdown]
# ## 1. The math
#
# **The model.** A byte-level decoder-only transformer: every UTF-8 byte is a token (vocabulary
# $V = 256$, no unknown token, any script). Block $l$: $a = h + \text{Attn}(\text{RMSNorm}(h))$,
# $h' = a + \text{FFN}_l(\text{RMSNorm}(a))$, with $\text{FFN}_l$ either a dense SwiGLU or a
# `SparseMoE`. The loss over the real (unpadded) positions $\mathcal{R}$ and the $L$ MoE layers:
#
# $$\mathcal{L} = \underbrace{\frac{1}{|\mathcal{R}|}\sum_{t \in \mathcal{R}} -\log p(x_{t+1} \mid x_{\le t})}_{\text{lm\_loss}}
# \;+\; \alpha \,\frac{1}{L}\sum_{l=1}^{L} E \sum_{i} f^{(l)}_i P^{(l)}_i
# \;+\; \beta \,\frac{1}{L}\sum_{l=1}^{L} \frac{1}{|\mathcal{R}|}\sum_{t \in \mathcal{R}} \Big(\log \sum_i e^{\ell^{(l)}_{t,i}}\Big)^2$$
#
# with $f_i$ and $P_i$ counted over real tokens only (lesson 04).
#
# **Equal compute.** One token uses $K$ experts of hidden width $F$: a dense FFN of width $K F$
# costs the same FLOPs (plus the router's $D E$). The MoE holds $E F$ of FFN width in total.
#
# **Specialisation.** Each (token, slot) assignment is a sample of (label $L$, expert $E$), the label
# being the token's language or its byte class (letter, digit, space, punctuation, other/multi-byte):
#
# $$I(L; E) = \sum_{l, e} p(l, e) \log_2 \frac{p(l, e)}{p(l)\,p(e)} \quad\text{bits}, \qquad
# 0 \le I \le \min(H(L), H(E))$$
#
# $I = 0$ if the expert choice ignores the label; $I = H(L)$ if the label fixes the expert.
#
# | symbol | code | shape / value | meaning |
# |---|---|---|---|
# | $B, T$ | `batch_size`, `seq_len` | 16, 128 | windows per step, bytes per window |
# | $D$ | `d_model` | 64 | model width |
# | $F$ | `d_ff` | 64 (MoE), 128 (dense) | hidden width of one expert / the dense FFN |
# | $E, K$ | `num_experts`, `top_k` | 8, 2 | experts per layer, experts per token |
# | $L$ | `n_layers` | 2 | MoE layers (one per block) |
# | $\alpha, \beta$ | `aux_loss_coef`, `z_loss_coef` | 0.01, 0.001 | loss weights |
# | $\mathcal{R}$ | `attention_mask` | $(B, T)$ bool | real tokens (padding is on the right) |
# | $c[l, e]$ | `language_counts` | $(L_{\text{lang}}, E)$ | assignments of language $l$ to expert $e$ |

# %%
from dataclasses import replace

import torch

from moe_lab import average_over_layers, load_balancing_loss
from moe_lab.checks.lm import check_average_aux_loss, check_mutual_information
from moe_lab.lm.data import SCRIPTS, eval_batches, load_lesson_data
from moe_lab.lm.model import TinyLM
from moe_lab.lm.seeds import compare_seeds
from moe_lab.lm.specialisation import (
    BYTE_CLASSES,
    collect_routing,
    mutual_information,
    specialisation_report,
)
from moe_lab.lm.tokenizer import ByteTokenizer
from moe_lab.lm.train import (
    BASE_TRAIN,
    GPU_RESULTS_DIR,
    LESSON05_RUNS,
    RESULTS_DIR,
    OnStep,
    evaluate,
    load_checkpoint,
    load_log,
    seconds_per_step,
    train,
)
from moe_lab.viz.lm import (
    capacity_sweep_figure,
    capacity_sweep_table,
    lm_route_fn,
    loss_curves_figure,
    specialisation_heatmap_figure,
)
from moe_lab.widgets.dashboard import TrainingDashboard
from moe_lab.widgets.explorer import RoutingExplorer

_ = torch.manual_seed(0)

# %% [markdown]
# ## 2. The data: chatterbot-corpus, 28 languages
#
# `moe_lab.lm.data` reads the YAML files of the `chatterbot-corpus` package (BSD licence, installed
# with the course, nothing downloaded): short dialogues in 28 languages. One conversation is one
# sequence, labelled with its language. The split is by a hash of the text, so it is the same on
# every machine and no text is in both train and validation.

# %%
# NBVAL_CHECK_OUTPUT
data = load_lesson_data()
print(f"{len(data.languages)} languages, {len(data.split.train)} train / "
      f"{len(data.split.valid)} validation conversations")
print(f"train bytes: {int(data.train.num_bytes().sum())}, "
      f"validation bytes: {int(data.valid.num_bytes().sum())}")
overlap = {s.text for s in data.split.train} & {s.text for s in data.split.valid}
print("texts in both splits:", len(overlap))
sizes = sorted(zip(data.train.num_bytes().tolist(), data.languages, strict=True), reverse=True)
print("largest: ", [(lang, int(n)) for n, lang in sizes[:4]])
print("smallest:", [(lang, int(n)) for n, lang in sizes[-3:]])
print(f"the largest has {sizes[0][0] / sizes[-1][0]:.0f}x the bytes of the smallest")

# %% [markdown]
# The languages differ in size by two orders of magnitude (the last line). Training draws each window's
# language with probability $\propto n_l^{\alpha}$ with $\alpha = 0.5$ (XLM and mT5 use 0.3-0.7),
# which up-samples the small languages; a window is 128 consecutive bytes of one language.
#
# Bytes, not characters: a Hangul syllable is 3 tokens, a Devanagari letter 3, an ASCII letter 1.

# %%
# NBVAL_CHECK_OUTPUT
tokenizer = ByteTokenizer()
korean = next(s.text for s in data.split.train if s.language == "korean")
line = korean.splitlines()[0]
print(repr(line), "->", len(line), "characters,", len(tokenizer.encode(line)), "byte tokens")
print(tokenizer.pieces(line)[:12])
print("round trip exact:", tokenizer.decode(tokenizer.encode(korean)) == korean)
probs = data.train.sampling_probs(alpha=BASE_TRAIN.language_alpha)
print("sampling share, english vs telugu:",
      [round(float(probs[data.languages.index(x)]), 3) for x in ("english", "telugu")])

# %% [markdown]
# ## 3. The model: dense and MoE at equal active compute
#
# The lesson's runs (`moe_lab.lm.train.LESSON05_RUNS`) share everything but the FFN:
#
# - `dense`: one SwiGLU FFN of width $KF = 128$ per block;
# - `moe`: 8 experts of width $F = 64$, top-2: **the same active parameters** (up to the router);
# - `dense_total`: a dense FFN of width $EF = 512$: **the same total parameters** as the MoE, at 4x
#   its FFN compute. It shows what the MoE gives up by activating a quarter of its experts;
# - `moe_cf0.5` ... `moe_cf2.0`: the MoE trained with a capacity factor (section 7).

# %%
# NBVAL_CHECK_OUTPUT
for name in ("dense", "moe", "dense_total"):
    model = TinyLM(LESSON05_RUNS[name][0])
    print(f"{name:>12}: {model.num_parameters():>7,} parameters, "
          f"{model.num_active_parameters():>7,} active per token")

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
model = TinyLM(LESSON05_RUNS["moe"][0])
batch = eval_batches(data.valid, batch_size=4, seq_len=128, max_windows_per_language=1)[-1]
out = model(batch.input_ids, batch.targets, batch.attention_mask)
print("logits:", tuple(out.logits.shape), " routing layers:", len(out.routing),
      " topk_idx per layer:", tuple(out.routing[0].topk_idx.shape))
print(f"padded positions in this batch: {int((~batch.attention_mask).sum())}")
print(f"lm_loss at initialisation: {out.lm_loss.item():.2f} nats "
      f"(uniform over 256 bytes: {torch.log(torch.tensor(256.0)).item():.2f})")
print(f"aux loss {out.aux_loss.item():.2f} (1.0 = balanced), z loss {out.z_loss.item():.2f}")


# %% [markdown]
# ## 4. Build: the model's auxiliary loss, with padding
#
# Lesson 04 averaged the Switch loss over layers. Real batches are padded: the last validation
# window of each language above is shorter than 128 bytes. Padding tokens still pass through the
# router (the layer does not know they are padding), so the loss must leave them out of both $f_i$
# and $P_i$, or the model learns to balance garbage.
#
# Write `model_aux_loss(router_probs_per_layer, topk_idx_per_layer, mask)`: lists of $(N, E)$ and
# $(N, K)$ tensors, one per layer, and a mask $(N,)$ (True = real token, or None). Return
# $\frac{1}{L}\sum_l E \sum_i f^{(l)}_i P^{(l)}_i$ over the real tokens (0 for a layer whose batch
# is all padding: nothing to balance, and no 0 / 0).

# %%
def model_aux_loss(router_probs_per_layer, topk_idx_per_layer, mask=None):
    """Lists of (N, E) and (N, K) tensors, mask (N,) bool or None -> 0-d tensor."""
    raise NotImplementedError("your code here")


# %%
ok_aux = check_average_aux_loss(model_aux_loss)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def model_aux_loss_solution(router_probs_per_layer, topk_idx_per_layer, mask=None):
    losses = []
    for router_probs, topk_idx in zip(router_probs_per_layer, topk_idx_per_layer, strict=True):
        num_tokens, num_experts = router_probs.shape
        keep = torch.ones(num_tokens) if mask is None else mask.float()  # (N,)
        expert_mask = torch.zeros_like(router_probs).scatter_add(
            1, topk_idx, torch.ones_like(topk_idx, dtype=router_probs.dtype))  # (N, E)
        # f_i = share of the real tokens' N*K assignments; P_i = mean probability over real tokens
        num_real = keep.sum().clamp_min(1)  # an all-padding batch gives 0, not 0 / 0
        f = (expert_mask * keep[:, None]).sum(0) / (num_real * topk_idx.shape[1])  # (E,)
        P = (router_probs * keep[:, None]).sum(0) / num_real  # (E,)
        losses.append(num_experts * (f * P).sum())
    return torch.stack(losses).mean()  # average over layers, not a sum


solution_passed = check_average_aux_loss(model_aux_loss_solution)


# %% [markdown]
# **In the package:** `moe_lab.losses.average_over_layers`.
#
# From here on the lesson uses yours if it passed, else the package's (`average_over_layers` of
# `load_balancing_loss` per layer, which is what `TinyLM` computes):

# %%
# NBVAL_CHECK_OUTPUT
def package_aux_loss(probs, idx, mask=None):
    return average_over_layers([load_balancing_loss(p, i, mask) for p, i in zip(probs, idx, strict=True)])


aux_fn = model_aux_loss if ok_aux else package_aux_loss
mask = batch.attention_mask.reshape(-1)
mine = aux_fn([r.router.probs for r in out.routing], [r.topk_idx for r in out.routing], mask)
print("equals the model's aux loss:", torch.allclose(mine, out.aux_loss))

# %% [markdown]
# ## 5. Train, live (a short run)
#
# `moe_lab.lm.train.train` runs the loop: sample a batch, forward (bf16 autocast when asked), backward,
# clip the gradient norm to 1, AdamW, warm-up then cosine learning rate, and call the callbacks. The
# lesson-04 dashboard plugs in as a callback. Here 30 steps of 8 windows of 64 bytes, so it runs in
# seconds on a CPU; the full runs of section 6 are 400 steps of 16 x 128 bytes.

# %%
# NBVAL_IGNORE_OUTPUT
dashboard = TrainingDashboard(num_experts=8, redraw_every=10, title="MoE, layer 0")
dashboard.show()  # live while it trains; then the cell keeps the finished run's figure
live_config = replace(BASE_TRAIN, steps=30, batch_size=8, seq_len=64, eval_every=15,
                      eval_windows_per_language=1)
live = {}
live["moe"] = train(LESSON05_RUNS["moe"][0], live_config, data=data,
                    callbacks=[OnStep(lambda m: dashboard(m.layer_stats[0]))])
dashboard.finish()
live["dense"] = train(LESSON05_RUNS["dense"][0], live_config, data=data)

# %%
# NBVAL_CHECK_OUTPUT
for name, run in live.items():
    first, last = run.evals[0], run.evals[-1]
    print(f"{name:>5}: val loss {first.val_loss:.2f} (step {first.step}) -> "
          f"{last.val_loss:.2f} (step {last.step})")

# %% [markdown]
# ## 6. The full runs: dense vs MoE at equal active compute
#
# Seven runs, 400 steps each, were trained by one command (its metric logs and the `dense` and
# `moe` checkpoints are in `moe_lab/results/lesson05/`, under 2 MB):
#
# ```
# python -m moe_lab.train --out moe_lab/results/lesson05
# ```
#
# On 2 idle CPU cores the seven runs take about two minutes (add `--device cuda --precision bf16`
# on a GPU).
# Run it yourself to regenerate every file; the logs also record the exact command.

# %%
# NBVAL_CHECK_OUTPUT
logs = {name: load_log(name) for name in LESSON05_RUNS}
print("command:", logs["moe"]["command"])
print(f"{'run':>12} {'params':>8} {'active':>8} {'val loss':>9} {'train s':>8}")
for name in ("dense", "moe", "dense_total"):
    log = logs[name]
    last = log["evals"][-1]
    print(f"{name:>12} {log['params_total']:>8,} {log['params_active']:>8,} "
          f"{last['val_loss']:>9.3f} {last['wall_time']:>8.0f}")
gap = logs["dense"]["evals"][-1]["val_loss"] - logs["moe"]["evals"][-1]["val_loss"]
print(f"MoE - dense at equal active compute (seed 0): {-gap:+.3f} nats/byte")

# %% [markdown]
# One seed shows a direction at best: two seeds of the same model can differ by as much as two
# models do. The three main runs were trained again with seeds 0, 1 and 2 by a second command
# (one thread; about 20 minutes of CPU time in all; the logs `<run>_seed<s>.json` are in the same
# folder, seed 0 repeating the run above):
#
# ```
# python -m moe_lab.train --runs dense moe dense_total --seeds 0 1 2 --threads 1 --no-progress
# ```
#
# For each pair, `moe_lab.lm.seeds.compare_seeds` gives the gap of the means, on how many seeds
# the lower run was lower, and whether the gap exceeds the seed spread (the larger max - min of
# the two runs over seeds).

# %%
# NBVAL_CHECK_OUTPUT
SEEDS = (0, 1, 2)
seeded = {name: [load_log(f"{name}_seed{s}")["evals"][-1]["val_loss"] for s in SEEDS]
          for name in ("dense", "moe", "dense_total")}
print("command:", load_log("moe_seed0")["command"])
for name, losses in seeded.items():
    print(f"{name:>12}: val loss {' '.join(f'{v:.3f}' for v in losses)}  "
          f"(range {max(losses) - min(losses):.3f})")
moe_vs_dense = compare_seeds(seeded["dense"], seeded["moe"])
total_vs_moe = compare_seeds(seeded["moe"], seeded["dense_total"])
print(moe_vs_dense.verdict("dense", "MoE"))
print(total_vs_moe.verdict("MoE", "dense_total"))

# %% [markdown]
# The same seven runs in bf16 on a GPU are written to `moe_lab/results/lesson05_gpu/` by
# `python -m moe_lab.gpu_check` (the command that checks the whole course on a GPU). When they are
# recorded, this cell prints them beside the CPU runs.

# %%
# NBVAL_IGNORE_OUTPUT
gpu_logs = {name: load_log(name, GPU_RESULTS_DIR) for name in LESSON05_RUNS
            if (GPU_RESULTS_DIR / f"{name}.json").is_file()}
if not gpu_logs:
    print("No GPU training logs are recorded yet (no moe_lab/results/lesson05_gpu/).")
    print("To produce them, run on an NVIDIA GPU:")
    print("    python -m moe_lab.gpu_check")
else:
    print("recorded with:", next(iter(gpu_logs.values()))["command"])
    print(f"{'run':>12} {'CPU fp32 val loss':>18} {'train s':>8} {'GPU bf16 val loss':>18} "
          f"{'train s':>8}")
    for name, gpu_log in gpu_logs.items():
        cpu_last, gpu_last = logs[name]["evals"][-1], gpu_log["evals"][-1]
        print(f"{name:>12} {cpu_last['val_loss']:>18.3f} {cpu_last['wall_time']:>8.0f} "
              f"{gpu_last['val_loss']:>18.3f} {gpu_last['wall_time']:>8.0f}")

# %%
# NBVAL_IGNORE_OUTPUT
loss_curves_figure({name: logs[name] for name in ("dense", "moe", "dense_total")},
                   title="validation loss (shipped runs)")

# %% [markdown]
# **Reading the curves and the seeds.** Against **steps** the seed-0 MoE (dropless, top-2 of 8)
# ends below the dense model of equal active compute and just above the dense model with its
# total parameters. Over three seeds the MoE is lower than the dense model on every seed, but the
# mean gap is smaller than the seed spread (the MoE's own seeds vary more than that): at this
# scale the runs point the expected way without showing an MoE advantage beyond seed noise. The
# dense model with the MoE's total parameters is lower than the MoE on every seed too, and that
# gap is printed above with its own verdict. The models are tiny and see 400 steps of less than a
# megabyte of text, where capacity is not yet the bottleneck; papers show the MoE's advantage
# with billions of tokens.
#
# Against **wall time** read nothing yet: the shipped runs were timed on 2 CPU cores shared with
# other jobs whose load changed while they ran. Equal FLOPs do not mean equal time anyway: at
# $D = 64$ the MoE's routing, sort and unsort are of the same order as its expert matmuls. Here is
# one training step of each model, timed back to back on this machine now (lesson 06 measures the
# layer properly):

# %%
# NBVAL_IGNORE_OUTPUT
timed = {name: seconds_per_step(LESSON05_RUNS[name][0], live_config, data, steps=3, warmup=1)
         for name in ("dense", "moe", "dense_total")}
for name, seconds in timed.items():
    print(f"{name:>12}: {1e3 * seconds:6.0f} ms per step ({seconds / timed['dense']:.1f}x dense)")

# %% [markdown]
# ## 7. The capacity factor: drop rate vs quality
#
# With a capacity factor $c$, each expert takes at most $C = \lceil c N K / E \rceil$ assignments per
# batch; the rest are dropped and the token goes on through the residual connection alone. The
# sweep trained the same MoE with $c \in \{0.5, 1, 1.25, 2\}$ and dropless, and evaluated each with
# the capacity it was trained with.

# %%
# NBVAL_CHECK_OUTPUT
sweep = capacity_sweep_table([logs[n] for n in LESSON05_RUNS if n.startswith("moe")])
dropless = logs["moe"]["evals"][-1]["val_loss"]
moe_spread = max(seeded["moe"]) - min(seeded["moe"])  # the dropless MoE's range over 3 seeds
print(f"{'capacity':>9} {'drop rate':>10} {'val loss':>9} {'- dropless':>11}  beyond the seed spread?")
for row in sweep:
    gap = row.val_loss - dropless
    print(f"{row.label:>9} {row.drop_rate:>10.3f} {row.val_loss:>9.3f} {gap:>+11.3f}  "
          f"{'yes' if abs(gap) > moe_spread else 'no'}")
print(f"(one seed per capacity; the seed spread is the dropless MoE's over 3 seeds: {moe_spread:.3f})")

# %%
# NBVAL_IGNORE_OUTPUT
capacity_sweep_figure(sweep)

# %% [markdown]
# A second view, live: take the **dropless-trained** model and evaluate it at each capacity
# (`set_capacity_factor`), on the same validation windows and batches as the training runs' own
# evaluations (so its dropless line repeats the `moe` run's final loss). Compare with the table
# above: a model trained with drops has learned to live with them (the router, and the residual
# stream that carries a dropped token on); a capacity imposed only at inference finds no such
# adaptation.

# %%
# NBVAL_CHECK_OUTPUT
moe = load_checkpoint(RESULTS_DIR / "moe.pt")
valid = eval_batches(data.valid, batch_size=32, seq_len=128, max_windows_per_language=4)
print(f"{'capacity':>9} {'drop rate':>10} {'val loss':>9}")
for factor in (0.5, 1.0, 1.25, 2.0, None):
    moe.set_capacity_factor(factor)
    val_loss, drop_rate, _ = evaluate(moe, valid, data.languages)
    print(f"{'dropless' if factor is None else factor:>9} {drop_rate:>10.3f} {val_loss:>9.3f}")
moe.set_capacity_factor(None)


# %% [markdown]
# ## 8. Do the experts specialise? By language, or by token type?
#
# ### Build: mutual information
#
# Write `mutual_info(counts)`: a count table $(L, E)$ in, $I(L; E)$ in **bits** out. Empty cells
# contribute 0 ($0 \log 0 = 0$).

# %%
def mutual_info(counts):
    """counts (L, E) of (label, expert) assignments -> I(L; E) in bits (a float)."""
    raise NotImplementedError("your code here")


# %%
ok_mi = check_mutual_information(mutual_info)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def mutual_info_solution(counts):
    p = counts / counts.sum()  # (L, E) joint
    p_label = p.sum(dim=1, keepdim=True)  # (L, 1)
    p_expert = p.sum(dim=0, keepdim=True)  # (1, E)
    nonzero = p > 0
    # I = sum p(l,e) log2( p(l,e) / (p(l) p(e)) ) over the non-empty cells
    return float((p[nonzero] * torch.log2(p[nonzero] / (p_label * p_expert)[nonzero])).sum())


solution_passed = check_mutual_information(mutual_info_solution)

# %% [markdown]
# **In the package:** `moe_lab.lm.specialisation.mutual_information`.
#
# Now the trained MoE on 8 validation windows per language (up to 1,024 bytes each). For every real
# token and layer we keep its 2 experts, its language and its byte class. The **random router**
# baseline gives the same expert choices to randomly shuffled tokens: same expert loads, no
# dependence on the token, and the small positive $I$ that a finite sample always shows.

# %%
# NBVAL_CHECK_OUTPUT
mi_fn = mutual_info if ok_mi else mutual_information
trace = collect_routing(moe, eval_batches(data.valid, 32, 128, max_windows_per_language=8))
report = specialisation_report(trace, data.languages, num_experts=8)
print(f"{len(trace.token_ids)} tokens; H(language) = {report.h_language:.2f} bits, "
      f"H(byte class) = {report.h_byte_class:.2f} bits, H(expert) <= log2(8) = 3 bits")
print("your MI on layer 0 matches:",
      abs(mi_fn(report.layers[0].language_counts) - report.layers[0].mi_language) < 1e-6)
for row in report.table():
    print(row)

# %%
# NBVAL_IGNORE_OUTPUT
specialisation_heatmap_figure([s.language_counts for s in report.layers], data.languages)

# %%
# NBVAL_IGNORE_OUTPUT
specialisation_heatmap_figure([s.byte_class_counts for s in report.layers], BYTE_CLASSES,
                              title="share of each byte class's tokens per expert")

# %% [markdown]
# **Language and byte class are confounded**: Korean, Hindi or Persian text is almost all
# multi-byte bytes, English almost all letters and spaces. An expert that takes "multi-byte
# continuation bytes" will look like a non-Latin-language expert. The conditional informations
# separate the two: $I(\text{lang}; E \mid \text{class})$ is what the language adds once the byte
# class is known, $I(\text{class}; E \mid \text{lang})$ what the byte class adds within a language.

# %%
# NBVAL_CHECK_OUTPUT
for s in report.layers:
    print(f"layer {s.layer}: I(lang;E) = {s.mi_language:.3f} bits "
          f"(random {s.baseline_mi_language:.3f}), I(class;E) = {s.mi_byte_class:.3f} bits "
          f"(random {s.baseline_mi_byte_class:.3f})")
    print(f"         I(lang;E | class) = {s.mi_language_given_class:.3f}, "
          f"I(class;E | lang) = {s.mi_class_given_language:.3f}, "
          f"share of H(class) explained: {s.mi_byte_class / report.h_byte_class:.0%}, "
          f"of H(lang): {s.mi_language / report.h_language:.0%}")

# %% [markdown]
# A third label settles it: the **writing system**. At the byte level the script is visible in
# every token (Hangul, Cyrillic and Devanagari bytes come from different UTF-8 ranges), so an
# expert can "know" the script without knowing any language. $I(\text{script}; E)$ and
# $I(\text{lang}; E \mid \text{script})$, what the language adds beyond its script:

# %%
# NBVAL_CHECK_OUTPUT
for s in report.layers:
    print(f"layer {s.layer}: I(script;E) = {s.mi_script:.3f} of I(lang;E) = {s.mi_language:.3f} "
          f"bits ({s.mi_script / s.mi_language:.0%}); I(lang;E | script) = "
          f"{s.mi_language_given_script:.3f} bits")
latin = torch.tensor([SCRIPTS[lang] == "Latin" for lang in data.languages])[trace.language_ids]
latin_report = specialisation_report(trace.subset(latin), data.languages, num_experts=8)
print(f"Latin-script languages only ({int(latin.sum())} tokens, "
      f"H(language) = {latin_report.h_language:.2f} bits):")
for s in latin_report.layers:
    print(f"layer {s.layer}: I(lang;E) = {s.mi_language:.3f} (random {s.baseline_mi_language:.3f}),"
          f" I(class;E) = {s.mi_byte_class:.3f} (random {s.baseline_mi_byte_class:.3f})")

# %% [markdown]
# **Verdict: token type, not language.** Routing is far from random: the trained router's
# information about both labels is a hundred times the random router's, or more. But the
# "language" information is almost all **script**: once the writing system is known, the
# language adds a few hundredths of a bit, and among the twelve Latin-script languages the expert
# choice says next to nothing about whether the text is English, Dutch or Yoruba, while it still
# says a lot about whether a byte is a letter, a space or punctuation. The first layer sorts bytes
# mostly by byte class, the second mostly by script (look at the heatmaps: Cyrillic, Han and
# Japanese, Devanagari each have their favourite experts; the Latin languages share one pattern).
# A byte's script is a property of the token itself, so this is the ST-MoE finding, token-type
# specialisation, seen through a byte-level tokenizer; it is not specialisation by language.

# %% [markdown]
# ## 9. Visualise: the routing explorer, on the trained model
#
# The explorer of lesson 03, fed by the trained model (`moe_lab.viz.lm.lm_route_fn`): type text in
# any language and see each byte's experts, layer by layer. The model's $K$ is fixed, so the
# $K$ and noise sliders are hidden. Try `Hello, world! 123`, `안녕하세요`, `Привет, мир`, `नमस्ते`.

# %%
# NBVAL_IGNORE_OUTPUT
explorer = RoutingExplorer(lm_route_fn(moe), num_experts=8, top_k=2, show_top_k=False,
                           show_noise=False, text="Hello, world! 안녕하세요 123.")
explorer

# %% [markdown]
# ## 10. Summary
#
# The measured results of this lesson's shipped runs, printed from their logs:

# %%
# NBVAL_CHECK_OUTPUT
final = {name: log["evals"][-1] for name, log in logs.items()}
print(f"val loss, dense (active = MoE):  {final['dense']['val_loss']:.3f} nats/byte")
print(f"val loss, MoE top-2 of 8:        {final['moe']['val_loss']:.3f}")
print(f"val loss, dense (total = MoE):   {final['dense_total']['val_loss']:.3f}")
print("3 seeds:", moe_vs_dense.verdict("dense", "MoE"))
print("3 seeds:", total_vs_moe.verdict("MoE", "dense_total"))
print("capacity sweep (drop rate, val loss):",
      [(r.label, round(r.drop_rate, 3), round(r.val_loss, 3)) for r in sweep])
print("I(lang;E) per layer:", [round(s.mi_language, 3) for s in report.layers],
      " random:", [round(s.baseline_mi_language, 3) for s in report.layers])
print("I(class;E) per layer:", [round(s.mi_byte_class, 3) for s in report.layers],
      " random:", [round(s.baseline_mi_byte_class, 3) for s in report.layers])

# %% [markdown]
# - A transformer takes an MoE FFN with one change to its loss: add the auxiliary losses, computed
#   per layer over real tokens only and **averaged** over layers.
# - At equal active compute the MoE reached a lower validation loss than the dense model on each
#   of three seeds, and the dense model with the MoE's total parameters a lower one still; the
#   verdicts above say which of these gaps exceed the seed spread (at this scale the MoE's lead
#   over the dense model does not). Read it as the expected direction, not a measured advantage:
#   sparse capacity is cheaper capacity, not free capacity. On a CPU at this size the MoE is
#   slower per step.
# - Capacity: at a capacity factor of 0.5 half the assignments are dropped and the loss is worse
#   by several times the seed spread; at 1.0 about a tenth are dropped (the load is never
#   perfectly even) and the cost still exceeds the seed spread; at 1.25 it no longer does, and
#   from 2.0 on nothing is dropped and the loss matches the dropless run to within the seed
#   spread. A dropless model evaluated at a capacity it never trained with suffers more than a
#   model trained with it.
# - Specialisation: routing is strongly non-random, but by byte class (first layer) and by script
#   (second layer), not by language: within a script the language adds almost nothing. That is
#   ST-MoE's token-type finding. Measure against a random router, and separate confounded labels
#   with conditional information, before telling a story about a heatmap.

# %% [markdown]
# ## 11. Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/05.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package, and short answers reveal a model answer once you have written yours. The English /
# 한국어 buttons switch the language. A viewer without a kernel shows the questions with each
# answer in a collapsed block.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(5)

# %% [markdown]
# ## 12. Exercises and interview questions
#
# 1. Add two more seeds to the three of section 6, e.g. `python -m moe_lab.train --runs dense moe
#    --seeds 3 4 --out /tmp/l05_seeds`, and compare all five with `compare_seeds`: does the
#    dense-MoE gap now exceed the seed-to-seed spread?
# 2. Train with `aux_loss_coef=0`: does the load collapse in a language model as it did in the toy
#    of lesson 04? What happens to the specialisation numbers?
# 3. Repeat section 8 on an MoE with 3 layers (edit `BASE_MODEL` in
#    [`moe_lab/lm/train.py`](../moe_lab/lm/train.py), `n_layers=3`): does the last layer carry more language information
#    beyond the script, $I(\text{lang}; E \mid \text{script})$, than the first?
# 4. *Interview:* why average the auxiliary loss over layers rather than sum it?
# 5. *Interview:* a colleague shows a heatmap where Korean tokens go mostly to expert 3 and says
#    "expert 3 is the Korean expert". What would you check first?
# 6. *Interview (면접 질문):* MoE 모델이 같은 연산량의 dense 모델보다 손실이 낮은 이유는 무엇이며,
#    wall-clock 시간에서는 왜 그렇지 않을 수 있나요? (Why can an MoE beat a dense model of equal
#    FLOPs on loss but not on wall-clock time?)
#
# ## 13. Further reading
#
# - Fedus, Zoph, Shazeer (2021), [*Switch Transformers*](https://arxiv.org/abs/2101.03961): the aux loss, capacity factor, scaling at
#   equal FLOPs.
# - Zoph et al. (2022), [*ST-MoE: Designing Stable and Transferable Sparse Expert Models*](https://arxiv.org/abs/2202.08906): router
#   z-loss; section 7 on what experts specialise in (token types, not languages).
# - Lepikhin et al. (2020), [*GShard*](https://arxiv.org/abs/2006.16668): multilingual MoE translation with capacity and drops.
# - Jiang et al. (2024), [*Mixtral of Experts*](https://arxiv.org/abs/2401.04088), section 5: routing analysis by domain, where experts
#   follow syntax more than topic.
# - Conneau et al. (2020), [*XLM-R*](https://arxiv.org/abs/1911.02116), and Xue et al. (2021), [*mT5*](https://arxiv.org/abs/2010.11934): temperature sampling of languages.
