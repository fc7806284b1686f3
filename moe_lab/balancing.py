"""Auxiliary-loss-free load balancing (DeepSeek-V3; Wang et al. 2024). Lesson 04.

Each expert has a bias b_i added to its score for the top-k *choice* only; the combine weights
still come from the unbiased scores, so the bias steers load without distorting the output and
without a gradient that fights the language-modelling loss. After each step, outside autograd:

    b_i <- b_i + gamma * sign(mean_load - load_i)

An overloaded expert's bias falls, an underloaded one's rises. The bias lives in the router as
the buffer ``score_correction_bias`` (Hugging Face calls it ``e_score_correction_bias``).

``recenter=True`` subtracts the step's mean change, so the bias keeps mean 0 (torchtitan does
this, pytorch/torchtitan#1506): adding one number to every bias never changes the top-k choice,
but without it the mean drifts by up to gamma per step, until the bias dwarfs the scores it is
added to (lesson 11):

    delta_i = gamma * sign(mean_load - load_i);   b_i <- b_i + delta_i - mean_j delta_j
"""

from __future__ import annotations

import torch

from moe_lab.routing import TopKRouter
from moe_lab.validation import check_positive_float


class BiasBalancer:
    """Updates ``router.score_correction_bias`` from the observed load after each step."""

    def __init__(self, router: TopKRouter, *, gamma: float = 1e-3, recenter: bool = False) -> None:
        if not isinstance(router, TopKRouter):
            raise TypeError(f"router must be a TopKRouter, got {type(router).__name__}")
        if not isinstance(recenter, bool):
            raise TypeError(f"recenter must be a bool, got {type(recenter).__name__}")
        self.router = router
        self.gamma = gamma
        self.recenter = recenter

    @property
    def gamma(self) -> float:
        """The step size, a finite number > 0 (validated on assignment too)."""
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        self._gamma = check_positive_float("gamma", value)

    @torch.no_grad()
    def update(self, tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """One update from the step's load (E,); returns the new bias (E,)."""
        num_experts = self.router.num_experts
        if not isinstance(tokens_per_expert, torch.Tensor):
            raise TypeError(f"tokens_per_expert must be a tensor of shape (E={num_experts},), "
                            f"got {type(tokens_per_expert).__name__}")
        if tokens_per_expert.dtype == torch.bool or tokens_per_expert.is_complex():
            raise TypeError(f"tokens_per_expert must hold counts (int or float), got "
                            f"{tokens_per_expert.dtype}")
        if tokens_per_expert.shape != (num_experts,):
            raise ValueError(f"tokens_per_expert must be a tensor of shape (E={num_experts},), "
                             f"got {tuple(tokens_per_expert.shape)}")
        if tokens_per_expert.is_floating_point() and not bool(
                torch.isfinite(tokens_per_expert).all()):
            raise ValueError("tokens_per_expert must be finite, got inf or NaN")
        if bool((tokens_per_expert < 0).any()):
            raise ValueError(f"tokens_per_expert must be >= 0, got {tokens_per_expert.tolist()}")
        load = tokens_per_expert.float().to(self.router.score_correction_bias.device)  # (E,)
        # b_i += gamma * sign(mean_load - load_i)   (- the mean change, when re-centred)
        delta = self.gamma * torch.sign(load.mean() - load)  # (E,)
        if self.recenter:
            delta = delta - delta.mean()
        self.router.score_correction_bias += delta
        return self.router.score_correction_bias
