"""A tiny decoder-only transformer whose feed-forward blocks are dense or sparse MoE. Lesson 05.

    h_0     = embed(input_ids) + pos_embed                       (B, T, D)
    a_l     = h_{l-1} + Attention(RMSNorm(h_{l-1}))              (B, T, D)   causal
    h_l     = a_l + FFN_l(RMSNorm(a_l))                          (B, T, D)   dense or SparseMoE
    logits  = RMSNorm(h_L) embed^T                               (B, T, V)   tied weights

The language-model loss is the mean next-byte cross-entropy over real (unpadded) targets. With MoE
blocks the model adds the auxiliary losses, each averaged over the MoE layers (not summed, so the
coefficient does not grow with depth; Switch Transformer, Fedus et al. 2021; ST-MoE, Zoph et al.
2022):

    loss = lm_loss + aux_loss_coef * mean_l LB_l + z_loss_coef * mean_l Z_l

Padding is on the right only (``attention_mask`` is True for real tokens, then False): causal
attention already keeps real tokens from seeing the padding after them, and the mask removes the
padding from the LM loss and from the auxiliary losses.

"Same active FLOPs" between a dense and an MoE model: a dense FFN with d_ff = K * F costs what K
experts of width F cost per token (plus the router's D * E, small).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.experts import Experts
from moe_lab.layer import SparseMoE
from moe_lab.lm import text_routing
from moe_lab.lm.text_routing import TextRouting
from moe_lab.lm.tokenizer import ByteTokenizer
from moe_lab.losses import average_over_layers, load_balancing_loss, router_z_loss
from moe_lab.routing import RouterOutput
from moe_lab.validation import (
    check_choice,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_top_k,
)
from moe_lab.variants.upcycling import upcycle

_FFN_TYPES = ("dense", "moe")
IGNORE_INDEX = -100  # target id of a padded position, skipped by the loss


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the model's shape; saved in every checkpoint."""

    vocab_size: int = 256  # V: bytes
    max_seq_len: int = 128  # longest T (learned position embeddings)
    d_model: int = 64  # D
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # attention heads, D % n_heads == 0
    ffn: str = "moe"  # "dense" (one SwiGLU FFN) or "moe" (SparseMoE)
    d_ff: int = 64  # F: the dense FFN's hidden width, or each expert's
    num_experts: int = 8  # E (moe only)
    top_k: int = 2  # K (moe only)
    num_shared_experts: int = 0  # S experts of width d_ff that every token runs (moe only)
    capacity_factor: float | None = None  # None: dropless (moe only)
    dispatch: str = "sorted"  # SparseMoE dispatch strategy
    aux_loss_coef: float = 1e-2  # weight of the load-balancing loss (Switch: 1e-2)
    z_loss_coef: float = 1e-3  # weight of the router z-loss (ST-MoE: 1e-3)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff",
                     "num_experts"):
            check_positive_int(name, getattr(self, name))
        check_choice("ffn", self.ffn, _FFN_TYPES)
        check_top_k(self.top_k, self.num_experts)
        check_nonnegative_int("num_shared_experts", self.num_shared_experts)
        check_positive_float("capacity_factor", self.capacity_factor, allow_none=True)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class LayerRouting:
    """What one MoE layer decided: router (over N = B*T tokens), tokens_per_expert (E,) after
    drops, dropped (N, K) bool."""

    router: RouterOutput
    tokens_per_expert: torch.Tensor
    dropped: torch.Tensor

    @property
    def topk_idx(self) -> torch.Tensor:
        return self.router.topk_idx  # (N, K)

    @property
    def topk_weights(self) -> torch.Tensor:
        return self.router.topk_weights  # (N, K)


@dataclass(frozen=True)
class LMOutput:
    """logits (B, T, V); loss = lm_loss + coefficients * aux losses (None without targets);
    aux_loss and z_loss are averaged over the MoE layers (None for a dense model);
    routing holds one LayerRouting per MoE layer (empty for a dense model)."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    aux_loss: torch.Tensor | None
    z_loss: torch.Tensor | None
    routing: tuple[LayerRouting, ...]

    @property
    def drop_rate(self) -> float:
        """Share of the (token, expert) assignments dropped, over all MoE layers (0 if dense)."""
        total = sum(r.dropped.numel() for r in self.routing)
        return sum(int(r.dropped.sum()) for r in self.routing) / total if total else 0.0


class DenseFFN(nn.Module):
    """One SwiGLU feed-forward network: an :class:`Experts` bank with a single expert."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.experts = Experts(1, d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts.forward_expert(x, 0)  # (..., D)


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        d_head = d_model // self.n_heads  # explicit, so T = 0 reshapes too
        q, k, v = self.qkv(x).view(batch, seq, 3, self.n_heads, d_head).unbind(2)  # (B, T, H, D/H)
        # softmax(q k^T / sqrt(d_head) + causal mask) v
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)  # (B, H, T, D/H)
        return self.out(y.transpose(1, 2).reshape(batch, seq, d_model))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm_attn = nn.RMSNorm(config.d_model)
        self.attn = _CausalSelfAttention(config.d_model, config.n_heads)
        self.norm_ffn = nn.RMSNorm(config.d_model)
        if config.ffn == "moe":
            self.ffn: nn.Module = SparseMoE(config.d_model, config.d_ff, config.num_experts,
                                            config.top_k, dispatch=config.dispatch,
                                            capacity_factor=config.capacity_factor,
                                            num_shared_experts=config.num_shared_experts)
        else:
            self.ffn = DenseFFN(config.d_model, config.d_ff)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, LayerRouting | None]:
        h = h + self.attn(self.norm_attn(h))  # (B, T, D)
        out = self.ffn(self.norm_ffn(h))
        if isinstance(self.ffn, SparseMoE):
            routing = LayerRouting(out.router, out.tokens_per_expert, out.dropped)
            return h + out.y, routing  # (B, T, D)
        return h + out, None


class TinyLM(nn.Module):
    """A byte-level decoder-only transformer with dense or MoE feed-forward blocks."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Parameter(torch.zeros(config.max_seq_len, config.d_model))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_out = nn.RMSNorm(config.d_model)

    def num_parameters(self) -> int:
        """Total parameters (all experts)."""
        return sum(p.numel() for p in self.parameters())

    def num_active_parameters(self) -> int:
        """Parameters one token uses: all but the E - K routed experts it is not routed to
        (shared experts are always active)."""
        total = self.num_parameters()
        if self.config.ffn == "dense":
            return total
        cfg = self.config
        per_expert = sum(p[0].numel() for p in self.blocks[0].ffn.experts.parameters())
        return total - cfg.n_layers * (cfg.num_experts - cfg.top_k) * per_expert

    def set_capacity_factor(self, capacity_factor: float | None) -> None:
        """Change every MoE layer's capacity factor (None: dropless), e.g. to evaluate a model
        trained dropless at a capacity; the config follows."""
        capacity_factor = check_positive_float("capacity_factor", capacity_factor, allow_none=True)
        if self.config.ffn != "moe":
            raise ValueError("set_capacity_factor needs a model with ffn='moe'")
        self.config = replace(self.config, capacity_factor=capacity_factor)
        for block in self.blocks:
            block.ffn.capacity_factor = capacity_factor

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> LMOutput:
        """input_ids (B, T) int64; targets (B, T) int64 with IGNORE_INDEX at padding;
        attention_mask (B, T) bool, True for real tokens, right padding only."""
        self._check_inputs(input_ids, targets, attention_mask)
        seq = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos_embed[:seq]  # (B, T, D)
        routing: list[LayerRouting] = []
        for block in self.blocks:
            h, layer_routing = block(h)
            if layer_routing is not None:
                routing.append(layer_routing)
        logits = self.norm_out(h) @ self.embed.weight.T  # (B, T, V)

        mask = None if attention_mask is None else attention_mask.reshape(-1).bool()  # (N,)
        aux_loss = z_loss = None
        if routing:
            # LB = mean over layers of E * sum_i f_i P_i ;  Z = mean over layers of mean_n z_n^2
            # (the router's ids need no range check: it would cost two host syncs per layer)
            aux_loss = average_over_layers(
                [load_balancing_loss(r.router.probs, r.topk_idx, mask, check_range=False)
                 for r in routing])
            z_loss = average_over_layers([router_z_loss(r.router.logits, mask) for r in routing])
        loss = lm_loss = None
        if targets is not None:
            if attention_mask is not None:
                targets = targets.masked_fill(~attention_mask.bool(), IGNORE_INDEX)  # (B, T)
            # lm_loss = mean over real targets of -log p(target)
            lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                      targets.reshape(-1), ignore_index=IGNORE_INDEX)
            loss = lm_loss
            if routing:
                loss = (lm_loss + self.config.aux_loss_coef * aux_loss
                        + self.config.z_loss_coef * z_loss)
        return LMOutput(logits=logits, loss=loss, lm_loss=lm_loss, aux_loss=aux_loss,
                        z_loss=z_loss, routing=tuple(routing))

    def _check_inputs(self, input_ids: object, targets: object, attention_mask: object) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long:
            raise TypeError("input_ids must be an int64 torch.Tensor of shape (B, T)")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"input_ids is {input_ids.shape[1]} tokens long, more than "
                             f"max_seq_len={self.config.max_seq_len}")
        # one host sync for the range check (an id out of range would stop a GPU with a
        # device-side assert inside the embedding)
        if input_ids.numel() and not bool(((input_ids >= 0)
                                           & (input_ids < self.config.vocab_size)).all()):
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size})")
        for name, value in (("targets", targets), ("attention_mask", attention_mask)):
            if value is not None and (not isinstance(value, torch.Tensor)
                                      or value.shape != input_ids.shape):
                raise ValueError(f"{name} must be a tensor of shape {tuple(input_ids.shape)}")


def upcycle_model(dense: TinyLM, num_experts: int, top_k: int) -> TinyLM:
    """Sparse upcycling of a whole model (Komatsuzaki et al. 2022): the same embeddings,
    attention and norms, and every dense FFN turned into an MoE layer of ``num_experts`` copies
    of it with a fresh router (:func:`moe_lab.variants.upcycling.upcycle`: dropless, renormalised top-k),
    so the new model's logits equal the dense model's at step 0. Lesson 08."""
    if not isinstance(dense, TinyLM) or dense.config.ffn != "dense":
        raise TypeError("dense must be a TinyLM with ffn='dense'")
    config = replace(dense.config, ffn="moe", num_experts=num_experts, top_k=top_k,
                     capacity_factor=None, num_shared_experts=0)
    moe = TinyLM(config).to(next(dense.parameters()).device)
    shared = {k: v for k, v in dense.state_dict().items() if ".ffn." not in k}
    missing, unexpected = moe.load_state_dict(shared, strict=False)
    assert not unexpected and all(".ffn." in k for k in missing)
    for moe_block, dense_block in zip(moe.blocks, dense.blocks, strict=True):
        moe_block.ffn.load_state_dict(upcycle(dense_block.ffn, num_experts, top_k).state_dict())
    return moe.train(dense.training)


def route_model_text(model: TinyLM, text: str, tokenizer: ByteTokenizer | None = None) -> TextRouting:
    """Run ``text`` through the model (eval mode, its first max_seq_len bytes) and return each
    MoE layer's routing of the byte tokens (:func:`moe_lab.lm.text_routing.route_bytes`). Empty text
    gives empty tables. The model's training mode is restored, even when routing fails."""
    if not isinstance(model, TinyLM) or model.config.ffn != "moe":
        raise ValueError("route_model_text needs a TinyLM with ffn='moe'")
    device = next(model.parameters()).device

    def route_ids(ids: torch.Tensor) -> list[RouterOutput]:  # ids: (T,)
        return [r.router for r in model(ids.unsqueeze(0).to(device)).routing]

    was_training = model.training
    model.eval()
    try:
        return text_routing.route_bytes(text, route_ids, max_tokens=model.config.max_seq_len,
                                       tokenizer=tokenizer)
    finally:
        model.train(was_training)
