"""Train the tiny language model: a loop with callbacks, a progress bar and checkpoints. Lesson 05.

    python -m moe_lab.train --out moe_lab/results/lesson05            # every lesson-05 run
    python -m moe_lab.train --runs dense moe --steps 50 --out /tmp/x   # some runs, shorter
    python -m moe_lab.train --suite lesson08                          # lesson 08's runs

One step: sample a batch, forward under autocast (bf16 or fp16 when asked; fp16 with a loss
scaler), backward, clip the gradient norm, AdamW step, learning-rate schedule (linear warm-up,
cosine decay); its statistics are read to the host once (:func:`train_step`). Every ``eval_every``
steps the model is scored on fixed validation windows. Callbacks see every step and every
evaluation (live dashboards, metric logs). Checkpoints hold only tensors and plain Python values,
so they load with ``torch.load(weights_only=True)`` (no pickled code runs on load).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from moe_lab.lm.data import Batch, LessonData, eval_batches, load_lesson_data, sample_batch
from moe_lab.lm.model import IGNORE_INDEX, ModelConfig, TinyLM
from moe_lab.lm.specialisation import collect_routing, specialisation_report
from moe_lab.lm.stats import StepStats, routing_summary, stats_from_summary
from moe_lab.systems.device import pick_device, seed_everything
from moe_lab.systems.params import fine_grained
from moe_lab.validation import check_choice, check_positive_int

PRECISIONS = ("fp32", "bf16", "fp16")
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results" / "lesson05"
LESSON08_RESULTS_DIR = RESULTS_DIR.parent / "lesson08"
#: the same runs in bf16 on a GPU, written by ``python -m moe_lab.gpu_check`` (when one ran)
GPU_RESULTS_DIR = RESULTS_DIR.parent / "lesson05_gpu"


@dataclass(frozen=True)
class TrainConfig:
    """How to train: steps, batch, optimiser, evaluation, seed, device and precision."""

    steps: int = 400
    batch_size: int = 16  # B windows per step
    seq_len: int = 128  # T bytes per window
    lr: float = 3e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0  # max global gradient norm
    language_alpha: float = 0.5  # language sampling p_l ~ bytes_l^alpha
    eval_every: int = 50
    eval_windows_per_language: int = 4  # validation windows per language at each evaluation
    eval_batch_size: int = 32
    seed: int = 0  # initialisation and batches (the train/validation split is fixed)
    device: str | None = None  # None: cuda if present, else cpu
    precision: str = "fp32"  # "fp32", "bf16" or "fp16" (autocast; fp16 with loss scaling)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_windows_per_language",
                     "eval_batch_size"):
            check_positive_int(name, getattr(self, name))
        check_choice("precision", self.precision, PRECISIONS)
        if not self.lr > 0 or self.grad_clip <= 0:
            raise ValueError(f"lr and grad_clip must be > 0, got {self.lr}, {self.grad_clip}")


@dataclass(frozen=True)
class StepMetrics:
    step: int  # 1-based
    wall_time: float  # seconds since the start of training
    loss: float  # total loss (LM + aux terms)
    lm_loss: float
    aux_loss: float | None
    z_loss: float | None
    drop_rate: float
    lr: float
    grad_norm: float
    tokens_per_expert: list[list[int]]  # per MoE layer, (E,) counts of this step
    layer_stats: list[StepStats] = field(default_factory=list)  # per MoE layer (dashboards)


@dataclass(frozen=True)
class EvalMetrics:
    step: int
    wall_time: float
    val_loss: float  # mean next-byte cross-entropy (nats) over real validation tokens
    val_drop_rate: float
    val_loss_per_language: dict[str, float]


class Callback:
    """Override any of these to watch training (a live plot, a metrics log, early stopping)."""

    def on_train_start(self, model: TinyLM, config: TrainConfig) -> None:
        pass

    def on_step(self, metrics: StepMetrics) -> None:
        pass

    def on_eval(self, metrics: EvalMetrics) -> None:
        pass

    def on_train_end(self, result: TrainResult) -> None:
        pass


class OnStep(Callback):
    """Call ``fn(metrics)`` after every step, e.g. a lesson-04 TrainingDashboard:
    ``OnStep(lambda m: dashboard(m.layer_stats[0]))``."""

    def __init__(self, fn: Callable[[StepMetrics], object]) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn

    def on_step(self, metrics: StepMetrics) -> None:
        self.fn(metrics)


@dataclass
class TrainResult:
    """The trained model and its history (steps and evaluations)."""

    model: TinyLM
    model_config: ModelConfig
    train_config: TrainConfig
    steps: list[StepMetrics] = field(default_factory=list)
    evals: list[EvalMetrics] = field(default_factory=list)

    def to_log(self, name: str, command: str) -> dict[str, object]:
        """A JSON-ready metric log (the shape of the files under moe_lab/results/lesson05)."""
        return {
            "name": name,
            "command": command,
            "torch": torch.__version__,
            "device": str(next(self.model.parameters()).device),
            "model_config": self.model_config.to_dict(),
            "train_config": asdict(self.train_config),
            "params_total": self.model.num_parameters(),
            "params_active": self.model.num_active_parameters(),
            "steps": {key: [getattr(m, key) for m in self.steps]
                      for key in ("step", "wall_time", "loss", "lm_loss", "drop_rate")},
            "final_tokens_per_expert": self.steps[-1].tokens_per_expert if self.steps else [],
            "evals": [asdict(e) for e in self.evals],
        }


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to lr over warmup_steps, then cosine decay to lr / 10 at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    # lr_t = lr_min + (lr - lr_min) * (1 + cos(pi * progress)) / 2,  lr_min = lr / 10
    return config.lr / 10 + 0.9 * config.lr * (1 + math.cos(math.pi * min(progress, 1.0))) / 2


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


@torch.no_grad()
def evaluate(model: TinyLM, batches: Sequence[Batch], languages: Sequence[str], *,
             precision: str = "fp32") -> tuple[float, float, dict[str, float]]:
    """(val_loss, drop_rate, val_loss per language) over ``batches``; losses in nats per byte."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    num_languages = len(languages)
    loss_sum = torch.zeros(num_languages, dtype=torch.float64)
    count = torch.zeros(num_languages, dtype=torch.float64)
    dropped = assignments = 0
    for batch in batches:
        batch = batch.to(device)
        with _autocast(device, precision):
            out = model(batch.input_ids, attention_mask=batch.attention_mask)
        # per-token -log p(target), 0 at padding (IGNORE_INDEX), summed per sequence
        nll = F.cross_entropy(out.logits.float().transpose(1, 2), batch.targets,
                              ignore_index=IGNORE_INDEX, reduction="none")  # (B, T)
        nll = nll.sum(dim=1).double().cpu()  # (B,)
        real = batch.attention_mask.sum(dim=1).double().cpu()  # (B,)
        loss_sum.index_add_(0, batch.language_ids.cpu(), nll)
        count.index_add_(0, batch.language_ids.cpu(), real)
        token_mask = batch.attention_mask.reshape(-1)  # (N,)
        for routing in out.routing:
            real_dropped = routing.dropped[token_mask]  # (real tokens, K)
            dropped += int(real_dropped.sum())
            assignments += real_dropped.numel()
    model.train(was_training)
    per_language = {lang: float(loss_sum[i] / count[i]) for i, lang in enumerate(languages)
                    if count[i] > 0}
    return float(loss_sum.sum() / count.sum()), dropped / max(assignments, 1), per_language


def train(model_config: ModelConfig, train_config: TrainConfig, *,
          data: LessonData | None = None, callbacks: Sequence[Callback] = (),
          progress: bool = True, init_model: TinyLM | None = None) -> TrainResult:
    """Train a fresh TinyLM from ``model_config`` on the lesson's corpus; returns the history.
    ``init_model`` (same config): start from a copy of its weights instead (e.g. an upcycled
    model, lesson 08); the model passed in is left unchanged."""
    if not isinstance(model_config, ModelConfig):
        raise TypeError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    if train_config.seq_len > model_config.max_seq_len:
        raise ValueError(f"seq_len={train_config.seq_len} exceeds the model's "
                         f"max_seq_len={model_config.max_seq_len}")
    data = data or load_lesson_data()
    device = pick_device(train_config.device)
    seed_everything(train_config.seed)
    model = TinyLM(model_config).to(device)
    if init_model is not None:
        if not isinstance(init_model, TinyLM) or init_model.config != model_config:
            raise ValueError("init_model must be a TinyLM whose config equals model_config")
        model.load_state_dict(init_model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr,
                                  weight_decay=train_config.weight_decay, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(train_config.seed)
    valid = eval_batches(data.valid, train_config.eval_batch_size, train_config.seq_len,
                         max_windows_per_language=train_config.eval_windows_per_language)
    result = TrainResult(model, model_config, train_config)
    for callback in callbacks:
        callback.on_train_start(model, train_config)

    def run_eval(step: int, wall_time: float) -> None:
        val_loss, drop_rate, per_language = evaluate(model, valid, data.languages,
                                                     precision=train_config.precision)
        metrics = EvalMetrics(step, wall_time, val_loss, drop_rate, per_language)
        result.evals.append(metrics)
        for callback in callbacks:
            callback.on_eval(metrics)

    start = time.perf_counter()
    eval_seconds = 0.0  # evaluation time, left out of the training wall time

    def wall_time() -> float:
        return time.perf_counter() - start - eval_seconds

    bar = tqdm(range(1, train_config.steps + 1), disable=not progress, desc=model_config.ffn)
    scaler = _grad_scaler(device, train_config.precision)
    model.train()
    for step in bar:
        lr = learning_rate(step - 1, train_config)
        batch = sample_batch(data.train, train_config.batch_size, train_config.seq_len,
                             generator, alpha=train_config.language_alpha).to(device)
        metrics = train_step(model, optimizer, batch, train_config, step, lr, wall_time,
                             scaler=scaler)
        result.steps.append(metrics)
        for callback in callbacks:
            callback.on_step(metrics)
        bar.set_postfix(loss=f"{metrics.lm_loss:.3f}", refresh=False)
        if step % train_config.eval_every == 0 or step == train_config.steps:
            eval_start = time.perf_counter()
            run_eval(step, wall_time())
            eval_seconds += time.perf_counter() - eval_start
    bar.close()
    model.eval()
    for callback in callbacks:
        callback.on_train_end(result)
    return result


def _grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (moe_lab.systems.decisions.needs_loss_scaling); bf16, fp32 not."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def train_step(model: TinyLM, optimizer: torch.optim.Optimizer, batch: Batch,
               config: TrainConfig, step: int, lr: float, wall_time: Callable[[], float], *,
               scaler: torch.amp.GradScaler | None = None) -> StepMetrics:
    """One optimisation step and its statistics. The statistics (losses, gradient norm, drops,
    tokens and routing summary per MoE layer) are packed into one device tensor and read to the
    host once: one sync per step for them, whatever the number of layers and experts. (fp16
    adds the loss scaler's own read of its inf check.)"""
    device = batch.input_ids.device
    for group in optimizer.param_groups:
        group["lr"] = lr
    with _autocast(device, config.precision):
        out = model(batch.input_ids, batch.targets, batch.attention_mask)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
    else:  # fp16: scale the loss up for backward, unscale the gradients before clipping
        scaler.scale(out.loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
    has_aux = out.aux_loss is not None
    scalars = [out.loss, out.lm_loss, grad_norm] + ([out.aux_loss, out.z_loss] if has_aux else [])
    per_layer = []  # per MoE layer: dropped (1), tokens_per_expert (E), routing summary (E + 3)
    for r in out.routing:
        per_layer += [r.dropped.sum().reshape(1), r.tokens_per_expert.reshape(-1),
                      routing_summary(r.router.logits, r.router.probs, r.tokens_per_expert)]
    packed = torch.cat([torch.stack([v.detach().double().reshape(()) for v in scalars])]
                       + [t.detach().double() for t in per_layer])  # one vector on the device
    values = packed.tolist()  # the one host sync of the step's statistics
    loss, lm_loss, grad_norm_value, *rest = values[:len(scalars)]
    losses = {"lm": lm_loss}
    if has_aux:
        losses.update(aux=rest[0], z=rest[1])
    position, dropped, assignments = len(scalars), 0, 0
    tokens_per_expert, layer_stats = [], []
    for r in out.routing:
        num_experts = r.tokens_per_expert.numel()
        dropped += int(values[position])
        assignments += r.dropped.numel()
        counts = values[position + 1:position + 1 + num_experts]
        summary = values[position + 1 + num_experts:position + 4 + 2 * num_experts]
        tokens_per_expert.append([int(c) for c in counts])
        layer_stats.append(stats_from_summary(step, summary, losses))
        position += 4 + 2 * num_experts
    return StepMetrics(
        step=step, wall_time=wall_time(), loss=loss, lm_loss=lm_loss,
        aux_loss=losses.get("aux"), z_loss=losses.get("z"),
        drop_rate=dropped / assignments if assignments else 0.0, lr=lr,
        grad_norm=grad_norm_value, tokens_per_expert=tokens_per_expert, layer_stats=layer_stats)


def seconds_per_step(model_config: ModelConfig, train_config: TrainConfig, data: LessonData, *,
                     steps: int = 5, warmup: int = 2) -> float:
    """Median wall time of one training step (forward, backward, clip, AdamW) of a fresh model on
    this machine, after ``warmup`` untimed steps. For comparing models back to back."""
    check_positive_int("steps", steps)
    config = replace(train_config, steps=steps + warmup, eval_every=10**9)
    result = train(model_config, config, data=data, progress=False)
    ends = [0.0] + [metrics.wall_time for metrics in result.steps]  # step i ends at ends[i]
    timings = [ends[i] - ends[i - 1] for i in range(warmup + 1, len(ends))]
    return sorted(timings)[len(timings) // 2]


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path: str | Path, model: TinyLM) -> None:
    """Save the config (plain values) and the weights (tensors): loadable with weights_only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_config": model.config.to_dict(), "state_dict": state}, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> TinyLM:
    """Rebuild the model from a checkpoint with ``torch.load(weights_only=True)``; eval mode."""
    checkpoint = torch.load(Path(path), map_location=device, weights_only=True)
    model = TinyLM(ModelConfig(**checkpoint["model_config"])).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def load_log(name: str, results_dir: str | Path = RESULTS_DIR) -> dict[str, object]:
    """A shipped (or freshly written) metric log, by run name."""
    return json.loads((Path(results_dir) / f"{name}.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------- the lesson-05 runs

#: Shared by every run: the MoE layers are E = 8 experts of F = 64, K = 2 of them per token.
BASE_MODEL = ModelConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=128)
BASE_TRAIN = TrainConfig(steps=400, batch_size=16, seq_len=128, eval_every=25)

#: name -> (model config, whether to ship its checkpoint). "dense" has d_ff = K * F (the MoE's
#: active FFN FLOPs per token); "dense_total" has d_ff = E * F (the MoE's total FFN parameters).
LESSON05_RUNS: dict[str, tuple[ModelConfig, bool]] = {
    "dense": (replace(BASE_MODEL, ffn="dense", d_ff=128), True),
    "moe": (replace(BASE_MODEL, ffn="moe", d_ff=64), True),
    "dense_total": (replace(BASE_MODEL, ffn="dense", d_ff=512), False),
    **{f"moe_cf{cf}": (replace(BASE_MODEL, ffn="moe", d_ff=64, capacity_factor=cf), False)
       for cf in (0.5, 1.0, 1.25, 2.0)},
}


def _layout_config(base: ModelConfig, granularity: int, num_shared_experts: int) -> ModelConfig:
    """The base MoE with its experts cut by :func:`moe_lab.systems.params.fine_grained`."""
    layout = fine_grained(base.num_experts, base.top_k, base.d_ff, granularity, num_shared_experts)
    return replace(base, num_experts=layout.num_experts, top_k=layout.top_k, d_ff=layout.d_ff,
                   num_shared_experts=layout.num_shared_experts)


#: Lesson 08: the lesson-05 MoE (8 experts of F = 64, top-2) against the same hidden units cut
#: finer, at equal total and active expert parameters (512 and 128 hidden units per layer):
#: 32 experts of F = 16, top-8 (m = 4); and 1 shared + 31 routed of F = 16, top-7 (DeepSeekMoE).
LESSON08_RUNS: dict[str, tuple[ModelConfig, bool]] = {
    "moe": (LESSON05_RUNS["moe"][0], False),  # the lesson-05 MoE (its checkpoint ships there)
    "fine_grained": (_layout_config(LESSON05_RUNS["moe"][0], 4, 0), False),
    "shared": (_layout_config(LESSON05_RUNS["moe"][0], 4, 1), False),
}

SUITES = {"lesson05": (LESSON05_RUNS, RESULTS_DIR), "lesson08": (LESSON08_RUNS, LESSON08_RESULTS_DIR)}


def specialisation_summary(model: TinyLM, data: LessonData, train_config: TrainConfig,
                           windows_per_language: int = 8) -> dict[str, object]:
    """I(language; expert) per MoE layer on validation windows, with the shuffled-router
    baseline and H(language), in bits (:mod:`moe_lab.lm.specialisation`)."""
    valid = eval_batches(data.valid, train_config.eval_batch_size, train_config.seq_len,
                         max_windows_per_language=windows_per_language)
    report = specialisation_report(collect_routing(model, valid), data.languages,
                                   model.config.num_experts)
    return {"h_language": report.h_language, "num_tokens": int(sum(len(b.input_ids) for b in valid)),
            "mi_language": [layer.mi_language for layer in report.layers],
            "baseline_mi_language": [layer.baseline_mi_language for layer in report.layers],
            "mi_byte_class": [layer.mi_byte_class for layer in report.layers]}


def run_suite(runs: dict[str, tuple[ModelConfig, bool]], names: Sequence[str], out_dir: Path,
              train_config: TrainConfig, command: str, *, progress: bool = True,
              specialisation: bool = False, file_suffix: str = "") -> None:
    """Train each named run, write ``<name><file_suffix>.json`` (and ``<name>.pt`` where shipped,
    for the unsuffixed runs only);
    with ``specialisation`` the log also holds :func:`specialisation_summary`."""
    unknown = sorted(set(names) - set(runs))
    if unknown:
        raise ValueError(f"runs must be among {sorted(runs)}, got unknown {unknown}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_lesson_data()
    for name in names:
        model_config, ship_checkpoint = runs[name]
        result = train(model_config, train_config, data=data, progress=progress)
        log = result.to_log(name, command)
        if specialisation:
            log["specialisation"] = specialisation_summary(result.model, data, train_config)
        stem = f"{name}{file_suffix}"
        (out_dir / f"{stem}.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
        if ship_checkpoint and not file_suffix:  # seeded repeats ship their logs only
            save_checkpoint(out_dir / f"{stem}.pt", result.model)
        last = result.evals[-1]
        print(f"{stem}: val_loss {last.val_loss:.4f} drop_rate {last.val_drop_rate:.4f} "
              f"wall {last.wall_time:.1f} s", flush=True)


def run_lesson05(names: Sequence[str], out_dir: Path, train_config: TrainConfig, command: str,
                 *, progress: bool = True) -> None:
    """Train each named lesson-05 run, write ``<name>.json`` (and ``<name>.pt`` where shipped)."""
    run_suite(LESSON05_RUNS, names, out_dir, train_config, command, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the lesson runs (tiny byte-level LMs).")
    parser.add_argument("--suite", choices=sorted(SUITES), default="lesson05",
                        help="lesson05 (dense vs MoE, capacity) or lesson08 (fine-grained, shared)")
    parser.add_argument("--runs", nargs="+", default=None,
                        help=f"which runs of the suite (default: all): lesson05: "
                             f"{', '.join(LESSON05_RUNS)}; lesson08: {', '.join(LESSON08_RUNS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: moe_lab/results/<suite>)")
    parser.add_argument("--steps", type=int, default=BASE_TRAIN.steps)
    parser.add_argument("--seed", type=int, default=BASE_TRAIN.seed)
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="several seeds, one after the other: files <name>_seed<s>.json")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--precision", choices=PRECISIONS, default=BASE_TRAIN.precision)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m moe_lab.train " + " ".join(sys.argv[1:] if argv is None else argv)
    runs, default_out = SUITES[args.suite]
    for seed in args.seeds or [args.seed]:
        config = replace(BASE_TRAIN, steps=args.steps, seed=seed, device=args.device,
                         precision=args.precision)
        run_suite(runs, args.runs or list(runs), args.out or default_out, config, command.strip(),
                  progress=not args.no_progress, specialisation=args.suite == "lesson08",
                  file_suffix=f"_seed{seed}" if args.seeds else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
