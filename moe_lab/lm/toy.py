"""A toy task small enough to train in seconds on a CPU, to watch routing collapse and its fixes.
Lesson 04.

The task: each input token x in [0, V) belongs to one of G groups (x mod G), and the target is a
group-specific random permutation of the token: y = perm_{x mod G}(x). The model is an embedding,
one :class:`moe_lab.SparseMoE` (no residual, so everything must pass through the experts) and a
linear head. As in Switch, each token goes to one expert (K = 1) weighted by its raw router
probability, so the router learns from how useful its chosen expert was. The router starts near
uniform, and every token's input shares one common direction (``shared_offset``), as the hidden
states of real language models do: what the router learns for one token, it learns for all.
Trained without any balancing loss, it soon sends most tokens to the expert that happened to learn
first (routing collapse: rich get richer); the balancing methods of :mod:`moe_lab.losses` and
:mod:`moe_lab.balancing` keep the load spread.

    total_loss = task_loss + aux_coef * balance_loss + z_coef * z_loss

``balance`` chooses the balancing method:

- ``"none"``: task loss only (the collapse).
- ``"switch"``: :func:`moe_lab.load_balancing_loss`, E * sum_i f_i P_i (Switch Transformer).
- ``"importance"``: :func:`moe_lab.importance_loss`, CV^2 of the importance (Shazeer 2017).
- ``"bias"``: no auxiliary loss; :class:`moe_lab.BiasBalancer` moves a selection bias after each
  step (DeepSeek-V3).

``z_coef > 0`` adds the router z-loss (ST-MoE). After every step each callback receives a
:class:`moe_lab.lm.stats.StepStats`; a tqdm progress bar shows the step and the current max/mean load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from moe_lab.balancing import BiasBalancer
from moe_lab.layer import MoEOutput, SparseMoE
from moe_lab.lm.stats import StepStats, step_stats
from moe_lab.losses import importance_loss, load_balancing_loss, router_z_loss
from moe_lab.systems.threads import torch_threads
from moe_lab.validation import check_choice, check_positive_float, check_positive_int, check_top_k

_BALANCE_METHODS = ("none", "switch", "importance", "bias")


@dataclass(frozen=True)
class ToyConfig:
    """Everything that defines one toy training run (small: a few seconds on 2 CPU cores)."""

    vocab_size: int = 64        # V, token ids and classes
    num_groups: int = 8         # G, one random permutation per group
    d_model: int = 32           # D
    d_ff: int = 64              # F
    num_experts: int = 8        # E
    top_k: int = 1              # K (top-1, as in Switch)
    normalize: bool = False     # renormalise the K weights (False: Switch-style raw probability)
    batch_size: int = 256       # N tokens per step
    steps: int = 150
    lr: float = 1e-2            # Adam learning rate
    router_init_scale: float = 0.01  # multiplies the router's initial weight (near-uniform start)
    shared_offset: float = 3.0  # norm of a direction common to every token's input
    balance: str = "none"       # one of _BALANCE_METHODS
    aux_coef: float = 1e-1      # weight of the switch / importance loss
    z_coef: float = 0.0         # weight of the router z-loss (ST-MoE uses 1e-3)
    bias_gamma: float = 5e-2    # DeepSeek-V3 bias update speed
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_groups", "d_model", "d_ff", "num_experts", "top_k",
                     "batch_size", "steps"):
            check_positive_int(name, getattr(self, name))
        check_top_k(self.top_k, self.num_experts)
        check_choice("balance", self.balance, _BALANCE_METHODS)
        for name in ("lr", "router_init_scale", "aux_coef", "bias_gamma"):
            check_positive_float(name, getattr(self, name))
        if self.z_coef < 0:
            raise ValueError(f"z_coef must be >= 0, got {self.z_coef}")


class ToyMoEModel(nn.Module):
    """Embedding (V, D) -> SparseMoE -> linear head (D -> V)."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.moe = SparseMoE(config.d_model, config.d_ff, config.num_experts, config.top_k,
                             normalize=config.normalize)
        with torch.no_grad():
            self.moe.router.weight.mul_(config.router_init_scale)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        # a direction shared by all tokens, as in real hidden states (anisotropy)
        shared = torch.randn(config.d_model)
        self.register_buffer("shared", shared / shared.norm() * config.shared_offset)

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, MoEOutput]:
        x = self.embed(token_ids) + self.shared  # (N, D)
        moe_out = self.moe(x)
        return self.head(moe_out.y), moe_out  # (N, V)


def make_toy_targets(config: ToyConfig) -> torch.Tensor:
    """The lookup table y = perm_{x mod G}(x): (V,) int64, from the config's seed."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    table = torch.empty(config.vocab_size, dtype=torch.long)  # (V,)
    for group in range(config.num_groups):
        members = torch.arange(group, config.vocab_size, config.num_groups)  # tokens of the group
        table[members] = members[torch.randperm(members.numel(), generator=generator)]
    return table


@dataclass
class ToyRun:
    """The result of :func:`train_toy`: the trained model and one StepStats per step."""

    config: ToyConfig
    model: ToyMoEModel
    history: list[StepStats] = field(default_factory=list)

    @property
    def final(self) -> StepStats:
        return self.history[-1]


def train_toy(config: ToyConfig, *, callbacks: Sequence[Callable[[StepStats], None]] = (),
              progress: bool = True, description: str | None = None,
              num_threads: int | None = 1) -> ToyRun:
    """Train the toy model; call every callback with the step's :class:`StepStats`.

    ``num_threads``: torch CPU threads during the run (restored afterwards). The matrices are
    tiny, so one thread is fastest, and several threads on a busy machine spin-wait for each
    other (we measured a 30x slow-down on 2 shared cores). None keeps torch's setting.
    """
    with torch_threads(num_threads):
        return _train(config, callbacks, progress, description)


def _train(config: ToyConfig, callbacks: Sequence[Callable[[StepStats], None]], progress: bool,
           description: str | None) -> ToyRun:
    torch.manual_seed(config.seed)
    model = ToyMoEModel(config)
    targets = make_toy_targets(config)  # (V,)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    balancer = BiasBalancer(model.moe.router, gamma=config.bias_gamma) \
        if config.balance == "bias" else None
    data_generator = torch.Generator().manual_seed(config.seed + 2)
    run = ToyRun(config=config, model=model)
    bar = tqdm(range(config.steps), desc=description or config.balance, disable=not progress,
               leave=True)
    for step in bar:
        token_ids = torch.randint(0, config.vocab_size, (config.batch_size,),
                                  generator=data_generator)  # (N,)
        logits, moe_out = model(token_ids)  # (N, V)
        task_loss = F.cross_entropy(logits, targets[token_ids])
        losses = {"task": task_loss}
        total = task_loss
        if config.balance == "switch":
            losses["switch"] = load_balancing_loss(moe_out.router.probs, moe_out.router.topk_idx)
            total = total + config.aux_coef * losses["switch"]
        elif config.balance == "importance":
            losses["importance"] = importance_loss(moe_out.router.probs)
            total = total + config.aux_coef * losses["importance"]
        z_loss = router_z_loss(moe_out.router.logits)
        losses["z"] = z_loss
        if config.z_coef > 0:
            total = total + config.z_coef * z_loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if balancer is not None:
            balancer.update(moe_out.tokens_per_expert)
        stats = step_stats(step, moe_out.router.logits, moe_out.router.probs,
                           moe_out.tokens_per_expert,
                           {name: value.item() for name, value in losses.items()})
        run.history.append(stats)
        for callback in callbacks:
            callback(stats)
        bar.set_postfix(max_over_mean=f"{stats.max_over_mean:.2f}", task=f"{task_loss.item():.3f}",
                        refresh=False)
    bar.close()
    return run
