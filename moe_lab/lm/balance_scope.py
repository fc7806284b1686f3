"""Where is the balance measured? Lesson 05's multilingual model trained with the balance loss
per sequence, per micro-batch, over the global batch, and with the bias instead. Lesson 11.

One optimizer step sees a global batch of B = 16 windows split into M = 4 micro-batches of 4;
the micro-batches stand in for M data-parallel ranks (or the micro-steps of gradient
accumulation). Every window is one language (:func:`moe_lab.lm.data.sample_batch`). The scopes:

    sequence      mean over windows of DeepSeek-V3's sequence-wise loss (f and P per window)
                  :func:`moe_lab.losses.sequence_load_balancing_loss`
    micro_batch   the Switch loss of each micro-batch (f and P over its B / M windows), averaged:
                  what a data-parallel run computes when each rank balances its own tokens
    global_batch  f counted over the whole global batch (the counts of all M micro-batches
                  summed, as an all-reduce over ranks would), P over the micro-batch in hand
                  (Qiu et al. 2025, arXiv:2501.11873): ``load_balancing_loss(..., expert_counts=)``
    bias          no balance loss: DeepSeek-V3's selection bias, updated once per optimizer step
                  from the global batch's counts (:class:`moe_lab.balancing.BiasBalancer`)

    loss = mean_m [ lm_loss_m + aux_coef * mean_l Balance_{l,m} + z_coef * mean_l Z_{l,m} ]

The M micro-batches run one after another and their graphs are kept until the counts of all of
them are known, then one backward: the same gradient as M ranks that all-reduce their counts
before the loss (a no-grad count, so nothing but E integers per layer crosses ranks).

    python -m moe_lab.lm.balance_scope --seeds 0 1 2 --threads 1      # the lesson-11 runs

After training each run is measured on fixed validation windows: validation loss, I(language;
expert) per layer (bits, :mod:`moe_lab.lm.specialisation`), and the load's max/mean per layer over
all validation tokens (global balance) and per window (local balance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from moe_lab.balancing import BiasBalancer
from moe_lab.layer import SparseMoE
from moe_lab.lm.data import Batch, LessonData, eval_batches, load_lesson_data, sample_batch
from moe_lab.lm.model import ModelConfig, TinyLM
from moe_lab.lm.specialisation import collect_routing, specialisation_report
from moe_lab.lm.train import TrainConfig, evaluate, learning_rate
from moe_lab.losses import (
    average_over_layers,
    count_assignments,
    load_balancing_loss,
    sequence_load_balancing_loss,
)
from moe_lab.systems.device import pick_device, seed_everything
from moe_lab.validation import check_choice, check_positive_float, check_positive_int

SCOPES = ("sequence", "micro_batch", "global_batch", "bias")
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results" / "lesson11"

#: Lesson 05's MoE: E = 8 experts of F = 64, top-2, 2 layers, D = 64, windows of 128 bytes.
SCOPE_MODEL = ModelConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=128, ffn="moe", d_ff=64)
#: Lesson 05's training: 400 steps of 16 windows (here 4 micro-batches of 4 windows).
SCOPE_TRAIN = TrainConfig(steps=400, batch_size=16, seq_len=128, eval_every=50)


@dataclass(frozen=True)
class ScopeConfig:
    """How the balance is kept: the scope, the micro-batches per step, the coefficients."""

    scope: str = "global_batch"  # one of SCOPES
    micro_batches: int = 4  # M: micro-batches (stand-in data-parallel ranks) per optimizer step
    aux_loss_coef: float = 1e-2  # the balance loss's weight (Switch: 1e-2); unused by "bias"
    bias_gamma: float = 1e-3  # the bias's step (DeepSeek-V3: 0.001); "bias" only

    def __post_init__(self) -> None:
        check_choice("scope", self.scope, SCOPES)
        check_positive_int("micro_batches", self.micro_batches)
        check_positive_float("aux_loss_coef", self.aux_loss_coef)
        check_positive_float("bias_gamma", self.bias_gamma)


def split_batch(batch: Batch, micro_batches: int) -> list[Batch]:
    """The global batch's windows in ``micro_batches`` consecutive, equal chunks."""
    check_positive_int("micro_batches", micro_batches)
    size = batch.input_ids.shape[0]
    if size % micro_batches:
        raise ValueError(f"micro_batches={micro_batches} must divide the batch of {size} windows")
    chunks = [t.chunk(micro_batches) for t in (batch.input_ids, batch.targets,
                                               batch.attention_mask, batch.language_ids)]
    return [Batch(*parts) for parts in zip(*chunks, strict=True)]


def balance_losses(outputs: Sequence, micro: Sequence[Batch], scope: str,
                   num_experts: int) -> list[torch.Tensor | None]:
    """The balance loss of each micro-batch (mean over layers) for ``scope``; None for "bias"."""
    check_choice("scope", scope, SCOPES)
    if scope == "bias":
        return [None] * len(outputs)
    masks = [mb.attention_mask.reshape(-1) for mb in micro]  # each (N_m,)
    global_counts = None
    if scope == "global_batch":
        # c_{l,i} = sum over micro-batches (ranks) of the assignments to expert i in layer l
        global_counts = [sum(count_assignments(out.routing[layer].topk_idx, num_experts, mask)
                             for out, mask in zip(outputs, masks, strict=True))
                         for layer in range(len(outputs[0].routing))]  # L x (E,)
    losses = []
    for out, mb, mask in zip(outputs, micro, masks, strict=True):
        per_layer = []
        for layer, r in enumerate(out.routing):
            if scope == "sequence":
                loss = sequence_load_balancing_loss(r.router.probs, r.topk_idx,
                                                    mb.input_ids.shape[1], mask, check_range=False)
            else:
                counts = None if global_counts is None else global_counts[layer]
                loss = load_balancing_loss(r.router.probs, r.topk_idx, mask, check_range=False,
                                           expert_counts=counts)
            per_layer.append(loss)
        losses.append(average_over_layers(per_layer))
    return losses


@dataclass
class ScopeRun:
    """A trained model and its history: per-step LM and balance losses, evaluations."""

    model: TinyLM
    scope_config: ScopeConfig
    train_config: TrainConfig
    lm_loss: list[float]
    balance_loss: list[float | None]
    evals: list[dict[str, float]]
    wall_time: float


def train_scope(model_config: ModelConfig, train_config: TrainConfig, scope_config: ScopeConfig,
                *, data: LessonData | None = None) -> ScopeRun:
    """Train a fresh TinyLM with the balance kept at ``scope_config.scope``."""
    if not isinstance(model_config, ModelConfig) or model_config.ffn != "moe":
        raise TypeError("model_config must be a ModelConfig with ffn='moe'")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    if not isinstance(scope_config, ScopeConfig):
        raise TypeError(f"scope_config must be a ScopeConfig, got {type(scope_config).__name__}")
    if train_config.batch_size % scope_config.micro_batches:
        raise ValueError(f"micro_batches={scope_config.micro_batches} must divide "
                         f"batch_size={train_config.batch_size}")
    data = data or load_lesson_data()
    device = pick_device(train_config.device)
    seed_everything(train_config.seed)
    # the model's own (whole-batch) aux loss is off: the scope's loss replaces it
    model = TinyLM(replace(model_config, aux_loss_coef=0.0)).to(device)
    balancers = [BiasBalancer(block.ffn.router, gamma=scope_config.bias_gamma)
                 for block in model.blocks if isinstance(block.ffn, SparseMoE)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr,
                                  weight_decay=train_config.weight_decay, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(train_config.seed)
    valid = eval_batches(data.valid, train_config.eval_batch_size, train_config.seq_len,
                         max_windows_per_language=train_config.eval_windows_per_language)
    run = ScopeRun(model, scope_config, train_config, [], [], [], 0.0)
    start = time.perf_counter()
    model.train()
    for step in range(1, train_config.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step - 1, train_config)
        batch = sample_batch(data.train, train_config.batch_size, train_config.seq_len,
                             generator, alpha=train_config.language_alpha).to(device)
        micro = split_batch(batch, scope_config.micro_batches)
        outputs = [model(mb.input_ids, mb.targets, mb.attention_mask) for mb in micro]
        balance = balance_losses(outputs, micro, scope_config.scope, model_config.num_experts)
        # loss = mean over micro-batches of (lm + z_coef * Z [+ aux_coef * Balance])
        total = sum(out.loss if b is None else out.loss + scope_config.aux_loss_coef * b
                    for out, b in zip(outputs, balance, strict=True)) / len(outputs)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        if scope_config.scope == "bias":
            # once per optimizer step, from the global batch's counts (each token once)
            for layer, balancer in enumerate(balancers):
                balancer.update(sum(out.routing[layer].tokens_per_expert for out in outputs))
        run.lm_loss.append(float(sum(out.lm_loss.detach() for out in outputs)) / len(outputs))
        run.balance_loss.append(None if balance[0] is None
                                else float(sum(b.detach() for b in balance)) / len(balance))
        if step % train_config.eval_every == 0 or step == train_config.steps:
            val_loss, _, _ = evaluate(model, valid, data.languages)
            run.evals.append({"step": step, "val_loss": val_loss})
    run.wall_time = time.perf_counter() - start
    model.eval()
    return run


@torch.no_grad()
def load_balance(model: TinyLM, batches: Sequence[Batch]) -> dict[str, list[float]]:
    """Per MoE layer: max/mean of the assignments per expert over all real tokens of the
    batches (``global``), and the mean over windows of each window's own max/mean (``window``;
    windows with fewer than E real tokens left out). 1.0 is perfect balance, E / K the most."""
    model.eval()
    device = next(model.parameters()).device
    num_experts = model.config.num_experts
    totals = torch.zeros(model.config.n_layers, num_experts, dtype=torch.float64)
    window_sums = torch.zeros(model.config.n_layers, dtype=torch.float64)
    windows = 0
    for batch in batches:
        batch = batch.to(device)
        out = model(batch.input_ids, attention_mask=batch.attention_mask)
        seqs, seq_len = batch.input_ids.shape
        real = batch.attention_mask  # (B, T)
        keep = real.sum(dim=1) >= num_experts  # (B,)
        windows += int(keep.sum())
        for layer, r in enumerate(out.routing):
            # counts[b, i] = assignments of window b's real tokens to expert i
            chosen = torch.zeros(seqs * seq_len, num_experts, device=device).scatter_add(
                1, r.topk_idx, torch.ones_like(r.topk_idx, dtype=torch.float32))  # (N, E)
            counts = (chosen.view(seqs, seq_len, num_experts)
                      * real.unsqueeze(-1)).sum(dim=1).double().cpu()  # (B, E)
            totals[layer] += counts.sum(dim=0)
            ratio = counts.max(dim=1).values / counts.mean(dim=1).clamp_min(1e-12)  # (B,)
            window_sums[layer] += ratio[keep.cpu()].sum()
    return {"global": (totals.max(dim=1).values / totals.mean(dim=1)).tolist(),
            "window": (window_sums / max(windows, 1)).tolist()}


def measure(run: ScopeRun, data: LessonData, *, windows_per_language: int = 8) -> dict[str, object]:
    """Validation loss, I(language; expert) per layer (bits) and the load's max/mean per layer."""
    config = run.train_config
    valid = eval_batches(data.valid, config.eval_batch_size, config.seq_len,
                         max_windows_per_language=windows_per_language)
    val_loss, _, _ = evaluate(run.model, valid, data.languages)
    report = specialisation_report(collect_routing(run.model, valid), data.languages,
                                   run.model.config.num_experts)
    load = load_balance(run.model, valid)
    return {"val_loss": val_loss, "h_language": report.h_language,
            "mi_language": [layer.mi_language for layer in report.layers],
            "baseline_mi_language": [layer.baseline_mi_language for layer in report.layers],
            "mi_script": [layer.mi_script for layer in report.layers],
            "load_max_over_mean": load["global"], "window_load_max_over_mean": load["window"]}


def run_log(run: ScopeRun, data: LessonData, command: str) -> dict[str, object]:
    """A JSON-ready log of one run: configs, per-step losses, evaluations, measurements."""
    return {"scope": run.scope_config.scope, "command": command, "torch": torch.__version__,
            "model_config": run.model.config.to_dict(), "train_config": asdict(run.train_config),
            "scope_config": asdict(run.scope_config), "wall_time": run.wall_time,
            "lm_loss": run.lm_loss, "balance_loss": run.balance_loss, "evals": run.evals,
            "final": measure(run, data)}


def load_runs(results_dir: str | Path = RESULTS_DIR) -> dict[str, list[dict[str, object]]]:
    """The shipped logs by scope (in SCOPES order), each a list over seeds (sorted by seed)."""
    runs: dict[str, list[dict[str, object]]] = {}
    for scope in SCOPES:
        paths = sorted(Path(results_dir).glob(f"{scope}_seed*.json"),
                       key=lambda p: int(p.stem.rsplit("seed", 1)[1]))
        runs[scope] = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train lesson 11's balance-scope runs.")
    parser.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=SCOPE_TRAIN.steps)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m moe_lab.lm.balance_scope " + " ".join(
        sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_lesson_data()
    for seed in args.seeds:
        for scope in args.scopes:
            config = replace(SCOPE_TRAIN, steps=args.steps, seed=seed, device=args.device)
            run = train_scope(SCOPE_MODEL, config, ScopeConfig(scope=scope), data=data)
            log = run_log(run, data, command.strip())
            path = args.out / f"{scope}_seed{seed}.json"
            path.write_text(json.dumps(log, indent=1), encoding="utf-8")
            final = log["final"]
            print(f"{path.name}: val_loss {final['val_loss']:.4f} "
                  f"I(lang;E) {[round(x, 3) for x in final['mi_language']]} "
                  f"max/mean {[round(x, 2) for x in final['load_max_over_mean']]} "
                  f"wall {run.wall_time:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------ reading the shipped runs

#: what each measured quantity is, for tables: key of a log's "final" -> label
METRICS = {
    "val_loss": "validation loss (nats per byte)",
    "mi_language": "I(language; expert), bits",
    "load_max_over_mean": "load max/mean over all validation tokens",
    "window_load_max_over_mean": "load max/mean within a window (mean over windows)",
}


def seed_values(logs: Sequence[dict[str, object]], metric: str,
                layer: int | None = None) -> list[float]:
    """One number per seed: ``metric`` of each log's final measurement (``layer`` picks one MoE
    layer of a per-layer metric; None averages the layers)."""
    check_choice("metric", metric, tuple(METRICS))
    values = []
    for log in logs:
        value = log["final"][metric]
        if isinstance(value, list):
            value = value[layer] if layer is not None else sum(value) / len(value)
        values.append(float(value))
    return values


def separated(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when the gap between two runs exceeds their seed spread: every seed of one lies
    above every seed of the other (the seed ranges do not overlap)."""
    if not a or not b:
        raise ValueError("a and b must each hold at least one seed's value")
    return min(a) > max(b) or min(b) > max(a)
