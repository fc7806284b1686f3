"""Expert parallelism: each of W ranks holds E / W experts and the tokens travel to them. Lesson 07.

Every rank keeps a copy of the router and a contiguous block of E_local = E / W experts
(rank r owns experts r * E_local ... (r + 1) * E_local - 1), and holds its own share of the
tokens. One forward pass is the sorted dispatch of lesson 06 with the grouped GEMM replaced by a
round trip to the ranks that own the experts (Megatron-LM's all-to-all token dispatcher,
DeepSpeed-MoE, GShard):

1. route:      topk_idx (n, K) on each rank; sort the n*K assignments by expert.
2. counts:     tokens_per_expert (E,) is exchanged with one ``all_to_all_single`` of equal
               chunks: rank r learns recv_counts[s, e] = rows source s sends to its expert e.
               Reading them (``.tolist()``) is the exchange's one host sync: the split sizes
               of the next collective must be known on the CPU. Everything else about the
               counts is Python arithmetic on lists the host already holds.
3. dispatch:   the sorted rows go out with ``all_to_all_single`` and uneven split sizes
               send_splits[d] = sum_{e owned by d} tokens_per_expert[e].
4. regroup:    received rows come grouped by source rank; a stable sort by local expert makes
               each local expert's rows contiguous (Megatron's ``sort_chunks_by_idxs``).
5. compute:    the local experts' grouped GEMM (:meth:`moe_lab.Experts.forward_grouped`).
6. return:     undo the regroup and send the rows back with the splits swapped.
7. combine:    weight and sum over K exactly as the single-process sorted dispatch.

Autograd flows through the exchange: the backward of an all-to-all is the all-to-all of the
gradients with the input and output splits swapped (:class:`AllToAll`). The router is replicated
(data parallel), so its gradient is summed over ranks with ``all_reduce``; each expert's gradient
lives only on its owner.

This is the *dropless* exchange. The alternative, a capacity-padded exchange, sends exactly C
rows per (source, expert) pair: fixed shapes, no count exchange and no host sync, but it drops
the overflow and ships padding (lesson 07 measures both).

:func:`run_expert_parallel` launches W local processes (gloo on CPU, NCCL on CUDA, one GPU per
rank), checks nothing hangs (timeouts on the group and on the launcher), and returns outputs,
gradients and the rank x rank matrix of rows sent.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

from moe_lab.dispatch import dispatch_sorted, make_routing_plan
from moe_lab.experts import Experts
from moe_lab.layer import SparseMoE, SparseMoEConfig
from moe_lab.routing import RouterOutput, TopKRouter
from moe_lab.validation import (
    check_choice,
    check_float_tensor,
    check_index_tensor,
    check_last_dim,
    check_positive_float,
    check_positive_int,
)

BACKENDS = ("gloo", "nccl")


# ---------------------------------------------------------------------------------------------
# Pure bookkeeping (no process group): which rank owns which expert, how many rows go where.
# ---------------------------------------------------------------------------------------------

def check_world_size(num_experts: int, world_size: int) -> int:
    """E must split into W equal contiguous blocks; returns E_local = E / W."""
    check_positive_int("num_experts", num_experts)
    check_positive_int("world_size", world_size)
    if num_experts % world_size:
        raise ValueError(f"world_size must divide num_experts={num_experts} (each rank holds "
                         f"E / world_size experts), got world_size={world_size}")
    return num_experts // world_size


def expert_owner(num_experts: int, world_size: int) -> torch.Tensor:
    """Rank of each expert: contiguous blocks, owner(e) = e // (E / W). Returns (E,) int64."""
    local_experts = check_world_size(num_experts, world_size)
    return torch.arange(num_experts) // local_experts  # (E,)


def splits_from_counts(tokens_per_expert: torch.Tensor, world_size: int) -> torch.Tensor:
    """Rows sent to each rank: send_splits[d] = sum_{e in block d} tokens_per_expert[e]. (W,)"""
    if not isinstance(tokens_per_expert, torch.Tensor):
        raise TypeError(f"tokens_per_expert must be a torch.Tensor (E,), got "
                        f"{type(tokens_per_expert).__name__}")
    if tokens_per_expert.dim() != 1:
        raise ValueError(f"tokens_per_expert must have shape (E,), got "
                         f"{tuple(tokens_per_expert.shape)}")
    if tokens_per_expert.is_floating_point() or tokens_per_expert.is_complex() \
            or tokens_per_expert.dtype == torch.bool:
        raise TypeError(f"tokens_per_expert must hold integer row counts (int64), got "
                        f"{tokens_per_expert.dtype}")
    num_experts = tokens_per_expert.shape[0]
    local_experts = check_world_size(num_experts, world_size)
    return tokens_per_expert.view(world_size, local_experts).sum(dim=1)  # (W,)


def send_splits(topk_idx: torch.Tensor, num_experts: int, world_size: int) -> torch.Tensor:
    """Rows this rank sends to each rank: one row per (token, expert) assignment. (W,) int64."""
    check_world_size(num_experts, world_size)
    if not isinstance(topk_idx, torch.Tensor):
        raise TypeError(f"topk_idx must be a torch.Tensor, got {type(topk_idx).__name__}")
    if topk_idx.dim() != 2:
        raise ValueError(f"topk_idx must have shape (N, K), got {tuple(topk_idx.shape)}")
    check_index_tensor("topk_idx", topk_idx, topk_idx.shape[0], num_experts)
    tokens_per_expert = torch.bincount(topk_idx.reshape(-1), minlength=num_experts)  # (E,)
    return splits_from_counts(tokens_per_expert, world_size)  # (W,)


def local_expert_order(recv_counts: torch.Tensor, num_rows: int | None = None) -> torch.Tensor:
    """Order that makes each local expert's received rows contiguous.

    recv_counts (W, E_local): rows from source rank s for local expert e. The received rows are
    laid out source by source, and within a source expert by expert. Returns (R,) indices such
    that ``x_recv[order]`` is grouped by local expert, sources in rank order within an expert
    (a stable sort by local expert: Megatron's ``sort_chunks_by_idxs``). ``num_rows`` = R, when
    the caller knows it, spares a host sync on a GPU (the length of the row labels); without it
    the counts are read once, and must be >= 0.
    """
    if not isinstance(recv_counts, torch.Tensor) or recv_counts.dim() != 2:
        raise ValueError(f"recv_counts must be a tensor of shape (W, E_local), got "
                         f"{tuple(getattr(recv_counts, 'shape', ()))}")
    if recv_counts.is_floating_point() or recv_counts.is_complex() \
            or recv_counts.dtype == torch.bool:
        raise TypeError(f"recv_counts must hold integer row counts (int64), got {recv_counts.dtype}")
    if num_rows is None and recv_counts.numel():  # the read repeat_interleave would make anyway
        low, num_rows = torch.stack([recv_counts.min(), recv_counts.sum()]).tolist()
        if low < 0:
            raise ValueError(f"recv_counts must be >= 0, got {recv_counts.tolist()}")
    world_size, local_experts = recv_counts.shape
    chunk_expert = torch.arange(local_experts, device=recv_counts.device).repeat(world_size)
    local_expert_of_row = chunk_expert.repeat_interleave(recv_counts.reshape(-1),
                                                         output_size=num_rows)  # (R,)
    # the stable sort by expert of the single-process routing plan (make_routing_plan), K = 1
    return torch.argsort(local_expert_of_row, stable=True)  # (R,)


# ---------------------------------------------------------------------------------------------
# The exchange, differentiable.
# ---------------------------------------------------------------------------------------------

def _all_to_all_rows(x: torch.Tensor, output_splits: list[int], input_splits: list[int],
                     group: dist.ProcessGroup | None) -> torch.Tensor:
    out = x.new_empty((sum(output_splits), *x.shape[1:]))  # (R, ...)
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=output_splits,
                           input_split_sizes=input_splits, group=group)
    return out


class AllToAll(torch.autograd.Function):
    """Rows x (M, D) split by ``input_splits`` go to the ranks; (R, D) arrive by ``output_splits``.

    Backward: each gradient row goes back to where its row came from, i.e. the same collective
    with the two split lists swapped.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, output_splits: list[int], input_splits: list[int],
                group: dist.ProcessGroup | None = None) -> torch.Tensor:
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        return _all_to_all_rows(x, output_splits, input_splits, group)  # (R, D)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x = _all_to_all_rows(grad_out, ctx.input_splits, ctx.output_splits, ctx.group)
        return grad_x, None, None, None  # (M, D)


@dataclass(frozen=True)
class ExchangeStats:
    """One rank's view of one exchange.

    send_splits: W ints, rows sent to each rank; recv_splits: W ints, rows received from each;
    recv_counts: (W, E_local) rows received per source rank and local expert.
    """

    send_splits: list[int]
    recv_splits: list[int]
    recv_counts: torch.Tensor


class RemoteExperts(nn.Module):
    """Stands in for :class:`moe_lab.Experts` in the sorted dispatch: ``forward_grouped`` sends
    the rows to the ranks that own their experts and brings the results back."""

    def __init__(self, local_experts: Experts, num_experts: int, rank: int, world_size: int,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.local_experts_per_rank = check_world_size(num_experts, world_size)
        if local_experts.num_experts != self.local_experts_per_rank:
            raise ValueError(f"local_experts must hold E / world_size = "
                             f"{self.local_experts_per_rank} experts, "
                             f"got {local_experts.num_experts}")
        self.local = local_experts
        self.num_experts, self.rank, self.world_size, self.group = (num_experts, rank,
                                                                    world_size, group)
        self.last_exchange: ExchangeStats | None = None

    def forward_grouped(self, x_sorted: torch.Tensor,
                        counts: list[int] | torch.Tensor) -> torch.Tensor:
        """x_sorted (M, D) sorted by global expert, counts E ints or an (E,) tensor -> expert
        outputs (M, D).

        Two host syncs: reading this rank's counts (the send splits of ``all_to_all`` are host
        ints) and the received counts."""
        world_size, local_experts = self.world_size, self.local_experts_per_rank
        if isinstance(counts, torch.Tensor):
            counts = counts.tolist()  # E ints (host sync): the exchange's splits live on the host
        # send_splits[d] = sum_{e owned by d} tokens_per_expert[e], from the host's counts
        send = [sum(counts[d * local_experts:(d + 1) * local_experts]) for d in range(world_size)]
        tokens_per_expert = torch.tensor(counts, device=x_sorted.device)  # (E,)
        # 2. count exchange: chunk d of tokens_per_expert (experts of rank d) goes to rank d
        recv_counts = torch.empty_like(tokens_per_expert)  # (W * E_local,)
        dist.all_to_all_single(recv_counts, tokens_per_expert, group=self.group)
        recv_rows = recv_counts.view(world_size, local_experts).tolist()  # W x E_local ints (host sync)
        recv = [sum(row) for row in recv_rows]  # W ints: rows from each source rank
        local_counts = [sum(column) for column in zip(*recv_rows, strict=True)]  # E_local ints
        self.last_exchange = ExchangeStats(send, recv, torch.tensor(recv_rows))
        # 3. dispatch: rows sorted by expert are also sorted by owner rank
        x_recv = AllToAll.apply(x_sorted, recv, send, self.group)  # (R, D)
        # 4. regroup by local expert, 5. grouped GEMM
        order = local_expert_order(recv_counts.view(world_size, local_experts),
                                   num_rows=sum(recv))  # (R,)
        h_grouped = self.local.forward_grouped(x_recv[order], local_counts)
        # 6. undo the regroup (row order[i] of x_recv is row i of h_grouped), send back
        h_recv = torch.zeros_like(h_grouped).index_copy(0, order, h_grouped)  # (R, D)
        return AllToAll.apply(h_recv, send, recv, self.group)  # (M, D)


@dataclass(frozen=True)
class ExpertParallelOutput:
    """y (n, D) for this rank's tokens; router over them; tokens_per_expert (E,) this rank's
    assignments per global expert; exchange: the splits of the token exchange."""

    y: torch.Tensor
    router: RouterOutput
    tokens_per_expert: torch.Tensor
    exchange: ExchangeStats


class ExpertParallelMoE(nn.Module):
    """The expert-parallel twin of a dropless :class:`moe_lab.SparseMoE`, for one rank.

    Inside your own distributed program (``torchrun --nproc-per-node W train.py``), after
    ``dist.init_process_group``::

        layer = ExpertParallelMoE.from_sparse_moe(moe, rank=dist.get_rank(),
                                                  world_size=dist.get_world_size())
        y = layer(x_local).y          # every rank calls it, in the same order
        y.sum().backward()            # the backward exchanges too
        dist.all_reduce(layer.router.weight.grad)   # the router is replicated

    :func:`run_expert_parallel` does exactly this in W local processes.
    """

    def __init__(self, router: TopKRouter, local_experts: Experts, *, rank: int,
                 world_size: int, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.router = router
        self.experts = RemoteExperts(local_experts, router.num_experts, rank, world_size, group)
        self.d_model, self.num_experts = router.d_model, router.num_experts

    @classmethod
    def from_sparse_moe(cls, moe: SparseMoE, *, rank: int, world_size: int,
                        group: dist.ProcessGroup | None = None) -> ExpertParallelMoE:
        """Copy the router and slice rank ``rank``'s block of experts out of ``moe``."""
        check_layer_for_parallel(moe)
        local_experts = check_world_size(moe.num_experts, world_size)
        block = slice(rank * local_experts, (rank + 1) * local_experts)
        experts = Experts(local_experts, moe.d_model, moe.d_ff,
                          activation=moe.experts.activation)
        with torch.no_grad():
            for name, param in experts.named_parameters():
                param.copy_(getattr(moe.experts, name)[block])
        experts = experts.to(moe.experts.w_up.device, moe.experts.w_up.dtype)
        return cls(copy.deepcopy(moe.router), experts, rank=rank, world_size=world_size,
                   group=group)

    def forward(self, x: torch.Tensor) -> ExpertParallelOutput:
        check_float_tensor("x", x)
        check_last_dim("x", x, self.d_model, "d_model")
        x_flat = x.reshape(-1, self.d_model)  # (n, D)
        routing = self.router(x_flat)
        plan = make_routing_plan(routing.topk_idx, routing.topk_weights, self.num_experts,
                                 check_range=False)
        # the single-process sorted dispatch, with the grouped GEMM done by the owner ranks
        y = dispatch_sorted(x_flat, plan, self.experts)  # (n, D)
        return ExpertParallelOutput(y=y.view(x.shape), router=routing,
                                    tokens_per_expert=plan.tokens_per_expert,
                                    exchange=self.experts.last_exchange)


# What the expert-parallel layer does not reproduce: it routes with a copy of the layer's router
# (every router option travels with it) and splits the routed experts (their activation too),
# but drops nothing and has no shared experts or input weighting. These options of the one
# config (moe_lab.layer.SparseMoEConfig) would be lost on the ranks: refused by name.
NOT_CARRIED = {"num_shared_experts": 0, "gate_shared_experts": False, "weight_inputs": False}


def check_layer_for_parallel(moe: object) -> SparseMoE:
    if not isinstance(moe, SparseMoE):
        raise TypeError(f"moe must be a SparseMoE, got {type(moe).__name__}")
    if type(moe) is not SparseMoE:  # e.g. interop's layers: parts a config cannot rebuild
        raise TypeError(f"moe must be a plain SparseMoE (the ranks rebuild it from moe.config), "
                        f"got {type(moe).__name__}")
    config = moe.config
    unsupported = [f"{name}={getattr(config, name)!r}" for name, default in NOT_CARRIED.items()
                   if getattr(config, name) != default]
    if unsupported:
        raise ValueError("the expert-parallel layer splits routed experts behind a plain router; "
                         f"it does not carry {', '.join(unsupported)} (set them to their "
                         "defaults, or run the layer in one process)")
    if config.capacity_factor is not None:
        raise ValueError("moe.capacity_factor must be None: the expert-parallel layer is "
                         f"dropless, got capacity_factor={config.capacity_factor}")
    if config.noise is not None and moe.training:
        raise ValueError(f"moe.router.noise={config.noise!r} draws different noise in "
                         "every process; call moe.eval() or use noise=None")
    return moe


# ---------------------------------------------------------------------------------------------
# The launcher: W processes on this machine, results back to the parent, no hangs.
# ---------------------------------------------------------------------------------------------

class ExpertParallelError(RuntimeError):
    """A rank raised, died or the group timed out; the other ranks were stopped."""


@dataclass(frozen=True)
class ExpertParallelResult:
    """Everything the W ranks computed, gathered in the parent, in single-process layout.

    y (N, D) and grad_x (N, D): the ranks' shards concatenated in rank order.
    grad_router (E, D): the router gradient after the all_reduce (the same on every rank).
    grad_experts: parameter name -> (E, ...) gradient, the owners' blocks concatenated.
    tokens_per_expert (E,): assignments per expert over all ranks.
    routed (W, E): assignments per (source rank, expert).
    tokens_sent (W, W): rows rank s sent to rank d in the dispatch all-to-all (row s, column d).
    token_splits: W ints, tokens held by each rank.  backend, device, seconds: how it ran
    (device: where the ranks computed, "cpu" or "cuda").
    """

    y: torch.Tensor
    grad_x: torch.Tensor
    grad_router: torch.Tensor
    grad_experts: dict[str, torch.Tensor]
    tokens_per_expert: torch.Tensor
    routed: torch.Tensor
    tokens_sent: torch.Tensor
    token_splits: list[int]
    backend: str
    seconds: float
    device: str = "cpu"


@dataclass(frozen=True)
class _Job:
    world_size: int
    backend: str
    device_type: str  # "cpu" or "cuda"
    port: int
    timeout_s: float
    fail_rank: int | None
    job_dir: str


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (bound only to the loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((name for name in names if name.startswith("lo")), None)


def _worker(rank: int, job: _Job) -> None:
    """One rank: join the group, run forward + backward on its shard, save what it computed."""
    loopback = _loopback_interface()
    if loopback is not None:  # keep gloo's sockets on the loopback too
        os.environ["GLOO_SOCKET_IFNAME"] = loopback
    torch.set_num_threads(1)  # W processes share the cores
    device = torch.device("cpu")
    if job.device_type == "cuda":  # NCCL: one GPU per rank; gloo: the ranks may share one
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group(job.backend, init_method=f"tcp://127.0.0.1:{job.port}", rank=rank,
                            world_size=job.world_size,
                            timeout=datetime.timedelta(seconds=job.timeout_s))
    try:
        _run_rank(rank, job, device)
    except BaseException as error:
        # when it happened: the first rank to fail is the cause, the others' errors
        # ("connection closed by peer") are its consequences
        (Path(job.job_dir) / f"rank{rank}.error").write_text(
            f"{time.time()!r}\n{type(error).__name__}: {error}")
        raise
    finally:
        dist.destroy_process_group()


def _run_rank(rank: int, job: _Job, device: torch.device) -> None:
    """Forward + backward of one rank on its shard; saves what it computed for the parent."""
    inputs = torch.load(Path(job.job_dir) / "inputs.pt", weights_only=True)
    moe = SparseMoE.from_config(SparseMoEConfig(**inputs["config"]))  # the caller's layer as it is
    moe.load_state_dict(inputs["state"])
    moe = moe.to(device).eval()
    layer = ExpertParallelMoE.from_sparse_moe(moe, rank=rank, world_size=job.world_size)
    x = inputs["x_shards"][rank].to(device).requires_grad_(True)  # (n, D)
    if rank == job.fail_rank:
        raise RuntimeError(f"rank {rank} failed on purpose (fail_rank={rank}) before the "
                           "token exchange")
    out = layer(x)
    out.y.backward(inputs["grad_shards"][rank].to(device))
    # the router is replicated (data parallel): sum its gradient over the ranks
    grad_router = layer.router.weight.grad
    dist.all_reduce(grad_router)
    torch.save({
        "y": out.y.detach().cpu(),
        "grad_x": x.grad.cpu(),
        "grad_router": grad_router.cpu(),
        "grad_experts": {name: (p.grad if p.grad is not None else torch.zeros_like(p)).cpu()
                         for name, p in layer.experts.local.named_parameters()},
        "tokens_per_expert": out.tokens_per_expert.cpu(),
        "send_splits": out.exchange.send_splits,
    }, Path(job.job_dir) / f"rank{rank}.pt")


def _layer_config(moe: SparseMoE) -> dict[str, object]:
    """The layer's one config as it is now (options changed after construction included), so
    each rank rebuilds the same layer (then loads its state): :attr:`moe_lab.SparseMoE.config`."""
    return moe.config.to_dict()


def _first_failure(job_dir: str) -> tuple[int, str] | None:
    """(rank, "Type: message") of the rank that failed first, from the ranks' error files."""
    failures = []
    for path in Path(job_dir).glob("rank*.error"):
        stamp, _, message = path.read_text().partition("\n")
        failures.append((float(stamp), int(path.stem.removeprefix("rank")), message))
    if not failures:
        return None
    _, rank, message = min(failures)
    return rank, message


def _first_line_of_error(traceback_text: str) -> str:
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def _launch(job: _Job, timeout_s: float) -> None:
    """Start the ranks, wait for all of them, stop them all if one fails or time runs out."""
    context = mp.start_processes(_worker, args=(job,), nprocs=job.world_size, join=False,
                                 start_method="spawn")
    # torch logs a warning per rank it stops; our error says it once
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_logger.level
    spawn_logger.setLevel(logging.ERROR)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=0.2):
            if time.monotonic() > deadline:
                raise ExpertParallelError(
                    f"the {job.world_size} ranks did not finish within timeout_s={timeout_s:g} s; "
                    "all ranks were stopped")
    except ProcessRaisedException as error:
        rank, message = _first_failure(job.job_dir) or (error.error_index,
                                                        _first_line_of_error(str(error)))
        raise ExpertParallelError(f"rank {rank} of {job.world_size} raised {message}; "
                                  "the other ranks were stopped") from error
    except ProcessExitedException as error:
        raise ExpertParallelError(
            f"rank {error.error_index} of {job.world_size} died with exit code "
            f"{error.exit_code}; the other ranks were stopped") from error
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
        spawn_logger.setLevel(level)


def run_expert_parallel(moe: SparseMoE, x: torch.Tensor, grad_y: torch.Tensor | None = None, *,
                        world_size: int = 2, backend: str | None = None,
                        device: str | None = None, timeout_s: float = 60.0,
                        fail_rank: int | None = None) -> ExpertParallelResult:
    """Run ``moe`` expert-parallel over ``world_size`` local processes, forward and backward.

    The N tokens of ``x`` (N, D) are split into ``world_size`` contiguous shards (sizes may
    differ by one, as ``torch.tensor_split``); rank r holds shard r and experts
    r * E / W ... (r + 1) * E / W - 1. The loss is sum(y * grad_y) (``grad_y`` defaults to ones),
    so the gradients equal those of ``moe(x).y.backward(grad_y)`` in one process.

    backend: ``"gloo"`` (default without a GPU per rank) or ``"nccl"`` (one GPU per rank).
    device: where each rank computes, ``"cpu"`` or ``"cuda"``; default ``"cuda"`` for NCCL and
    ``"cpu"`` for gloo. gloo also moves CUDA tensors (through host memory), so with fewer GPUs
    than ranks ``backend="gloo", device="cuda"`` runs every rank on the GPUs there are.
    timeout_s: the whole run, and each collective, must finish within it; otherwise every rank
    is stopped and :class:`ExpertParallelError` is raised. ``fail_rank`` makes that rank raise
    before the exchange (to see what a failure looks like).
    """
    check_layer_for_parallel(moe)
    check_world_size(moe.num_experts, world_size)
    check_float_tensor("x", x)
    check_last_dim("x", x, moe.d_model, "d_model")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] < world_size:
        raise ValueError(f"x must hold at least world_size={world_size} tokens, got {x.shape[0]}")
    if grad_y is None:
        grad_y = torch.ones_like(x)
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(grad_y.shape)}")
    backend = backend or ("nccl" if torch.cuda.is_available() and
                          torch.cuda.device_count() >= world_size else "gloo")
    check_choice("backend", backend, BACKENDS)
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"backend='nccl' needs one GPU per rank: world_size={world_size}, "
                         f"GPUs={torch.cuda.device_count()}")
    device = device or ("cuda" if backend == "nccl" else "cpu")
    check_choice("device", device, ("cpu", "cuda"))
    if backend == "nccl" and device != "cuda":
        raise ValueError(f"backend='nccl' computes on CUDA tensors only, got device={device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' needs a CUDA GPU, and this machine has none")
    timeout_s = check_positive_float("timeout_s", timeout_s)
    if fail_rank is not None and not 0 <= fail_rank < world_size:
        raise ValueError(f"fail_rank must be None or in [0, {world_size}), got {fail_rank}")

    x_shards = [s.detach().cpu().clone() for s in torch.tensor_split(x, world_size)]
    grad_shards = [s.detach().cpu().clone() for s in torch.tensor_split(grad_y, world_size)]
    with tempfile.TemporaryDirectory(prefix="moe_lab_ep_") as job_dir:
        torch.save({"config": _layer_config(moe),
                    "state": {k: v.detach().cpu() for k, v in moe.state_dict().items()},
                    "x_shards": x_shards, "grad_shards": grad_shards},
                   Path(job_dir) / "inputs.pt")
        job = _Job(world_size, backend, device, free_port(), timeout_s, fail_rank, job_dir)
        start = time.perf_counter()
        _launch(job, timeout_s)
        seconds = time.perf_counter() - start
        ranks = [torch.load(Path(job_dir) / f"rank{r}.pt", weights_only=True)
                 for r in range(world_size)]

    routed = torch.stack([r["tokens_per_expert"] for r in ranks])  # (W, E)
    return ExpertParallelResult(
        y=torch.cat([r["y"] for r in ranks]),  # (N, D)
        grad_x=torch.cat([r["grad_x"] for r in ranks]),  # (N, D)
        grad_router=ranks[0]["grad_router"],  # (E, D)
        grad_experts={name: torch.cat([r["grad_experts"][name] for r in ranks])
                      for name in ranks[0]["grad_experts"]},
        tokens_per_expert=routed.sum(dim=0),  # (E,)
        routed=routed,
        tokens_sent=torch.tensor([r["send_splits"] for r in ranks]),  # (W, W)
        token_splits=[s.shape[0] for s in x_shards],
        backend=backend,
        seconds=seconds,
        device=device,
    )


__all__ = [
    "AllToAll",
    "ExchangeStats",
    "ExpertParallelError",
    "ExpertParallelMoE",
    "ExpertParallelOutput",
    "ExpertParallelResult",
    "RemoteExperts",
    "expert_owner",
    "free_port",
    "local_expert_order",
    "run_expert_parallel",
    "send_splits",
    "splits_from_counts",
]

if __name__ == "__main__":  # a smoke run: python -m moe_lab.systems.parallel
    torch.manual_seed(0)
    demo = SparseMoE(16, 32, 4, 2)
    result = run_expert_parallel(demo, torch.randn(10, 16), world_size=2)
    print("tokens sent (row = source rank, column = destination):\n", result.tokens_sent)
    sys.exit(0)
