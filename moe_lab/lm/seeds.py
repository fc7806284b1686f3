"""Two runs compared across seeds: is the gap between them larger than the seed-to-seed spread?
Lessons 05, 08 and 12.

One training run per configuration shows a direction at best: at the lessons' scale two seeds of
one model differ by as much as two models do. With the final validation loss of each seed of
runs ``a`` and ``b`` (paired by seed):

    gap    = mean(b) - mean(a)                          (negative: b is lower, i.e. better)
    spread = max(max(a) - min(a), max(b) - min(b))      (the larger seed-to-seed range)
    wins   = #{s : b_s < a_s}                           (seeds on which b is lower)

The gap *exceeds the seed spread* when |gap| > spread: then no seed of the worse run reaches the
mean of the better one by chance alone. This is a rule of thumb for three to five seeds, not a
significance test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SeedComparison:
    """Run ``b`` against run ``a``, seed by seed (see the module docstring)."""

    mean_a: float
    mean_b: float
    gap: float  # mean_b - mean_a
    spread: float  # the larger max - min over seeds of the two runs
    wins: int  # seeds on which b is lower than a
    num_seeds: int

    @property
    def exceeds_spread(self) -> bool:
        return abs(self.gap) > self.spread

    def verdict(self, a: str = "a", b: str = "b") -> str:
        """One sentence: the gap, the spread, and whether the gap exceeds it."""
        lower = b if self.gap < 0 else a
        size = "exceeds" if self.exceeds_spread else "does not exceed"
        return (f"{b} - {a}: {self.gap:+.3f} (mean of {self.num_seeds} seeds; {lower} lower on "
                f"{self.wins if lower == b else self.num_seeds - self.wins} of {self.num_seeds}); "
                f"the gap {size} the seed spread {self.spread:.3f}")


def _losses(name: str, values: object) -> list[float]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers (one per seed), "
                        f"got {type(values).__name__}")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must hold numbers, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must hold finite numbers, got {value}")
        out.append(float(value))
    return out


def compare_seeds(a: Sequence[float], b: Sequence[float]) -> SeedComparison:
    """Compare the per-seed results ``b`` with ``a`` (the same seeds, in the same order)."""
    a, b = _losses("a", a), _losses("b", b)
    if len(a) != len(b):
        raise ValueError(f"a and b must hold one value per seed each, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a seed spread needs at least 2 seeds, got {len(a)}")
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    spread = max(max(a) - min(a), max(b) - min(b))
    wins = sum(vb < va for va, vb in zip(a, b, strict=True))
    return SeedComparison(mean_a, mean_b, mean_b - mean_a, spread, wins, len(a))
