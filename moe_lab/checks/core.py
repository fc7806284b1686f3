"""The machinery every checker shares: outcomes, friendly messages, tolerant comparisons."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch


class CheckFailed(AssertionError):
    """Raised inside a checker with a message for the learner (the likely mistake)."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one checker call; truthy only when the learner's function passed."""

    name: str
    status: str  # "passed", "failed", "not implemented", "error"
    message: str

    def __bool__(self) -> bool:
        return self.status == "passed"

    def __str__(self) -> str:
        icon = {"passed": "✅", "failed": "❌", "not implemented": "⏳", "error": "💥"}[self.status]
        return f"{icon} {self.name}: {self.message}"


def checker(name: str) -> Callable[[Callable[..., None]], Callable[..., CheckResult]]:
    """Turn ``body(fn, ...)``, which raises :class:`CheckFailed` on a wrong answer, into a
    checker that prints one line and returns a :class:`CheckResult`."""

    def decorate(body: Callable[..., None]) -> Callable[..., CheckResult]:
        @functools.wraps(body)
        def run(fn: Callable[..., object], *args: object, verbose: bool = True,
                **kwargs: object) -> CheckResult:
            if not callable(fn):
                raise TypeError(f"pass your function itself to {name}, got {type(fn).__name__}")
            try:
                body(fn, *args, **kwargs)
                result = CheckResult(name, "passed", "all cases match the reference.")
            except NotImplementedError:
                result = CheckResult(name, "not implemented",
                                     "not implemented yet; the lesson continues with "
                                     "moe_lab's implementation.")
            except CheckFailed as failure:
                result = CheckResult(name, "failed", str(failure))
            except Exception as error:  # the learner's code crashed: say how, not a traceback
                result = CheckResult(name, "error",
                                     f"your function raised {type(error).__name__}: {error}")
            if result and getattr(fn, "__name__", "").endswith("_solution"):
                # a lesson's collapsed solution cell: say whose result this line is, so it does
                # not read as the learner's, right under their "not implemented yet"
                result = CheckResult(name, "passed",
                                     f"reference solution ({fn.__name__}): {result.message}")
            if verbose:
                print(result)
            return result

        return run

    return decorate


def expect_close(actual: object, expected: torch.Tensor, what: str, *, hint: str = "",
                 atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise :class:`CheckFailed` unless ``actual`` is a tensor equal to ``expected``."""
    if not isinstance(actual, torch.Tensor):
        raise CheckFailed(f"{what} should be a torch.Tensor, got {type(actual).__name__}.")
    if actual.shape != expected.shape:
        raise CheckFailed(f"{what} should have shape {tuple(expected.shape)}, "
                          f"got {tuple(actual.shape)}.")
    if not torch.allclose(actual.double(), expected.double(), atol=atol, rtol=rtol):
        gap = (actual.double() - expected.double()).abs().max().item()
        raise CheckFailed(f"{what} differs from the reference (largest gap {gap:.3g}). "
                          + (hint or ""))


def expect_pair(out: object, names: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two tensors of a function that must return a pair, or :class:`CheckFailed`."""
    if not (isinstance(out, tuple | list) and len(out) == 2
            and all(isinstance(t, torch.Tensor) for t in out)):
        raise CheckFailed(f"return a pair of tensors ({names}), got {type(out).__name__}.")
    return out[0], out[1]
