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
# # 00 · Start here: what an MoE layer stores, and what it runs
#
# **Goal.** Check your environment, build the dense feed-forward block that every Mixture-of-Experts
# (MoE) layer replaces, and learn the one number that makes MoE attractive: an MoE model *stores*
# many more parameters than it *runs* per token. By the end you can compute Mixtral 8x7B's
# 46.7B total and 12.9B active parameters yourself.
#
# **How this course works.** Each lesson has the math, then a **Build** step: a function stub for you
# to fill in and a checker (`check_...`) that runs it on small seeded inputs and explains a wrong
# answer. Until you fill a stub in, the checker says *not implemented yet* and the lesson goes on
# with the `moe_lab` package's implementation, so every notebook runs top to bottom. Solutions sit in
# collapsed cells (click to expand). Everything you build lives in the `moe_lab` package, which the
# later lessons import.
#
# | lesson | builds |
# |---|---|
# | 00 | environment, dense FFN, total vs active parameters and FLOPs |
# | 01 | the router: gate, softmax, fp32, noisy top-k |
# | 02 | top-k selection, renormalisation conventions, capacity and token dropping |
# | 03 | the weighted-sum combine and the full `SparseMoE` |
# | 04 | load balancing: the Switch and importance losses, the router z-loss, bias balancing |
# | 05 | a tiny MoE language model trained on 28 languages, against a dense one |
# | 06 | efficiency: dispatch strategies, grouped GEMM, memory and profiling |
# | 07 | expert parallelism: experts on several processes, the all-to-all exchange |
# | 08 | beyond top-k routing |
# | 09 | real models |
# | 10 | MoE at inference: decoding, FLOPs against bytes, expert caches, replay |
# | 11 | balance scope (per sequence, micro-batch, global batch, bias) on the multilingual model; a hunt through seven real MoE bugs |
# | 12 | review and interview practice |

# %% [markdown]
# ## 1. Environment check

# %%
# NBVAL_IGNORE_OUTPUT
import moe_lab

moe_lab.print_environment()

# %%
# NBVAL_IGNORE_OUTPUT
device = moe_lab.pick_device()
print("lessons will run on:", device)

# %% [markdown]
# Every lesson runs on a CPU (2 cores are enough); a GPU (`cuda`) only makes the later lessons
# faster. Lessons 00-04 compute on the CPU so that their printed numbers are the same everywhere.
# Every random cell is seeded with `moe_lab.seed_everything`.
#
# ## 2. The dense baseline: one SwiGLU feed-forward network
#
# A transformer block is attention followed by a feed-forward network (FFN) applied to each token
# on its own. Modern models (Llama, Mixtral, Qwen, DeepSeek) use the SwiGLU FFN (Shazeer 2020):
#
# $$\mathrm{FFN}(x) = \big(\operatorname{silu}(x W_\text{gate}) \odot x W_\text{up}\big)\, W_\text{down}$$
#
# | symbol | shape | meaning |
# |---|---|---|
# | $x$ | $(N, D)$ | $N$ tokens of width $D$ (`d_model`) |
# | $W_\text{gate}, W_\text{up}$ | $(D, F)$ | project up to the hidden width $F$ (`d_ff`) |
# | $W_\text{down}$ | $(F, D)$ | project back down |
# | $\operatorname{silu}(z)$ | | $z \cdot \sigma(z)$ |
#
# That is $3DF$ weights, and $2 \cdot 3DF$ FLOPs per token (a multiply and an add per weight).
# An MoE layer keeps $E$ such FFNs, the **experts**, and runs only $K$ of them per token.
# `moe_lab.Experts` stores the $E$ experts' weights stacked, `w_gate` $(E, D, F)$, `w_up`
# $(E, D, F)$, `w_down` $(E, F, D)$; with $E = 1$ it *is* the dense FFN.

# %%
import torch

from moe_lab import Experts, SparseMoE
from moe_lab.systems.params import ffn_params

moe_lab.seed_everything(0)
d_model, d_ff, n_tokens = 64, 256, 10
ffn = Experts(1, d_model, d_ff)  # one SwiGLU FFN
x = torch.randn(n_tokens, d_model)  # (N, D)
y_dense = ffn.forward_expert(x, 0)  # (N, D)
n_weights = sum(p.numel() for p in ffn.parameters())
print("output shape:", tuple(y_dense.shape))
print("weights:", n_weights, "= 3 * D * F =", ffn_params(d_model, d_ff))
print("FLOPs per token:", 2 * n_weights)

# %% [markdown]
# An MoE layer with one expert and $K = 1$ is exactly this dense FFN: its router has a single
# choice, whose weight is 1. A useful sanity check, and our first use of `SparseMoE`:

# %%
# NBVAL_CHECK_OUTPUT
moe = SparseMoE(d_model, d_ff, num_experts=1, top_k=1)
moe.experts.load_state_dict(ffn.state_dict())  # the same weights
out = moe(x)
print("router weights:", out.router.topk_weights.flatten().tolist())
print("MoE(E=1, K=1) == dense FFN:", torch.allclose(out.y, y_dense, atol=1e-6))

# %% [markdown]
# ## 3. The math: total vs active parameters
#
# Replace every FFN of an $L$-layer transformer by an MoE layer with $E$ experts, $K$ per token,
# and a router (a $D \times E$ matrix, lesson 01). Then
#
# $$P_\text{total} = P_\text{emb} + L\,(P_\text{attn} + P_\text{norm} + DE + E \cdot 3DF) + P_\text{head}$$
# $$P_\text{active} = P_\text{emb} + L\,(P_\text{attn} + P_\text{norm} + DE + K \cdot 3DF) + P_\text{head}$$
#
# | symbol | Mixtral 8x7B | meaning |
# |---|---|---|
# | $V$ | 32000 | vocabulary: $P_\text{emb} = P_\text{head} = VD$ (not tied) |
# | $L$ | 32 | layers |
# | $D$ | 4096 | model width |
# | $F$ | 14336 | hidden width of one expert |
# | $H, H_{kv}, d_h$ | 32, 8, 128 | query heads, key/value heads (grouped-query attention), head width |
# | $P_\text{attn}$ | | $D H d_h$ ($W_q$) $+ 2 D H_{kv} d_h$ ($W_k, W_v$) $+ H d_h D$ ($W_o$) |
# | $P_\text{norm}$ | | two RMSNorm weight vectors, $2D$ (plus one final norm) |
# | $E, K$ | 8, 2 | experts, experts per token |

# %% [markdown]
# ### Build: the stored and active parameters of the MoE layers
#
# The terms that make MoE different are the router and the experts: $L\,(DE + E \cdot 3DF)$ stored,
# $L\,(DE + K \cdot 3DF)$ run per token. Write `moe_ffn_params(config)` returning the pair
# `(total, active)` as Python ints for a `moe_lab.systems.params.TransformerConfig` (fields `num_layers`,
# `d_model`, `d_ff`, `num_experts`, `top_k`, and `ffn_matrices`: 3 weight matrices per expert for
# SwiGLU, 2 for a GELU FFN). A dense model ($E = 1$) has no router. The checker tries Mixtral
# 8x7B, a dense model, $K = E$, a Switch-style model and a DeepSeek-V3-sized stack.

# %%
from moe_lab.checks.params import check_moe_ffn_params
from moe_lab.systems.params import MIXTRAL_8X7B, TransformerConfig, count_parameters


def moe_ffn_params(config: TransformerConfig) -> tuple[int, int]:
    """(total, active) parameters of the routers and experts of all config.num_layers layers."""
    raise NotImplementedError("your code here")


# %%
ok_moe_ffn_params = check_moe_ffn_params(moe_ffn_params)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def moe_ffn_params_solution(config: TransformerConfig) -> tuple[int, int]:
    L, D, E, K = config.num_layers, config.d_model, config.num_experts, config.top_k
    expert = config.ffn_matrices * D * config.d_ff  # W_gate, W_up (D x F), W_down (F x D)
    router = D * E if E > 1 else 0  # a D x E gate; a dense model has none
    # P_total = L (DE + E * 3DF),  P_active = L (DE + K * 3DF)
    return L * (router + E * expert), L * (router + K * expert)


solution_passed = check_moe_ffn_params(moe_ffn_params_solution)

# %% [markdown]
# **In the package:** `moe_lab.systems.params.count_parameters`, which counts every component of the model
# the same way, the embeddings, attention and norms included:

# %%
# NBVAL_CHECK_OUTPUT

counts = count_parameters(MIXTRAL_8X7B)
print(f"{'component':>10} {'total':>16} {'active':>16}")
for c in counts.components:
    print(f"{c.name:>10} {c.total:>16,} {c.active:>16,}")
print(f"{'sum':>10} {counts.total:>16,} {counts.active:>16,}")
print(f"total {counts.total / 1e9:.1f}B, active {counts.active / 1e9:.1f}B "
      f"({100 * counts.active_fraction:.1f} % of the weights run per token)")
print(f"the experts hold {100 * counts['experts'].total / counts.total:.1f} % of the weights")

# %% [markdown]
# 46.7B and 12.9B: Mistral's published numbers. The name "8x7B" misleads: the experts are only
# the FFNs, the attention and embeddings are shared, so the model is not $8 \times 7 = 56$B. The
# experts hold almost all the weights, yet each token runs only 2 of the 8.
#
# ## 4. FLOPs per token
#
# Each weight a token meets in a matmul costs 2 FLOPs (multiply, add), so the forward pass costs
# about $2 P_\text{active}$ FLOPs per token (Kaplan et al. 2020), less the embedding lookup (a
# gather) and the norms, plus attention over the context: $4 L S H d_h$ for a context of $S$
# tokens ($QK^\top$ and $AV$). Training costs about 3x the forward pass.

# %%
# NBVAL_CHECK_OUTPUT
import dataclasses

from moe_lab.systems.params import dense_equivalent, flops_per_token

models = {
    "Mixtral 8x7B (E=8, K=2)": MIXTRAL_8X7B,
    "dense, same active params": dense_equivalent(MIXTRAL_8X7B),
    "all 8 experts on (K=8)": dataclasses.replace(MIXTRAL_8X7B, top_k=8),
}
print(f"{'model':>27} {'stored':>8} {'active':>8} {'GFLOPs/token':>13}")
for name, config in models.items():
    c, f = count_parameters(config), flops_per_token(config, context_length=4096)
    print(f"{name:>27} {c.total / 1e9:>7.1f}B {c.active / 1e9:>7.1f}B {f.forward / 1e9:>13.1f}")
print(f"Mixtral's weights in bf16: {count_parameters(MIXTRAL_8X7B).total * 2 / 2**30:.1f} GiB")

# %% [markdown]
# The MoE model computes like a 12.9B dense model and stores like a 46.7B one. That is the trade:
# **compute scales with $K$, memory with $E$**. Serving needs all 46.7B weights in memory
# (2 bytes each in bf16, printed above), while a token costs the FLOPs of a 12.9B model.
#
# ## 5. Visualise: the parameter calculator
#
# Move the sliders: $E$ changes the stored parameters but not the FLOPs; $K$ changes both; the
# buttons load Mixtral 8x7B again, or Qwen3-30B-A3B (128 experts of width 768, top-8: 30.5B
# stored, 3.3B active). Two settings come from lesson 08: **fine-grained m** cuts every expert
# into $m$ experts of width $F/m$ and routes $mK$ of them, and **shared S** runs $S$ of them on
# every token, taken out of the routed budget: total and active parameters stay where they are,
# only the router grows. (Attention heads are 128 wide, with a quarter as many key/value heads, as
# in Mixtral, unless a loaded model sets them and $D$ is unchanged.)

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.params import ParamsCalculator

calculator = ParamsCalculator()
calculator

# %% [markdown]
# ## Summary
#
# - A SwiGLU FFN has $3DF$ weights and costs $6DF$ FLOPs per token; an MoE layer has $E$ of them
#   and runs $K$.
# - Total parameters set the memory; active parameters set the FLOPs. Mixtral 8x7B: 46.7B stored,
#   12.9B active.
# - `SparseMoE` with one expert is the dense FFN: the baseline every later lesson compares against.

# %% [markdown]
# ## Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/00.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package, and short answers reveal a model answer once you have written yours. The English /
# 한국어 buttons switch the language. A viewer without a kernel shows the questions with each
# answer in a collapsed block.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(0)

# %% [markdown]
# ## Exercises
#
# 1. With the calculator, find how many experts (at $K = 2$, everything else Mixtral's) give a
#    model that stores 4x more than it runs.
# 2. Switch Transformer routes each token to one expert ($K = 1$). Set $K = 1$: how do the active
#    parameters and FLOPs change? What does a token lose?
# 3. DeepSeek-V3 uses many small experts (256 routed experts, 8 per token, $F = 2048$). Why would
#    smaller, more numerous experts help, at the same active FLOPs? (Lesson 08, beyond top-k
#    routing, returns to this.)
#
# ## Interview questions (self-check)
#
# <details><summary>1. MoE 모델에서 총 파라미터 수와 활성 파라미터 수는 어떻게 다르며, 각각 무엇을 결정하나요?
# <br>(How do total and active parameters differ in an MoE model, and what does each determine?)</summary>
#
# Total parameters are everything stored (all $E$ experts): they set memory and the weights you must
# load. Active parameters are those one token uses ($K$ experts plus the shared parts): they set
# the FLOPs per token, hence the compute cost of training and inference.
# </details>
#
# <details><summary>2. Mixtral 8x7B가 56B가 아니라 46.7B인 이유는 무엇인가요?
# <br>(Why is Mixtral 8x7B 46.7B parameters and not 56B?)</summary>
#
# Only the FFNs are replicated into experts. Attention, embeddings, norms and the lm_head are shared
# by all experts, so they are counted once, not eight times.
# </details>
#
# <details><summary>3. 같은 활성 파라미터를 가진 dense 모델과 비교할 때 MoE의 추론 비용은 어떤가요?
# <br>(Compared with a dense model with the same active parameters, what does MoE inference cost?)</summary>
#
# About the same FLOPs per token, but several times the memory for weights, and, at small batch
# sizes, more memory traffic (each expert's weights are read for few tokens). Large batches and
# expert parallelism (lesson 07) recover the efficiency.
# </details>
#
# ## Further reading
#
# - N. Shazeer et al., [*Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts
#   Layer*](https://arxiv.org/abs/1701.06538), 2017.
# - N. Shazeer, [*GLU Variants Improve Transformer*](https://arxiv.org/abs/2002.05202), 2020 (SwiGLU).
# - J. Kaplan et al., [*Scaling Laws for Neural Language Models*](https://arxiv.org/abs/2001.08361), 2020 (Table 1: FLOPs per token).
# - A. Q. Jiang et al., [*Mixtral of Experts*](https://arxiv.org/abs/2401.04088), 2024.
# - W. Fedus, B. Zoph, N. Shazeer, [*Switch Transformers*](https://arxiv.org/abs/2101.03961), 2021.
# - DeepSeek-AI, [*DeepSeek-V3 Technical Report*](https://arxiv.org/abs/2412.19437), 2024.
#
# Next: **01 · the router**, which decides which experts a token runs.
