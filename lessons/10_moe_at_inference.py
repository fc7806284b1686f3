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
# # 10 · MoE at inference: few experts per token, measured where it holds and where it breaks
#
# **Goal.** The starting card's first answer says an MoE "keeps the computation almost constant
# at inference, because only a few experts are activated". That is true of the FLOPs. It is not
# always true of the time: decoding is bound by the bytes of weights it reads, and a batch of
# tokens reads every expert any of them chose. In this lesson you will
#
# 1. decode text with lesson 05's trained MoE token by token (a KV cache) and record which experts
#    each token uses in each layer: a **routing trace**; prefill against decode,
# 2. build the expected number of **distinct experts** a batch touches, and check it against
#    simulation, the traces and the load skew of the real OLMoE and Mixtral,
# 3. **time** one MoE layer of realistic width against two dense FFNs at batch 1 to 512, beside
#    this machine's measured roofline,
# 4. build an **LRU expert cache** for running an MoE with its experts offloaded, and turn hit
#    rates into tokens per second,
# 5. route the same tokens in **bf16 and fp32**, and replay a recorded routing (why RL needs it),
# 6. see a token's output depend on its **batch** when there is a capacity.
#
# Time: 40 minutes. Runs on a CPU in about a minute; uses a GPU when there is one.

# %%
# NBVAL_IGNORE_OUTPUT
import copy

import torch

import moe_lab
from moe_lab import expected_distinct_experts, seed_everything, simulate_expert_cache
from moe_lab.analysis.real_routing import load_real_routing
from moe_lab.checks.inference import check_expected_distinct_experts, check_lru_cache
from moe_lab.inference.batching import batch_dependence
from moe_lab.inference.cache import cooccurrence, prefetch_hits, static_cache_hits
from moe_lab.inference.decode import KVCache, forward_step, generate, moe_forward
from moe_lab.inference.replay import expert_sets_differ, route_in
from moe_lab.inference.timing import (
    LAYERS,
    LayerShape,
    bound_by,
    measure_bandwidth,
    measure_matmul,
    time_layers,
    timing_findings,
)
from moe_lab.inference.traffic import (
    expected_distinct_from_probs,
    offload_tokens_per_second,
    token_probs_from_counts,
)
from moe_lab.lm.data import load_lesson_data
from moe_lab.lm.tokenizer import ByteTokenizer
from moe_lab.lm.train import RESULTS_DIR, load_checkpoint
from moe_lab.systems.params import MIXTRAL_8X7B
from moe_lab.systems.threads import torch_threads
from moe_lab.viz.inference import hit_rate_figure, timing_figure, traffic_table
from moe_lab.widgets.inference import TrafficExplorer

moe_lab.print_environment()
HAS_GPU = moe_lab.pick_device().type == "cuda"  # MOE_LAB_DEVICE=cpu keeps a GPU out of it

# %% [markdown]
# ## The math
#
# **Distinct experts.** Each of $B$ tokens picks $K$ distinct experts of $E$. If the choices are
# independent and uniform, expert $i$ is in one token's set with probability $K/E$ and untouched by
# all $B$ tokens with probability $(1 - K/E)^B$, so the batch touches, on average,
#
# $$\mathbb{E}[\text{distinct}] = E\,\Big(1 - \big(1 - \tfrac{K}{E}\big)^{B}\Big)
# \qquad\text{and with a skewed load}\qquad \sum_{i=1}^{E} \big(1 - (1 - p_i)^{B}\big),$$
#
# where $p_i$ is the share of tokens whose $K$ experts include $i$ ($\sum_i p_i = K$). One token
# touches $K$; a large batch touches all $E$.
#
# **FLOPs against bytes.** One step of a SwiGLU MoE layer over $B$ tokens computes and reads
#
# $$\text{FLOPs} = 2B\,(K P_e + DE), \qquad \text{bytes} = (\mathbb{E}[\text{distinct}]\, P_e + DE)\, s,
# \qquad P_e = 3DF,$$
#
# and a **roofline** (Williams et al. 2009) bounds its time: $t \ge \max(\text{FLOPs}/\Pi,\ \text{bytes}/\beta)$.
# FLOPs follow the *active* parameters, bytes follow the experts *touched*.
#
# **Offloading.** With the experts in slow memory and room for $C$ of a layer's $E$ experts in
# fast memory, a token's $K$ lookups hit or miss; each miss copies $P_e s$ bytes over a link of
# bandwidth $\beta_{link}$, so over $L$ layers
#
# $$\text{tokens/s} \le \frac{\beta_{link}}{L K (1 - h)\, P_e s}, \qquad h = \frac{\text{hits}}{\text{hits} + \text{misses}}.$$
#
# | symbol | meaning | in code |
# |---|---|---|
# | $B$ | tokens in one forward pass (batch) | `num_tokens` |
# | $E$, $K$ | experts, experts per token | `num_experts`, `top_k` |
# | $D$, $F$ | model width, expert hidden width | `d_model`, `d_ff` |
# | $P_e$ | weights of one expert ($3DF$) | `3 * d_model * d_ff` |
# | $p_i$ | share of tokens routed to expert $i$ | `token_probs_from_counts(counts, K)` |
# | $s$ | bytes per weight (4 fp32, 2 bf16, about 0.5 at 4 bits) | `bytes_per_param` |
# | $\beta$, $\Pi$ | memory bandwidth, matmul throughput (measured) | `measure_bandwidth()`, `measure_matmul()` |
# | $C$, $h$ | experts the cache holds, hit rate | `cache_size`, `CacheResult.hit_rate` |
# | $L$ | MoE layers | `model.config.n_layers` |

# %% [markdown]
# ## 1. Decode: prefill, then one token at a time
#
# Lesson 05's MoE model (2 layers, $E = 8$ experts, $K = 2$, shipped in `moe_lab/results/lesson05`)
# continues the first 16 bytes of 8 validation texts in 8 languages. The **prefill** runs all
# prompts in one pass; each **decode step** runs one new token per sequence, its attention reading
# the earlier keys and values from a **KV cache** (`moe_lab/inference/decode.py`). Every pass
# records each MoE layer's `topk_idx`: the routing trace.

# %%
# NBVAL_CHECK_OUTPUT
seed_everything(0)
model = load_checkpoint(RESULTS_DIR / "moe.pt")
data = load_lesson_data()
tokenizer = ByteTokenizer()
LANGUAGES = ["english", "spanish", "german", "french", "russian", "korean", "chinese", "hindi"]
PROMPT_BYTES, NEW_TOKENS = 16, 112  # 16 + 112 = 128 positions, the model's max_seq_len
prompts = torch.stack([data.valid.streams[data.languages.index(lang)][:PROMPT_BYTES]
                       for lang in LANGUAGES])  # (B, P)
decoded = generate(model, prompts, NEW_TOKENS, generator=torch.Generator().manual_seed(0))
trace = decoded.trace  # (L, B, S, K)
config = model.config
print(f"model: {config.n_layers} MoE layers, E={config.num_experts} experts, K={config.top_k}, "
      f"D={config.d_model}, F={config.d_ff}")
print("trace (layers, sequences, positions, K):", tuple(trace.shape))
print("tokens routed by the prefill pass:", decoded.tokens_per_pass[0], f"(B * P = {len(LANGUAGES)} * "
      f"{PROMPT_BYTES})")
print("tokens routed by each decode step:", sorted(set(decoded.tokens_per_pass[1:])),
      f"over {len(decoded.tokens_per_pass) - 1} steps")

# the cache changes how the work is done, not the answer: one full forward pass agrees
full = model(decoded.tokens[:, :-1])
cached = forward_step(model, decoded.tokens[:, :-1], KVCache.empty(2))
with torch.no_grad():
    gap = (full.logits - cached.logits).abs().max().item()
print("full forward vs the cached code path, largest logit gap < 1e-4:", gap < 1e-4)
same = all(torch.equal(full.routing[layer].topk_idx.view(trace.shape[1:]), trace[layer])
           for layer in range(trace.shape[0]))
print("full forward routes every position as the decode trace did:", same)

# %%
# NBVAL_IGNORE_OUTPUT
# (sampled text: the same on one machine, and may differ in a letter elsewhere)
for language, row in zip(LANGUAGES[:3], decoded.tokens, strict=False):
    print(f"{language:>8}: {tokenizer.decode(row)[:110]!r}")

# %% [markdown]
# A 2-layer byte model writes babble in the prompt's script; what matters here is the trace. The
# prefill routes a whole batch of prompts at once: every expert is busy. A decode step routes only
# $B$ tokens (1 for a single user), so each expert sees a token or none: the matmuls shrink to
# vector-matrix products, and the time goes to reading the chosen experts' weights.

# %% [markdown]
# ## 2. Build: how many experts does a batch touch?
#
# Write `expected_distinct_experts(num_experts, top_k, num_tokens)`: the expected number of
# distinct experts that $B$ tokens, each routed to $K$ of $E$ experts independently and uniformly,
# touch (the formula in the math section; return a Python float).

# %%
def expected_distinct_experts_mine(num_experts, top_k, num_tokens):
    """E, K, B -> the expected number of distinct experts touched (a float)."""
    # the chance that one expert is untouched by all B tokens, then E times its complement
    raise NotImplementedError("your code here")


# %%
ok_distinct = check_expected_distinct_experts(expected_distinct_experts_mine)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def expected_distinct_experts_mine_solution(num_experts, top_k, num_tokens):
    untouched = (1 - top_k / num_experts) ** num_tokens  # P(expert i in no token's K)
    return num_experts * (1 - untouched)


solution_passed = check_expected_distinct_experts(expected_distinct_experts_mine_solution)

# %% [markdown]
# **In the package:** `moe_lab.inference.expected_distinct_experts` (also `moe_lab.expected_distinct_experts`).
#
# ### The formula against simulation
#
# Route $B$ tokens uniformly at random (each picks $K$ distinct experts) over 2000 seeds and count
# the distinct experts; the mean must match the formula within the simulation's standard error.

# %%
# NBVAL_CHECK_OUTPUT
distinct_fn = expected_distinct_experts_mine if ok_distinct else expected_distinct_experts
generator = torch.Generator().manual_seed(0)
for num_experts, top_k, num_tokens in [(8, 2, 1), (8, 2, 8), (64, 8, 8), (64, 8, 64), (128, 8, 32)]:
    counts = []
    for _ in range(2000):
        picks = torch.rand(num_tokens, num_experts, generator=generator).argsort(-1)[:, :top_k]
        counts.append(picks.unique().numel())
    counts = torch.tensor(counts, dtype=torch.float64)
    error = counts.std().item() / len(counts) ** 0.5
    formula = distinct_fn(num_experts, top_k, num_tokens)
    within = abs(counts.mean().item() - formula) <= 4 * error + 1e-9
    print(f"E={num_experts:3d} K={top_k} B={num_tokens:3d}: formula {formula:7.3f}, simulated "
          f"{counts.mean().item():7.2f}, within 4 standard errors: {within}")

# %% [markdown]
# ### The formula against the trained model and the real models
#
# The trained model's loads are not uniform, and neither are OLMoE's and Mixtral's (lesson 09).
# With a skew, popular experts are hit again and again, so fewer distinct experts are touched than
# the uniform formula says; the skewed form $\sum_i 1 - (1 - p_i)^B$ takes the measured $p_i$.
# Below: the mean number of distinct experts per decode step of the trace ($B = 8$ sequences), and
# the two formulas with the trace's own $p_i$; then the real models' counts on C4 (layer 7).

# %%
# NBVAL_CHECK_OUTPUT
num_layers, batch, _, top_k = trace.shape
decode_trace = trace[:, :, PROMPT_BYTES:]  # (L, B, new - 1, K): the decode steps
for layer in range(num_layers):
    per_step = [decode_trace[layer, :, step].unique().numel() for step in range(decode_trace.shape[2])]
    counts = torch.bincount(trace[layer].reshape(-1), minlength=8)  # (E,)
    p = token_probs_from_counts(counts, top_k)
    measured = sum(per_step) / len(per_step)
    uniform, skewed = expected_distinct_experts(8, top_k, batch), expected_distinct_from_probs(p, batch)
    print(f"layer {layer}: busiest expert p_i = {p.max().item():.2f}, quietest {p.min().item():.2f};"
          f" distinct per step at B={batch}: measured {measured:.2f}, "
          f"uniform formula {uniform:.2f}, skewed formula {skewed:.2f}")
    print(f"         measured {'above' if measured > skewed else 'below'} the skewed formula, "
          f"{'above' if measured > uniform else 'below'} the uniform one")
real = load_real_routing()
for routing in real.values():
    p = token_probs_from_counts(routing.expert_counts["c4"][routing.layer_index(7)], routing.top_k)
    cells = ", ".join(f"B={b}: {expected_distinct_experts(routing.num_experts, routing.top_k, b):.1f}"
                      f" uniform / {expected_distinct_from_probs(p, b):.1f} skewed" for b in (1, 8, 64))
    print(f"{routing.model} (E={routing.num_experts}, K={routing.top_k}): {cells}")

# %% [markdown]
# Read the lines: the skew puts the skewed formula below the uniform one. The measured count lies
# above the skewed formula in both layers: the 8 tokens of one step come from 8 languages whose
# favourite experts differ, which spreads them over more experts than 8 independent draws from the
# pooled skew would (the skewed formula assumes independent tokens). It can even exceed the
# uniform formula: 8 tokens that tend to avoid each other's experts touch more of them than 8
# independent draws would (the second line of each layer says on which side it lies). For the
# real models the skew barely matters: at $B = 64$ OLMoE already touches nearly all of its 64
# experts, and Mixtral nearly all of its 8 at $B = 8$. So **beyond a handful of tokens, a decode
# step reads every expert of every layer**: the bytes of the *total* parameters.

# %% [markdown]
# ## 3. Visualise: batch size and top-k against experts, bytes and FLOPs
#
# The widget takes a Mixtral-8x7B layer ($D = 4096$, $F = 14336$, bf16) and lets you change $E$,
# $K$ and $B$: the left panel is the expected number of experts touched, the right one the FLOPs
# per byte of weights read, for the MoE and for a dense FFN of the same total size. The MoE's
# intensity stays low until every expert is touched, and only then grows with $B$.

# %%
# NBVAL_IGNORE_OUTPUT
TrafficExplorer(num_experts=8, top_k=2)

# %%
# NBVAL_CHECK_OUTPUT
table = traffic_table(8, 2)  # Mixtral-8x7B's layer, bf16, uniform routing
for b in (1, 8, 64, 512):
    i = table.batch_sizes.index(b)
    print(f"B={b:3d}: experts touched {table.distinct[i]:5.2f}, weights read {table.moe_mb[i]:6.0f} MB,"
          f" {table.moe_gflops[i]:7.2f} GFLOPs (dense of the same total: {table.dense_total_mb[i]:.0f} MB,"
          f" {table.dense_total_gflops[i]:.2f} GFLOPs)")

# %% [markdown]
# ## 4. Measured, not argued: one layer against two dense FFNs
#
# Three layers of width $D = 1024$, timed forward at $B = 1, 8, 64, 512$ tokens:
#
# - **moe**: $E = 16$ experts of $F = 1024$, $K = 2$ (`SparseMoE`, sorted dispatch): about 200 MB of
#   fp32 weights (the cell prints it),
# - **dense active**: one SwiGLU FFN of width $KF$: the MoE's active parameters (and FLOPs),
# - **dense total**: one FFN of width $EF$: the MoE's total parameters (and bytes).
#
# Before each timed call a 128 MiB buffer is written, so the weights come from memory, not from
# the CPU's cache, as they would in a model whose other layers run in between. The roofline uses
# this machine's copy bandwidth and matmul throughput, measured in the same cell. The cell runs on
# one thread: on a shared machine, several threads spin-wait for each other on small matmuls
# (`moe_lab.systems.threads`). Each time is the median of 5 interleaved repeats with its quartiles;
# a ratio counts only when the quartile ranges do not overlap, and the lines under the table say
# which comparisons held, worded from the numbers.

# %%
# NBVAL_IGNORE_OUTPUT
shape = LayerShape(d_model=1024, d_ff=1024, num_experts=16, top_k=2)
for layer in LAYERS:
    print(f"{layer:>12}: {shape.weight_megabytes(layer):6.1f} MB of fp32 weights")
with torch_threads(1):
    bandwidth, matmul = measure_bandwidth(), measure_matmul()
    print(f"this machine (1 thread): copy bandwidth {bandwidth.median:.1f} GB/s "
          f"(quartiles {bandwidth.q1:.1f}-{bandwidth.q3:.1f}), fp32 matmul {matmul.median:.0f} GFLOP/s "
          f"(quartiles {matmul.q1:.0f}-{matmul.q3:.0f})")
    rows = time_layers(shape, (1, 8, 64, 512), bandwidth_gbs=bandwidth.median,
                       matmul_gflops=matmul.median, repeats=5)
print(f"{'layer':>12} {'B':>4} {'median ms':>10} {'quartiles':>17} {'roofline ms':>11}  bound by")
for row in rows:
    spread = row.spread
    print(f"{row.layer:>12} {row.num_tokens:4d} {spread.median:10.2f} "
          f"{spread.q1:8.2f}-{spread.q3:<8.2f} {row.roofline_ms:11.2f}  "
          f"{bound_by(row, bandwidth_gbs=bandwidth.median, matmul_gflops=matmul.median)}")
noisiest = max(rows, key=lambda r: r.spread.relative_iqr)
print(f"noise: the widest quartile range is {100 * noisiest.spread.relative_iqr:.0f} % of its median "
      f"({noisiest.layer}, B={noisiest.num_tokens})")
for line in timing_findings(rows):
    print(line)

# %%
# NBVAL_IGNORE_OUTPUT
timing_figure(rows, title="one layer, forward, this machine (fp32, 1 thread): measured and roofline")

# %% [markdown]
# What to read (the table and the lines under it are this machine's; the roofline column says
# what the bytes and FLOPs alone allow):
#
# - **Batch 1.** All three layers are memory-bound. The MoE reads its $K$ experts, the bytes of
#   *dense active* (the two roofline values are nearly equal), and beats *dense total*: here the
#   card's claim holds, because memory traffic follows the active parameters. Its measured time
#   sits above its roofline by the routing overhead (router, sort, a grouped GEMM over $E$ groups,
#   gather and scatter), which on a small, busy CPU can be several times the bare matmuls; the
#   first line under the table says by how much it trailed *dense active* here.
# - **Batch 8 and 64.** The batch touches most of the 16 experts (the formula gives the count),
#   so the MoE reads nearly the bytes of *dense total* while computing the FLOPs of *dense
#   active*: its roofline climbs to *dense total*'s, its lead over that layer shrinks, and it
#   stays well behind the layer of the same active size.
# - **Batch 512.** Every expert is touched and the work is compute-bound: the MoE does the FLOPs
#   of *dense active*, $E/K$ times fewer than *dense total*, but at a lower matmul efficiency
#   (small per-expert segments, gather and scatter).
#
# This is the result nanochat reported for training ([karpathy/nanochat#798](https://github.com/karpathy/nanochat/pull/798)):
# at its small "speedrun" scale an MoE improves loss per FLOP but loses on wall-clock time,
# because a "memory-traffic tax of sparse experts" of about 1.3-1.6x exceeds the compute gain of
# about 1.1x. Same FLOPs is not same time; [megablocks#166](https://github.com/databricks/megablocks/issues/166)
# reports the same surprise ("MoE uses much more memory than dense model and is substantially
# slower"). An MoE pays off when the model's quality per active FLOP is worth its total bytes:
# at small batch (memory-bound decoding, where it reads only $K$ experts) or at scale, where
# expert parallelism spreads the bytes over many devices (lesson 07).

# %%
# NBVAL_IGNORE_OUTPUT
if HAS_GPU:
    gpu_shape = LayerShape(d_model=4096, d_ff=2048, num_experts=16, top_k=2, bytes_per_param=2)
    gpu_bw = measure_bandwidth(2**30, device="cuda")
    gpu_mm = measure_matmul(8192, device="cuda", dtype=torch.bfloat16)
    print(f"GPU: copy bandwidth {gpu_bw.median:.0f} GB/s, bf16 matmul {gpu_mm.median:.0f} GFLOP/s")
    gpu_rows = time_layers(gpu_shape, (1, 8, 64, 512, 4096), bandwidth_gbs=gpu_bw.median,
                           matmul_gflops=gpu_mm.median, repeats=20, warmup=3, device="cuda",
                           dtype=torch.bfloat16, flush_bytes=2**30)
    for row in gpu_rows:
        print(f"{row.layer:>12} B={row.num_tokens:5d}: {row.spread.median:8.3f} ms "
              f"(quartiles {row.spread.q1:.3f}-{row.spread.q3:.3f}), roofline {row.roofline_ms:.3f} ms")
    for line in timing_findings(gpu_rows):
        print(line)
else:
    print("No CUDA GPU in this session: the same cell times the layers in bf16 on a GPU.")

# %% [markdown]
# ## 5. Build: an expert cache for offloaded experts
#
# A model too large for the GPU can keep its experts in CPU memory and copy in the ones a token
# needs (llama.cpp's [`--n-cpu-moe`](https://github.com/ggml-org/llama.cpp/pull/15077) keeps the
# expert weights of the first N layers on the CPU; Eliseev & Mazur 2023 cache experts on the GPU
# with LRU eviction). Write `lru_cache(trace, cache_size)` for one layer's trace (T, K) of expert
# ids in token order: for each token, look up each of its K experts in turn (a hit if resident,
# else a miss that loads it); when the cache is full, a load evicts the **least recently used**
# resident expert that the current token does not need (an expert is used when it is looked up),
# so that after the token its K experts are all resident. Return `(hits, misses)`.

# %%
def lru_cache(trace, cache_size):
    """trace (T, K) expert ids, cache_size C >= K -> (hits, misses) of an LRU cache."""
    # keep the resident experts in use order, e.g. collections.OrderedDict
    raise NotImplementedError("your code here")


# %%
ok_lru = check_lru_cache(lru_cache)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def lru_cache_solution(trace, cache_size):
    from collections import OrderedDict

    resident = OrderedDict()  # expert -> None, least recently used first
    hits = misses = 0
    for token in trace.tolist():
        for expert in token:
            if expert in resident:
                hits += 1
            else:
                misses += 1
                if len(resident) >= cache_size:  # evict the oldest the token does not need
                    del resident[next(e for e in resident if e not in token)]
                resident[expert] = None
            resident.move_to_end(expert)  # just used
    return hits, misses


solution_passed = check_lru_cache(lru_cache_solution)

# %% [markdown]
# **In the package:** `moe_lab.inference.simulate_expert_cache` (also `moe_lab.simulate_expert_cache`;
# `policy="lfu"` evicts the least often used).
#
# ## 6. One GPU, offloaded experts: hit rates on the traces
#
# One user decoding alone: each sequence's trace runs through its own cold cache, layer by layer,
# and the hits and misses add up over the 8 sequences. Beside LRU: **LFU** (evict the expert used
# least often so far) and a **static** cache that keeps the $C$ experts most used in the trace (an
# oracle: it knows the counts in advance).

# %%
# NBVAL_CHECK_OUTPUT
lru_fn = lru_cache if ok_lru else (lambda t, c: (simulate_expert_cache(t, c).hits,
                                                 simulate_expert_cache(t, c).misses))
CACHE_SIZES = list(range(2, 9))
hit_rates = {}
for layer in range(num_layers):
    for policy in ("lru", "lfu", "static"):
        rates = []
        for cache_size in CACHE_SIZES:
            results = [static_cache_hits(trace[layer, b], cache_size) if policy == "static"
                       else simulate_expert_cache(trace[layer, b], cache_size, policy)
                       for b in range(batch)]
            rates.append(sum(r.hits for r in results) / sum(r.lookups for r in results))
        hit_rates[f"layer {layer} {policy}"] = rates
        print(f"layer {layer} {policy:>6}: " + " ".join(f"C={c}: {100 * h:4.1f}%"
                                                      for c, h in zip(CACHE_SIZES, rates, strict=True)))
mine = [lru_fn(trace[0, b], 4) for b in range(batch)]
print("your lru_cache agrees with the package at C=4, layer 0:",
      sum(h for h, _ in mine) / sum(h + m for h, m in mine) == hit_rates["layer 0 lru"][2])

# %%
# NBVAL_IGNORE_OUTPUT
hit_rate_figure(hit_rates, CACHE_SIZES, title="hit rate against cache size, per layer (E = 8, K = 2)")

# %% [markdown]
# Even with all 8 experts resident the hit rate stays below 100 %: each expert's first use is a
# cold miss. The static cache beats LRU and LFU at every size: the load is skewed, and knowing
# which experts are popular is worth more than recency. Real engines build such a set from
# calibration traffic (like the placement of lesson 09).
#
# **Prefetching by the previous layer's routing.** While layer 0 computes, could we copy in the
# experts layer 1 will need? Count, on the first half of the sequences, how often expert $i$ at
# layer 0 comes with expert $j$ at layer 1; on the other half, prefetch the $P$ experts with the
# largest counts given the token's layer-0 experts, and compare with prefetching the $P$ most used
# experts of layer 1 (no per-token information).

# %%
# NBVAL_CHECK_OUTPUT
half = batch // 2
calibration = [trace[layer, :half].reshape(-1, top_k) for layer in range(2)]  # (T, K) each
held_out = [trace[layer, half:].reshape(-1, top_k) for layer in range(2)]
table = cooccurrence(calibration[0], calibration[1], 8)  # (E, E)
popular = torch.bincount(calibration[1].reshape(-1), minlength=8)  # (E,)
for prefetched in (2, 3, 4):
    guided = prefetch_hits(held_out[0], held_out[1], table, prefetched).hit_rate
    by_popularity = static_cache_hits(held_out[1], prefetched, popular).hit_rate
    print(f"prefetch {prefetched} of 8: by layer 0's routing {100 * guided:4.1f}% of layer 1's "
          f"lookups, by popularity {100 * by_popularity:4.1f}%, by chance {100 * prefetched / 8:4.1f}%")

# %% [markdown]
# In this tiny model both guesses are weak (compare each with chance): the previous layer's
# routing tells little about the next layer's experts, and the experts popular in the
# calibration sequences (other languages) are not those of the held-out ones. Eliseev & Mazur
# 2023 guess better on Mixtral by
# applying the *next* layer's router to the current hidden state (their "speculative expert
# loading"): the residual stream changes little from one layer to the next.
#
# **Tokens per second on a consumer GPU.** Take Mixtral-8x7B ($L = 32$ layers, $E = 8$, $K = 2$,
# like our model) with its experts quantised to 4 bits (about 0.5 bytes per weight, scales left
# out) on a GPU behind PCIe 4.0 x16 (16 GT/s per lane, 128b/130b encoding: the
# [PCI Express](https://en.wikipedia.org/wiki/PCI_Express) specification's rate), with half of each
# layer's experts resident ($C = 4$) and our traces' hit rates standing in for Mixtral's. The bound
# counts the copies only (no compute, no overlap):

# %%
# NBVAL_CHECK_OUTPUT
pcie4_x16 = 16e9 * 128 / 130 * 16 / 8  # bytes/s: 16 GT/s per lane, 128b/130b, 16 lanes, 8 bits a byte
expert_params = 3 * MIXTRAL_8X7B.d_model * MIXTRAL_8X7B.d_ff
expert_bytes = expert_params * 0.5  # 4-bit weights
print(f"PCIe 4.0 x16: {pcie4_x16 / 1e9:.1f} GB/s; Mixtral-8x7B: L={MIXTRAL_8X7B.num_layers} layers, "
      f"E={MIXTRAL_8X7B.num_experts}, K={MIXTRAL_8X7B.top_k}; one expert: {expert_params / 1e6:.0f} M "
      f"weights, {expert_bytes / 1e6:.0f} MB at 4 bits")
for policy in ("lru", "static"):
    hit_rate = sum(hit_rates[f"layer {layer} {policy}"][2] for layer in range(2)) / 2  # C = 4
    misses_per_token = MIXTRAL_8X7B.num_layers * MIXTRAL_8X7B.top_k * (1 - hit_rate)
    rate = offload_tokens_per_second(misses_per_token, expert_bytes, pcie4_x16)
    print(f"{policy:>6} cache of 4 per layer: hit rate {100 * hit_rate:.1f}%, "
          f"{misses_per_token:.1f} expert copies per token -> at most {rate:.1f} tokens/s")
nothing = offload_tokens_per_second(MIXTRAL_8X7B.num_layers * MIXTRAL_8X7B.top_k, expert_bytes, pcie4_x16)
print(f"no cache (every lookup copied): at most {nothing:.1f} tokens/s")

# %% [markdown]
# These are upper bounds from the link alone. Eliseev & Mazur 2023 report 2-4 tokens/s for
# Mixtral-8x7B with offloading on consumer and free Colab GPUs (with 2-3-bit experts, an LRU cache
# and speculative loading): several times below these bounds, as compute, the CPU side and PCIe's
# real throughput all take their share. llama.cpp's `--n-cpu-moe` trades the other way: the
# experts of the first N layers stay in CPU memory and are *computed there* (no copy over the
# link), the rest on the GPU; more N frees GPU memory and costs speed.

# %% [markdown]
# ## 7. Precision and routing replay
#
# The same weights in two engines: the trainer in fp32, the sampler in bf16 (lesson 01's router
# stays in fp32 unless told otherwise). Route the decoded sequences in each and count, per layer,
# the tokens whose **set** of experts differs.

# %%
# NBVAL_CHECK_OUTPUT
sequences = decoded.tokens[:, :-1]  # (B, S): the positions the trace covers
logp32, trace32 = route_in(model, sequences, torch.float32)
again, trace32_again = route_in(model, sequences, torch.float32)
print("fp32 twice: tokens whose experts change:", int(expert_sets_differ(trace32, trace32_again).sum()))
print("fp32 route_in equals the decode trace:", torch.equal(trace32, trace))

# %%
# NBVAL_IGNORE_OUTPUT
# (bf16 kernels differ between CPUs: the shares below are this machine's)
logp16, trace16 = route_in(model, sequences, torch.bfloat16)
_, trace16_router16 = route_in(model, sequences, torch.bfloat16, router_dtype=torch.bfloat16)
changed = expert_sets_differ(trace32, trace16).float()  # (L, B, S)
changed_router16 = expert_sets_differ(trace32, trace16_router16).float()
for layer in range(num_layers):
    print(f"layer {layer}: experts changed for {100 * changed[layer].mean().item():.1f}% of tokens "
          f"(bf16 model, fp32 router), {100 * changed_router16[layer].mean().item():.1f}% (bf16 router too)")
print(f"in at least one layer: {100 * changed.amax(0).mean().item():.1f}% of tokens")

# %% [markdown]
# A few tokens change experts in a 2-layer model; on large models the Megatron-LM request for
# routing replay ([NVIDIA/Megatron-LM#4168](https://github.com/NVIDIA/Megatron-LM/issues/4168))
# reports that "~10% of routers disagree per forward pass" between an inference and a training
# engine with identical weights, and that 94 % of tokens differ in at least one layer: over dozens
# of layers, rare flips compound. In reinforcement learning the sampler's log-probabilities and the
# trainer's must describe the same policy (their ratio weights each token's update); a token routed
# to other experts in the trainer breaks that, and training can collapse.
#
# **Routing replay** (R3, Ma et al. 2025): record the sampler's expert ids, and in the training
# pass use those ids instead of the router's top-k. The router still computes its probabilities,
# and the replayed experts' weights are taken from them, so the router and the experts get their
# gradients (`moe_forward(layer, x, replay_idx=...)`).

# %%
# NBVAL_CHECK_OUTPUT
replay = [t.reshape(-1, top_k) for t in trace16]  # the bf16 sampler's experts, (B*S, K) per layer
layer = model.blocks[0].ffn
x = torch.randn(replay[0].shape[0], layer.d_model, generator=torch.Generator().manual_seed(1))
y, routing = moe_forward(layer, x, replay_idx=replay[0])
y.pow(2).sum().backward()
print("the replayed pass used the recorded experts:", torch.equal(routing.topk_idx, replay[0]))
print("gradient reaches the router:", bool(layer.router.weight.grad.abs().sum() > 0),
      "| and the experts:", bool(layer.experts.w_up.grad.abs().sum() > 0))
model.zero_grad()

# %%
# NBVAL_IGNORE_OUTPUT
logp32_replayed, _ = route_in(model, sequences, torch.float32, replay=replay)
targets = decoded.tokens[:, 1:].unsqueeze(-1)  # (B, S, 1): the sampled tokens


def token_logp(logp):
    return logp.gather(-1, targets).squeeze(-1)  # (B, S)


flipped = expert_sets_differ(trace32, trace16).any(0)  # (B, S): tokens routed differently
for name, trainer in (("own routing", logp32), ("replayed routing", logp32_replayed)):
    gap = (token_logp(trainer) - token_logp(logp16)).abs()
    print(f"fp32 trainer, {name:>16}: mean |log p_train - log p_sampler| on the tokens whose experts "
          f"changed {gap[flipped].mean().item():.4f}, on the others {gap[~flipped].mean().item():.4f}")

# %% [markdown]
# With replay, the tokens whose experts had changed get the sampler's experts back, and their
# log-probability gap shrinks toward that of the other tokens (the rest of the gap is bf16's
# rounding everywhere else).

# %% [markdown]
# ## 8. Batch dependence: a capacity makes a token's output depend on its neighbours
#
# With a capacity factor $c$, each expert takes at most $C = \lceil c N K / E \rceil$ assignments and
# drops the rest in token order (lesson 02). Run layer 0 of the trained model on the 8 decoded
# sequences once as one batch, and once per sequence alone, and count the tokens whose output
# changed.

# %%
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    hidden = model.embed(sequences) + model.pos_embed[:sequences.shape[1]]  # (B, S, D)
    ffn_input = model.blocks[0].norm_ffn(hidden + model.blocks[0].attn(model.blocks[0].norm_attn(hidden)))
for capacity_factor in (None, 2.0, 1.25, 1.0):
    capped = copy.deepcopy(model.blocks[0].ffn)
    capped.capacity_factor = capacity_factor
    result = batch_dependence(capped, ffn_input, atol=1e-4)
    print(f"capacity_factor={capacity_factor}: output changed for {100 * result.changed:3.0f}% of tokens;"
          f" dropped {100 * result.dropped_alone:3.0f}% alone, {100 * result.dropped_batched:3.0f}% batched")

# %% [markdown]
# Dropless routing gives every token the same output alone or batched; with a capacity, a
# token's output depends on which requests share its batch. A server would answer the same prompt
# differently depending on its other users, and its outputs would not be reproducible. That is
# why inference engines run MoE layers **dropless** (vLLM's and SGLang's fused MoE kernels take
# every assignment). Expert choice (lesson 08) is worse still for decoding: an expert picks its
# top tokens *across the batch*, so a token's experts depend on the tokens that come after it.

# %% [markdown]
# ## Summary
#
# - Per token, an MoE's FLOPs follow its **active** parameters; per forward pass, its bytes follow
#   the experts **touched**, $E(1 - (1 - K/E)^B)$: $K$ at $B = 1$, all $E$ within a few dozen
#   tokens. A skewed load touches fewer.
# - **Batch 1** (one user decoding): memory-bound, and the MoE reads only its $K$ experts: the
#   card's "only a few experts run" holds, and it is the *bytes* that make it hold.
#   **Large batches**: every expert is read, the MoE reads like a dense model of its total size
#   and computes like one of its active size, at lower matmul efficiency: per FLOP it is slower
#   than dense, as nanochat found.
# - **Offloading**: an expert cache turns hit rates into tokens per second over a link; skewed
#   loads favour keeping the popular experts.
# - **Precision**: bf16 and fp32 engines route some tokens differently; RL replays the sampler's
#   routing in the trainer (R3) so both describe one policy.
# - **Serving is dropless**: with a capacity, a token's output depends on its batch.

# %% [markdown]
# ## Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/10.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package. The English / 한국어 buttons switch the language.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(10)

# %% [markdown]
# ## Exercises and interview questions
#
# 1. Change `LayerShape` in section 4 to $E = 64$, $K = 8$ with $F = 256$ (the same total and
#    active bytes, finer experts): at which batch size does the MoE lose its lead now?
# 2. Run section 6 with `policy="lfu"` traces concatenated over all 8 sequences (one long user
#    session): does LFU overtake LRU?
# 3. Interview: "Why is batch-1 MoE decoding memory-bound, and what changes at batch 512?"
#    (One token does $2KP_e$ FLOPs on $KP_e s$ bytes: a few FLOPs per byte, far below any
#    machine's FLOP/byte ratio. At 512 every expert is read once and used by $512K/E$ tokens each:
#    compute-bound, and the MoE now reads its total parameters.)
# 4. Interview: "What does llama.cpp's `--n-cpu-moe` trade?" (GPU memory against speed: the experts
#    of N layers stay in CPU memory and run on the CPU, which reads them at the CPU's memory
#    bandwidth; attention and the other layers stay on the GPU.)
# 5. Interview: "Your MoE serves slower than a dense model with the same active parameters. Why,
#    and when would it not?"
# 6. Interview: "Why does RL on an MoE need routing replay, and what still gets gradients?"
#
# ## Further reading
#
# - Eliseev & Mazur 2023, [*Fast Inference of Mixture-of-Experts Language Models with Offloading*](https://arxiv.org/abs/2312.17238) (LRU expert cache, speculative expert loading).
# - llama.cpp, [`--cpu-moe` / `--n-cpu-moe`](https://github.com/ggml-org/llama.cpp/pull/15077) (expert weights of the first N layers kept on the CPU).
# - Ma et al. 2025, [*Stabilizing MoE Reinforcement Learning by Aligning Training and Inference Routers*](https://arxiv.org/abs/2510.11370) (R3, rollout routing replay), and [NVIDIA/Megatron-LM#4168](https://github.com/NVIDIA/Megatron-LM/issues/4168).
# - [karpathy/nanochat#798](https://github.com/karpathy/nanochat/pull/798): MoE better per FLOP, slower per wall-clock second at small scale; [databricks/megablocks#166](https://github.com/databricks/megablocks/issues/166).
# - Williams, Waterman & Patterson 2009, [*Roofline: an insightful visual performance model*](https://doi.org/10.1145/1498765.1498785); the [JAX scaling book's roofline chapter](https://jax-ml.github.io/scaling-book/roofline/).
# - Kwon et al. 2023, [*Efficient Memory Management for LLM Serving with PagedAttention*](https://arxiv.org/abs/2309.06180) (vLLM, the KV cache in serving).
