"""Parameters and FLOPs of a (MoE) decoder-only transformer: stored vs run per token. Lesson 00.

An MoE layer keeps E expert FFNs but runs only K of them per token, so

    total parameters  = embeddings + L * (attention + norms + router + E * FFN) + lm_head
    active parameters = embeddings + L * (attention + norms + router + K * FFN) + lm_head

with one SwiGLU FFN holding 3 * D * F weights (W_gate, W_up: D x F; W_down: F x D) and one
grouped-query attention block holding D * H * d_h (W_q) + 2 * D * H_kv * d_h (W_k, W_v)
+ H * d_h * D (W_o) weights. Mixtral 8x7B (Jiang et al. 2024) with its published config gives
46.7B total and 12.9B active parameters (see :data:`MIXTRAL_8X7B`).

FLOPs per token, forward (Kaplan et al. 2020, Table 1; Hoffmann et al. 2022, App. F): every
weight a token meets in a matmul costs a multiply and an add,

    FLOPs_matmul    = 2 * (active parameters - embeddings - norms)
    FLOPs_attention = 4 * L * S * H * d_h      (Q K^T and softmax(.) V over a context of S tokens;
                                                a causal mask halves this on average)

and a training step costs about 3x the forward pass (backward = 2x forward): the "6 N" rule.
The embedding lookup is a gather, not a matmul, so it costs no FLOPs; the lm_head does.
"""

from __future__ import annotations

from dataclasses import dataclass

from moe_lab.validation import check_positive_int, check_top_k


@dataclass(frozen=True)
class TransformerConfig:
    """The shape of a decoder-only transformer whose FFNs may be MoE layers.

    A dense model is the special case num_experts = top_k = 1.
    """

    vocab_size: int  # V
    d_model: int  # D
    num_layers: int  # L
    d_ff: int  # F, hidden width of one expert (or of the dense FFN)
    num_heads: int  # H, query heads
    num_kv_heads: int  # H_kv, key/value heads (grouped-query attention; = H for multi-head)
    head_dim: int  # d_h
    num_experts: int = 1  # E
    top_k: int = 1  # K, experts run per token
    ffn_matrices: int = 3  # 3 for SwiGLU (gate, up, down), 2 for a GELU/ReLU FFN (up, down)
    tie_embeddings: bool = False  # lm_head shares the embedding matrix

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_layers", "d_ff", "num_heads", "num_kv_heads",
                     "head_dim", "num_experts"):
            check_positive_int(name, getattr(self, name))
        check_top_k(self.top_k, self.num_experts)
        if self.ffn_matrices not in (2, 3):
            raise ValueError(f"ffn_matrices must be 2 (GELU/ReLU) or 3 (SwiGLU), "
                             f"got {self.ffn_matrices!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")


# Mixtral 8x7B's config.json (mistralai/Mixtral-8x7B-v0.1): 32 layers, hidden 4096,
# intermediate 14336, 8 local experts, 2 per token, vocab 32000, 32 heads / 8 KV heads of 128.
MIXTRAL_8X7B = TransformerConfig(vocab_size=32000, d_model=4096, num_layers=32, d_ff=14336,
                                 num_heads=32, num_kv_heads=8, head_dim=128, num_experts=8,
                                 top_k=2)


@dataclass(frozen=True)
class ComponentCount:
    """One row of the parameter table: a component, its stored and its active parameters."""

    name: str
    total: int
    active: int


@dataclass(frozen=True)
class ParamCount:
    """Stored (total) and per-token (active) parameters, with the table they sum."""

    components: tuple[ComponentCount, ...]

    @property
    def total(self) -> int:
        return sum(c.total for c in self.components)

    @property
    def active(self) -> int:
        return sum(c.active for c in self.components)

    @property
    def active_fraction(self) -> float:
        return self.active / self.total

    def __getitem__(self, name: str) -> ComponentCount:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"no component {name!r}; have {[c.name for c in self.components]}")


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs per token: matmuls against the active weights, plus attention scores."""

    matmul: int
    attention: int

    @property
    def forward(self) -> int:
        return self.matmul + self.attention

    @property
    def training(self) -> int:
        """Forward + backward (the backward pass costs about twice the forward)."""
        return 3 * self.forward


def ffn_params(d_model: int, d_ff: int, ffn_matrices: int = 3) -> int:
    """Weights of one FFN (one expert): SwiGLU has W_gate, W_up (D x F) and W_down (F x D)."""
    # P_ffn = m * D * F,  m = 3 (SwiGLU) or 2
    return ffn_matrices * d_model * d_ff


def attention_params(config: TransformerConfig) -> int:
    """Weights of one grouped-query attention block (no biases, as in Llama/Mixtral)."""
    q_width = config.num_heads * config.head_dim  # H * d_h
    kv_width = config.num_kv_heads * config.head_dim  # H_kv * d_h
    # P_attn = D*H*d_h (W_q) + 2*D*H_kv*d_h (W_k, W_v) + H*d_h*D (W_o)
    return config.d_model * q_width + 2 * config.d_model * kv_width + q_width * config.d_model


def count_parameters(config: TransformerConfig) -> ParamCount:
    """Total and active parameters, component by component (embeddings, attention, router,
    experts, norms, lm_head). Norms are RMSNorm: D weights, two per layer and one final."""
    c = config
    embedding = c.vocab_size * c.d_model  # V * D
    lm_head = 0 if c.tie_embeddings else c.vocab_size * c.d_model
    attention = c.num_layers * attention_params(c)
    # a dense model (E = 1) has no router
    router = c.num_layers * c.num_experts * c.d_model if c.num_experts > 1 else 0
    expert = ffn_params(c.d_model, c.d_ff, c.ffn_matrices)
    norms = (2 * c.num_layers + 1) * c.d_model
    return ParamCount(components=(
        ComponentCount("embedding", embedding, embedding),
        ComponentCount("attention", attention, attention),
        ComponentCount("router", router, router),
        # stored: all E experts; run per token: K of them
        ComponentCount("experts", c.num_layers * c.num_experts * expert,
                       c.num_layers * c.top_k * expert),
        ComponentCount("norms", norms, norms),
        ComponentCount("lm_head", lm_head, lm_head),
    ))


def flops_per_token(config: TransformerConfig, context_length: int = 0) -> FlopCount:
    """Forward FLOPs for one token attending to ``context_length`` tokens (0: matmuls only)."""
    if isinstance(context_length, bool) or not isinstance(context_length, int) \
            or context_length < 0:
        raise ValueError(f"context_length must be an int >= 0, got {context_length!r}")
    counts = count_parameters(config)
    # the lm_head is a matmul even when tied to the embedding (a gather, no FLOPs)
    lm_head = config.vocab_size * config.d_model
    matmul_weights = (counts["attention"].active + counts["router"].active
                      + counts["experts"].active + lm_head)
    # FLOPs_matmul = 2 * (weights a token meets in a matmul)
    matmul = 2 * matmul_weights
    # FLOPs_attention = 4 * L * S * H * d_h   (Q K^T and A V)
    attention = 4 * config.num_layers * context_length * config.num_heads * config.head_dim
    return FlopCount(matmul=matmul, attention=attention)


def dense_equivalent(config: TransformerConfig) -> TransformerConfig:
    """The dense model with the same active parameters (less the router): one FFN of width
    K * F per layer."""
    return TransformerConfig(
        vocab_size=config.vocab_size, d_model=config.d_model, num_layers=config.num_layers,
        d_ff=config.top_k * config.d_ff, num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
        ffn_matrices=config.ffn_matrices, tie_embeddings=config.tie_embeddings)
