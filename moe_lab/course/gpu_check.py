"""One command that checks the whole course on a GPU, and proves itself on a CPU. Issue 14.

    python -m moe_lab.gpu_check                        # cuda if present, else cpu (minutes)
    python -m moe_lab.gpu_check --device cpu --quick   # the CI run: a subset, 1-2 minutes

Steps, each a function below; a step that fails is recorded and the others still run:

    environment  device name, torch, CUDA, GPUs, and the device's decisions (compute
                 capability, native bf16, dtype, loss scaling, grouped-GEMM path, compile, TF32:
                 moe_lab.systems.decisions)
    bench        python -m moe_lab.bench's timings in the device's dtype (bf16 on sm_80+, fp16
                 on a T4, fp32 on CPU), every strategy against the dense limit and sorted against
                 loop, judged against DESIGN.md's targets (a missed target is flagged)
    equality     every dispatch strategy on the device equal to the CPU in fp32, outputs and
                 gradients, in fp32 and bf16 (each with its tolerance), dropless and at a
                 capacity factor of 1
    syncs        host syncs per forward + backward (moe_lab.systems.syncs), CUDA's own count on a GPU
    parallel     expert parallelism, 2 ranks (NCCL with 2 GPUs, gloo with CUDA tensors on one,
                 gloo on the CPU), equal to the single-process layer
    training     lesson 05's training runs in the device's dtype (fp16 with loss scaling on a
                 T4), logs beside the CPU ones
    lessons      every lesson under nbval on the device (MOE_LAB_DEVICE), its time and peak
                 memory (the kernel reports it: moe_lab.systems.device, MOE_LAB_PEAK_MEMORY_FILE)
    compile      the equality check, dropless, through torch.compile (last: the slowest step;
                 it stops at --budget seconds after the start and says so)

Everything goes under one results folder (``--out``; default ``moe_lab/results`` in a clone of
the repository, ``./moe_lab_results`` under the working directory when the package was
installed with pip), each file carrying the command that made it; a tag names the run: ``gpu``
on CUDA, the device type elsewhere, plus ``_quick``:

    bench_<tag>.json        the bench (moe_lab/results/bench_gpu.json is what lesson 06 shows)
    lesson05_<tag>/         the training logs (what lesson 05 shows beside the CPU runs)
    gpu_check_<tag>/        summary.txt (the table printed at the end), summary.json and one
                            JSON per step

``--quick`` abbreviates steps to fit CI (small shapes, fewer lessons, a truncated training run);
the summary says which and how. A step that checked nothing (no lessons found, every case past
``--budget``) is "skipped" with its reason, and the summary counts it; a FAILED row names its
error file; the first step that failed with a CUDA error is marked as the cause of later ones.
The exit code is 1 when any step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from moe_lab.dispatch import DISPATCH_STRATEGIES
from moe_lab.layer import SparseMoE
from moe_lab.systems import bench
from moe_lab.systems.decisions import Decisions, decisions_for
from moe_lab.systems.device import DEVICE_ENV, PEAK_MEMORY_ENV, environment_summary, pick_device
from moe_lab.systems.syncs import count_cuda_syncs, count_host_syncs

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PACKAGE_DIR.parent


def in_a_checkout(repo_dir: Path | None = None) -> bool:
    """Whether the package runs from a clone of the repository (not from site-packages)."""
    repo_dir = REPO_DIR if repo_dir is None else repo_dir
    return (repo_dir / "pyproject.toml").is_file() and (repo_dir / "notebooks").is_dir()


def default_results_dir() -> Path:
    """moe_lab/results in a clone; ./moe_lab_results when installed with pip (never inside
    site-packages)."""
    return REPO_DIR / "moe_lab" / "results" if in_a_checkout() else Path.cwd() / "moe_lab_results"


def find_lessons(explicit: Path | None = None) -> tuple[list[Path], list[Path]]:
    """The lesson notebooks, and the folders searched: ``--lessons`` if given, else the clone's
    notebooks/, else ./notebooks and ./ (a Colab or pip install run from a clone's folder)."""
    candidates = ([explicit] if explicit is not None
                  else [REPO_DIR / "notebooks", Path.cwd() / "notebooks", Path.cwd()])
    for folder in candidates:
        notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
        if notebooks:
            return notebooks, candidates
    return [], candidates


#: max |device - cpu| / max |cpu| allowed, per dtype (bf16 has 8 significant bits, fp16 11)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}
QUICK_LESSONS = ("00_start_here",)
QUICK_TRAINING_STEPS = 10


@dataclass(frozen=True)
class Run:
    """What this invocation checks and where it writes."""

    device: torch.device
    quick: bool
    out: Path
    command: str
    lesson_jobs: int
    deadline: float  # time.monotonic() after which long steps stop early
    lessons_dir: Path | None = None  # --lessons

    @property
    def tag(self) -> str:
        return ("gpu" if self.device.type == "cuda" else self.device.type) + \
            ("_quick" if self.quick else "")

    @property
    def check_dir(self) -> Path:
        return self.out / f"gpu_check_{self.tag}"

    @property
    def decisions(self) -> Decisions:
        return decisions_for(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.decisions.dtype

    def write_json(self, path: Path, payload: dict[str, object]) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"command": self.command, **payload}, indent=1, default=str),
                        encoding="utf-8")
        return path


@dataclass
class StepResult:
    """One row of the summary: ok / FAILED / skipped, how long, what it found, what was cut,
    and what it flags (a result past a target that is not a failure, e.g. a bench ratio)."""

    name: str
    status: str = "ok"
    seconds: float = 0.0
    note: str = ""
    abbreviated: str = ""  # why and how the step did less than the full check
    flagged: str = ""  # what the step found past a target (not a failure)
    files: list[str] = field(default_factory=list)


class CheckFailed(Exception):
    """A step ran and found something wrong (its files are written)."""


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------ steps


def step_environment(run: Run, result: StepResult) -> None:
    env = {**bench.environment(run.device, run.dtype), "torch_cuda": str(torch.version.cuda),
           "cuda_devices": str(torch.cuda.device_count() if torch.cuda.is_available() else 0)}
    result.files.append(_relative(run.write_json(run.check_dir / "environment.json", env)))
    decided = run.decisions.as_record()
    result.note = (f"{env.get('gpu', env['device'])}, torch {env['torch']}, CUDA {env['torch_cuda']}"
                   f"; {decided['compute_capability']}, native bf16 {decided['native_bf16']}, "
                   f"dtype {decided['dtype']}, grouped GEMM {decided['grouped_mm_path']}, "
                   f"TF32 {decided['tf32']}, compile {decided['compile']}")


def step_bench(run: Run, result: StepResult) -> None:
    shapes = bench.QUICK_SHAPES[:2] if run.quick else bench.FULL_SHAPES
    repeats = 3 if run.quick else 7
    if run.quick:
        result.abbreviated = f"{len(shapes)} small shapes, {repeats} repeats (full: the target shapes)"
    results = bench.run_bench(shapes, bench.STRATEGIES, dtype=run.dtype, device=run.device,
                              repeats=repeats)
    payload = bench.results_payload(results, bench.environment(run.device, run.dtype), run.command)
    path = run.out / f"bench_{run.tag}.json"
    result.files.append(_relative(run.write_json(path, payload)))
    sorted_ratios = [row["ratio_to_dense_limit"] for row in payload["results"]
                     if row["strategy"] == "sorted"]
    vs_loop = [row["ratio_to_loop"] for row in payload["results"] if row["strategy"] == "sorted"]
    paths = sorted({row["grouped_mm_path"] for row in payload["results"]
                    if row["strategy"] == "sorted"})
    result.note = (f"{str(run.dtype).removeprefix('torch.')}, grouped GEMM {'/'.join(paths)}: "
                   f"sorted / dense limit {min(sorted_ratios):.2f}-{max(sorted_ratios):.2f}, "
                   f"sorted / loop {min(vs_loop):.2f}-{max(vs_loop):.2f}")
    print(bench.format_results(results), flush=True)
    checks = bench.judge_targets(results)
    missed = [c for c in checks if not c.met]
    result.note += f"; DESIGN.md targets: {len(checks) - len(missed)}/{len(checks)} met"
    if missed:
        result.flagged = "; ".join(str(c) for c in missed)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (0 when both are empty)."""
    if want.numel() == 0:
        return 0.0
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def _forward_backward(layer: SparseMoE, x: torch.Tensor, grad_y: torch.Tensor,
                      call: Callable[[torch.Tensor], object]) -> dict[str, torch.Tensor]:
    """y, the routing, and the gradients of x and of every parameter, after y.backward(grad_y)."""
    x = x.detach().clone().requires_grad_(True)
    out = call(x)
    out.y.backward(grad_y)
    grads = {f"grad_{name}": p.grad for name, p in layer.named_parameters() if p.grad is not None}
    return {"y": out.y, "topk_idx": out.router.topk_idx, "grad_x": x.grad, **grads}


def _compare_strategy(strategy: str, dtype: torch.dtype, device: torch.device, *,
                      capacity_factor: float | None, compiled: bool,
                      compile_backend: str) -> dict[str, object]:
    """One strategy in ``dtype`` on ``device`` (optionally compiled) against the same layer, the
    same (dtype-rounded) weights and inputs, in fp32 on the CPU."""
    torch.manual_seed(0)
    reference = SparseMoE(32, 64, 8, 2, dispatch=strategy, capacity_factor=capacity_factor)
    x = torch.randn(96, 32).to(dtype)  # (N, D), rounded to dtype once: both sides see it
    grad_y = torch.randn(96, 32).to(dtype)  # (N, D)
    reference = reference.to(dtype).float()  # the weights rounded to dtype, as on the device
    layer = SparseMoE(32, 64, 8, 2, dispatch=strategy, capacity_factor=capacity_factor)
    layer.load_state_dict(reference.state_dict())
    layer = layer.to(device=device, dtype=dtype)
    want = _forward_backward(reference, x.float(), grad_y.float(), reference)
    call = torch.compile(layer, backend=compile_backend) if compiled else layer
    got = _forward_backward(layer, x.to(device), grad_y.to(device), call)
    same_routing = bool(torch.equal(got["topk_idx"].cpu(), want["topk_idx"]))
    errors = {name: _relative_error(got[name], want[name]) for name in want if name != "topk_idx"}
    worst = max(errors.values())
    return {"strategy": strategy, "dtype": str(dtype).removeprefix("torch."),
            "capacity_factor": capacity_factor, "compiled": compiled, "same_routing": same_routing,
            "errors": errors, "worst_error": worst, "tolerance": TOLERANCE[dtype],
            "ok": same_routing and worst <= TOLERANCE[dtype]}


def _equality(run: Run, result: StepResult, *, compiled: bool) -> None:
    compile_backend = "inductor"
    # fp32, and the device's dtype (bf16 on the CPU too: its kernels differ from fp32's)
    low = torch.bfloat16 if run.dtype == torch.float32 else run.dtype
    dtypes, capacity_factors = (torch.float32, low), (None, 1.0)
    if compiled:  # each case compiles afresh (seconds on a GPU): dropless only
        capacity_factors = (None,)
    if compiled and run.device.type == "cpu" and run.quick:
        # inductor compiles C++ for every graph: minutes on 2 cores. aot_eager traces the same
        # graphs (dynamo + AOT autograd, the backward included) and runs them eagerly.
        compile_backend, dtypes, capacity_factors = "aot_eager", (torch.float32,), (None,)
        result.abbreviated = ("torch.compile(backend='aot_eager'), fp32 dropless only: "
                              "inductor's C++ build takes minutes on a small CPU")
    cases, skipped = [], 0
    graph_breaks = 0
    for dtype in dtypes:
        for strategy in DISPATCH_STRATEGIES:
            for capacity_factor in capacity_factors:
                if time.monotonic() > run.deadline:
                    skipped += 1
                    continue
                with _quiet_compiler() as counters:
                    case = _compare_strategy(strategy, dtype, run.device,
                                             capacity_factor=capacity_factor, compiled=compiled,
                                             compile_backend=compile_backend)
                    graph_breaks += sum(counters["graph_break"].values())
                if compiled:  # a case that compiled nothing ran eagerly: not a compile check
                    case["graphs_compiled"] = counters["stats"]["unique_graphs"]
                    case["ok"] = case["ok"] and case["graphs_compiled"] > 0
                cases.append(case)
    if skipped:
        result.abbreviated = f"{skipped} cases not run: past the --budget"
    name = "compile" if compiled else "equality"
    if not cases:  # nothing checked: not "ok"
        result.status = "skipped"
        result.note = f"0 cases run: all {skipped} past the --budget (raise --budget)"
        return
    payload = {"device": str(run.device), "cases": cases}
    if compiled:
        payload.update(compile_backend=compile_backend, graph_breaks=graph_breaks)
    result.files.append(_relative(run.write_json(run.check_dir / f"{name}.json", payload)))
    failed = [c for c in cases if not c["ok"]]
    result.note = (f"{len(cases) - len(failed)}/{len(cases)} cases equal to the CPU "
                   f"(fp32 tol {TOLERANCE[torch.float32]:g}, "
                   f"{str(low).removeprefix('torch.')} tol {TOLERANCE[low]:g})")
    if compiled:
        result.note += f", {graph_breaks} graph breaks"
    if failed:
        raise CheckFailed("; ".join(
            f"{c['strategy']} {c['dtype']} cf={c['capacity_factor']}: error {c['worst_error']:.1e}"
            + ("" if c["same_routing"] else ", routing differs") for c in failed[:4]))


@contextlib.contextmanager
def _quiet_compiler() -> Iterator[dict]:
    """A fresh torch.compile state for one case (so no case falls back to eager for having hit
    the recompile limit), its graph breaks counted rather than printed."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch._logging.set_logs(dynamo=logging.ERROR, graph_breaks=False, recompiles=False)
        try:
            yield torch._dynamo.utils.counters
        finally:
            torch._logging.set_logs()


def step_equality(run: Run, result: StepResult) -> None:
    _equality(run, result, compiled=False)


def step_compile(run: Run, result: StepResult) -> None:
    _equality(run, result, compiled=True)


def step_syncs(run: Run, result: StepResult) -> None:
    from moe_lab.lm.model import ModelConfig, TinyLM

    torch.manual_seed(0)
    model = TinyLM(ModelConfig(n_layers=2)).to(run.device)
    ids = torch.randint(0, 256, (4, 64), device=run.device)
    model(ids, ids).loss.backward()  # warm up: first calls allocate and probe kernels
    counts = {}
    with count_host_syncs() as syncs:
        model(ids, ids).loss.backward()
    counts["tinylm_2_layers_counted"] = dict(syncs)
    if run.device.type == "cuda":
        with count_cuda_syncs() as cuda_syncs:
            model(ids, ids).loss.backward()
        counts["tinylm_2_layers_cuda"] = dict(cuda_syncs)
    result.files.append(_relative(run.write_json(run.check_dir / "syncs.json", counts)))
    result.note = f"TinyLM (2 MoE layers) forward + backward: {syncs.total} counted"
    if run.device.type == "cuda":
        result.note += f", {cuda_syncs.total} by CUDA"
    else:
        result.abbreviated = "CUDA's own count (set_sync_debug_mode) needs a GPU"


def step_parallel(run: Run, result: StepResult) -> None:
    from moe_lab.systems.parallel import run_expert_parallel

    gpus = torch.cuda.device_count() if run.device.type == "cuda" else 0
    backend, device = ("nccl", "cuda") if gpus >= 2 else ("gloo", run.device.type)
    torch.manual_seed(0)
    moe = SparseMoE(64, 128, 8, 2).eval()
    x = torch.randn(128, 64)  # (N, D)
    grad_y = torch.randn(128, 64)  # (N, D)
    parallel = run_expert_parallel(moe, x, grad_y, world_size=2, backend=backend, device=device,
                                   timeout_s=120)
    x_ref = x.clone().requires_grad_(True)
    moe(x_ref).y.backward(grad_y)
    errors = {"y": _relative_error(parallel.y, moe(x).y),
              "grad_x": _relative_error(parallel.grad_x, x_ref.grad),
              "grad_router": _relative_error(parallel.grad_router, moe.router.weight.grad),
              **{f"grad_{name}": _relative_error(parallel.grad_experts[name], p.grad)
                 for name, p in moe.experts.named_parameters()}}
    worst = max(errors.values())
    payload = {"backend": backend, "device": device, "gpus": gpus, "errors": errors,
               "tokens_sent": parallel.tokens_sent.tolist(), "seconds": parallel.seconds}
    result.files.append(_relative(run.write_json(run.check_dir / "parallel.json", payload)))
    result.note = f"2 ranks, {backend} on {device}: max error {worst:.1e}"
    if run.device.type == "cuda" and gpus < 2:
        result.abbreviated = "one GPU: gloo with CUDA tensors (NCCL needs a GPU per rank)"
    if worst > TOLERANCE[torch.float32]:
        raise CheckFailed(f"expert-parallel result differs from one process: {errors}")


def step_training(run: Run, result: StepResult) -> None:
    from moe_lab.lm.train import BASE_TRAIN, LESSON05_RUNS, run_lesson05
    from moe_lab.lm.train import RESULTS_DIR as CPU_LOGS

    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[run.dtype]
    names = list(LESSON05_RUNS)
    config = replace(BASE_TRAIN, device=str(run.device), precision=precision)
    if run.quick:
        names = ["moe"]
        config = replace(config, steps=QUICK_TRAINING_STEPS, eval_every=QUICK_TRAINING_STEPS)
        result.abbreviated = (f"run 'moe' only, {QUICK_TRAINING_STEPS} of {BASE_TRAIN.steps} steps"
                              f" (full: {len(LESSON05_RUNS)} runs)")
    out_dir = run.out / f"lesson05_{run.tag}"
    run_lesson05(names, out_dir, config, run.command, progress=False)
    runs = {}
    for name in names:
        log = json.loads((out_dir / f"{name}.json").read_text(encoding="utf-8"))
        cpu_log = CPU_LOGS / f"{name}.json"
        cpu_val = (json.loads(cpu_log.read_text(encoding="utf-8"))["evals"][-1]["val_loss"]
                   if cpu_log.is_file() and not run.quick else None)
        runs[name] = {"val_loss": log["evals"][-1]["val_loss"], "cpu_fp32_val_loss": cpu_val,
                      "train_seconds": log["evals"][-1]["wall_time"]}
        result.files.append(_relative(out_dir / f"{name}.json"))
    lesson08 = "no lesson 08 training command in this version"
    result.files.insert(0, _relative(run.write_json(run.check_dir / "training.json", {
        "precision": precision, "steps": config.steps, "runs": runs, "lesson08": lesson08})))
    result.note = f"{len(names)} runs, {precision}: " + ", ".join(
        f"{name} {r['val_loss']:.3f}" for name, r in list(runs.items())[:3]) + \
        (" ..." if len(runs) > 3 else "") + f" (val loss); {lesson08}"
    bad = [name for name, r in runs.items() if r["val_loss"] != r["val_loss"]]  # NaN
    if bad:
        raise CheckFailed(f"validation loss is NaN for {bad}")


def _run_lesson(notebook: Path, device: torch.device, work_dir: Path) -> dict[str, object]:
    """One lesson under nbval, in a fresh kernel told to use ``device``."""
    memory_file = work_dir / f"{notebook.stem}.memory.json"
    env = {**os.environ, DEVICE_ENV: str(device), PEAK_MEMORY_ENV: str(memory_file)}
    if in_a_checkout():  # the clone's package, whatever else is installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR),
                                                          os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
               str(notebook), "--nbval-cell-timeout", "600"]
    sanitize = notebook.parent / "sanitize.cfg"
    if sanitize.is_file():
        command += ["--nbval-sanitize-with", str(sanitize)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=notebook.parent.parent, env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    memory = (json.loads(memory_file.read_text(encoding="utf-8")) if memory_file.is_file()
              else {"cuda_max_allocated_mb": None, "max_rss_mb": None})
    failed_cells = re.findall(r"^FAILED .*?::(Cell \d+)", done.stdout, flags=re.MULTILINE)
    return {"lesson": notebook.stem, "ok": done.returncode == 0, "seconds": seconds,
            "pytest": tail, "failed_cells": failed_cells,
            "peak_gpu_mb": memory["cuda_max_allocated_mb"], "kernel_max_rss_mb": memory["max_rss_mb"],
            "memory_reported": memory_file.is_file()}


def step_lessons(run: Run, result: StepResult) -> None:
    notebooks, searched = find_lessons(run.lessons_dir)
    if not notebooks:
        result.status = "skipped"
        result.note = ("no lesson notebooks found (looked in "
                       f"{', '.join(str(p) for p in searched)}): pass --lessons with a clone's "
                       "notebooks/ folder")
        return
    if run.quick:
        full = len(notebooks)
        notebooks = [nb for nb in notebooks if nb.stem in QUICK_LESSONS]
        result.abbreviated = f"{', '.join(QUICK_LESSONS)} only (full: all {full} lessons)"
    with tempfile.TemporaryDirectory(prefix="moe_lab_lessons_") as work_dir, \
            ThreadPoolExecutor(max_workers=run.lesson_jobs) as pool:
        lessons = list(pool.map(lambda nb: _run_lesson(nb, run.device, Path(work_dir)), notebooks))
    result.files.append(_relative(run.write_json(run.check_dir / "lessons.json", {
        "device": str(run.device), "parallel_kernels": run.lesson_jobs, "lessons": lessons})))
    for lesson in lessons:
        gpu = (f"{lesson['peak_gpu_mb']:.0f} MB GPU" if lesson["peak_gpu_mb"] is not None
               else "GPU n/a" if run.device.type != "cuda" else "GPU unused")
        rss = (f"{lesson['kernel_max_rss_mb']:.0f} MB RSS" if lesson["kernel_max_rss_mb"]
               else "RSS not reported")
        print(f"  {lesson['lesson']:<28} {'ok' if lesson['ok'] else 'FAILED':<7} "
              f"{lesson['seconds']:6.1f} s  {gpu:>14}  {rss:>14}  {lesson['pytest']}", flush=True)
    failed = [lesson["lesson"] for lesson in lessons if not lesson["ok"]]
    result.note = f"{len(lessons) - len(failed)}/{len(lessons)} lessons pass nbval on {run.device}"
    if run.device.type != "cuda":
        result.note += " (peak GPU memory: n/a on cpu)"
    if failed:
        raise CheckFailed(f"nbval failed: {', '.join(failed)} (see lessons.json)")


STEPS: dict[str, Callable[[Run, StepResult], None]] = {
    "environment": step_environment,
    "equality": step_equality,
    "syncs": step_syncs,
    "bench": step_bench,
    "parallel": step_parallel,
    "training": step_training,
    "lessons": step_lessons,
    "compile": step_compile,  # last: on a GPU it is the step most likely to run long
}


def _is_cuda_error(error: BaseException) -> bool:
    """An error raised by the CUDA runtime (after one, the context is broken: every later CUDA
    call fails with the same message)."""
    accelerator_error = getattr(torch, "AcceleratorError", ())  # torch >= 2.8
    text = str(error)
    return isinstance(error, accelerator_error) or "CUDA error" in text or \
        "CUBLAS_STATUS" in text or "cuDNN error" in text


def run_step(name: str, run: Run, first_cuda_error: list[str] | None = None) -> StepResult:
    """Run one step; an exception marks it FAILED (written to <step>.error.txt, which the note
    names), nothing more. ``first_cuda_error`` (a one-element list, filled here) says which step
    hit the first CUDA error: that row is marked as the cause, later CUDA failures point to it."""
    result = StepResult(name)
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    try:
        STEPS[name](run, result)
    except Exception as error:  # recorded; the other steps still run
        result.status = "FAILED"
        message = f"{type(error).__name__}: {error}"
        path = run.check_dir / f"{name}.error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{run.command}\n\n{traceback.format_exc()}", encoding="utf-8")
        result.files.append(_relative(path))
        message += f" (traceback: {_relative(path)})"
        if first_cuda_error is not None and _is_cuda_error(error):
            if not first_cuda_error:
                first_cuda_error.append(name)
                message = "FIRST CUDA ERROR (the likely cause of later failures): " + message
            else:
                message = f"after the CUDA error in {first_cuda_error[0]}: " + message
        result.note = f"{result.note}; {message}" if result.note else message
    result.seconds = time.perf_counter() - start
    return result


def format_summary(results: Sequence[StepResult], run: Run, total_seconds: float) -> str:
    """The table printed at the end (and saved as summary.txt)."""
    decided = run.decisions.as_record()
    lines = [f"gpu_check on {run.device} ({'quick' if run.quick else 'full'}): {run.command}",
             f"decisions: {decided['compute_capability']}, native bf16 {decided['native_bf16']},"
             f" dtype {decided['dtype']}, loss scaling {decided['loss_scaling']}, grouped GEMM "
             f"{decided['grouped_mm_path']}, compile {decided['compile']}, TF32 {decided['tf32']}",
             f"{'step':<12} {'status':<8} {'seconds':>8}  note"]
    for r in results:
        lines.append(f"{r.name:<12} {r.status:<8} {r.seconds:8.1f}  {r.note}")
        if r.abbreviated:
            lines.append(f"{'':<30}abbreviated: {r.abbreviated}")
        if r.flagged:
            lines.append(f"{'':<30}FLAGGED: {r.flagged}")
    failed = [r.name for r in results if r.status == "FAILED"]
    skipped = [r.name for r in results if r.status == "skipped"]
    flagged = [r.name for r in results if r.flagged]
    passed = len(results) - len(failed) - len(skipped)
    lines.append(f"total {total_seconds:.1f} s; {passed} ok, {len(failed)} FAILED"
                 + (f" ({', '.join(failed)})" if failed else "")
                 + f", {len(skipped)} skipped" + (f" ({', '.join(skipped)})" if skipped else "")
                 + (f"; flagged: {', '.join(flagged)}" if flagged else ""))
    lines.append(f"results: {_relative(run.check_dir)}/ (and bench_{run.tag}.json, "
                 f"lesson05_{run.tag}/ beside it)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lab.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available, else cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="a subset for CI: small shapes, fewer lessons, a short training run")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: moe_lab/results in a clone of the "
                             "repository, ./moe_lab_results when installed with pip)")
    parser.add_argument("--lessons", type=Path, default=None,
                        help="folder of the lesson notebooks (default: the clone's notebooks/)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--lesson-jobs", type=int, default=None,
                        help="lessons executed at once (default: 4 on CUDA, 1 elsewhere)")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which the equality and compile steps stop early")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {list(STEPS)}")
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = pick_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA GPU")
    command = "python -m moe_lab.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv)
    run = Run(device=device, quick=args.quick, out=args.out or default_results_dir(),
              command=command.strip(),
              lesson_jobs=args.lesson_jobs or (4 if device.type == "cuda" else 1),
              deadline=time.monotonic() + args.budget, lessons_dir=args.lessons)
    print(" ".join(f"{k}={v}" for k, v in environment_summary(device).items()), flush=True)
    start = time.perf_counter()
    first_cuda_error: list[str] = []
    results = [run_step(name, run, first_cuda_error) for name in steps]
    summary = format_summary(results, run, time.perf_counter() - start)
    print(summary, flush=True)
    run.check_dir.mkdir(parents=True, exist_ok=True)
    (run.check_dir / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    run.write_json(run.check_dir / "summary.json", {
        "device": str(device), "quick": args.quick, "seconds": time.perf_counter() - start,
        "decisions": run.decisions.as_record(), "first_cuda_error": first_cuda_error[:1],
        "steps": [asdict(r) for r in results]})
    return 1 if any(r.status == "FAILED" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
