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
# # 03 · The weighted sum: putting the experts' answers back together
#
# **Goal.** Lesson 02 chose $K$ experts per token and their weights. Now each chosen expert runs on
# its tokens, and every token gets back the **weighted sum** of its experts' outputs. You will
# build that combine twice (a per-expert loop with `index_add_`, then a scatter back from rows
# sorted by expert), assemble the full `SparseMoE` layer, check that every dispatch strategy gives
# the same answer as the dense reference, and see exactly **how the router learns**: through the
# weights, never through the choice. Then type your own sentences into the routing explorer.
#
# Prerequisites: lessons 00 (experts), 01 (router) and 02 (top-$k$, capacity, dropped tokens).

# %% [markdown]
# ## 1. The math
#
# For token $n$ with chosen experts $i_{n,1}, \dots, i_{n,K}$ and weights $w_{n,1}, \dots, w_{n,K}$:
#
# $$y_n = \sum_{k=1}^{K} \mathbb{1}[\text{kept}_{n,k}] \; w_{n,k} \; \operatorname{Expert}_{i_{n,k}}(x_n)$$
#
# A dropped assignment (over the expert's capacity $C$) contributes **nothing**: the residual
# connection around the layer, $h + \operatorname{MoE}(h)$, already carries the token on. The same
# sum, written densely with a combine matrix $c \in \mathbb{R}^{N \times E}$ that is zero outside
# the chosen experts:
#
# $$c_{n,e} = \sum_k \mathbb{1}[\text{kept}_{n,k}]\, w_{n,k}\, \mathbb{1}[i_{n,k} = e], \qquad
# y_n = \sum_{e=1}^{E} c_{n,e} \operatorname{Expert}_e(x_n)$$
#
# The dense form runs all $E$ experts on every token ($E/K$ times the work): it is the reference
# the fast strategies are tested against.
#
# | symbol | code | shape | meaning |
# |---|---|---|---|
# | $x$ | `x` | $(N, D)$ | the tokens |
# | $i$ | `plan.topk_idx` | $(N, K)$ | chosen experts, best first |
# | $w$ | `plan.topk_weights` | $(N, K)$ | their combine weights |
# | kept | `plan.keep` | $(N, K)$ | False where the assignment was dropped |
# | $c$ | `combine` | $(N, E)$ | the dense combine matrix |
# | $y$ | `y` | $(N, D)$ | the layer's output |
# | $M$ | `plan.sort_order` | $(M,)$ | kept assignments, sorted by expert |

# %%
import torch
from torch import nn

import moe_lab
from moe_lab import SparseMoE
from moe_lab.checks.combine import (
    check_combine_loop,
    check_gate_weights,
    check_scatter_combine,
    make_combine_case,
)
from moe_lab.dispatch import dispatch_loop

# %% [markdown]
# ## 2. Build: the combine as a loop over experts
#
# `make_routing_plan` (lesson 02) turned the router's choice into a `RoutingPlan`: `topk_idx`,
# `topk_weights`, `keep` (capacity), and more. Write `combine_loop(x, plan, experts)`:
#
# for each expert $e$: find the (token, slot) pairs routed to $e$ **and kept**, run
# `experts.forward_expert(x[token_idx], e)`, multiply each row by its weight, and **add** it into
# `y` at its token with `y.index_add_(0, token_idx, ...)`.
#
# *Hints:* `torch.where((plan.topk_idx == e) & plan.keep)` gives `(token_idx, slot)`; the weights
# are `plan.topk_weights[token_idx, slot]`; a token with $K$ experts receives $K$ contributions,
# so assignment (`y[token_idx] = ...`) would keep only the last one.

# %%
def combine_loop(x: torch.Tensor, plan, experts) -> torch.Tensor:
    """x (N, D) -> y (N, D) = sum over kept (n, k) of w_nk * Expert_{i_nk}(x_n)."""
    # y = torch.zeros_like(x)  # (N, D)
    # for e in range(experts.num_experts): gather, run, weight, index_add_
    raise NotImplementedError("your code here")


# %%
ok_loop = check_combine_loop(combine_loop)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def combine_loop_solution(x: torch.Tensor, plan, experts) -> torch.Tensor:
    y = torch.zeros_like(x)  # (N, D)
    for e in range(experts.num_experts):
        token_idx, slot = torch.where((plan.topk_idx == e) & plan.keep)  # (n,), (n,)
        if token_idx.numel() == 0:
            continue
        h = experts.forward_expert(x[token_idx], e)  # (n, D)
        weight = plan.topk_weights[token_idx, slot].unsqueeze(-1)  # (n, 1)
        y.index_add_(0, token_idx, h * weight)
    return y


solution_passed = check_combine_loop(combine_loop_solution)

# %% [markdown]
# **In the package:** `moe_lab.dispatch.dispatch_loop`.
#
# From here on we use your function if it passed, and the package's `dispatch_loop` (the same
# loop, as in Hugging Face's Mixtral code) otherwise. A case with a small capacity: the dropped
# assignments add nothing, so a token whose every assignment was dropped gets $y_n = 0$.

# %%
# NBVAL_CHECK_OUTPUT
combine = combine_loop if ok_loop else dispatch_loop
x, plan, experts = make_combine_case(seed=1, num_tokens=12, capacity_factor=0.5)
with torch.no_grad():
    y = combine(x, plan, experts)  # (N, D)
print("capacity C =", plan.capacity, "| kept per expert:", plan.tokens_per_expert.tolist())
print("dropped assignments:", int((~plan.keep).sum()), "of", plan.keep.numel())
all_dropped = ~plan.keep.any(dim=-1)  # (N,)
print("tokens with every assignment dropped:", all_dropped.nonzero().flatten().tolist())
print("their outputs are zero:", bool((y[all_dropped] == 0).all()))


# %% [markdown]
# ## 3. Build: the combine as a scatter (sorted rows back to tokens)
#
# The fast strategies (lesson 06) sort the $M$ kept assignments by expert, so each expert's rows
# are contiguous and one grouped matrix multiply runs them all. Then each output row must go back
# to its token. `plan.sort_order[j]` is the flat id `token * K + slot` of row $j$. Write
# `scatter_combine(h_sorted, sort_order, topk_weights, num_tokens)`: weight row $j$ by
# `topk_weights.reshape(-1)[sort_order[j]]` and add it to token `sort_order[j] // K`.
#
# *Hints:* `K = topk_weights.shape[1]`; one `index_add` does the scatter; the weights must be
# gathered with `sort_order` (the rows are in sorted order, the weights are not).

# %%
def scatter_combine(h_sorted: torch.Tensor, sort_order: torch.Tensor,
                    topk_weights: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """h_sorted (M, D) in the order of sort_order (M,) -> y (N, D)."""
    raise NotImplementedError("your code here")


# %%
ok_scatter = check_scatter_combine(scatter_combine)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def scatter_combine_solution(h_sorted: torch.Tensor, sort_order: torch.Tensor,
                             topk_weights: torch.Tensor, num_tokens: int) -> torch.Tensor:
    top_k = topk_weights.shape[1]
    weight = topk_weights.reshape(-1)[sort_order].unsqueeze(-1)  # (M, 1)
    y = h_sorted.new_zeros(num_tokens, h_sorted.shape[1])  # (N, D)
    return y.index_add(0, sort_order // top_k, h_sorted * weight)  # (N, D)


solution_passed = check_scatter_combine(scatter_combine_solution)

# %% [markdown]
# **In the package:** `moe_lab.dispatch.dispatch_sorted`.
#
# The package's `dispatch_sorted` does the same, with one difference worth knowing: it writes each
# row to its own (token, slot) place with `index_copy` (all indices distinct) and then sums over
# the $K$ slots, so no two rows are ever added into the same place concurrently. On a GPU,
# `index_add_` with repeated indices uses atomic adds, whose order (and so the last bits of the
# result) can change from run to run; the copy-then-sum is deterministic.
#
# ## 4. The full `SparseMoE`, and equality with the dense reference
#
# `moe_lab.SparseMoE(d_model, d_ff, num_experts, top_k, dispatch=...)` chains router -> routing
# plan -> experts -> combine. The four dispatch strategies compute the same sum in different ways;
# with the same weights they must agree to float round-off, dropless or with a capacity.

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
moe = SparseMoE(d_model=16, d_ff=32, num_experts=8, top_k=2, dispatch="dense")
x = torch.randn(2, 10, 16)  # (B, T, D)
for capacity_factor in (None, 0.75):
    moe.capacity_factor = capacity_factor
    with torch.no_grad():
        moe.dispatch = "dense"
        reference = moe(x)
        print(f"capacity_factor={capacity_factor}: dropped {reference.num_dropped} of "
              f"{reference.dropped.numel()} assignments")
        for strategy in moe_lab.DISPATCH_STRATEGIES:
            moe.dispatch = strategy
            gap = (moe(x).y - reference.y).abs().max().item()
            print(f"  {strategy:>7}: max |y - y_dense| < 1e-5: {gap < 1e-5}")
moe.capacity_factor, moe.dispatch = None, "sorted"


# %% [markdown]
# ## 5. How the router learns: through the weights, not through the choice
#
# The choice $i_{n,k} = \operatorname{topk}(\ell_n)$ is a piecewise-constant function of the
# logits: nudge a logit a little and the choice does not move, so its derivative is zero where it
# exists (and undefined where two logits tie). PyTorch does not even try: `topk` indices and
# `argmax` are integer tensors without a gradient. The router therefore learns **only through the
# weights** $w_{n,k}$, which are differentiable functions of the logits: if expert $i$'s output
# helped token $n$, the gradient raises $w_{n,k}$, and with it the logit of expert $i$.
#
# ### Build: gate weights that keep their gradient
#
# Write `gate_weights(router_logits, top_k)` returning `(topk_idx, topk_weights)` the Mixtral
# way: the top-$k$ of the logits, and a softmax over the $K$ chosen logits (equal to the
# renormalised top-$k$ probabilities, lesson 02). The checker also back-propagates through your
# weights and compares the gradient of the logits.
#
# *Hints:* `torch.topk(router_logits, top_k, dim=-1)` returns values and indices; do not build the
# weights from the indices (an integer has no gradient) and do not `.detach()` them.

# %%
def gate_weights(router_logits: torch.Tensor, top_k: int):
    """router_logits (N, E) -> (topk_idx (N, K) int64, topk_weights (N, K), differentiable)."""
    raise NotImplementedError("your code here")


# %%
ok_gate = check_gate_weights(gate_weights)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def gate_weights_solution(router_logits: torch.Tensor, top_k: int):
    topk_logits, topk_idx = torch.topk(router_logits, top_k, dim=-1)  # (N, K), (N, K)
    # w_k = exp(l_k) / sum_{j in top-k} exp(l_j)
    return topk_idx, torch.softmax(topk_logits, dim=-1)  # (N, K)


solution_passed = check_gate_weights(gate_weights_solution)

# %% [markdown]
# **In the package:** `moe_lab.routing.topk_routing`.
#
# Now see it on the layer. A loss on the output reaches `router.weight` through `topk_weights`,
# while `topk_idx` carries no gradient at all:

# %%
# NBVAL_CHECK_OUTPUT
moe_lab.seed_everything(0)
moe = SparseMoE(d_model=16, d_ff=32, num_experts=8, top_k=2)
x = torch.randn(12, 16)  # (N, D)
out = moe(x)
out.y.square().mean().backward()
print("router.weight.grad is nonzero:", bool(moe.router.weight.grad.abs().sum() > 0))
print("topk_weights have a grad_fn:", out.router.topk_weights.grad_fn is not None)
print("topk_idx:", out.router.topk_idx.dtype, "| requires_grad:",
      out.router.topk_idx.requires_grad)

# %% [markdown]
# The choice itself is not differentiable: `argmax` returns an integer with no `grad_fn`, so there
# is nothing to back-propagate through, and a small nudge of the logits leaves it unchanged
# (derivative zero).

# %%
# NBVAL_CHECK_OUTPUT
logits = torch.tensor([0.3, 1.2, -0.5, 1.1], requires_grad=True)
choice = logits.argmax()
print("argmax:", choice.item(), "| dtype:", choice.dtype, "| grad_fn:", choice.grad_fn)
try:
    choice.float().backward()
except RuntimeError as error:
    print("backward through argmax -> RuntimeError:", str(error).splitlines()[0])
with torch.no_grad():
    nudged = (logits + 1e-3 * torch.tensor([1.0, -1.0, 1.0, 1.0])).argmax()
print("after a small nudge of the logits the choice is still", nudged.item())

# %% [markdown]
# One consequence catches people out: with **top-1 and renormalisation**, the single weight is
# $p_i / p_i = 1$ whatever the logits, so the router gets **no gradient at all**. This is why the
# Switch Transformer (top-1) multiplies the expert output by the raw probability $p_i$ instead
# (`normalize=False`):

# %%
# NBVAL_CHECK_OUTPUT
for normalize in (True, False):
    moe_lab.seed_everything(0)
    moe = SparseMoE(d_model=16, d_ff=32, num_experts=8, top_k=1, normalize=normalize)
    moe(x).y.square().mean().backward()
    grad = moe.router.weight.grad.abs().max().item()
    print(f"top-1, normalize={normalize}: largest |router.weight.grad| "
          f"{'< 1e-6 (no signal)' if grad < 1e-6 else '> 1e-6 (the router learns)'}")

# %% [markdown]
# ## 6. Visualise: the routing explorer
#
# Type a sentence. Each byte token (`moe_lab.lm.tokenizer.ByteTokenizer`: one token per UTF-8 byte,
# so a Hangul syllable is three tokens and the continuation bytes show as `·`) is a square
# coloured by its top expert, more opaque when that expert's weight is larger; hover for all $K$
# experts and weights. The bars are each expert's load. Move $K$ and the noise (Gaussian noise
# added to the router logits, as noisy top-$k$ gating does in training) and watch tokens change
# experts.
#
# The model is an untrained, seeded byte embedding followed by a `SparseMoE`: its routing has no
# meaning yet (lesson 05 plugs a trained language model into the same widget), but it shows what
# the router sees: **the token alone**. The same byte always goes to the same experts, wherever it
# is in the sentence, because this model has no attention to mix in context.

# %%
from moe_lab.viz.explorer import byte_router_fn, route_text
from moe_lab.widgets.explorer import RoutingExplorer

moe_lab.seed_everything(0)
embedding = nn.Embedding(256, 32)  # one vector per byte
moe = SparseMoE(d_model=32, d_ff=64, num_experts=8, top_k=2)
route_fn = byte_router_fn(embedding, moe.router)  # (text, top_k, noise) -> TextRouting

# %%
# NBVAL_IGNORE_OUTPUT
explorer = RoutingExplorer(route_fn, num_experts=8, text="Mixture of experts: 전문가 🙂")
explorer

# %% [markdown]
# The figure is drawn from a plain `TextRouting` (the package's `moe_lab.lm.text_routing.TextRouting`,
# the one result type of routing a text), the same one `route_text` returns (the widget's
# `current_table()`). Here it is for a fixed sentence, the top expert of every token:

# %%
# NBVAL_CHECK_OUTPUT
table = route_text("the cat sat", embedding, moe.router, top_k=2)
print("tokens:     ", " ".join(table.labels))
print("top expert: ", " ".join(str(e) for e in table.topk_idx[0, :, 0].tolist()))
print("load:       ", table.tokens_per_expert[0].tolist(), "(sums to T*K =",
      f"{table.num_tokens}*{table.top_k})")

# %%
# NBVAL_IGNORE_OUTPUT
explorer.text.value = "Routing is decided per token, " * 5  # longer than the 96 tokens drawn
print(f"redraw took {explorer.last_redraw_ms:.1f} ms;", explorer.figure_data()["title"])

# %% [markdown]
# ## 7. Summary
#
# - The combine is a weighted sum over each token's **kept** assignments:
#   $y_n = \sum_k w_{n,k}\, \operatorname{Expert}_{i_{n,k}}(x_n)$. Dropped assignments contribute
#   nothing (the residual carries the token), and a token's $K$ contributions must be **added**
#   (`index_add_`), not assigned.
# - A per-expert loop (Mixtral in transformers), a scatter back from rows sorted by expert
#   (grouped GEMM) and a capacity-padded batch (GShard, Switch) all compute the same sum as the
#   dense reference, which runs every expert on every token.
# - The router learns through the weights $w$ only; the top-$k$ choice is piecewise constant and
#   carries no gradient. With top-1, renormalised weights are always 1: use the raw probability.

# %% [markdown]
# ## 8. Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/03.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package, and short answers reveal a model answer once you have written yours. The English /
# 한국어 buttons switch the language. A viewer without a kernel shows the questions with each
# answer in a collapsed block.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(3)

# %% [markdown]
# ## 9. Exercises
#
# 1. *(code)* Change `combine_loop` so that a dropped assignment passes the token through
#    ($y_n \mathrel{+}= w\,x_n$). Run the checker: what does it say, and why is this wrong when
#    the layer sits inside $h + \operatorname{MoE}(h)$?
# 2. *(code)* Write the dense combine matrix $c$ with `scatter_add` and check
#    `torch.einsum("ne,end->nd", c, experts.forward_all(x))` against `dispatch_loop`.
# 3. *(code)* In the explorer, set $K = E = 8$: every expert sees every token. What do the load
#    bars show, and what does the layer now cost compared with the dense reference?
#
# ## 10. Interview questions (self-check)
#
# <details><summary>1. 전문가 선택(top-k)은 미분할 수 없는데, 라우터는 어떻게 학습되나요?
# <br>(The top-k choice is not differentiable: how does the router learn?)</summary>
#
# Through the combine weights. $y_n = \sum_k w_{n,k} E_{i_{n,k}}(x_n)$ with $w$ a softmax of the
# router logits, so $\partial \mathcal{L} / \partial w_{n,k} = \langle \partial \mathcal{L}/\partial
# y_n, E_{i_{n,k}}(x_n) \rangle$ flows back into the logits of the chosen experts (with Mixtral's
# softmax over the top-$k$ logits, the unchosen logits get no gradient from the combine at all).
# The choice itself is piecewise constant: zero gradient. The auxiliary losses of lesson 04,
# computed on the full softmax, add a second signal that reaches every expert; straight-through and REINFORCE-style
# estimators exist in the literature but are rarely used for LLM routers.
# </details>
#
# <details><summary>2. top-1 라우팅에서 가중치를 재정규화하면 라우터 가중치가 전혀 바뀌지 않습니다. 왜 그런가요?
# <br>(With top-1 routing and renormalised weights, the router weights never change. Why?)</summary>
#
# The single weight is $p_i / p_i = 1$ for any logits, so the output does not depend on the
# router's values at all and its gradient is zero. Switch multiplies by the raw probability $p_i$
# instead (`normalize=False`), which keeps a gradient.
# </details>
#
# <details><summary>3. 용량을 초과해 버려진(dropped) 토큰은 MoE 출력에 어떻게 반영되어야 하나요?
# <br>(How should a token dropped for capacity appear in the MoE output?)</summary>
#
# As nothing: its dropped assignments contribute 0. The residual connection
# $h + \operatorname{MoE}(h)$ carries the token to the next layer unchanged. Adding $w\,x$ for it
# inside the layer would count the token twice.
# </details>
#
# <details><summary>4. GPU에서 index_add_로 결과를 합치면 실행할 때마다 결과가 조금씩 달라질 수 있습니다. 왜 그런가요?
# <br>(Combining with index_add_ on a GPU can change the result slightly from run to run. Why?)</summary>
#
# Repeated indices are accumulated with atomic adds, in whatever order the threads finish, and
# float addition is not associative. Writing each (token, slot) row to its own place
# (`index_copy`, distinct indices) and then summing over $K$ gives the same bits every run.
# </details>
#
# ## 11. Further reading
#
# - Shazeer et al. 2017, [*Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts
#   Layer*](https://arxiv.org/abs/1701.06538), eq. (1): the weighted sum $y = \sum_i G(x)_i E_i(x)$.
# - Lepikhin et al. 2020, [*GShard*](https://arxiv.org/abs/2006.16668): dispatch and combine tensors with capacity.
# - Fedus, Zoph, Shazeer 2021, [*Switch Transformers*](https://arxiv.org/abs/2101.03961): top-1 with the raw router probability.
# - Jiang et al. 2024, [*Mixtral of Experts*](https://arxiv.org/abs/2401.04088): top-2, softmax over the top-$k$ logits.
# - Gale et al. 2022, [*MegaBlocks*](https://arxiv.org/abs/2211.15841): sorted, dropless dispatch with grouped matrix multiplies.
