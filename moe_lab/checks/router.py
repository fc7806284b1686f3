"""Checkers for lesson 01 (the router). Reference: :class:`moe_lab.TopKRouter`.

- :func:`check_router_probs`: ``router_probs(x, weight) -> (N, E)``, softmax(x W^T) in float32.
- :func:`check_noisy_topk_logits`: ``noisy_topk_logits(x, w_gate, w_noise, training) -> (N, E)``,
  Shazeer et al. 2017 eq. (4), noise in training only.
- :func:`check_jitter`: ``jitter(x, eps, training) -> x``, the Switch Transformer's multiplicative
  input jitter, in training only.

Catalogued mistakes each checker names: a double softmax, a softmax over the wrong axis, a bf16
router, an exp that overflows at large logits, noise (or jitter) left on in eval, no noise in
training, a noise scale without softplus, one draw per token (or per expert, or per batch)
instead of per element, the same draw on every call, a detached noise scale, additive instead of
multiplicative jitter, an input changed in place.

Cases: N = 1, several E (2 to 8), float32 and bfloat16, logits near 100; random functions are
called several times with different seeds; gradients are compared with the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_lab.checks.core import (
    CheckFailed,
    call,
    checker,
    expect_close,
    expect_same_grad,
    fresh,
    matches,
    set_case,
)
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


def _tensor(out: object) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"Return a torch.Tensor, got {type(out).__name__}.")
    return out


# (N, D, E, dtype, largest |logit| or None to keep the draw's scale)
_PROBS_CASES = [(6, 8, 4, torch.float32, None), (1, 8, 4, torch.float32, None),
                (5, 16, 8, torch.float32, None), (7, 8, 2, torch.float32, None),
                (4, 8, 6, torch.float32, 100.0), (64, 32, 8, torch.bfloat16, None)]


@checker("check_router_probs")
def check_router_probs(router_probs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """``router_probs(x (N, D), weight (E, D)) -> (N, E)`` float32 probabilities over experts."""
    gen = torch.Generator().manual_seed(0)
    for n_tokens, d_model, num_experts, dtype, largest in _PROBS_CASES:
        x = torch.randn(n_tokens, d_model, generator=gen).mul(3)  # (N, D)
        weight = torch.randn(num_experts, d_model, generator=gen)  # (E, D)
        if largest is not None:  # scale x so that the largest logit is about `largest`
            x = x * (largest / (x @ weight.T).abs().max())
        x, weight = x.to(dtype), weight.to(dtype)
        where = f"N={n_tokens}, E={num_experts}, {dtype}" + (
            f", logits up to {largest:.0f}" if largest else "")
        set_case(where)
        grad = dtype == torch.float32
        router = _reference_router(weight)
        x_ref = x.clone().requires_grad_(grad)
        expected = router(x_ref).probs  # (N, E)
        x_in, weight_in = fresh(x, weight, grad=grad)
        got = _tensor(call(router_probs, x_in, weight_in, names=("x", "weight")))
        if got.shape != expected.shape:
            raise CheckFailed(f"The probabilities should have shape (N, E) = "
                              f"{tuple(expected.shape)}, got {tuple(got.shape)} ({where}): the "
                              f"gate is x @ weight.T, with weight of shape (E, D).")
        if got.dtype != torch.float32:
            raise CheckFailed(f"The router should return float32 probabilities, got {got.dtype}: "
                              f"compute the gate in float32 (x.float() @ weight.float().T).")
        inputs = {"x": x, "logits (x @ weight.T)": x.float() @ weight.float().T}
        if not bool(torch.isfinite(got).all()):
            expect_close(got, expected, f"router_probs ({where})", inputs=inputs)
        row_sums = got.detach().double().sum(dim=-1)  # (N,)
        if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=2e-2):
            col_sums = got.detach().double().sum(dim=0)  # (E,)
            if n_tokens > 1 and torch.allclose(col_sums, torch.ones_like(col_sums), atol=1e-4):
                raise CheckFailed("Each column sums to 1, not each row: take the softmax over "
                                  "the experts (dim=-1), not over the tokens.")
            raise CheckFailed(f"The probabilities of a token should sum to 1 over the experts "
                              f"({where}; row sums {[round(v, 3) for v in row_sums.tolist()[:4]]})"
                              f": did you apply the softmax (dim=-1) to the logits?")
        if torch.allclose(got.detach().double(), torch.softmax(expected.detach().double(), -1),
                          atol=1e-5):
            raise CheckFailed("Your probabilities are too flat: it looks like a double softmax "
                              "(softmax of probabilities). Apply softmax once, to the logits.")
        low_precision = [torch.softmax((x @ weight.T).float(), -1),  # the matmul in bf16
                         torch.softmax(x @ weight.T, -1).float()]  # and the softmax too
        hint = ("With bfloat16 inputs the result is off by bf16 rounding: cast x and weight to "
                "float32 *before* the matmul (the router runs in fp32)."
                if dtype == torch.bfloat16 and any(matches(got, p, atol=1e-3, rtol=1e-2)
                                                   for p in low_precision) else "")
        expect_close(got, expected.detach(), f"router_probs ({where})", hint=hint, inputs=inputs)
        if grad:
            expect_same_grad(got, expected, {"x": x_in, "weight": weight_in},
                             {"x": x_ref, "weight": router.weight}, f"router_probs ({where})")


def _noise_scale(x: torch.Tensor, w_noise: torch.Tensor) -> torch.Tensor:
    # sigma = softplus(x W_noise)  (Shazeer et al. 2017, eq. 4)
    return torch.nn.functional.softplus(x @ w_noise.T)  # (N, E)


def _expect_fresh_draws(draw_a: torch.Tensor, draw_b: torch.Tensor, what: str,
                       element: str) -> None:
    """Raise unless two calls drew differently and one draw varies across tokens and across the
    other axis. draw_*: (N, X) standardised draws of two calls (noise / scale, or x_jittered / x)."""
    if torch.equal(draw_a, draw_b):
        raise CheckFailed(f"Two calls with training=True drew the same {what}: draw fresh "
                          f"random numbers on every call from torch's global generator "
                          f"(a torch.Generator seeded inside the function repeats itself).")
    flat = draw_a.reshape(draw_a.shape[0], -1)  # (N, X)
    # float round-off is far below `tol`, fresh draws far above; a few rows whose noise scale is
    # ~0 turn round-off into large values, so 95% of the rows decide (medians ignore them too)
    tol = 1e-3 * float((flat - flat.median()).abs().median())
    row_same = (flat - flat[:, :1]).abs().amax(dim=1) <= tol  # (N,) one value per token
    column_same = (flat - flat.median(dim=0).values).abs().amax(dim=1) <= tol  # (N,) one vector
    same_in_row = flat.shape[1] > 1 and float(row_same.double().mean()) > 0.95
    same_in_column = flat.shape[0] > 1 and float(column_same.double().mean()) > 0.95
    if same_in_row and same_in_column:
        raise CheckFailed(f"One {what} value for the whole batch: draw one per {element}, with "
                          f"the shape of the tensor it perturbs.")
    if same_in_row:
        raise CheckFailed(f"One {what} value per token, shared by all its {element}s: draw one "
                          f"per {element}, with the shape of the tensor it perturbs.")
    if same_in_column:
        raise CheckFailed(f"Every token got the same {what} vector (one value per column, "
                          f"shared by all tokens): draw one per {element}, with the full shape.")


@checker("check_noisy_topk_logits")
def check_noisy_topk_logits(noisy_topk_logits: Callable[..., torch.Tensor]) -> None:
    """``noisy_topk_logits(x (N, D), w_gate (E, D), w_noise (E, D), training) -> (N, E)``:
    x W_gate^T + eps * softplus(x W_noise^T) with eps ~ N(0, 1) when training, else x W_gate^T."""
    gen = torch.Generator().manual_seed(1)
    names = ("x", "w_gate", "w_noise")
    for n_tokens, d_model, num_experts in [(6, 8, 4), (1, 8, 4), (5, 16, 3)]:  # eval mode
        where = f"training=False, N={n_tokens}, E={num_experts}"
        set_case(where)
        x = torch.randn(n_tokens, d_model, generator=gen)  # (N, D)
        w_gate = torch.randn(num_experts, d_model, generator=gen)  # (E, D)
        w_noise = torch.randn(num_experts, d_model, generator=gen)  # (E, D)
        router = _reference_router(w_gate, noise="noisy_topk", w_noise=w_noise)
        x_ref = x.clone().requires_grad_(True)
        clean = router(x_ref).logits  # (N, E)
        inputs = fresh(x, w_gate, w_noise, grad=True)
        eval_a = _tensor(call(noisy_topk_logits, *inputs, False, names=names))
        eval_b = _tensor(call(noisy_topk_logits, *fresh(x, w_gate, w_noise), False, names=names))
        if eval_a.shape == clean.shape and not torch.equal(eval_a.detach(), eval_b):
            raise CheckFailed("With training=False two calls gave different logits: the noise "
                              "is still on in eval. Add noise only when training is True.")
        expect_close(eval_a, clean.detach(), f"the eval-mode logits ({where})",
                     hint="With training=False return the clean logits x @ w_gate.T.")
        expect_same_grad(eval_a, clean, dict(zip(names[:2], inputs[:2], strict=True)),
                         {"x": x_ref, "w_gate": router.weight}, f"the logits ({where})")

    n_tokens, d_model, num_experts = 4096, 8, 4
    set_case(f"training=True, N={n_tokens}, E={num_experts}")
    x = torch.randn(n_tokens, d_model, generator=gen)  # (N, D)
    w_gate = torch.randn(num_experts, d_model, generator=gen)  # (E, D)
    w_noise = torch.randn(num_experts, d_model, generator=gen)  # (E, D)
    clean = (x @ w_gate.T).double()  # (N, E)
    scale = _noise_scale(x, w_noise).double()  # (N, E)
    inputs = fresh(x, w_gate, w_noise, grad=True)
    noisy = _tensor(call(noisy_topk_logits, *inputs, True, names=names))
    if noisy.shape != clean.shape:
        raise CheckFailed(f"Training-mode logits should have shape {tuple(clean.shape)}, "
                          f"got {tuple(noisy.shape)}.")
    if torch.allclose(noisy.detach().double(), clean, atol=1e-6):
        raise CheckFailed("With training=True the logits have no noise: add "
                          "eps * softplus(x @ w_noise.T), eps = torch.randn_like(logits).")
    noisy_b = _tensor(call(noisy_topk_logits, *fresh(x, w_gate, w_noise), True, names=names))
    # z = (H(x) - x W_g) / softplus(x W_noise) should be standard normal, fresh per element
    z = (noisy.detach().double() - clean) / scale  # (N, E)
    z_b = (noisy_b.detach().double() - clean) / scale  # (N, E)
    _expect_fresh_draws(z, z_b, "noise", "expert")
    if abs(z.mean().item()) > 0.05 or abs(z.std().item() - 1) > 0.05:
        raise CheckFailed(f"The noise has the wrong scale: (noisy - clean) / softplus(x @ "
                          f"w_noise.T) has mean {z.mean().item():.3f} and std "
                          f"{z.std().item():.3f}, expected 0 and 1. The noise std is "
                          f"softplus(x @ w_noise.T) (softplus keeps it positive), times "
                          f"eps ~ N(0, 1).")
    # N(0, 1) puts 68.3% of its draws within one std; a uniform of the same std puts 57.7%
    within_one = float((z.abs() < 1).double().mean())
    if abs(within_one - 0.6827) > 0.02:
        raise CheckFailed(f"The noise has mean 0 and std 1 but is not Gaussian: {within_one:.1%} "
                          f"of the draws lie within one std, 68.3% for N(0, 1). Draw eps with "
                          f"torch.randn_like(logits).")
    for n_small, e_small in [(1, 6), (512, 3)]:  # other shapes in training: no fixed N or E
        set_case(f"training=True, N={n_small}, E={e_small}")
        xs = torch.randn(n_small, d_model, generator=gen)  # (N, D)
        gs, ns = torch.randn(e_small, d_model, generator=gen), torch.randn(e_small, d_model,
                                                                           generator=gen)
        out_small = _tensor(call(noisy_topk_logits, *fresh(xs, gs, ns), True, names=names))
        if out_small.shape != (n_small, e_small):
            raise CheckFailed(f"Training-mode logits should have shape (N, E) = "
                              f"{(n_small, e_small)}, got {tuple(out_small.shape)}: draw the noise "
                              f"with the logits' shape (torch.randn_like), not a fixed one.")
        if torch.allclose(out_small.detach().double(), (xs @ gs.T).double(), atol=1e-6):
            raise CheckFailed(f"With training=True and N={n_small}, E={e_small} the logits have "
                              f"no noise.")
    # dL/dW_noise = (g * eps * sigmoid(x W_noise^T))^T x for L = sum(g * H), with this call's eps
    w_noise_ref = w_noise.clone().requires_grad_(True)
    w_gate_ref = w_gate.clone().requires_grad_(True)
    reference = x @ w_gate_ref.T + z.float() * torch.nn.functional.softplus(x @ w_noise_ref.T)
    expect_same_grad(noisy, reference, {"w_gate": inputs[1], "w_noise": inputs[2]},
                     {"w_gate": w_gate_ref, "w_noise": w_noise_ref},
                     "the training-mode logits", atol=1e-3, rtol=1e-3)


@checker("check_jitter")
def check_jitter(jitter: Callable[[torch.Tensor, float, bool], torch.Tensor]) -> None:
    """``jitter(x (N, D), eps, training) -> (N, D)``: x * u, u ~ Uniform(1 - eps, 1 + eps)
    element-wise when training, x unchanged otherwise (Switch Transformer)."""
    gen = torch.Generator().manual_seed(2)
    for n_tokens, d_model in [(5, 8), (1, 3)]:
        set_case(f"training=False, N={n_tokens}, D={d_model}")
        x = torch.randn(n_tokens, d_model, generator=gen)  # (N, D)
        out_eval = _tensor(call(jitter, *fresh(x), 0.1, False, names=("x",)))
        expect_close(out_eval, x, f"jitter(x, eps, training=False) (N={n_tokens})",
                     hint="Jitter is a training-time regulariser: leave x unchanged in eval.",
                     atol=0.0, rtol=0.0)
    set_case("training=True, N=2048, D=8")
    x = torch.randn(2048, 8, generator=gen).add(3.0)  # (N, D), away from zero
    eps = 0.1
    out = _tensor(call(jitter, *fresh(x), eps, True, names=("x",)))
    if out.shape != x.shape:
        raise CheckFailed(f"Jitter must keep the shape {tuple(x.shape)}, got {tuple(out.shape)}.")
    if torch.equal(out, x):
        raise CheckFailed("With training=True x came back unchanged: multiply it by "
                          "u ~ Uniform(1 - eps, 1 + eps).")
    # u = x_jittered / x should be Uniform(1 - eps, 1 + eps): mean 1, std eps / sqrt(3)
    u = out.detach().double() / x.double()  # (N, D)
    if u.min() < 1 - eps - 1e-6 or u.max() > 1 + eps + 1e-6:
        additive = (out.detach().double() - x.double()).abs().max() <= eps + 1e-6
        raise CheckFailed("The factor x_jittered / x leaves [1 - eps, 1 + eps]"
                          + (": it looks like additive noise (x + u); the Switch jitter "
                             "multiplies, x * u." if additive else "."))
    (x_in,) = fresh(x, grad=True)
    out_b = _tensor(call(jitter, x_in, eps, True, names=("x",)))
    u_b = out_b.detach().double() / x.double()  # (N, D)
    _expect_fresh_draws(u, u_b, "jitter factor u", "element")
    if abs(u.mean().item() - 1) > 0.01 or abs(u.std().item() - eps / 3 ** 0.5) > 0.01:
        raise CheckFailed(f"x_jittered / x has mean {u.mean().item():.3f} and std "
                          f"{u.std().item():.3f}; for u ~ Uniform(1 - eps, 1 + eps) expect 1 "
                          f"and eps / sqrt(3) = {eps / 3 ** 0.5:.3f}. Draw one u per element.")
    # Uniform(1 - eps, 1 + eps) puts half its draws within eps / 2 of 1; a normal of the same std
    # puts 61%
    middle = float(((u - 1).abs() < eps / 2).double().mean())
    if abs(middle - 0.5) > 0.03:
        raise CheckFailed(f"x_jittered / x has the right mean and std but is not uniform: "
                          f"{middle:.1%} of the factors lie within eps / 2 of 1, 50% for "
                          f"Uniform(1 - eps, 1 + eps). Draw u with "
                          f"torch.empty_like(x).uniform_(1 - eps, 1 + eps).")
    for shape in [(1, 3), (4, 5)]:  # other shapes in training: no fixed N or D
        set_case(f"training=True, x of shape {shape}")
        xs = torch.randn(*shape, generator=gen).add(3.0)
        out_small = _tensor(call(jitter, *fresh(xs), eps, True, names=("x",)))
        if out_small.shape != xs.shape:
            raise CheckFailed(f"Jitter must keep the shape {tuple(xs.shape)}, got "
                              f"{tuple(out_small.shape)}: draw u with x's shape "
                              f"(torch.empty_like(x)), not a fixed one.")
        ratio = out_small.detach().double() / xs.double()
        if ratio.min() < 1 - eps - 1e-6 or ratio.max() > 1 + eps + 1e-6:
            raise CheckFailed(f"For x of shape {shape} the factor x_jittered / x leaves "
                              f"[1 - eps, 1 + eps].")
    # d(x * u)/dx = u, with this call's u
    x_ref = x.clone().requires_grad_(True)
    expect_same_grad(out_b, x_ref * u_b.float(), {"x": x_in}, {"x": x_ref}, "the jittered x")
