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
# # 06 · Efficiency: making the MoE layer fast
#
# **Goal.** An MoE layer is worth its parameters only if routing costs little beyond the *active*
# FLOPs. In this lesson you will
#
# 1. time four ways to compute the same layer (dense reference, per-expert loop, capacity-padded
#    `bmm`, sort + grouped GEMM) and check that they agree,
# 2. see *why* they differ: kernel launches per expert, gather and scatter copies, padding waste,
#    host syncs for the counts, using `torch.profiler`,
# 3. watch the costs scale as tokens and experts grow, and measure memory,
# 4. on a GPU: bf16 autocast and `torch.compile`; without one, the recorded GPU results.
#
# Time: 30 minutes. Runs on a CPU in about a minute; uses a GPU when there is one.

# %%
# NBVAL_IGNORE_OUTPUT
import torch
from torch.profiler import ProfilerActivity, profile

import moe_lab
from moe_lab import SparseMoE, seed_everything
from moe_lab.checks.efficiency import check_sort_by_expert, sort_by_expert_reference
from moe_lab.grouped_gemm import path_for
from moe_lab.systems.bench import (
    BenchShape,
    format_results,
    native_stderr_silenced,
    run_bench,
    time_interleaved,
)
from moe_lab.systems.decisions import decisions_for
from moe_lab.viz.efficiency import (
    RECORDED_GPU_RESULTS,
    bench_findings,
    bench_rows,
    load_recorded_bench,
    memory_figure,
    memory_order,
    padding_figure,
    padding_table,
    profile_figure,
    profile_reading,
    profile_summary,
    ratio_figure,
    ratio_table,
    scaling_figure,
)

moe_lab.print_environment()
HAS_GPU = moe_lab.pick_device().type == "cuda"  # MOE_LAB_DEVICE=cpu keeps a GPU out of it


# %% [markdown]
# ## The math
#
# Every strategy computes the same sum over the kept assignments of each token:
#
# $$y_n = \sum_{k:\,(n,k)\ \text{kept}} w_{n,k}\; \mathrm{FFN}_{e_{n,k}}(x_n),\qquad
# \mathrm{FFN}_e(x) = \big(\mathrm{silu}(x W^{gate}_e) \odot x W^{up}_e\big) W^{down}_e$$
#
# | symbol | meaning | in code |
# |---|---|---|
# | $N$ | tokens ($B \cdot T$) | `x.shape[0]` |
# | $D$, $F$ | model width, expert hidden width | `d_model`, `d_ff` |
# | $E$, $K$ | experts, experts per token | `num_experts`, `top_k` |
# | $e_{n,k}$, $w_{n,k}$ | chosen expert and its weight | `topk_idx`, `topk_weights` |
# | $M$ | kept assignments ($\le NK$) | `plan.sort_order.numel()` |
# | $C$ | capacity: rows per expert in the padded buffer | `plan.capacity` |
#
# **Active FLOPs.** A SwiGLU FFN is three matmuls of $2DF$ FLOPs per row, so the layer does
# $6DF \cdot NK$ FLOPs forward and about twice that backward, whatever $E$ is. The **dense limit**
# is exactly that work done as *one* FFN over $NK$ rows: no router, no sort, no gather, no scatter,
# one launch per matmul. `time / dense limit` is the price of routing; 1.0 would be free.
#
# | strategy | matmul FLOPs | launches (fwd) | copies | host syncs |
# |---|---|---|---|---|
# | `dense` (reference) | $E/K$ × active | 3 `bmm` | none | none |
# | `loop` | active | $3E$ `mm` (+ gather/scatter per expert) | gather + `index_add_` per expert | one per expert (`torch.where`) |
# | `padded` | $E C / (NK)$ × active | 3 `bmm` | into and out of an $(E, C, D)$ buffer | one (the busiest expert, if dropless) |
# | `sorted` | active | 3 grouped GEMMs | one gather, one scatter | none dropless; one copy of the offsets where the GEMM loops (below) |

# %% [markdown]
# ## Build: the sort at the heart of the fast path
#
# The `sorted` strategy lays the $NK$ assignments out so that each expert's rows are one
# contiguous segment; a grouped GEMM then runs all experts in one call. Write
# `sort_by_expert(topk_idx, num_experts)` returning `(order, tokens_per_expert)`: `order` ($NK$,)
# lists flat assignment ids `token * K + slot`, grouped by expert (expert 0's first), and
# `tokens_per_expert` ($E$,) the segment lengths.

# %%
def sort_by_expert(topk_idx, num_experts):
    """topk_idx (N, K) -> (order (N*K,) grouped by expert, tokens_per_expert (E,))."""
    # flatten topk_idx, argsort it, count each expert's rows
    raise NotImplementedError("your code here")


# %%
ok_sort = check_sort_by_expert(sort_by_expert)


# %% [markdown]
# **Solution** (click to expand)

# %% jupyter={"source_hidden": true}
def sort_by_expert_solution(topk_idx, num_experts):
    flat_expert = topk_idx.reshape(-1)  # (N*K,)
    order = torch.argsort(flat_expert, stable=True)  # (N*K,) stable: token order within an expert
    tokens_per_expert = torch.bincount(flat_expert, minlength=num_experts)  # (E,)
    return order, tokens_per_expert


solution_passed = check_sort_by_expert(sort_by_expert_solution)

# %% [markdown]
# **In the package:** `moe_lab.dispatch.make_routing_plan` (its `sort_order`).
#
# From here on we use your function if it passed, and the checker's reference
# `moe_lab.checks.efficiency.sort_by_expert_reference` otherwise.

# %%
# NBVAL_CHECK_OUTPUT
sort_fn = sort_by_expert if ok_sort else sort_by_expert_reference
topk_idx = torch.tensor([[2, 0], [1, 2], [0, 3]])  # (N=3, K=2), E=4
order, tokens_per_expert = sort_fn(topk_idx, 4)
print("order (token*K+slot):", order.tolist())
print("experts in order:    ", topk_idx.reshape(-1)[order].tolist())
print("tokens of each row:  ", (order // 2).tolist())
print("tokens_per_expert:   ", tokens_per_expert.tolist())


# %% [markdown]
# From here on the package's implementation does this (`moe_lab.make_routing_plan`). Read the four
# strategies in [`moe_lab/dispatch.py`](../moe_lab/dispatch.py); below we check they agree, forward and backward.
#
# ## Four strategies, one answer

# %%
# NBVAL_CHECK_OUTPUT
def forward_backward(strategy, x, grad_y, capacity_factor=None, seed=0):
    torch.manual_seed(seed)
    layer = SparseMoE(32, 64, 8, 2, dispatch=strategy, capacity_factor=capacity_factor)
    x = x.clone().requires_grad_(True)
    out = layer(x)
    out.y.backward(grad_y)
    return out.y, [x.grad] + [p.grad for p in layer.parameters()]


seed_everything(0)
x, grad_y = torch.randn(96, 32), torch.randn(96, 32)
for capacity_factor in (None, 1.0):
    y_ref, grads_ref = forward_backward("dense", x, grad_y, capacity_factor)
    for strategy in ("loop", "padded", "sorted"):
        y, grads = forward_backward(strategy, x, grad_y, capacity_factor)
        same_y = torch.allclose(y, y_ref, atol=1e-5, rtol=1e-4)
        same_grads = all(torch.allclose(g, r, atol=1e-5, rtol=1e-4)
                         for g, r in zip(grads, grads_ref, strict=True))
        print(f"capacity_factor={capacity_factor}: {strategy:>6} equals dense: "
              f"output {same_y}, gradients {same_grads}")

# %% [markdown]
# ## Where does the time go? The profiler
#
# `torch.profiler` records every operator. We profile one forward + backward of `loop` and
# `sorted` (and the others) at a small shape and count the calls that matter: matmuls (one kernel
# launch each on a GPU), the gathers and scatters, and `nonzero` (what `torch.where(mask)` runs:
# its output size depends on the data, so on a GPU the CPU must wait for it, a *host sync*).

# %%
# NBVAL_IGNORE_OUTPUT
OPS = ["aten::mm", "aten::bmm", "aten::_grouped_mm", "aten::index", "aten::index_select",
       "aten::index_add_", "aten::index_copy", "aten::nonzero",
       "moe_lab::segment_mm", "moe_lab::segment_mm_weight_grad"]
seed_everything(0)
x_prof = torch.randn(512, 64, requires_grad=True)  # (N, D)
summaries = {}
for strategy in ("dense", "loop", "padded", "sorted"):
    torch.manual_seed(0)
    layer = SparseMoE(64, 128, 8, 2, dispatch=strategy)
    layer(x_prof).y.sum().backward()  # warm-up (first calls probe kernels)
    # the profiler's C++ side prints "USDT: ... profiler_start/stop" lines: silenced here
    with native_stderr_silenced(), \
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        layer(x_prof).y.sum().backward()
    summaries[strategy] = profile_summary(prof.key_averages(), OPS)
for strategy in ("loop", "sorted"):
    print(f"--- {strategy}: top operators by self CPU time")
    for name, calls, ms in summaries[strategy].top_ops:
        print(f"{name:<40} {calls:>4} calls {ms:8.2f} ms")

# %%
# NBVAL_IGNORE_OUTPUT
# (the counts depend on the torch version: with F.grouped_mm, torch >= 2.8, or without it)
print(f"{'op':<32}" + "".join(f"{s:>8}" for s in summaries))
for op in OPS:
    print(f"{op:<32}" + "".join(f"{summaries[s].op_calls[op]:>8}" for s in summaries))
print()
for line in profile_reading(summaries, num_experts=8):
    print(line)
grouped_mm_path_here = path_for(torch.randn(1024, 64), torch.randn(8, 64, 128))
print(f"grouped GEMM path here: {grouped_mm_path_here} (torch {torch.__version__})")

# %%
# NBVAL_CHECK_OUTPUT
# the counts that hold on every torch (the table above also counts torch's own kernels, which
# differ between versions): grouped matmuls of sorted, nonzero and index_add_ per expert of loop
sorted_calls, loop_calls = summaries["sorted"].op_calls, summaries["loop"].op_calls
print("sorted: grouped matmuls (moe_lab::segment_mm) in forward + backward:",
      sorted_calls["moe_lab::segment_mm"] + sorted_calls["moe_lab::segment_mm_weight_grad"],
      "| nonzero:", sorted_calls["aten::nonzero"])
print("loop:   nonzero per expert:", loop_calls["aten::nonzero"] / 8,
      "| index_add_ per expert:", loop_calls["aten::index_add_"] / 8)

# %%
# NBVAL_IGNORE_OUTPUT
# (draws the table above: its counts depend on the torch version)
profile_figure(summaries, title="calls in one forward + backward (N=512, E=8, K=2)")

# %% [markdown]
# Read the counts (the lines under the table are computed from them, and say which path this
# torch ran):
#
# - **loop**: a few `mm` per expert (forward and backward) plus one `nonzero`, one gather and
#   one `index_add_` per expert. On a GPU each is a kernel launch of a few microseconds and each
#   `nonzero` stops the CPU until the GPU catches up; with 64 experts and small segments the
#   launches, not the FLOPs, set the time.
# - **sorted**: one gather in, one scatter out, and 9 grouped matmuls (3 forward, 6 backward)
#   whatever $E$, each one call of the package's operator `moe_lab::segment_mm`. Which kernel runs
#   inside is decided from the device, its compute capability, the torch version and the dtype
#   (`moe_lab.grouped_gemm.grouped_mm_path`, printed above):
#   - `fused`: torch's grouped GEMM kernel, **one kernel per call**, offsets read on the GPU,
#     no host sync. Only on H100/H200 (sm_90) and B200 (sm_100), only in bf16.
#   - `cpu_grouped_mm`: torch's `F.grouped_mm` on a CPU (torch >= 2.10): a C++ loop of one `mm`
#     per group (the profiler counts its child `mm` calls too), with no Python, gather, scatter
#     or `nonzero` around it.
#   - `segment_loop`: one `mm` per expert segment from offsets copied to the host once per
#     layer. Everywhere else: a T4 or an A100 in any dtype, an H100 in fp32, Apple MPS, a CPU
#     with torch < 2.10. Here `sorted` launches as many matmuls as `loop`, but without its
#     gathers, scatters and per-expert syncs: one sync per layer. (torch's own `F.grouped_mm`
#     would run there too, but loops the same way and copies the offsets to the host in every
#     one of the 9 calls.) Against `padded`, the loop wins when the experts' loads are uneven
#     (`padded` computes $E \cdot C$ rows, the loop exactly $NK$); against `loop`, it saves the
#     $E$ gathers, scatters and `nonzero` syncs. So the package keeps `sorted` on every device.
# - **padded**: a fixed number of `bmm`, but on $E \cdot C$ rows: padding is computed and thrown away.
# - **dense**: also a few `bmm`, but every expert on every token: $E/K$ times the FLOPs.

# %% [markdown]
# ## Padding waste
#
# A capacity-padded buffer gives every expert $C = \lceil c \cdot NK/E \rceil$ rows. A busy
# expert overflows (dropped assignments), a quiet one leaves rows empty, and the `bmm` computes
# them all. Dropless padding sets $C$ to the busiest expert's load: nothing dropped, more waste.

# %%
# NBVAL_CHECK_OUTPUT
seed_everything(0)
layer = SparseMoE(64, 128, 8, 2)
routing = layer.router(torch.randn(512, 64))
demand = torch.bincount(routing.topk_idx.reshape(-1), minlength=8)  # (E,)
print("assignments per expert:", demand.tolist())
for capacity_factor in (1.0, 1.25, 2.0, None):
    # dropless padding: C = the busiest expert's load; otherwise C = ceil(c * N * K / E)
    capacity = (int(demand.max()) if capacity_factor is None
                else moe_lab.compute_capacity(capacity_factor, 512, 2, 8))
    table = padding_table(demand, capacity)
    print(f"capacity_factor={capacity_factor}: C={table.capacity:4d}  padding "
          f"{100 * table.waste:5.1f} % of {table.slots} rows, dropped {table.dropped}")

# %%
# NBVAL_IGNORE_OUTPUT
# (draws the capacity-1.25 row printed above)
padding_figure(padding_table(demand, moe_lab.compute_capacity(1.25, 512, 2, 8)),
               title="capacity factor 1.25")

# %% [markdown]
# ## Visualise: timings against the dense limit (`moe_lab.systems.bench`)
#
# `moe_lab.systems.bench.run_bench` times forward + backward of each strategy and of the dense limit,
# interleaved repeat by repeat so a noisy machine slows them alike, and reports medians. These
# are small CPU shapes so the lesson stays quick; `python -m moe_lab.bench` runs the target
# shapes (minutes). Your numbers will differ from anyone else's; the *ratios* are what to read.
# Small shapes on a shared machine are noisy: a ratio below 1 (faster than the dense limit, which
# does the same FLOPs with less work) or a jump between neighbouring shapes means the machine was
# busy during that run. Rerun the cell, or raise `repeats`; the stored outputs of this notebook
# come from a busy 2-core machine.

# %%
# NBVAL_IGNORE_OUTPUT
cpu_shapes = [BenchShape(512, 64, 128, 8, 2), BenchShape(256, 32, 32, 32, 4),
              BenchShape(512, 64, 128, 4, 1)]
cpu_results = run_bench(cpu_shapes, ("sorted", "loop", "padded"), device="cpu", repeats=5)
print(format_results(cpu_results))
print()
for line in bench_findings(bench_rows(cpu_results)):  # the conclusions, from the numbers above
    print(line)

# %%
# NBVAL_IGNORE_OUTPUT
ratio_figure(bench_rows(cpu_results), title="this machine (CPU, fp32): time / dense limit")

# %% [markdown]
# The lines under the table are what this run supports, worded from its own numbers: for each
# shape whose timings were steady, whether `sorted` beat `loop`; a ratio whose repeats varied
# more than 2x (`spread`), or that beats the dense limit, is named as unreliable and drawn
# hatched, not read as a finding. Rerun the cell on a quiet machine to turn those into findings.

# %% [markdown]
# ## Scaling: more tokens, more experts
#
# With more tokens each expert's segment grows, and the per-expert overheads of `loop` are spread
# over more rows. With more experts at fixed active FLOPs (fine-grained experts, DeepSeek style)
# the segments shrink and `loop` pays $E$ times its overheads; `sorted` pays them once.

# %%
# NBVAL_IGNORE_OUTPUT
token_rows = bench_rows(run_bench([BenchShape(n, 32, 64, 8, 2) for n in (128, 512, 2048)],
                                  ("sorted", "loop", "padded"), device="cpu", repeats=3))
expert_rows = bench_rows(run_bench([BenchShape(256, 32, 32, e, 2) for e in (4, 16, 64)],
                                   ("sorted", "loop", "padded"), device="cpu", repeats=3))
for row in ratio_table(token_rows + expert_rows):
    print(row)
for line in bench_findings(token_rows + expert_rows):
    print(line)

# %%
# NBVAL_IGNORE_OUTPUT
scaling_figure(token_rows, x="tokens", y="median_ms", title="more tokens (D=32, F=64, E=8, K=2)")

# %%
# NBVAL_IGNORE_OUTPUT
scaling_figure(expert_rows, x="num_experts", y="ratio_to_dense_limit",
               title="more experts (N=256, D=32, F=32, K=2)")

# %% [markdown]
# ## Memory
#
# Each strategy keeps different intermediates for the backward pass. The profiler
# (`profile_memory=True`) adds up every allocation during one forward + backward (the traffic,
# not the peak). `dense` computes $E$ hidden activations per token and `padded` $E \cdot C$
# rows, against the $NK$ rows of `loop` and `sorted`; but the per-expert gathers, scatters and
# temporaries of `loop` count too, so which strategy allocates least depends on the shape: the
# cell prints the order it measured. On a GPU, `torch.cuda.max_memory_allocated` gives the peak
# (below).

# %%
# NBVAL_IGNORE_OUTPUT
allocated_mb = {name: s.allocated_bytes / 2**20 for name, s in summaries.items()}
for name, mb in allocated_mb.items():
    print(f"{name:>6}: {mb:6.1f} MB allocated in one forward + backward")
print(memory_order(allocated_mb))
memory_figure(allocated_mb, title="allocated in one forward + backward (N=512, D=64, F=128, E=8)")

# %% [markdown]
# ## On a GPU: bf16 autocast and `torch.compile`
#
# On an NVIDIA GPU the bench runs in the GPU's half precision, decided from its compute
# capability (`moe_lab.systems.decisions`): bf16 where it has bf16 tensor cores (sm_80 and newer:
# A100, H100), fp16 on a T4 (sm_75), whose `torch.cuda.is_bf16_supported()` says True through an
# emulation several times slower. The cell below runs only when CUDA is present: it times the
# layer in fp32, with fp32 weights under `torch.autocast` to that dtype, with weights in it, and
# compiled by `torch.compile` where the decision says compile pays (inductor does not compile
# bf16 on sm_75: it would run eagerly), and records each one's peak memory. What the code does
# under autocast:
#
# - autocast casts the matmuls it knows (`mm`, `linear`, `bmm`), but not a custom operator: the
#   grouped GEMM (`moe_lab::segment_mm`) casts both operands to the autocast dtype itself;
# - the router switches autocast off and computes its logits in fp32 (`router_dtype`, lesson 01),
#   so under autocast the routing is the fp32 routing;
# - "fp32" is true fp32: torch leaves TF32 off for matmuls by default
#   (`torch.backends.cuda.matmul.allow_tf32 = False`) and the package never turns it on. On an
#   A100 or H100, `torch.set_float32_matmul_precision("high")` would run fp32 matmuls in TF32.

# %%
# NBVAL_IGNORE_OUTPUT
if HAS_GPU:
    device = torch.device("cuda")
    decided = decisions_for(device)
    half = decided.dtype  # bf16 on sm_80+, fp16 on a T4
    name = str(half).removeprefix("torch.")
    print({key: value for key, value in decided.as_record().items()})
    shape = BenchShape(4096, 512, 1024, 8, 2)
    seed_everything(0)
    layer = SparseMoE(shape.d_model, shape.d_ff, shape.num_experts, shape.top_k).to(device)
    layer_half = SparseMoE(shape.d_model, shape.d_ff, shape.num_experts, shape.top_k)
    layer_half.load_state_dict(layer.state_dict())
    layer_half = layer_half.to(device, half)
    x_gpu = torch.randn(shape.tokens, shape.d_model, device=device, requires_grad=True)
    x_half = x_gpu.detach().to(half).requires_grad_(True)

    def fp32():
        layer(x_gpu).y.sum().backward()

    def fp32_weights_autocast():
        with torch.autocast("cuda", dtype=half):
            layer(x_gpu).y.float().sum().backward()

    def half_weights():
        layer_half(x_half).y.float().sum().backward()

    runs = {"fp32": fp32, f"autocast {name}": fp32_weights_autocast, name: half_weights}
    if decided.compile.worth_it:
        try:  # compile once here, outside the timing
            compiled = torch.compile(layer_half, fullgraph=True)
            compiled(x_half).y.float().sum().backward()
            runs[f"{name} + torch.compile"] = lambda: compiled(x_half).y.float().sum().backward()
        except Exception as error:  # report it, time the rest
            print(f"torch.compile failed here: {type(error).__name__}: {str(error)[:200]}")
    else:
        print(f"torch.compile not timed: {decided.compile.reason}")
    for name, ms in time_interleaved(runs, device, repeats=10, warmup=3).items():
        print(f"{name:>22}: {ms:7.2f} ms forward + backward at {shape}")
    for name, run in runs.items():
        torch.cuda.reset_peak_memory_stats()
        run()
        print(f"{name:>22}: peak memory {torch.cuda.max_memory_allocated() / 2**20:7.0f} MB")
    print(format_results(run_bench(device=device)))
else:
    print("No CUDA GPU in this session: skipping the live GPU run (see the recorded results below).")

# %% [markdown]
# ## Recorded GPU results
#
# Results recorded on an NVIDIA GPU live in `moe_lab/results/bench_gpu.json`, written by
#
# ```
# python -m moe_lab.gpu_check
# ```
#
# (the command that checks the whole course on a GPU; `python -m moe_lab.bench --json
# moe_lab/results/bench_gpu.json` writes the bench alone), with the device, torch version and date
# inside. Only numbers from such a run are shown here, beside the CPU run recorded in
# `moe_lab/results/bench_cpu.json`.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import display

recorded = load_recorded_bench(RECORDED_GPU_RESULTS)
if recorded is None:
    print("No GPU results are recorded yet (no moe_lab/results/bench_gpu.json).")
    print("To produce them, run on an NVIDIA GPU:")
    print("    python -m moe_lab.gpu_check")
else:
    print("recorded with:", recorded.command)
    print(recorded.environment)
    cpu_recorded = load_recorded_bench(RECORDED_GPU_RESULTS.with_name("bench_cpu.json"))
    cpu_by_shape = {row["shape"]: row for row in ratio_table(cpu_recorded.rows)} if cpu_recorded else {}
    for row in ratio_table(recorded.rows):
        print("GPU", row)
        if row["shape"] in cpu_by_shape:
            print("CPU", cpu_by_shape[row["shape"]])
    display(ratio_figure(recorded.rows, title=f"recorded on {recorded.environment.get('gpu', 'GPU')}"
                         f" ({recorded.environment.get('dtype', '')}): time / dense limit"))

# %% [markdown]
# ## Summary
#
# - All strategies compute the same sum; they differ in launches, copies, padding and syncs.
# - `loop`: one small matmul (and one host sync) per expert: fine for a few big experts, slow for
#   many small ones. `padded`: fixed shapes, one `bmm`, but padding FLOPs and dropped tokens.
#   `sorted`: a sort, one gather, grouped GEMMs and one scatter: the fewest launches and copies,
#   which on a GPU brings it closest to the dense limit; on a small, busy CPU read your own table.
# - Profile before optimising: call counts tell you which overhead dominates.
# - On a GPU, bf16 (fp16 on a T4) halves the bytes moved, and `torch.compile` fuses the
#   elementwise work around the matmuls. The dropless sorted layer compiles as one graph
#   (`fullgraph=True`): counts and offsets stay tensors and the grouped GEMM is one operator.
#   With a capacity factor the kept rows' count depends on the data (a boolean mask), which
#   torch.compile can only trace as a dynamic shape.

# %% [markdown]
# ## Self-check quiz
#
# Check yourself on this lesson (`moe_lab/quizzes/06.yaml`): pick or type an answer and press
# **Check**; a right answer is marked, a wrong one shows why. Numeric answers are computed by the
# package, and short answers reveal a model answer once you have written yours. The English /
# 한국어 buttons switch the language. A viewer without a kernel shows the questions with each
# answer in a collapsed block.

# %%
# NBVAL_IGNORE_OUTPUT
from moe_lab.widgets.quiz import show_quiz

show_quiz(6)

# %% [markdown]
# ## Exercises and interview questions
#
# 1. Why is the per-expert loop slow on a GPU even though it does no extra FLOPs?
# 2. For $N=4096$, $K=2$, $E=64$ and capacity factor 1.25, how many rows does the padded buffer
#    hold, and what share is padding if routing is perfectly balanced? And if 4 experts get half
#    the tokens?
# 3. Where are the host syncs in each strategy? Why does the fused grouped GEMM need none, while
#    the loop of `mm` must read the offsets on the host? (Hint: who launches each `mm`.)
# 4. Change `cpu_shapes` to grow $K$ at fixed $E$: which strategy suffers?
# 5. Interview: "Your MoE layer is 3x slower than a dense layer with the same active FLOPs. What
#    do you measure first?"
#
# ## Further reading
#
# - Gale et al. 2022, [*MegaBlocks: Efficient Sparse Training with Mixture-of-Experts*](https://arxiv.org/abs/2211.15841)
#   (dropless MoE, block-sparse grouped GEMMs).
# - Lepikhin et al. 2020, [*GShard*](https://arxiv.org/abs/2006.16668) and Fedus et al. 2021, [*Switch Transformers*](https://arxiv.org/abs/2101.03961) (capacity, padding).
# - [Hugging Face transformers' `grouped_mm` experts](https://github.com/huggingface/transformers/blob/main/src/transformers/integrations/moe.py), [vLLM's `fused_moe` (Triton) kernels](https://github.com/vllm-project/vllm/tree/main/vllm/model_executor/layers/fused_moe).
# - PyTorch: [`torch.profiler`](https://pytorch.org/docs/stable/profiler.html), [`torch.nn.functional.grouped_mm`](https://pytorch.org/docs/stable/nn.functional.html), [`torch.compile`](https://pytorch.org/docs/stable/generated/torch.compile.html).
