"""The router (gating network): tokens -> logits -> probabilities -> top-k choice. Lessons 01-02.

    router_logits = x W^T (+ b)                             (N, E)    (b: bias=True, gpt-oss)
    router_probs  = softmax(router_logits)                  (N, E)    ("softmax" scoring)
                  = sigmoid(router_logits)                  (N, E)    ("sigmoid" scoring, DeepSeek-V3)
    topk_idx      = argtopk_K(router_probs + score_correction_bias)   (N, K)
                    (within the topk_groups best of num_groups expert groups, DeepSeek-V3)
    topk_weights  = router_probs[topk_idx]  (/ their sum when normalize=True) * scaling_factor

With softmax scoring, renormalising the top-k probabilities equals a softmax over the top-k
logits (the Mixtral way); with normalize=False the weights are the raw probabilities (Switch
top-1, Qwen ``norm_topk_prob=False``). The bias only changes which experts are chosen, never the
weights (DeepSeek-V3, Wang et al. 2024, "auxiliary-loss-free load balancing"); it is a buffer,
updated outside autograd by :class:`moe_lab.balancing.BiasBalancer`.

The real models' conventions are options of this one router (lesson 09, :mod:`moe_lab.interop`):

- top-k then softmax over the K logits (gpt-oss) is softmax, top-k, renormalise (``normalize=True``);
- top-k of the logits then sigmoid (Llama 4) is ``scoring="sigmoid", normalize=False``;
- DeepSeek-V3 (arXiv:2412.19437, eqs. 15-16 and section 2.1.2): sigmoid scores, the selection
  bias, group-limited selection (``num_groups``, ``topk_groups``), renormalised weights times
  ``scaling_factor`` (its ``routed_scaling_factor``).

Noise (training only, off in ``eval()``):

- ``"noisy_topk"``: Shazeer et al. 2017, eq. (4): H(x)_i = (x W_g)_i + eps * softplus((x W_noise)_i),
  eps ~ N(0, 1), with a learned noise projection W_noise (initialised to zero, as in the paper).
- ``"jitter"``: Switch Transformer (Fedus et al. 2021): the router input is multiplied by
  u ~ Uniform(1 - jitter_eps, 1 + jitter_eps), element-wise.

The router computes in ``router_dtype`` (float32 by default, whatever the input dtype): in
bfloat16 the logits carry only 8 significant bits (7 stored) and near-ties flip the top-k choice (lesson 01).
``router_dtype=None`` routes as most transformers models do (Mixtral, Qwen-MoE, OLMoE, gpt-oss,
Llama 4): the logits in the input's dtype (or autocast's), the scores from them in float32 (gpt-oss
takes its softmax over the K chosen logits in the input's dtype; moe_lab.interop hands its
weights over rounded to that dtype), so a
converted model picks the experts its family picks in every dtype (lesson 09 counts the tokens
that the float32 router would send elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moe_lab.validation import (
    check_bool,
    check_choice,
    check_float_tensor,
    check_fraction,
    check_groups,
    check_last_dim,
    check_positive_float,
    check_positive_int,
    check_top_k,
)

NOISE_TYPES = (None, "noisy_topk", "jitter")
SCORING_TYPES = ("softmax", "sigmoid")


def _refuse(name: str):
    """A setter for an option fixed at construction: an AttributeError naming it."""
    def setter(self: object, value: object) -> None:
        raise AttributeError(f"{name} is fixed at construction (the weights' shapes or layout "
                             f"depend on it): build a new {type(self).__name__} with {name}={value!r}")
    return setter


@dataclass(frozen=True)
class RouterOutput:
    """What the router decided for N tokens.

    logits:       (N, E) router logits as float32 (with noise, when noise is on)
    probs:        (N, E) softmax(logits) (or sigmoid(logits) with sigmoid scoring)
    topk_idx:     (N, K) int64 chosen experts, best first
    topk_weights: (N, K) float32 combine weights of the chosen experts (a family's router in
                  :mod:`moe_lab.interop` may hand them over in its logits' dtype, as the family does)
    """

    logits: torch.Tensor
    probs: torch.Tensor
    topk_idx: torch.Tensor
    topk_weights: torch.Tensor


def limit_to_top_groups(scores_for_choice: torch.Tensor, num_groups: int,
                        topk_groups: int) -> torch.Tensor:
    """Group-limited routing (DeepSeek-V3, arXiv:2412.19437, section 2.1.2; DeepSeek-V2's
    device-limited routing): the E experts form ``num_groups`` equal groups; a group's score is
    the sum of its two highest scores; only the ``topk_groups`` best groups stay eligible, the
    other experts' scores become -inf. (N, E) -> (N, E).
    """
    num_tokens, num_experts = scores_for_choice.shape
    check_groups(num_groups, topk_groups, num_experts, 1)
    grouped = scores_for_choice.view(num_tokens, num_groups, num_experts // num_groups)  # (N, G, E/G)
    # group_score_g = sum of the top-2 scores of group g  (top-1 when a group holds one expert)
    group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)  # (N, G)
    group_idx = group_scores.topk(topk_groups, dim=-1).indices  # (N, topk_groups)
    group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter(1, group_idx, True)  # (N, G)
    expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)  # (N, E)
    return scores_for_choice.masked_fill(~expert_mask, float("-inf"))  # (N, E)


def topk_routing(
    router_probs: torch.Tensor,
    top_k: int,
    *,
    normalize: bool = True,
    selection_bias: torch.Tensor | None = None,
    scaling_factor: float = 1.0,
    num_groups: int = 1,
    topk_groups: int = 1,
    router_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose K experts per token and their weights: returns ``(topk_idx, topk_weights)``.

    The bias (if any) is added for the choice only; with ``num_groups > 1`` the choice is limited
    to the ``topk_groups`` best groups (:func:`limit_to_top_groups`); the weights are gathered
    from the unbiased probabilities, with ``normalize`` divided by their sum, then multiplied by
    ``scaling_factor``. router_probs is (..., E), top_k in [1, E], selection_bias (E,).

    ``router_logits`` (the logits the probabilities came from, same shape), when given and there
    is neither a bias nor a group limit, are ranked instead of the probabilities: the same order
    (sigmoid and softmax are increasing), without the ties of saturated scores: in float32
    sigmoid(x) rounds to exactly 1.0 from x of about 17, and tied scores fall back to the lowest
    index (Llama 4 ranks its logits).
    """
    check_float_tensor("router_probs", router_probs)
    if router_probs.dim() < 1:
        raise ValueError("router_probs must have shape (N, E), got a 0-d tensor")
    check_top_k(top_k, router_probs.shape[-1])
    check_bool("normalize", normalize)
    check_positive_float("scaling_factor", scaling_factor)
    if selection_bias is not None:
        check_float_tensor("selection_bias", selection_bias)
        if selection_bias.shape != router_probs.shape[-1:]:
            raise ValueError(f"selection_bias must have shape (E={router_probs.shape[-1]},), "
                             f"got {tuple(selection_bias.shape)}")
    if num_groups != 1:  # checked here too: top_k or the groups may be reassigned after a
        check_groups(num_groups, topk_groups, router_probs.shape[-1], top_k)  # router was built
    scores_for_choice = router_probs if selection_bias is None else router_probs + selection_bias
    if router_logits is not None:
        check_float_tensor("router_logits", router_logits)
    if router_logits is not None and selection_bias is None and num_groups == 1:
        if router_logits.shape != router_probs.shape:
            raise ValueError(f"router_logits must have router_probs' shape "
                             f"{tuple(router_probs.shape)}, got {tuple(router_logits.shape)}")
        scores_for_choice = router_logits
    if num_groups > 1:
        scores_for_choice = limit_to_top_groups(scores_for_choice, num_groups, topk_groups)  # (N, E)
    topk_idx = torch.topk(scores_for_choice, top_k, dim=-1).indices  # (N, K)
    topk_weights = router_probs.gather(-1, topk_idx)  # (N, K)
    if normalize:
        # w_k = p_k / sum_j p_j  over the K chosen experts
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    if scaling_factor != 1.0:
        # w_k <- routed_scaling_factor * w_k  (DeepSeek-V3)
        topk_weights = topk_weights * scaling_factor
    return topk_idx, topk_weights


class TopKRouter(nn.Module):
    """Linear gate with top-k selection. ``weight`` is (E, D), as in ``nn.Linear(D, E, bias=False)``.

    Args:
        d_model: D, the token width.
        num_experts: E.
        top_k: K, experts per token, 1 <= K <= E.
        normalize: renormalise the K weights to sum to 1 (Mixtral) or keep raw probabilities.
        noise: None, ``"noisy_topk"`` (Shazeer 2017) or ``"jitter"`` (Switch); training only.
        router_dtype: dtype of the router matmul and scores (float32 unless demonstrating why),
            or None: the matmul in the input's dtype, the scores in float32 (transformers' way).
        scoring: ``"softmax"`` or ``"sigmoid"`` (DeepSeek-V3).
        jitter_eps: half-width of the multiplicative jitter.
        scaling_factor: multiplies the K weights after normalisation (DeepSeek-V3's
            ``routed_scaling_factor``).
        num_groups, topk_groups: group-limited selection (DeepSeek-V3's ``n_group``,
            ``topk_group``); E must divide into ``num_groups`` groups and K fit in the
            ``topk_groups`` chosen ones. 1, 1: no limit.

    Every option may be reassigned after construction and is validated like the constructor
    argument, except the shapes (``d_model``, ``num_experts``) and the group layout, which are
    fixed (an AttributeError names them). :class:`moe_lab.SparseMoE`'s ``config`` reads them
    back, so a changed option follows the layer everywhere (the expert-parallel ranks included).
    """

    score_correction_bias: torch.Tensor | None

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        top_k: int,
        *,
        normalize: bool = True,
        noise: str | None = None,
        router_dtype: torch.dtype | None = torch.float32,
        scoring: str = "softmax",
        jitter_eps: float = 1e-2,
        scaling_factor: float = 1.0,
        num_groups: int = 1,
        topk_groups: int = 1,
    ) -> None:
        super().__init__()
        self._configure(d_model, num_experts, top_k, normalize=normalize, noise=noise,
                        router_dtype=router_dtype, scoring=scoring, jitter_eps=jitter_eps,
                        scaling_factor=scaling_factor, num_groups=num_groups,
                        topk_groups=topk_groups)
        bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(num_experts, d_model).uniform_(-bound, bound))
        if noise == "noisy_topk":
            self.noise_weight = nn.Parameter(torch.zeros(num_experts, d_model))  # W_noise
        else:
            self.register_parameter("noise_weight", None)
        # DeepSeek-V3's e_score_correction_bias: changes the choice, never the weights.
        self.register_buffer("score_correction_bias", torch.zeros(num_experts))

    def _configure(self, d_model: int, num_experts: int, top_k: int, *, normalize: bool,
                   noise: str | None, router_dtype: torch.dtype | None, scoring: str,
                   jitter_eps: float, scaling_factor: float, num_groups: int,
                   topk_groups: int) -> None:
        """Validate and store the options (no weights: :mod:`moe_lab.interop` brings its own)."""
        check_positive_int("d_model", d_model)
        check_positive_int("num_experts", num_experts)
        check_top_k(top_k, num_experts)
        check_groups(num_groups, topk_groups, num_experts, top_k)
        self._shape = (d_model, num_experts, num_groups, topk_groups)
        self.top_k, self.normalize, self.noise, self.scoring = top_k, normalize, noise, scoring
        self.router_dtype, self.jitter_eps = router_dtype, jitter_eps
        self.scaling_factor = scaling_factor

    def extra_repr(self) -> str:
        text = (
            f"d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}, "
            f"normalize={self.normalize}, noise={self.noise}, scoring={self.scoring!r}"
        )
        if self.router_dtype != torch.float32:
            text += f", router_dtype={self.router_dtype}"
        if self.scaling_factor != 1.0:
            text += f", scaling_factor={self.scaling_factor}"
        if self.num_groups > 1:
            text += f", num_groups={self.num_groups}, topk_groups={self.topk_groups}"
        return text

    # the fixed options: the weights' shapes and the group layout
    d_model = property(lambda self: self._shape[0], _refuse("d_model"))
    num_experts = property(lambda self: self._shape[1], _refuse("num_experts"))
    num_groups = property(lambda self: self._shape[2], _refuse("num_groups"))
    topk_groups = property(lambda self: self._shape[3], _refuse("topk_groups"))

    # the others may change after construction (lessons do): validated here
    @property
    def top_k(self) -> int:
        return self._top_k

    @top_k.setter
    def top_k(self, value: int) -> None:
        self._top_k = check_top_k(value, self.num_experts)
        check_groups(self.num_groups, self.topk_groups, self.num_experts, value)

    @property
    def normalize(self) -> bool:
        return self._normalize

    @normalize.setter
    def normalize(self, value: bool) -> None:
        self._normalize = check_bool("normalize", value)

    @property
    def noise(self) -> str | None:
        return self._noise

    @noise.setter
    def noise(self, value: str | None) -> None:
        check_choice("noise", value, NOISE_TYPES)
        if value == "noisy_topk" and getattr(self, "noise_weight", "new") is None:
            raise ValueError("noise='noisy_topk' needs the learned W_noise, made at construction: "
                             "build the router with noise='noisy_topk'")
        self._noise = value

    @property
    def scoring(self) -> str:
        return self._scoring

    @scoring.setter
    def scoring(self, value: str) -> None:
        self._scoring = check_choice("scoring", value, SCORING_TYPES)

    @property
    def router_dtype(self) -> torch.dtype | None:
        return self._router_dtype

    @router_dtype.setter
    def router_dtype(self, value: torch.dtype | None) -> None:
        if value is not None and (not isinstance(value, torch.dtype) or not value.is_floating_point):
            raise TypeError(f"router_dtype must be a floating torch.dtype or None (the input's "
                            f"dtype), got {value!r}")
        self._router_dtype = value

    @property
    def jitter_eps(self) -> float:
        return self._jitter_eps

    @jitter_eps.setter
    def jitter_eps(self, value: float) -> None:
        self._jitter_eps = check_fraction("jitter_eps", value)  # u ~ U(1 - eps, 1 + eps) > 0

    @property
    def scaling_factor(self) -> float:
        return self._scaling_factor

    @scaling_factor.setter
    def scaling_factor(self, value: float) -> None:
        self._scaling_factor = check_positive_float("scaling_factor", value)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """x (..., D) in any float dtype (cast to ``router_dtype`` unless None) -> RouterOutput."""
        check_float_tensor("x", x)
        check_last_dim("x", x, self.d_model, "d_model")
        x = x.reshape(-1, self.d_model)  # (N, D)
        if self.router_dtype is None:  # as transformers: the input's dtype, autocast as it is
            return self._route(x)
        # autocast would run the gate in bf16: switch it off so router_dtype holds
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._route(x.to(self.router_dtype))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """router_logits = x W^T: (N, D) -> (N, E), in x's dtype."""
        return F.linear(x, self.weight.to(x.dtype))  # (N, E)

    def _route(self, x: torch.Tensor) -> RouterOutput:
        if self.training and self.noise == "jitter":
            # x <- x * u,  u ~ U(1 - eps, 1 + eps)
            x = x * torch.empty_like(x).uniform_(1 - self.jitter_eps, 1 + self.jitter_eps)
        router_logits = self._logits(x)  # (N, E)
        if self.training and self.noise == "noisy_topk":
            # H(x) = x W_g + eps * softplus(x W_noise),  eps ~ N(0, 1)
            noise_std = F.softplus(F.linear(x, self.noise_weight.to(x.dtype)))  # (N, E)
            router_logits = router_logits + torch.randn_like(router_logits) * noise_std
        if self.router_dtype is None:  # scores in float32 from the input-dtype logits
            router_logits = router_logits.float()
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
        bias = self.score_correction_bias
        topk_idx, topk_weights = topk_routing(
            router_probs, top_k, normalize=self.normalize,
            selection_bias=None if bias is None else bias.to(router_probs.dtype),
            scaling_factor=self.scaling_factor, num_groups=self.num_groups,
            topk_groups=self.topk_groups,
            # sigmoid saturates: rank its logits (softmax ranks its probabilities, as Mixtral,
            # Qwen and OLMoE do; they tie only where the logits nearly do)
            router_logits=router_logits if self.scoring == "sigmoid" else None,
        )
        return RouterOutput(
            logits=router_logits.float(),
            probs=router_probs.float(),
            topk_idx=topk_idx,
            topk_weights=topk_weights.float(),
        )
