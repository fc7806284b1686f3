"""The machinery every checker shares: outcomes, friendly messages, tolerant comparisons, and the
guards every call of the learner's function goes through.

What a checker built from these pieces guarantees (README, "What the checkers and the API
guarantee"):

- :func:`call` hands the learner fresh copies of the inputs and checks that they come back
  unchanged (a hint names in-place operations), and that the function did not reseed torch's
  global generator.
- :func:`expect_close` compares with the reference; a wrong answer names NaN/inf (with the
  overflow hint when the inputs are large) or shows the smallest failing piece: the first row
  that differs, with its inputs, expected and got.
- :func:`expect_same_grad` compares the gradients with the reference's.
- the :func:`checker` wrapper runs the body inside ``torch.random.fork_rng`` (the learner's random
  stream is left as it was) and reports a crash with the case it happened on.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: The tolerances of every comparison with a reference (float32 arithmetic in a different order).
ATOL, RTOL = 1e-5, 1e-4


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


class _State:
    case: str | None = None  # the case being checked, named in a crash report
    calls: int = 0  # seeds the generator differently before each call of the learner's function
    learner_error: Exception | None = None  # what the learner's function raised, if it did


def set_case(description: str) -> None:
    """Name the case about to be run (e.g. ``"N=1, E=4, K=2"``): a crash reports it."""
    _State.case = description


# a crash whose message shows its cause gets the fix as well
_CRASH_HINTS = (
    ("in-place", "Your function changes a tensor in place (an operation ending in _, such as "
                 "exp_(), or +=, /=, x[...] = ...): use the out-of-place form (x.exp(), "
                 "x = x / s) so the caller's tensor stays as it was."),
    ("could not infer output dtype", "An integer tensor has no mean: convert it first "
                                     "(.float())."),
    ("one_hot is only applicable to index tensor", "F.one_hot wants int64 indices: call "
                                                    ".long() first."),
    ("modified by an inplace operation", "An in-place operation in your function (one ending "
                                         "in _, such as pow_(), or +=, /=) changed a tensor "
                                         "that the backward pass needs: use the out-of-place "
                                         "form (z = z ** 2, e = e / s)."),
)


def checker(name: str) -> Callable[[Callable[..., None]], Callable[..., CheckResult]]:
    """Turn ``body(fn, ...)``, which raises :class:`CheckFailed` on a wrong answer, into a
    checker that prints one line and returns a :class:`CheckResult`."""

    def decorate(body: Callable[..., None]) -> Callable[..., CheckResult]:
        signature = inspect.signature(body)

        @functools.wraps(body)
        def run(fn: Callable[..., object], *args: object, verbose: bool = True,
                **kwargs: object) -> CheckResult:
            if not callable(fn):
                raise TypeError(f"pass your function itself to {name}, got {type(fn).__name__}")
            try:
                signature.bind(fn, *args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{name}(your_function) takes nothing else: {error}") from None
            _State.case, _State.learner_error = None, None
            try:
                with torch.random.fork_rng(devices=[]):  # the learner's stream stays as it was
                    body(fn, *args, **kwargs)
                result = CheckResult(name, "passed", "all cases match the reference.")
            except NotImplementedError:
                result = CheckResult(name, "not implemented",
                                     "not implemented yet; the lesson continues with "
                                     "moe_lab's implementation.")
            except CheckFailed as failure:
                message = str(failure)
                if message.startswith(("the ", "for ")):  # "{what} ..." messages: a sentence
                    message = message[0].upper() + message[1:]
                result = CheckResult(name, "failed", message)
            except Exception as error:  # say how, not a traceback
                where = f" (on the case {_State.case})" if _State.case else ""
                hints = "".join(f" {hint}" for marker, hint in _CRASH_HINTS
                                if marker in str(error))
                if error is _State.learner_error:  # the learner's code crashed
                    result = CheckResult(name, "error",
                                         f"Your function raised {type(error).__name__}: {error}"
                                         f"{where}.{hints}")
                else:  # its result could not be compared, or backpropagated through
                    result = CheckResult(name, "failed",
                                         f"Your function's result could not be checked "
                                         f"against the reference{where} "
                                         f"({type(error).__name__}: {error})."
                                         + (hints or " Check its type, shape and dtype against "
                                                     "the exercise's description."))
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


def _snapshot(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list | tuple):
        return [_snapshot(v) for v in value]
    return None


def _changed(value: object, before: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.shape != before.shape or not torch.equal(value.detach(), before)
    if isinstance(value, list | tuple):
        return len(value) != len(before) or any(
            _changed(v, b) for v, b in zip(value, before, strict=True))
    return False


def call(fn: Callable[..., object], *args: object, names: Sequence[str],
         seed: int | None = None) -> object:
    """Call the learner's ``fn(*args)`` and check that it behaved.

    The tensors in ``args`` (or in lists of them) are the learner's fresh copies: each must come
    back unchanged. Torch's global generator is seeded right before the call (``seed``, or a new
    seed each call, so that two calls draw differently); the function must not reseed it. The
    tensors returned (alone or in a tuple or list) must be real numbers on the inputs' device.
    """
    before = [_snapshot(a) for a in args]
    _State.calls += 1
    seed = 9_000_000 + _State.calls if seed is None else seed
    torch.manual_seed(seed)
    try:
        out = fn(*args)
    except Exception as error:
        _State.learner_error = error  # the checker reports it as the learner's crash
        raise
    if torch.initial_seed() != seed:
        raise CheckFailed("Your function reseeds torch's global generator (torch.manual_seed "
                          "inside it): every call then draws the same numbers, and the rest of "
                          "the notebook loses its random stream. Seed once, at the top of the "
                          "notebook, never inside the function.")
    for name, value, snapshot in zip(names, args, before, strict=False):
        expect_unchanged(name, value, snapshot)
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    _expect_usable_tensors(out, device)
    return out


def _expect_usable_tensors(out: object, device: torch.device) -> None:
    """Raise unless every tensor in ``out`` (alone, or in a tuple or list) holds real numbers on
    ``device``: a comparison with the reference could not read the others."""
    for value in out if isinstance(out, tuple | list) else (out,):
        if not isinstance(value, torch.Tensor):
            continue
        if value.device != device:
            raise CheckFailed(f"Your function returned a tensor on the device {value.device}, but "
                              f"its inputs are on {device}: leave the result where the inputs "
                              f"are (no .to(...), .cuda() or device=... of another device).")
        if value.is_complex():
            raise CheckFailed(f"Your function returned a complex tensor ({value.dtype}): every "
                              f"quantity here is real; drop the complex step (or take .real).")


def expect_unchanged(name: str, value: object, snapshot: object) -> None:
    """Raise unless ``value`` (a tensor or a list of them) still equals ``snapshot``, a copy
    taken before the learner's call (see :func:`snapshot`)."""
    if snapshot is not None and _changed(value, snapshot):
        raise CheckFailed(f"Your function changed its input {name} in place (an operation "
                          f"ending in _ such as {name}.exp_() or {name}.clamp_(), or "
                          f"{name} /= ..., {name}[...] = ...). The caller still needs it: "
                          f"use out-of-place operations ({name} = {name} / s, "
                          f"{name}.exp()) or work on {name}.clone().")


snapshot = _snapshot


def fresh(*tensors: torch.Tensor, grad: bool = False) -> tuple[torch.Tensor, ...]:
    """Copies for the learner (leaves that require grad when ``grad``), the originals kept."""
    return tuple(t.detach().clone().requires_grad_(grad) for t in tensors)


def fmt(t: torch.Tensor, limit: int = 24) -> str:
    """A small tensor as text, 4 decimals; long ones cut after ``limit`` values."""
    t = t.detach()
    if t.is_floating_point():
        t = t.double().round(decimals=4)
    if t.numel() <= limit:
        return str(t.tolist())
    return str(t.reshape(-1)[:limit].tolist())[:-1] + ", ...]"


def _first_bad_row(actual: torch.Tensor, expected: torch.Tensor, atol: float,
                   rtol: float) -> int | None:
    if actual.dim() == 0:
        return None
    bad = ~torch.isclose(actual.double(), expected.double(), atol=atol, rtol=rtol)  # (rows, ...)
    rows = bad.reshape(bad.shape[0], -1).any(dim=-1).nonzero()
    return int(rows[0]) if rows.numel() else None


def expect_close(actual: object, expected: torch.Tensor, what: str, *, hint: str = "",
                 atol: float = ATOL, rtol: float = RTOL,
                 inputs: dict[str, object] | None = None) -> None:
    """Raise :class:`CheckFailed` unless ``actual`` is a tensor equal to ``expected``.

    A wrong answer gets ``hint`` when the caller diagnosed one; otherwise the message shows NaN
    or inf (and the overflow fix when an input is large), or the first row that differs, with
    that row of each input in ``inputs`` (rows along the first axis), expected and got."""
    if not isinstance(actual, torch.Tensor):
        raise CheckFailed(f"{what} should be a torch.Tensor, got {type(actual).__name__}.")
    if actual.shape != expected.shape:
        raise CheckFailed(f"{what} should have shape {tuple(expected.shape)}, "
                          f"got {tuple(actual.shape)}.")
    actual = actual.detach()
    if torch.allclose(actual.double(), expected.double(), atol=atol, rtol=rtol):
        return
    if not bool(torch.isfinite(actual).all()) and bool(torch.isfinite(expected).all()):
        largest = max((float(v.detach().abs().max()) for v in (inputs or {}).values()
                       if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()),
                      default=0.0)
        overflow = (f" The inputs reach {largest:.0f}, and exp() overflows float32 above 88: "
                    f"subtract each row's max before exp (torch.softmax does this), or use "
                    f"torch.logsumexp instead of log(exp(x).sum()). One max of the whole tensor "
                    f"is not enough: rows far below it underflow to 0, and 0/0 is NaN."
                    if largest > 80 else "")
        raise CheckFailed(f"{what} has NaN or inf where the reference is finite.{overflow} "
                          + (hint or ""))
    gap = (actual.double() - expected.double()).abs().max().item()
    message = f"{what} differs from the reference (largest gap {gap:.3g})."
    if hint:
        raise CheckFailed(f"{message} {hint}")
    row = _first_bad_row(actual, expected, atol, rtol)
    if row is None or actual.dim() == 0 or expected.numel() <= 24:
        shown = "" if not inputs else " Inputs: " + "; ".join(
            f"{name} = {fmt(v) if isinstance(v, torch.Tensor) else v!r}"
            for name, v in inputs.items()) + "."
        raise CheckFailed(f"{message}{shown} Expected {fmt(expected)}, got {fmt(actual)}.")
    shown = "".join(f" {name}[{row}] = {fmt(v[row])};" for name, v in (inputs or {}).items()
                    if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == actual.shape[0])
    raise CheckFailed(f"{message} The first row that differs is row {row}:{shown} expected "
                      f"{fmt(expected[row])}, got {fmt(actual[row])}.")


def matches(actual: object, candidate: object, *, atol: float = ATOL, rtol: float = RTOL) -> bool:
    """Whether the learner's ``actual`` equals ``candidate`` (a reference or a known mistake's
    result) to the checkers' tolerance: tensors of one shape (or of one element each), else ==."""
    if isinstance(candidate, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return False
        if actual.shape != candidate.shape and not (actual.numel() == candidate.numel() == 1):
            return False
        return bool(torch.allclose(actual.detach().double().reshape(candidate.shape),
                                   candidate.detach().double(), atol=atol, rtol=rtol))
    return actual == candidate


def diagnose(actual: object, expected: object, what: str,
             suspects: Sequence[tuple[object, str]], *, inputs: dict[str, object] | None = None,
             atol: float = ATOL, rtol: float = RTOL, otherwise: str | None = None) -> None:
    """The checkers' one pattern: pass when ``actual`` matches ``expected``; else, when it matches
    a known mistake's result (``suspects``: (that result, its hint), most specific first), raise
    with that mistake's hint; else raise ``otherwise`` when given, or :func:`expect_close`'s
    message (the first row that differs)."""
    if matches(actual, expected, atol=atol, rtol=rtol):
        return
    for candidate, hint in suspects:
        if matches(actual, candidate, atol=atol, rtol=rtol):
            if isinstance(actual, torch.Tensor) and actual.numel() == 1 \
                    and isinstance(expected, torch.Tensor) and expected.numel() == 1:
                raise CheckFailed(f"{what} is {float(actual.detach()):.4f}, the reference is "
                                  f"{float(expected.detach()):.4f}. {hint}")
            raise CheckFailed(f"{what} does not match the reference. {hint}")
    if otherwise is None and isinstance(expected, torch.Tensor):
        expect_close(actual.detach() if isinstance(actual, torch.Tensor) else actual,
                     expected.detach(), what, atol=atol, rtol=rtol, inputs=inputs)
    raise CheckFailed(otherwise or f"{what} does not match the reference: expected {expected!r}, "
                                   f"got {actual!r}.")


def expect_same_grad(out: torch.Tensor, expected_out: torch.Tensor,
                     leaves: dict[str, torch.Tensor], reference_leaves: dict[str, torch.Tensor],
                     what: str, *, seed: int = 0, atol: float = ATOL, rtol: float = RTOL) -> None:
    """Backpropagate the same upstream gradient through the learner's ``out`` and the reference's
    ``expected_out``; the gradients of each named leaf must agree."""
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise CheckFailed(f"{what} carries no gradient back to {', '.join(leaves)}: .item(), "
                          f".detach(), .data, torch.tensor(...) of a value, a Python float or "
                          f"torch.no_grad() cut the graph. Build the result from the input "
                          f"tensors with torch operations.")
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(expected_out.shape, generator=generator, dtype=torch.float64)
    (out.reshape(expected_out.shape) * upstream.to(out.dtype)).sum().backward()
    (expected_out * upstream.to(expected_out.dtype)).sum().backward()
    for name, leaf in leaves.items():
        expected_grad = reference_leaves[name].grad
        if expected_grad is None:
            continue
        if leaf.grad is None or (not bool(leaf.grad.any())
                                 and float(expected_grad.abs().max()) > 1e-6):
            raise CheckFailed(f"No gradient reaches {name} through {what}: a step in between is "
                              f"detached (.detach(), .item(), .data, torch.no_grad(), or a "
                              f"value rebuilt with torch.tensor). Keep {name} in the graph.")
        expect_close(leaf.grad, expected_grad, f"the gradient of {what} with respect to {name}",
                     atol=atol, rtol=rtol,
                     hint="The values match but the gradients do not: a part of the formula "
                          "is computed outside the graph or from a different expression.")


def whole_number(value: object) -> int | None:
    """``value`` as an int when it is a whole number (an int, a numpy int, a float such as 3.0, or a
    one-element tensor of one), else None: a count or an id that must not be truncated by int()."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    return int(value) if math.isfinite(value) and float(value).is_integer() else None


def expect_pair(out: object, names: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two tensors of a function that must return a pair (tuple or list), or
    :class:`CheckFailed`."""
    if not (isinstance(out, tuple | list) and len(out) == 2
            and all(isinstance(t, torch.Tensor) for t in out)):
        raise CheckFailed(f"Return a pair of tensors ({names}), got {type(out).__name__}.")
    return out[0], out[1]
