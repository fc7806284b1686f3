"""Checkers for lesson 01 (the router). Reference: :class:`moe_lab.TopKRouter`.

- :func:`check_router_probs`: ``router_probs(x, weight) -> (N, E)``, softmax(x W^T) in float32.
- :func:`check_noisy_topk_logits`: ``noisy_topk_logits(x, w_gate, w_noise, training) -> (N, E)``,
  Shazeer et al. 2017 eq. (4), noise in training only.
- :func:`check_jitter`: ``jitter(x, eps, training) -> x``, the Switch Transformer's multiplicative
  input jitter, in training only.

Catalogued mistakes each checker names: a double softmax, a softmax over the wrong axis, a bf16
router, noise (or jitter) left on in eval, no noise in training, a noise scale without softplus,
additive instead of multiplicative jitter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from moe_lab.checks.core import CheckFailed, checker, expect_close
from moe_lab.routing import TopKRouter


def _reference_router(weight: torch.Tensor, *, noise: str | None = None,
                      w_noise: torch.Tensor | None = None, jitter_eps: float = 1e-2) -> TopKRouter:
    """A TopKRouter (K = 1, eval mode) whose gate (and noise projection) are the given ones."""
    num_experts, d_model = weight.shape
    router = TopKRouter(d_model, num_experts, 1, noise=noise, jitter_eps=jitter_eps)
    with torch.no_grad():
        router.weight.copy_(weight.float())
        if w_noise is not None:
            router.noise_weight.copy_(w_noise.float())
    return router.eval()


def _own_rng(body: Callable[..., None]) -> Callable[..., None]:
    """Run a checker body that uses torch's global RNG (seeding it for the learner's function,
    initialising a reference router) inside ``fork_rng``: the learner's stream is left as it was."""

    @functools.wraps(body)
    def run(*args: object, **kwargs: object) -> None:
        with torch.random.fork_rng(devices=[]):
            body(*args, **kwargs)

    return run


def _call(fn: Callable[..., object], *args: object) -> torch.Tensor:
    out = fn(*args)
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"return a torch.Tensor, got {type(out).__name__}.")
    return out


@checker("check_router_probs")
@_own_rng
def check_router_probs(router_probs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``router_probs(x (N, D), weight (E, D)) -> (N, E)`` float32 probabilities over experts."""
    gen = torch.Generator().manual_seed(0)
    for n_tokens, d_model, num_experts, dtype in [(6, 8, 4, torch.float32),
                                                   (5, 16, 8, torch.float32),
                                                   (64, 32, 8, torch.bfloat16)]:
        x = torch.randn(n_tokens, d_model, generator=gen).mul(3).to(dtype)  # (N, D)
        weight = torch.randn(num_experts, d_model, generator=gen).to(dtype)  # (E, D)
        expected = _reference_router(weight)(x).probs  # (N, E)
        got = _call(router_probs, x, weight)
        if got.shape != expected.shape:
            raise CheckFailed(f"the probabilities should have shape (N, E) = "
                              f"{tuple(expected.shape)}, got {tuple(got.shape)}: the gate is "
                              f"x @ weight.T, with weight of shape (E, D).")
        if got.dtype != torch.float32:
            raise CheckFailed(f"the router should return float32 probabilities, got {got.dtype}: "
                              f"compute the gate in float32 (x.float() @ weight.float().T).")
        row_sums = got.double().sum(dim=-1)  # (N,)
        if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=2e-2):
            col_sums = got.double().sum(dim=0)  # (E,)
            if torch.allclose(col_sums, torch.ones_like(col_sums), atol=1e-4):
                raise CheckFailed("each column sums to 1, not each row: take the softmax over "
                                  "the experts (dim=-1), not over the tokens.")
            raise CheckFailed("the probabilities of a token should sum to 1 over the experts: "
                              "did you apply the softmax (dim=-1) to the logits?")
        if torch.allclose(got.double(), torch.softmax(expected.double(), dim=-1), atol=1e-5):
            raise CheckFailed("your probabilities are too flat: it looks like a double softmax "
                              "(softmax of probabilities). Apply softmax once, to the logits.")
        hint = ("with bfloat16 inputs the result is off by bf16 rounding: cast x and weight to "
                "float32 *before* the matmul (the router runs in fp32)."
                if dtype == torch.bfloat16 else "the gate is softmax(x @ weight.T).")
        expect_close(got, expected, f"router_probs for {n_tokens} {dtype} tokens", hint=hint)


def _noise_scale(x: torch.Tensor, w_noise: torch.Tensor) -> torch.Tensor:
    # sigma = softplus(x W_noise)  (Shazeer et al. 2017, eq. 4)
    return torch.nn.functional.softplus(x @ w_noise.T)  # (N, E)


@checker("check_noisy_topk_logits")
@_own_rng
def check_noisy_topk_logits(noisy_topk_logits: Callable[..., torch.Tensor]) -> None:
    """``noisy_topk_logits(x (N, D), w_gate (E, D), w_noise (E, D), training) -> (N, E)``:
    x W_gate^T + eps * softplus(x W_noise^T) with eps ~ N(0, 1) when training, else x W_gate^T."""
    gen = torch.Generator().manual_seed(1)
    n_tokens, d_model, num_experts = 4096, 8, 4
    x = torch.randn(n_tokens, d_model, generator=gen)  # (N, D)
    w_gate = torch.randn(num_experts, d_model, generator=gen)  # (E, D)
    w_noise = torch.randn(num_experts, d_model, generator=gen)  # (E, D)
    clean = _reference_router(w_gate, noise="noisy_topk", w_noise=w_noise)(x).logits  # (N, E)

    torch.manual_seed(0)
    eval_a = _call(noisy_topk_logits, x, w_gate, w_noise, False)
    torch.manual_seed(1)
    eval_b = _call(noisy_topk_logits, x, w_gate, w_noise, False)
    if eval_a.shape == clean.shape and not torch.equal(eval_a, eval_b):
        raise CheckFailed("with training=False two calls gave different logits: the noise is "
                          "still on in eval. Add noise only when training is True.")
    expect_close(eval_a, clean, "the eval-mode logits",
                 hint="with training=False return the clean logits x @ w_gate.T.")

    torch.manual_seed(2)
    noisy = _call(noisy_topk_logits, x, w_gate, w_noise, True).double()
    if noisy.shape != clean.shape:
        raise CheckFailed(f"training-mode logits should have shape {tuple(clean.shape)}, "
                          f"got {tuple(noisy.shape)}.")
    if torch.allclose(noisy, clean.double(), atol=1e-6):
        raise CheckFailed("with training=True the logits have no noise: add "
                          "eps * softplus(x @ w_noise.T), eps = torch.randn_like(logits).")
    # z = (H(x) - x W_g) / softplus(x W_noise) should be standard normal
    z = (noisy - clean.double()) / _noise_scale(x, w_noise).double()  # (N, E)
    if abs(z.mean().item()) > 0.05 or abs(z.std().item() - 1) > 0.05:
        raise CheckFailed(f"the noise has the wrong scale: (noisy - clean) / softplus(x @ "
                          f"w_noise.T) has mean {z.mean().item():.3f} and std "
                          f"{z.std().item():.3f}, expected 0 and 1. The noise std is "
                          f"softplus(x @ w_noise.T) (softplus keeps it positive), times "
                          f"eps ~ N(0, 1).")


@checker("check_jitter")
@_own_rng
def check_jitter(jitter: Callable[[torch.Tensor, float, bool], torch.Tensor]) -> None:
    """``jitter(x (N, D), eps, training) -> (N, D)``: x * u, u ~ Uniform(1 - eps, 1 + eps)
    element-wise when training, x unchanged otherwise (Switch Transformer)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2048, 8, generator=gen).add(3.0)  # (N, D), away from zero
    eps = 0.1
    torch.manual_seed(0)
    out_eval = _call(jitter, x, eps, False)
    expect_close(out_eval, x, "jitter(x, eps, training=False)",
                 hint="jitter is a training-time regulariser: leave x unchanged in eval.",
                 atol=0.0, rtol=0.0)
    torch.manual_seed(0)
    out = _call(jitter, x, eps, True)
    if out.shape != x.shape:
        raise CheckFailed(f"jitter must keep the shape {tuple(x.shape)}, got {tuple(out.shape)}.")
    if torch.equal(out, x):
        raise CheckFailed("with training=True x came back unchanged: multiply it by "
                          "u ~ Uniform(1 - eps, 1 + eps).")
    # u = x_jittered / x should be Uniform(1 - eps, 1 + eps): mean 1, std eps / sqrt(3)
    u = out.double() / x.double()  # (N, D)
    if u.min() < 1 - eps - 1e-6 or u.max() > 1 + eps + 1e-6:
        additive = (out.double() - x.double()).abs().max() <= eps + 1e-6
        raise CheckFailed("the factor x_jittered / x leaves [1 - eps, 1 + eps]"
                          + (": it looks like additive noise (x + u); the Switch jitter "
                             "multiplies, x * u." if additive else "."))
    if abs(u.mean().item() - 1) > 0.01 or abs(u.std().item() - eps / 3 ** 0.5) > 0.01:
        raise CheckFailed(f"x_jittered / x has mean {u.mean().item():.3f} and std "
                          f"{u.std().item():.3f}; for u ~ Uniform(1 - eps, 1 + eps) expect 1 "
                          f"and eps / sqrt(3) = {eps / 3 ** 0.5:.3f}. Draw one u per element.")
