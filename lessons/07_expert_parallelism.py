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
# # 07 · Expert parallelism: experts on several processes
#
# **Goal.** When the experts no longer fit on one device, each device (a *rank*) keeps only some of
# them and the tokens travel to their experts and back, with two **all-to-all** exchanges per
# layer. You will
#
# 1. compute how many rows each rank sends to each other rank (the *splits*),
# 2. regroup the rows a rank receives so its local experts can run a grouped GEMM,
# 3. run the layer on 2 processes with `torch.distributed` (gloo on CPU, NCCL on GPUs) and check
#    that outputs **and gradients** equal the single-process `SparseMoE`,
# 4. see the traffic between ranks, the trade-off between a dropless and a capacity-padded
#    exchange, and what happens when a rank fails.
#
# Time: 30 minutes. Two processes on one machine (Binder has 2 GB: that is enough).

# %%
# NBVAL_IGNORE_OUTPUT
import inspect

import torch

import moe_lab
from moe_lab import SparseMoE, seed_everything
from moe_lab.checks.parallel import check_local_expert_order, check_send_splits
from moe_lab.systems.parallel import (
    ExpertParallelError,
    RemoteExperts,
    expert_owner,
    local_expert_order,
    run_expert_parallel,
    send_splits,
)
from moe_lab.viz.parallel import (
    exchange_cost_figure,
    exchange_cost_table,
    tokens_sent_figure,
    tokens_sent_table,
)

moe_lab.print_environment()

# %% [markdown]
# ## The math
#
# $W$ ranks; each holds $N_r$ of the tokens, a copy of the router, and a contiguous block of
# $E_\text{local} = E / W$ experts: rank $r$ owns experts $rE_\text{local}, \dots,
# (r+1)E_\text{local}-1$, so $\text{owner}(e) = \lfloor e / E_\text{local} \rfloor$.
#
# | symbol | meaning | in code |
# |---|---|---|
# | $W$, $r$ | world size, rank | `world_size`, `rank` |
# | $E_\text{local}$ | experts per rank, $E/W$ | `E // world_size` |
# | $c_r[e]$ | assignments of rank $r$'s tokens to expert $e$ | `tokens_per_expert` |
# | $S[r, d]$ | rows rank $r$ sends to rank $d$: $\sum_{e:\,\text{owner}(e)=d} c_r[e]$ | `send_splits` |
# | $R[s, e]$ | rows rank $r$ receives from source $s$ for local expert $e$ | `recv_counts` |
#
# One forward pass is the sorted dispatch of lesson 06 with the grouped GEMM replaced by a round
# trip (Megatron-LM's all-to-all token dispatcher, DeepSpeed-MoE, GShard):
#
# 1. route and sort the $N_rK$ assignments by expert (so also by owner rank);
# 2. **count exchange**: one `all_to_all_single` of the $E$ counts tells every rank $R[s, e]$; the
#    sizes go to the host (`.tolist()`: a sync), because the next collective needs them;
# 3. **dispatch**: `all_to_all_single(out, x_sorted, output_split_sizes=R.sum(1),
#    input_split_sizes=S[r])`, uneven sizes;
# 4. regroup the received rows by local expert, 5. grouped GEMM on the local experts,
# 6. undo the regroup and **combine**: the same all-to-all with the splits swapped,
# 7. weight and sum over $K$ as in one process.
#
# Autograd: the backward of an all-to-all is the all-to-all of the gradients with the input and
# output splits swapped. The router is replicated, so its gradient is summed over ranks
# (`all_reduce`); each expert's gradient stays on its owner.
#
# `all_to_all_single` (one tensor, `input_split_sizes` / `output_split_sizes`) handles uneven
# splits on gloo and NCCL. gloo's list form `all_to_all` (a list of tensors in, a list out)
# insists on equal sizes (it raises `invalid tensor size`), so we never use it.

# %%
# NBVAL_CHECK_OUTPUT
print("owner of experts 0..7 with W=2:", expert_owner(8, 2).tolist())
print("owner of experts 0..5 with W=3:", expert_owner(6, 3).tolist())


# %% [markdown]
# ## Build 1: the send splits
#
# Write `send_splits(topk_idx, num_experts, world_size)` returning a (W,) tensor: how many rows
# this rank sends to each rank. One row per (token, expert) assignment.

# %%
def my_send_splits(topk_idx, num_experts, world_size):
    """topk_idx (N, K) -> (W,) rows this rank sends to each rank."""
    # owner of each assignment, then count per rank
    raise NotImplementedError("your code here")


# %%
ok_send_splits = check_send_splits(my_send_splits)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def my_send_splits_solution(topk_idx, num_experts, world_size):
    owner = topk_idx.reshape(-1) // (num_experts // world_size)  # (N*K,) rank of each assignment
    return torch.bincount(owner, minlength=world_size)  # (W,) a rank with no rows still gets 0


solution_passed = check_send_splits(my_send_splits_solution)

# %% [markdown]
# **In the package:** `moe_lab.systems.parallel.send_splits`.
#
# From here on we use your function if it passed, and the package's
# `moe_lab.systems.parallel.send_splits` otherwise.

# %%
# NBVAL_CHECK_OUTPUT
send_splits_fn = my_send_splits if ok_send_splits else send_splits
topk_idx = torch.tensor([[0, 3], [3, 2], [1, 0]])  # (N=3, K=2), E=4
print("W=2:", send_splits_fn(topk_idx, 4, 2).tolist())
print("W=4:", send_splits_fn(topk_idx, 4, 4).tolist())


# %% [markdown]
# ## Build 2: regroup what arrives
#
# Rows arrive source rank by source rank, and within a source, local expert by local expert.
# `recv_counts[s, e]` says how many. The grouped GEMM needs each local expert's rows contiguous.
# Write `local_expert_order(recv_counts)` returning indices such that `x_recv[order]` is grouped
# by local expert (Megatron calls this `sort_chunks_by_idxs`).

# %%
def my_local_expert_order(recv_counts):
    """recv_counts (W, E_local) -> (R,) indices that group the received rows by local expert."""
    # label every received row with its local expert, then sort by the label
    raise NotImplementedError("your code here")


# %%
ok_local_order = check_local_expert_order(my_local_expert_order)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def my_local_expert_order_solution(recv_counts):
    world_size, local_experts = recv_counts.shape
    chunk_expert = torch.arange(local_experts).repeat(world_size)  # (W*E_local,) source-major
    expert_of_row = chunk_expert.repeat_interleave(recv_counts.reshape(-1))  # (R,)
    return torch.argsort(expert_of_row, stable=True)  # (R,)


solution_passed = check_local_expert_order(my_local_expert_order_solution)

# %% [markdown]
# **In the package:** `moe_lab.systems.parallel.local_expert_order`.
#
# From here on we use your function if it passed, and the package's
# `moe_lab.systems.parallel.local_expert_order` otherwise.

# %%
# NBVAL_CHECK_OUTPUT
local_order_fn = my_local_expert_order if ok_local_order else local_expert_order
recv_counts = torch.tensor([[2, 1], [1, 2]])  # from source 0: e0 x2, e1 x1; source 1: e0 x1, e1 x2
order = local_order_fn(recv_counts)
print("order:", order.tolist())
print("local expert of each row after the regroup:",
      torch.tensor([0, 0, 1, 0, 1, 1])[order].tolist())

# %% [markdown]
# ## The package's implementation
#
# `moe_lab.systems.parallel.RemoteExperts` stands in for `Experts` inside the *same* `dispatch_sorted` of
# lesson 06: its `forward_grouped` does the round trip. Read it:

# %%
print(inspect.getsource(RemoteExperts.forward_grouped))

# %% [markdown]
# ## Run it on 2 processes
#
# `run_expert_parallel` starts `world_size` processes (`torch.multiprocessing`, start method
# `spawn`), joins them into a process group on a free port of 127.0.0.1, gives rank $r$ the $r$-th
# shard of the tokens and its block of experts, runs forward and backward with the incoming
# gradient `grad_y`, and returns outputs, gradients and the traffic to this notebook.
#
# Which backend and device the ranks use depends on the machine: NCCL with one GPU per rank
# where there are at least 2 GPUs (Kaggle's 2 x T4), otherwise gloo **on CPU tensors**: on a
# laptop, on Binder, and on Colab's single GPU too, where both ranks compute on the CPU and the
# GPU stays idle (NCCL needs a GPU per rank; `run_expert_parallel(..., backend="gloo",
# device="cuda")` would put both ranks' tensors on the one GPU, with gloo copying them through
# the host). The results below are the same either way; the next cell prints which ran here.

# %%
# NBVAL_CHECK_OUTPUT
seed_everything(0)
moe = SparseMoE(32, 64, 8, 2)  # D=32, F=64, E=8, K=2: 4 experts per rank on 2 ranks
x = torch.randn(64, 32)  # (N, D)
grad_y = torch.randn(64, 32)  # (N, D)
result = run_expert_parallel(moe, x, grad_y, world_size=2, timeout_s=120)
print("tokens per rank:", result.token_splits)
print("rows sent (row = source rank, column = destination):")
print(result.tokens_sent)

# %%
# NBVAL_IGNORE_OUTPUT
# (depends on the machine: gloo on CPU tensors without 2 GPUs, NCCL with them)
print("backend:", result.backend, "| ranks computed on:", result.device)

# %%
# NBVAL_CHECK_OUTPUT
x_ref = x.clone().requires_grad_(True)
reference = moe(x_ref)
reference.y.backward(grad_y)


def same(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


print("output y           equal:", same(result.y, reference.y))
print("gradient of x      equal:", same(result.grad_x, x_ref.grad))
print("gradient of router equal:", same(result.grad_router, moe.router.weight.grad))
for name, param in moe.experts.named_parameters():
    print(f"gradient of {name:<6} equal:", same(result.grad_experts[name], param.grad))
print("tokens_per_expert  equal:", torch.equal(result.tokens_per_expert,
                                               reference.tokens_per_expert))

# %%
# NBVAL_IGNORE_OUTPUT
print(f"2 processes, start to finish: {result.seconds:.1f} s (mostly starting Python and torch)")

# %% [markdown]
# ## Visualise: who sends to whom

# %%
# NBVAL_CHECK_OUTPUT
table = tokens_sent_table(result.tokens_sent)
print(f"{table.total} rows, {table.total - table.local} cross between ranks "
      f"({100 * table.remote_share:.0f} %)")

# %%
# NBVAL_IGNORE_OUTPUT
# (draws the rows sent printed above)
tokens_sent_figure(table)

# %% [markdown]
# With balanced routing and $W$ ranks, about $(W-1)/W$ of the rows cross ranks: half on 2 ranks,
# 7/8 on 8. That traffic, twice per layer (dispatch and combine) and again in the backward, is
# why expert parallelism wants fast interconnects and why DeepSeek-V3 limits each token to experts
# on a few nodes.
#
# ## Dropless vs capacity-padded exchange
#
# What we ran is **dropless**: the sizes are data-dependent, so the ranks first exchange counts and
# the host reads them before the token exchange (a sync that stalls the GPU pipeline). The
# classic alternative (GShard, Switch) is **capacity-padded**: every source sends exactly $C$ rows
# per expert, so all shapes are fixed, there is no count exchange and no sync, and the collective
# can be captured in a CUDA graph or compiled. The price: overflowing assignments are dropped and
# empty slots are sent as padding. For the routing we just ran:

# %%
# NBVAL_CHECK_OUTPUT
costs = exchange_cost_table(result.routed, result.token_splits, top_k=2,
                            capacity_factors=(1.0, 1.25, 2.0))
print(f"{'mode':<14}{'C':>5}{'rows sent':>11}{'useful':>8}{'padding':>9}{'dropped':>9}"
      f"{'count exchange':>16}")
for c in costs:
    print(f"{c.mode:<14}{c.capacity or '-':>5}{c.rows_sent:>11}{c.useful:>8}{c.padding:>9}"
          f"{c.dropped:>9}{str(c.count_exchange):>16}")

# %%
# NBVAL_IGNORE_OUTPUT
# (draws the table printed above)
exchange_cost_figure(costs)

# %% [markdown]
# Megatron-LM offers both (`--moe-expert-capacity-factor` with `--moe-pad-expert-input-to-capacity`
# for the padded path; dropless by default with the all-to-all dispatcher); DeepSeek-V3 and
# megablocks are dropless.
#
# ## When a rank fails
#
# A rank that raises must not leave the others waiting forever inside a collective. The launcher
# sets a timeout on the process group and on the whole run, and when one rank raises it stops the
# others and raises one clear error here. `fail_rank=1` makes rank 1 raise before the exchange
# (rank 0 is then blocked in its all-to-all until the launcher stops it):

# %%
# NBVAL_CHECK_OUTPUT
try:
    run_expert_parallel(moe, x, grad_y, world_size=2, timeout_s=60, fail_rank=1)
except ExpertParallelError as error:
    print("ExpertParallelError:", error)

# %% [markdown]
# ## Summary
#
# - Expert parallelism shards the experts, not the tokens' computation: each rank runs its local
#   experts' grouped GEMM on the rows sent to it.
# - Two all-to-alls per layer forward (dispatch, combine) and two backward, with uneven split
#   sizes; the backward swaps the splits. The replicated router's gradient is all-reduced.
# - Dropless needs a count exchange and a host sync; capacity padding has fixed shapes but drops
#   and pads.
# - The result equals the single-process layer, outputs and gradients, up to float rounding.

# %% [markdown]
# ## Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/07.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package, and short answers reveal a model answer once you have written yours. The English /
# 한국어 buttons switch the language. A viewer without a kernel shows the questions with each
# answer in a collapsed block.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(7)

# %% [markdown]
# ## Exercises and interview questions
#
# 1. Run with `world_size=4` (E=8: 2 experts per rank; keep `x` at 64 tokens). How does the share
#    of rows crossing ranks change?
# 2. Make the routing collapse (scale up one row of `moe.router.weight`): what happens to the
#    traffic matrix, and to the padded exchange's drops?
# 3. Why is the router's gradient summed over ranks, but the experts' gradients are not?
# 4. Interview: "With 64 experts on 8 GPUs, which collective dominates an MoE layer's time, and
#    how would you overlap it with compute?"
# 5. Interview: "Why can't a dropless MoE layer be captured in a CUDA graph, and what do systems
#    do about it?"
#
# ## Further reading
#
# - Lepikhin et al. 2020, [*GShard*](https://arxiv.org/abs/2006.16668): expert parallelism with all-to-all and capacity.
# - Rajbhandari et al. 2022, [*DeepSpeed-MoE*](https://arxiv.org/abs/2201.05596); Gale et al. 2022, [*MegaBlocks*](https://arxiv.org/abs/2211.15841) (dropless).
# - [Megatron-LM `MoEAlltoAllTokenDispatcher`](https://github.com/NVIDIA/Megatron-LM/blob/main/megatron/core/transformer/moe/token_dispatcher.py) (`megatron/core/transformer/moe/token_dispatcher.py`).
# - DeepSeek-AI 2024, [*DeepSeek-V3 Technical Report*](https://arxiv.org/abs/2412.19437) (node-limited routing, DeepEP).
# - PyTorch: [`torch.distributed.all_to_all_single`](https://pytorch.org/docs/stable/distributed.html#torch.distributed.all_to_all_single).
