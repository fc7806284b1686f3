"""Parameters and FLOPs of a (MoE) decoder-only transformer: stored vs run per token. Lesson 00.

An MoE layer keeps E expert FFNs but runs only K of them per token, so

    total parameters  = embeddings + L * (attention + norms + router + E * FFN) + lm_head
    active parameters = embeddings + L * (attention + norms + router + K * FFN) + lm_head

and S shared experts (DeepSeekMoE) add L * S * FFN to both: every token runs them. Qwen3-30B-A3B
(Qwen team 2025) with its published config gives 30.5B total and 3.3B active (see
:data:`QWEN3_30B_A3B`).

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

from dataclasses import dataclass, replace

from moe_lab.validation import check_nonnegative_int, check_positive_int, check_top_k


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
    top_k: int = 1  # K, routed experts run per token
    num_shared_experts: int = 0  # S, experts of width F that every token runs (DeepSeekMoE)
    ffn_matrices: int = 3  # 3 for SwiGLU (gate, up, down), 2 for a GELU/ReLU FFN (up, down)
    tie_embeddings: bool = False  # lm_head shares the embedding matrix

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_layers", "d_ff", "num_heads", "num_kv_heads",
                     "head_dim", "num_experts"):
            check_positive_int(name, getattr(self, name))
        check_top_k(self.top_k, self.num_experts)
        check_nonnegative_int("num_shared_experts", self.num_shared_experts)
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

# Qwen3-30B-A3B's config (Qwen/Qwen3-30B-A3B, model type qwen3_moe): 48 layers, hidden 2048,
# 128 experts of moe_intermediate_size 768, 8 per token, no shared expert, vocab 151936, untied
# embeddings, 32 query heads and 4 KV heads of head_dim 128 (query width 4096 > hidden 2048).
# Model card: 30.5B total, 3.3B activated. (Its q/k RMSNorms, 2 * 128 weights per layer, are left
# out: 12K parameters.)
QWEN3_30B_A3B = TransformerConfig(vocab_size=151936, d_model=2048, num_layers=48, d_ff=768,
                                  num_heads=32, num_kv_heads=4, head_dim=128, num_experts=128,
                                  top_k=8)


@dataclass(frozen=True)
class ExpertLayout:
    """The shape of one MoE layer's experts: E routed experts of width F, K of them per token,
    and S shared experts of width F that every token runs."""

    num_experts: int  # E, routed
    top_k: int  # K, routed experts per token
    d_ff: int  # F
    num_shared_experts: int = 0  # S

    @property
    def active_experts(self) -> int:
        """Experts a token runs: K routed + S shared."""
        return self.top_k + self.num_shared_experts

    @property
    def active_width(self) -> int:
        """Hidden units a token runs: (K + S) * F (active FFN parameters = 3 * D * this)."""
        return self.active_experts * self.d_ff

    @property
    def total_width(self) -> int:
        """Hidden units stored: (E + S) * F."""
        return (self.num_experts + self.num_shared_experts) * self.d_ff


def fine_grained(num_experts: int, top_k: int, d_ff: int, granularity: int,
                 num_shared_experts: int = 0) -> ExpertLayout:
    """Split every expert into ``granularity`` = m experts of width F / m and route to m * K of
    them (DeepSeekMoE, Dai et al. 2024, arXiv 2401.06066, section 3.1, fine-grained expert
    segmentation); then take S of the m * E experts out of routing as shared experts, and S out of
    the m * K routed per token (section 3.2, shared expert isolation):

        (E, K, F)  ->  (m * E - S routed, m * K - S per token, F / m), S shared

    The stored hidden units (m * E * F / m = E * F) and the ones a token runs (m * K * F / m =
    K * F) stay the same, so total and active expert parameters and the expert FLOPs per token are
    unchanged; only the router grows (D * m * E weights instead of D * E).
    """
    for name, value in (("num_experts", num_experts), ("d_ff", d_ff),
                        ("granularity", granularity)):
        check_positive_int(name, value)
    check_top_k(top_k, num_experts)
    check_nonnegative_int("num_shared_experts", num_shared_experts)
    if d_ff % granularity:
        raise ValueError(f"granularity={granularity} must divide d_ff={d_ff} (each expert of "
                         f"width {d_ff} is split into {granularity} of width d_ff / granularity)")
    if num_shared_experts >= granularity * top_k:
        raise ValueError(f"num_shared_experts must be below granularity * top_k = "
                         f"{granularity * top_k} so that a token still routes to one expert, "
                         f"got {num_shared_experts}")
    # m*E experts of width F/m, m*K of them per token; S of them always on, out of both budgets
    return ExpertLayout(num_experts=granularity * num_experts - num_shared_experts,
                        top_k=granularity * top_k - num_shared_experts,
                        d_ff=d_ff // granularity, num_shared_experts=num_shared_experts)


def fine_grained_config(config: TransformerConfig, granularity: int,
                        num_shared_experts: int = 0) -> TransformerConfig:
    """``config`` with its experts cut by :func:`fine_grained` (same total and active params,
    bigger router)."""
    if config.num_shared_experts:
        raise ValueError("config must have no shared experts yet (num_shared_experts=0), got "
                         f"{config.num_shared_experts}")
    layout = fine_grained(config.num_experts, config.top_k, config.d_ff, granularity,
                          num_shared_experts)
    return replace(config, num_experts=layout.num_experts, top_k=layout.top_k, d_ff=layout.d_ff,
                   num_shared_experts=layout.num_shared_experts)


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
        *([ComponentCount("shared experts", c.num_layers * c.num_shared_experts * expert,
                          c.num_layers * c.num_shared_experts * expert)]
          if c.num_shared_experts else []),
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
    shared = counts["shared experts"].active if config.num_shared_experts else 0
    matmul_weights = (counts["attention"].active + counts["router"].active
                      + counts["experts"].active + shared + lm_head)
    # FLOPs_matmul = 2 * (weights a token meets in a matmul)
    matmul = 2 * matmul_weights
    # FLOPs_attention = 4 * L * S * H * d_h   (Q K^T and A V)
    attention = 4 * config.num_layers * context_length * config.num_heads * config.head_dim
    return FlopCount(matmul=matmul, attention=attention)


def dense_equivalent(config: TransformerConfig) -> TransformerConfig:
    """The dense model with the same active parameters (less the router): one FFN of width
    (K + S) * F per layer."""
    return TransformerConfig(
        vocab_size=config.vocab_size, d_model=config.d_model, num_layers=config.num_layers,
        d_ff=(config.top_k + config.num_shared_experts) * config.d_ff, num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
        ffn_matrices=config.ffn_matrices, tie_embeddings=config.tie_embeddings)
