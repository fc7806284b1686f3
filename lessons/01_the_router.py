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
# # 01 · The router: which experts should see this token?
#
# **Goal.** Build the gating network of an MoE layer: a linear map from each token to one logit per
# expert, and a softmax that turns the logits into probabilities. Then see two details that real
# MoE code gets right and that interviews ask about: why the router runs in **float32** even in a
# bf16 model, and how **noise** (Shazeer et al. 2017's noisy top-k gating, the Switch
# Transformer's jitter) is added in training and switched off in evaluation.
#
# Lesson 00 built the experts; this lesson builds what chooses among them; lesson 02 turns the
# probabilities into a choice of $K$ experts.

# %% [markdown]
# ## 1. The math
#
# $$\text{router\_logits} = x W^\top \qquad \text{router\_probs} = \operatorname{softmax}(\text{router\_logits}), \quad
# p_{n,e} = \frac{e^{\ell_{n,e}}}{\sum_{j=1}^{E} e^{\ell_{n,j}}}$$
#
# | symbol | code | shape | meaning |
# |---|---|---|---|
# | $x$ | `x` | $(N, D)$ | $N$ tokens of width $D$ |
# | $W$ | `router.weight` | $(E, D)$ | one row per expert, as in `nn.Linear(D, E, bias=False)` |
# | $\ell$ | `router_logits` | $(N, E)$ | affinity of each token for each expert |
# | $p$ | `router_probs` | $(N, E)$ | each row sums to 1 over the $E$ experts |
#
# The router is tiny ($E \cdot D$ weights per layer: 32,768 in a Mixtral layer, against 1.4B in its
# experts) and cheap, but every token's path through the model depends on it.

# %%
import torch

import moe_lab
from moe_lab import TopKRouter
from moe_lab.checks.router import check_jitter, check_noisy_topk_logits, check_router_probs

# %% [markdown]
# ## 2. Build: router probabilities
#
# Write `router_probs(x, weight)`: the logits $x W^\top$ and their softmax over the experts.
# Return float32 probabilities even when `x` and `weight` are bfloat16 (section 3 shows why).
#
# *Hints:* `weight` is $(E, D)$, so the logits are `x @ weight.T`; the softmax runs over the
# last axis (the experts), not over the tokens; apply it once.

# %%
def router_probs(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (N, D), weight (E, D) -> router probabilities (N, E) in float32."""
    # router_logits = x W^T, in float32   (N, E)
    # router_probs = softmax over experts (N, E)
    raise NotImplementedError("your code here")


# %%
ok_probs = check_router_probs(router_probs)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def router_probs_solution(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    router_logits = x.float() @ weight.float().T  # (N, E)
    return torch.softmax(router_logits, dim=-1)  # (N, E)


solution_passed = check_router_probs(router_probs_solution)

# %% [markdown]
# **In the package:** `moe_lab.routing.TopKRouter`.
#
# From here on we use the package's router, `moe_lab.TopKRouter(d_model, num_experts, top_k)`. It
# returns a `RouterOutput` with `logits` and `probs` $(N, E)$, and the top-$K$ choice `topk_idx`,
# `topk_weights` $(N, K)$ of lesson 02. If your function passed, it agrees with the router:

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
router = TopKRouter(d_model=16, num_experts=8, top_k=2)
x = torch.randn(4, 16)  # (N, D)
with torch.no_grad():
    routing = router(x)
probs = router_probs(x, router.weight.detach()) if ok_probs else routing.probs  # (N, E)
torch.set_printoptions(precision=3, sci_mode=False)
print("router_logits:\n", routing.logits)
print("router_probs:\n", probs)
print("row sums:", probs.sum(-1))
print("chosen experts (top-2):", routing.topk_idx.tolist())

# %% [markdown]
# ## 3. Why the router runs in float32
#
# bfloat16 stores 7 bits of mantissa (8 significant bits with the implicit leading one): two logits
# that differ by less than about 0.4 % (2^-8) of their size round to the same value or swap. The
# router's output is a *discrete* choice, so a tiny rounding error can send a token to a different
# expert, a jump that no later layer can undo. The Switch
# Transformer (Fedus et al. 2021, "selective precision") casts the router's input to float32 for
# this reason, and Hugging Face's Mixtral takes the softmax in float32. `TopKRouter` computes in
# `router_dtype`, float32 by default. Here the same weights and the same bf16 activations go through
# a float32 and a bfloat16 router:

# %%
# NBVAL_IGNORE_OUTPUT
# (the exact count depends on the CPU's bf16 matmul kernel; the next cell checks what holds everywhere)
moe_lab.seed_everything(0)
d_model, num_experts, top_k, n_tokens = 1024, 8, 2, 4096
router_fp32 = TopKRouter(d_model, num_experts, top_k)
router_bf16 = TopKRouter(d_model, num_experts, top_k, router_dtype=torch.bfloat16)
router_bf16.load_state_dict(router_fp32.state_dict())  # the same weights
x_bf16 = torch.randn(n_tokens, d_model).to(torch.bfloat16)  # bf16 activations, as in a bf16 model
with torch.no_grad():
    out_fp32, out_bf16 = router_fp32(x_bf16), router_bf16(x_bf16)
# a token flips when its *set* of K experts changes (the order within the K does not matter)
flipped = (out_fp32.topk_idx.sort(-1).values != out_bf16.topk_idx.sort(-1).values).any(-1)  # (N,)
print(f"tokens whose top-{top_k} experts flipped: {int(flipped.sum())} of {n_tokens} "
      f"({flipped.float().mean():.2%})")
top = out_fp32.probs.topk(top_k + 1, dim=-1).values  # (N, K+1)
margin = top[:, top_k - 1] - top[:, top_k]  # (N,) gap between the K-th and the (K+1)-th expert
print(f"median margin, flipped tokens: {margin[flipped].median():.5f}; all tokens: "
      f"{margin.median():.5f}")
print(f"largest probability error in bf16: {(out_fp32.probs - out_bf16.probs).abs().max():.4f}")

# %%
# NBVAL_CHECK_OUTPUT
print("some top-k choices flip in bf16:", bool(flipped.any()))
print("every flipped token was a near tie (margin < 0.01):", bool((margin[flipped] < 0.01).all()))


# %% [markdown]
# A fraction of a percent of tokens sounds harmless, but it is per layer and per step: in a
# 32-layer model a bf16 router sends some token of almost every sequence to a different expert than
# the float32 one would, and in training the rounding noise also feeds into the load-balancing
# statistics (lesson 04). The router costs $2DE$ FLOPs per token against $6DFK$ for the experts,
# so float32 there is almost free.
#
# ## 4. Noisy top-k gating (Shazeer et al. 2017)
#
# Early in training a router has no reason to try an expert it scores low, so the experts it picks
# first get trained, get better and get picked more: the rich get richer (lesson 04 shows this
# collapse). Shazeer et al. add learned, input-dependent Gaussian noise to the logits before the
# top-$k$ choice, so that near-ties are explored:
#
# $$H(x)_e = (x W_g^\top)_e + \varepsilon_e \cdot \operatorname{softplus}\big((x W_\text{noise}^\top)_e\big), \qquad \varepsilon_e \sim \mathcal N(0, 1)$$
#
# | symbol | shape | meaning |
# |---|---|---|
# | $W_g$ | $(E, D)$ | the gate (the router weight above) |
# | $W_\text{noise}$ | $(E, D)$ | a learned noise projection (initialised to zero) |
# | $\operatorname{softplus}(z)$ | | $\log(1 + e^z) > 0$: a positive noise scale |
#
# Noise is a training-time device: **in evaluation the router must be deterministic**, so the noise
# is switched off (`model.eval()`).
#
# ### Build: noisy logits
#
# Write `noisy_topk_logits(x, w_gate, w_noise, training)`: the clean logits when `training` is
# False; with noise $\varepsilon \cdot \operatorname{softplus}(x W_\text{noise}^\top)$ added when it
# is True. *Hints:* `torch.randn_like(logits)` draws $\varepsilon$;
# `torch.nn.functional.softplus`.

# %%
def noisy_topk_logits(x: torch.Tensor, w_gate: torch.Tensor, w_noise: torch.Tensor,
                      training: bool) -> torch.Tensor:
    """x (N, D), w_gate and w_noise (E, D) -> router logits (N, E), noisy only when training."""
    # H(x) = x W_g^T + eps * softplus(x W_noise^T),  eps ~ N(0, 1), in training only
    raise NotImplementedError("your code here")


# %%
ok_noisy = check_noisy_topk_logits(noisy_topk_logits)

# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
import torch.nn.functional as F


def noisy_topk_logits_solution(x, w_gate, w_noise, training):
    router_logits = x @ w_gate.T  # (N, E)
    if not training:
        return router_logits
    noise_std = F.softplus(x @ w_noise.T)  # (N, E)
    return router_logits + torch.randn_like(router_logits) * noise_std


solution_passed = check_noisy_topk_logits(noisy_topk_logits_solution)

# %% [markdown]
# **In the package:** `moe_lab.routing.TopKRouter` with `noise="noisy_topk"`.
#
# The package's router does this with `TopKRouter(..., noise="noisy_topk")`: noise in `train()`
# mode, none in `eval()` mode.

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
noisy_router = TopKRouter(16, 8, 2, noise="noisy_topk")
x = torch.randn(512, 16)  # (N, D)
with torch.no_grad():
    noisy_router.train()
    train_a, train_b = noisy_router(x), noisy_router(x)
    noisy_router.eval()
    eval_a, eval_b = noisy_router(x), noisy_router(x)
print("train mode, two calls differ:", not torch.equal(train_a.logits, train_b.logits))
print("eval mode, two calls identical:", torch.equal(eval_a.logits, eval_b.logits))
changed = (train_a.topk_idx.sort(-1).values != eval_a.topk_idx.sort(-1).values).any(-1)
print(f"tokens routed differently with noise: {changed.float().mean():.1%}")


# %% [markdown]
# With $W_\text{noise} = 0$ at initialisation, the noise scale is $\operatorname{softplus}(0) =
# \log 2 \approx 0.69$ for every token and expert, larger than the gaps between this untrained
# router's small logits: most tokens get explored. Training then learns, through $W_\text{noise}$,
# where to explore and where not to.
#
# ### The Switch Transformer's jitter
#
# The Switch Transformer (Fedus et al. 2021) uses a simpler device: multiply the router's *input*
# element-wise by $u \sim \mathcal U(1 - \epsilon, 1 + \epsilon)$ with a small $\epsilon$ (0.01), in
# training only. Later models (Mixtral, DeepSeek-V3) use no router noise at all and rely on the
# balancing losses of lesson 04.
#
# ### Build: jitter
#
# Write `jitter(x, eps, training)`: `x * u` with one $u$ per element when training, `x` unchanged
# otherwise. *Hint:* `torch.empty_like(x).uniform_(1 - eps, 1 + eps)`.

# %%
def jitter(x: torch.Tensor, eps: float, training: bool) -> torch.Tensor:
    """x (N, D) -> x * u, u ~ Uniform(1 - eps, 1 + eps) element-wise, in training only."""
    raise NotImplementedError("your code here")


# %%
ok_jitter = check_jitter(jitter)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def jitter_solution(x, eps, training):
    if not training:
        return x
    return x * torch.empty_like(x).uniform_(1 - eps, 1 + eps)


solution_passed = check_jitter(jitter_solution)

# %% [markdown]
# **In the package:** `moe_lab.routing.TopKRouter` with `noise="jitter"`.

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
jitter_router = TopKRouter(16, 8, 2, noise="jitter", jitter_eps=0.01)
with torch.no_grad():
    jittered = jitter_router.train()(x)
    clean = jitter_router.eval()(x)
changed = (jittered.topk_idx.sort(-1).values != clean.topk_idx.sort(-1).values).any(-1)
print(f"tokens routed differently with 1% jitter: {changed.float().mean():.1%}")

# %% [markdown]
# ## 5. Visualise: per-token router probabilities
#
# Type a sentence: each byte is a token (a Hangul syllable is three, an emoji four), each row shows
# that token's probabilities over 8 experts, and the dots mark its top-$k$ experts. The router is
# untrained (random but fixed weights over a fixed random embedding), so the same byte always goes
# to the same experts. Switch the router to bfloat16 and look for dots that move; turn on the noise
# (training mode) and watch near-ties change.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.router import RouterHeatmap

heatmap = RouterHeatmap("Mixture of experts: 전문가 혼합 🙂")
heatmap

# %% [markdown]
# The table behind the picture, for the first tokens:

# %%
# NBVAL_CHECK_OUTPUT
table = heatmap.table
for label, idx, weights in list(zip(table.token_labels, table.topk_idx, table.topk_weights, strict=True))[:8]:
    print(f"{label!r:>5} -> experts {idx}, weights {[round(w, 3) for w in weights]}")

# %% [markdown]
# ## Summary
#
# - The router is a linear map $x W^\top$ to $E$ logits and a softmax over the experts (dim $-1$):
#   each token gets a probability distribution over the experts.
# - Compute it in float32: in bf16, near-ties flip the discrete choice of experts.
# - Noisy top-k gating (Shazeer 2017) adds $\varepsilon \cdot \operatorname{softplus}(xW_\text{noise}^\top)$
#   to the logits, and the Switch jitter multiplies the input by $\mathcal U(1 \pm \epsilon)$: both
#   in training only. The package: `TopKRouter(..., noise="noisy_topk" | "jitter",
#   router_dtype=torch.float32)`.

# %% [markdown]
# ## Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/01.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package, and short answers reveal a model answer once you have written yours. The English /
# 한국어 buttons switch the language. A viewer without a kernel shows the questions with each
# answer in a collapsed block.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(1)

# %% [markdown]
# ## Exercises
#
# 1. In section 3, try `num_experts = 64` (and `top_k = 8`, as in DeepSeek-V3's 256 experts, top-8):
#    does the share of flipped tokens grow? Why do more experts mean more near-ties at the top-$k$
#    boundary?
# 2. In the noisy-router cell, multiply the gate by 10 (`noisy_router.weight.data *= 10`) before
#    the calls: why do fewer tokens change experts, although the noise scale is still $\log 2$?
# 3. Your `router_probs` with a softmax over `dim=0` passes shape checks. What does the checker say,
#    and what would such a router do in a batch of one token?
#
# ## Interview questions (self-check)
#
# <details><summary>1. MoE 라우터를 bf16이 아니라 fp32로 계산하는 이유는 무엇인가요?
# <br>(Why compute the MoE router in fp32 rather than bf16?)</summary>
#
# The router makes a discrete top-k choice; bf16 rounding (7 stored mantissa bits) changes near-tied logits
# and flips which experts a token uses, a large, non-smooth change of the output. The router is a
# tiny share of the FLOPs, so fp32 costs almost nothing.
# </details>
#
# <details><summary>2. Noisy top-k gating에서 노이즈는 왜 학습할 때만 추가하나요?
# <br>(Why is the noise in noisy top-k gating added only during training?)</summary>
#
# It exists to explore experts near the top-k boundary and to help balance the load while the
# router learns. At inference we want the deterministic, best routing; noise would make outputs
# random and slightly worse.
# </details>
#
# <details><summary>3. 라우터의 softmax를 토큰 축(dim=0)으로 계산하면 어떤 문제가 생기나요?
# <br>(What goes wrong if the router's softmax runs over the token axis, dim=0?)</summary>
#
# Each expert's column sums to 1 over the batch instead of each token's row over the experts: a
# token's weights then depend on the other tokens in the batch (and a batch of one gives every
# expert probability 1), so outputs change with batch composition.
# </details>
#
# ## Further reading
#
# - N. Shazeer et al., [*Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts
#   Layer*](https://arxiv.org/abs/1701.06538), 2017 (noisy top-k gating, eq. 3-5).
# - W. Fedus, B. Zoph, N. Shazeer, [*Switch Transformers*](https://arxiv.org/abs/2101.03961), 2021 (selective precision, jitter).
# - B. Zoph et al., [*ST-MoE: Designing Stable and Transferable Sparse Expert Models*](https://arxiv.org/abs/2202.08906), 2022 (router
#   stability, float32, the z-loss).
# - A. Q. Jiang et al., [*Mixtral of Experts*](https://arxiv.org/abs/2401.04088), 2024.
#
# Next: **02 · top-k and capacity**: from probabilities to $K$ experts per token, and what happens
# when too many tokens want the same expert.
