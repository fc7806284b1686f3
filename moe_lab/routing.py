"""The router (gating network): tokens -> logits -> probabilities -> top-k choice. Lessons 01-02.

    router_logits = x W^T                                   (N, E)
    router_probs  = softmax(router_logits)                  (N, E)    ("softmax" scoring)
                  = sigmoid(router_logits)                  (N, E)    ("sigmoid" scoring, DeepSeek-V3)
    topk_idx      = argtopk_K(router_probs + score_correction_bias)   (N, K)
    topk_weights  = router_probs[topk_idx]  (/ their sum when normalize=True)

With softmax scoring, renormalising the top-k probabilities equals a softmax over the top-k
logits (the Mixtral way); with normalize=False the weights are the raw probabilities (Switch
top-1, Qwen ``norm_topk_prob=False``). The bias only changes which experts are chosen, never the
weights (DeepSeek-V3, Wang et al. 2024, "auxiliary-loss-free load balancing"); it is a buffer,
updated outside autograd by :class:`moe_lab.balancing.BiasBalancer`.

Noise (training only, off in ``eval()``):

- ``"noisy_topk"``: Shazeer et al. 2017, eq. (4): H(x)_i = (x W_g)_i + eps * softplus((x W_noise)_i),
  eps ~ N(0, 1), with a learned noise projection W_noise (initialised to zero, as in the paper).
- ``"jitter"``: Switch Transformer (Fedus et al. 2021): the router input is multiplied by
  u ~ Uniform(1 - jitter_eps, 1 + jitter_eps), element-wise.

The router computes in ``router_dtype`` (float32 by default, whatever the input dtype): in
bfloat16 the logits carry only 8 bits of mantissa and near-ties flip the top-k choice (lesson 01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.validation import (
    check_choice,
    check_float_tensor,
    check_fraction,
    check_last_dim,
    check_positive_int,
    check_top_k,
)

NOISE_TYPES = (None, "noisy_topk", "jitter")
SCORING_TYPES = ("softmax", "sigmoid")


@dataclass(frozen=True)
class RouterOutput:
    """What the router decided for N tokens.

    logits:       (N, E) float32 router logits (with noise, when noise is on)
    probs:        (N, E) softmax(logits) (or sigmoid(logits) with sigmoid scoring)
    topk_idx:     (N, K) int64 chosen experts, best first
    topk_weights: (N, K) float32 combine weights of the chosen experts
    """

    logits: torch.Tensor
    probs: torch.Tensor
    topk_idx: torch.Tensor
    topk_weights: torch.Tensor


def topk_routing(
    router_probs: torch.Tensor,
    top_k: int,
    *,
    normalize: bool = True,
    selection_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose K experts per token and their weights: returns ``(topk_idx, topk_weights)``.

    The bias (if any) is added for the choice only; the weights are gathered from the unbiased
    probabilities and, with ``normalize``, divided by their sum. router_probs is (..., E), top_k
    in [1, E], selection_bias (E,).
    """
    check_float_tensor("router_probs", router_probs)
    if router_probs.dim() < 1:
        raise ValueError("router_probs must have shape (N, E), got a 0-d tensor")
    check_top_k(top_k, router_probs.shape[-1])
    if selection_bias is not None:
        check_float_tensor("selection_bias", selection_bias)
        if selection_bias.shape != router_probs.shape[-1:]:
            raise ValueError(f"selection_bias must have shape (E={router_probs.shape[-1]},), "
                             f"got {tuple(selection_bias.shape)}")
    scores_for_choice = router_probs if selection_bias is None else router_probs + selection_bias
    topk_idx = torch.topk(scores_for_choice, top_k, dim=-1).indices  # (N, K)
    topk_weights = router_probs.gather(-1, topk_idx)  # (N, K)
    if normalize:
        # w_k = p_k / sum_j p_j  over the K chosen experts
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    return topk_idx, topk_weights


class TopKRouter(nn.Module):
    """Linear gate with top-k selection. ``weight`` is (E, D), as in ``nn.Linear(D, E, bias=False)``.

    Args:
        d_model: D, the token width.
        num_experts: E.
        top_k: K, experts per token, 1 <= K <= E.
        normalize: renormalise the K weights to sum to 1 (Mixtral) or keep raw probabilities.
        noise: None, ``"noisy_topk"`` (Shazeer 2017) or ``"jitter"`` (Switch); training only.
        router_dtype: dtype of the router matmul and softmax (float32 unless demonstrating why).
        scoring: ``"softmax"`` or ``"sigmoid"`` (DeepSeek-V3).
        jitter_eps: half-width of the multiplicative jitter.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        top_k: int,
        *,
        normalize: bool = True,
        noise: str | None = None,
        router_dtype: torch.dtype = torch.float32,
        scoring: str = "softmax",
        jitter_eps: float = 1e-2,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("num_experts", num_experts)
        check_top_k(top_k, num_experts)
        check_choice("noise", noise, NOISE_TYPES)
        check_choice("scoring", scoring, SCORING_TYPES)
        check_fraction("jitter_eps", jitter_eps)  # u ~ U(1 - eps, 1 + eps) must stay > 0
        if not isinstance(router_dtype, torch.dtype) or not router_dtype.is_floating_point:
            raise TypeError(f"router_dtype must be a floating torch.dtype, got {router_dtype!r}")
        self.d_model, self.num_experts, self.top_k = d_model, num_experts, top_k
        self.normalize, self.noise, self.scoring = bool(normalize), noise, scoring
        self.router_dtype, self.jitter_eps = router_dtype, float(jitter_eps)

        bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(num_experts, d_model).uniform_(-bound, bound))
        if noise == "noisy_topk":
            self.noise_weight = nn.Parameter(torch.zeros(num_experts, d_model))  # W_noise
        else:
            self.register_parameter("noise_weight", None)
        # DeepSeek-V3's e_score_correction_bias: changes the choice, never the weights.
        self.register_buffer("score_correction_bias", torch.zeros(num_experts))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}, "
            f"normalize={self.normalize}, noise={self.noise}, scoring={self.scoring!r}"
        )

    # K and the jitter width may be changed after construction (lessons do): validated here
    @property
    def top_k(self) -> int:
        return self._top_k

    @top_k.setter
    def top_k(self, value: int) -> None:
        self._top_k = check_top_k(value, self.num_experts)

    @property
    def jitter_eps(self) -> float:
        return self._jitter_eps

    @jitter_eps.setter
    def jitter_eps(self, value: float) -> None:
        self._jitter_eps = check_fraction("jitter_eps", value)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """x (..., D) in any float dtype (the router casts it to ``router_dtype``) -> RouterOutput."""
        check_float_tensor("x", x)
        check_last_dim("x", x, self.d_model, "d_model")
        # autocast would run the gate in bf16: switch it off so router_dtype holds
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._route(x.reshape(-1, self.d_model).to(self.router_dtype))  # x: (N, D)

    def _route(self, x: torch.Tensor) -> RouterOutput:
        if self.training and self.noise == "jitter":
            # x <- x * u,  u ~ U(1 - eps, 1 + eps)
            x = x * torch.empty_like(x).uniform_(1 - self.jitter_eps, 1 + self.jitter_eps)
        router_logits = F.linear(x, self.weight.to(self.router_dtype))  # (N, E)
        if self.training and self.noise == "noisy_topk":
            # H(x) = x W_g + eps * softplus(x W_noise),  eps ~ N(0, 1)
            noise_std = F.softplus(F.linear(x, self.noise_weight.to(self.router_dtype)))  # (N, E)
            router_logits = router_logits + torch.randn_like(router_logits) * noise_std
        return self.decide(router_logits)

    def decide(self, router_logits: torch.Tensor, top_k: int | None = None) -> RouterOutput:
        """Logits (N, E) -> probabilities and the top-k choice, by this router's rules (scoring,
        bias, normalisation). ``top_k`` overrides K (the routing explorer's slider)."""
        top_k = self.top_k if top_k is None else check_top_k(top_k, self.num_experts)
        check_float_tensor("router_logits", router_logits)
        if router_logits.dim() != 2:
            raise ValueError(f"router_logits must have shape (N, E={self.num_experts}), got "
                             f"{tuple(router_logits.shape)}")
        check_last_dim("router_logits", router_logits, self.num_experts, "num_experts")
        if self.scoring == "softmax":
            router_probs = torch.softmax(router_logits, dim=-1)  # (N, E)
        else:
            router_probs = torch.sigmoid(router_logits)  # (N, E)
        bias = self.score_correction_bias.to(router_probs.dtype)
        topk_idx, topk_weights = topk_routing(
            router_probs, top_k, normalize=self.normalize, selection_bias=bias
        )
        return RouterOutput(
            logits=router_logits.float(),
            probs=router_probs.float(),
            topk_idx=topk_idx,
            topk_weights=topk_weights.float(),
        )
