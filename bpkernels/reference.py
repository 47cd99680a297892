r"""Pure-PyTorch twin of every ``bpkernels`` operator: the executable spec.

Each function here has exactly the signature and the semantics of the operator of the same
name in :mod:`bpkernels.ops` (``docs/algorithms.md``), written for clarity, not
speed: it materialises the K×N×B cavity tensors that the kernels never build. It is the oracle
of the tests and the baseline of the benchmarks.

Shapes are batch-first: activations [B, N], per-unit messages [B, K], weight fields and
magnetisations [K, N], BP cavity state [K, N, B].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

VAR_EPS = 1e-8
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT2 = 1.0 / math.sqrt(2.0)
LN2 = math.log(2.0)
SQRT_PI = math.sqrt(math.pi)


def upfield(omega: Tensor, s: Tensor) -> Tensor:
    r"""Scalar spec of :math:`U(\omega, s) = \operatorname{atanh}\operatorname{erf}(\omega/(\sqrt2 s))`,
    evaluated as :math:`\mathrm{sgn}(\omega)\,(\tfrac12[\ln 2 + \mathrm{log1p}(-\tfrac12\,\mathrm{erfcx}(y)e^{-y^2})
    - \ln\mathrm{erfcx}(y)] + (y/\sqrt2)^2)`, :math:`y = |\omega|/(\sqrt2 s)` (small y: atanh erf y;
    :math:`y^2/2` formed as :math:`(y/\sqrt2)^2`, which overflows only where U does)."""
    y = omega.abs() * INV_SQRT2 / s
    ex = torch.special.erfcx(y)
    large = 0.5 * (LN2 + torch.log1p(-0.5 * ex * torch.exp(-y * y)) - torch.log(ex)) + (y * INV_SQRT2).square()
    small = torch.atanh(torch.erf(y))
    return torch.where(y < 0.5, small, large) * torch.where(omega < 0, -1.0, 1.0)


def output_coef(b_top: Tensor, s: Tensor, hard: bool) -> tuple[Tensor, Tensor, Tensor]:
    r"""Coefficients of :math:`g = \mathrm{num}/[\exp(x^2 + c) + \mathrm{erfcx}(x)]`, :math:`x = \alpha\,\omega`:
    :math:`\alpha = -\varsigma/(\sqrt2 s)`, :math:`c = \ln((1-|\tanh b|)/|\tanh b|)` (:math:`-\infty` for hard
    labels), :math:`\mathrm{num} = \varsigma\sqrt{2/\pi}/s`, :math:`\varsigma = \mathrm{sgn}\, b`."""
    sgn = torch.where(b_top < 0, -1.0, 1.0).to(s.dtype)
    c = torch.full_like(s, -math.inf) if hard else soft_label_log_ratio(b_top)
    return -sgn * INV_SQRT2 / s, c, sgn * SQRT_2_OVER_PI / s


def soft_label_log_ratio(b: Tensor) -> Tensor:
    r""":math:`c = \ln((1-|t|)/|t|)`, :math:`t = \tanh b`, for every b (+∞ at 0, −∞ at ±∞): as
    :math:`(1-|t|)/|t| = e^{-|b|}/\sinh|b|`, :math:`\ln 2 - 2|b| - \mathrm{log1p}(-e^{-2|b|})` for
    :math:`|b| \ge 1/8` and :math:`-|b| - \ln|b| - \mathrm{log1p}(b^2/6 + b^4/120 + b^6/5040 + b^8/362880)`
    below (the first form loses all accuracy as :math:`e^{-2|b|}` rounds to 1)."""
    ab = b.abs()
    z = ab.square()
    small = -ab - torch.log(ab) - torch.log1p(z * (1 / 6 + z * (1 / 120 + z * (1 / 5040 + z / 362880))))
    large = LN2 - 2.0 * ab - torch.log1p(-torch.exp(-2.0 * ab))
    return torch.where(ab < 0.125, small, large)


def output_g(alpha: Tensor, c: Tensor, num: Tensor, omega: Tensor) -> Tensor:
    """g at preactivation mean omega (cavity or not), broadcasting the coefficients."""
    x = alpha * omega
    return num / (torch.exp(x * x + c) + torch.special.erfcx(x))


def mills_excess(x: Tensor, e: Tensor) -> Tensor:
    r""":math:`K(x) = 1/e - x`, :math:`e = \sqrt\pi\,\mathrm{erfcx}(x)`, for x > 0 without cancellation:
    below :math:`x_t` the difference, from :math:`x_t` on Laplace's continued fraction
    :math:`K = (1/2)/(x + 1/(x + (3/2)/(x + \dots)))` from its n-th level (float64: x_t = 4, n = 24;
    float32: x_t = 3, n = 12)."""
    x_t, levels = (3.0, 12) if x.dtype == torch.float32 else (4.0, 24)
    xc = x.clamp(min=x_t)
    t = torch.zeros_like(x)
    for n in range(levels, 0, -1):
        t = (0.5 * n) / (xc + t)
    return torch.where(x < x_t, 1.0 / e - x, t)


def output_g_gamma(alpha: Tensor, c: Tensor, num: Tensor, omega: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    r"""g and :math:`\Gamma = -\partial g/\partial\omega` (docs/algorithms.md §2.2, §10.15): with
    :math:`x = \alpha\omega`, :math:`E = e^{x^2 + c}`, :math:`e = \sqrt\pi\,\mathrm{erfcx}(x)`,
    :math:`p = 1/(\sqrt\pi E + e)`: :math:`\Gamma = 2p(p - x)/V`, where :math:`p - x = p\,e\,K(x) - x q`,
    :math:`q = 1/(1 + e/(\sqrt\pi E))` for x > 0 (:func:`mills_excess`)."""
    x = alpha * omega
    big_e = torch.exp(x * x + c)
    ex = torch.special.erfcx(x)
    g = num / (big_e + ex)
    e = SQRT_PI * ex
    p = 1.0 / (SQRT_PI * big_e + e)
    q = 1.0 / (1.0 + e / (SQRT_PI * big_e))
    excess = torch.where(x > 0, p * e * mills_excess(x, e) - x * q, p - x)
    return g, 2.0 * p * excess / var


def bp_linear_input(u: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor]:
    """Spec for ``bpkernels::bp_linear_input``: x̂ = tanh(u + b), Δ = 1 − x̂²."""
    x_hat = torch.tanh(u if b is None else u + b)
    return x_hat, 1.0 - x_hat.square()


def bp_weight_var(mag: Tensor, mask: Tensor | None) -> Tensor:
    """Spec for ``bpkernels::bp_weight_var``: σ = (1 − m²)·mask (mask None: 1 − m²), evaluated as
    (1 − m)(1 + m), which keeps its relative accuracy as |m| → 1 (1 − fl(m²) does not; the
    kernels' fused 1 − m² does)."""
    sigma = (1.0 - mag) * (1.0 + mag)
    return sigma if mask is None else sigma * mask


def _moments(x_hat, delta, mag, sigma):
    omega = x_hat @ mag.T
    var = x_hat.square() @ sigma.T
    if delta is not None:
        var = var + delta @ (mag.square() + sigma).T
    return omega, var + VAR_EPS


def bp_linear_fwd(x_hat: Tensor, delta: Tensor | None, mag: Tensor, mask: Tensor | None):
    """Spec for ``bpkernels::bp_linear_fwd``: ω = x̂ mᵀ, V = x̂² σᵀ + Δ(m² + σ)ᵀ + ε, u = U(ω, √V),
    σ = (1 − m²)·mask."""
    omega, var = _moments(x_hat, delta, mag, bp_weight_var(mag, mask))
    return omega, var, upfield(omega, var.sqrt())


def bp_linear_fwd_amp(x_hat, delta, mag, mask, g_old, x_hat_old, mag_old):
    """Spec for ``bpkernels::bp_linear_fwd_amp``: ω with the Onsager terms of docs/algorithms.md §4.4."""
    sigma = bp_weight_var(mag, mask)
    omega, var = _moments(x_hat, delta, mag, sigma)
    omega = omega - g_old * ((x_hat * x_hat_old) @ sigma.T)
    if delta is not None:
        omega = omega - g_old * (delta @ (mag * mag_old).T)
        omega = omega + g_old.square() * ((x_hat_old * delta) @ (sigma * mag_old).T)
    return omega, var, upfield(omega, var.sqrt())


def bp_upfield(omega: Tensor, var: Tensor) -> Tensor:
    """Spec for ``bpkernels::bp_upfield``: u = U(ω, √V)."""
    return upfield(omega, var.sqrt())


def bp_output(b_top: Tensor, omega: Tensor, var: Tensor, hard: bool) -> tuple[Tensor, Tensor]:
    """Spec for ``bpkernels::bp_output``: g(b, ω, √V) and Γ = −∂g/∂ω (:func:`output_g_gamma`)."""
    return output_g_gamma(*output_coef(b_top, var.sqrt(), hard), omega, var)


def bp_argmax_output(omega: Tensor, var: Tensor, labels: Tensor) -> Tensor:
    """Spec for ``bpkernels::bp_argmax_output`` (docs/algorithms.md §2.3)."""
    B, K = omega.shape
    rows = torch.arange(B, device=omega.device)
    omega_c = omega[rows, labels].unsqueeze(1)
    s = (var + var[rows, labels].unsqueeze(1)).sqrt()
    g = -SQRT_2_OVER_PI / (s * torch.special.erfcx(-(omega_c - omega) * INV_SQRT2 / s))
    g[rows, labels] = 0.0
    g[rows, labels] = -g.sum(dim=1)
    return g


def bp_linear_bwd_mf(g: Tensor, x_hat: Tensor, mag: Tensor, compute_b: bool):
    """Spec for ``bpkernels::bp_linear_bwd_mf``: b = g m, H_in = gᵀ x̂."""
    b = g @ mag if compute_b else x_hat.new_empty(x_hat.shape[0], 0)
    return b, g.T @ x_hat


def bp_linear_bwd_amp(g, gamma, x_hat, delta, mag, mask, g_old, x_hat_old, mag_old, compute_b):
    """Spec for ``bpkernels::bp_linear_bwd_amp`` (docs/algorithms.md §4.4), σ = (1 − m²)·mask."""
    sigma = bp_weight_var(mag, mask)
    h_in = g.T @ x_hat + mag * (gamma.T @ x_hat.square())
    b = g @ mag + x_hat * (gamma @ mag.square()) if compute_b else x_hat.new_empty(x_hat.shape[0], 0)
    if g_old is not None:
        if delta is not None:
            h_in = h_in - mag_old * ((g * g_old).T @ delta)
            h_in = h_in - mag * mag_old * ((g_old * gamma).T @ (delta * x_hat))
        if compute_b:
            b = b - x_hat_old * ((g * g_old) @ sigma)
            b = b - x_hat * x_hat_old * ((g_old * gamma) @ (sigma * mag))
    return b, h_in


def cavity_g(b_top, omega, var, x_cav, mag_cav, hard):
    """ĝ[k,i,a] = g(b_top[a,k], ω[a,k] − m[k,i,a] x[k,i,a], s[a,k]) as a [K, N, B] tensor.
    x_cav and mag_cav broadcast to [K, N, B]."""
    alpha, c, num = (t.T[:, None, :] for t in output_coef(b_top, var.sqrt(), hard))
    return output_g(alpha, c, num, omega.T[:, None, :] - mag_cav * x_cav)


def bp_linear_bwd_bpi(b_top, omega, var, x_hat, mag, hard: bool, compute_b: bool):
    """Spec for ``bpkernels::bp_linear_bwd_bpi``: b[a,i] = Σ_k m ĝ, H_in[k,i] = Σ_a ĝ x̂ (docs/algorithms.md §4.2)."""
    x_t = x_hat.T[None, :, :]  # [1, N, B]
    g_cav = cavity_g(b_top, omega, var, x_t, mag[:, :, None], hard)  # [K, N, B]
    h_in = (g_cav * x_t).sum(dim=2)
    b = (mag[:, :, None] * g_cav).sum(dim=0).T if compute_b else x_hat.new_empty(x_hat.shape[0], 0)
    return b, h_in


def _cavity_input(x_in, b_cav):
    x_t = x_in.T[None, :, :]
    return x_t if b_cav is None else torch.tanh(x_t + b_cav)


def bp_linear_omega_bp(x_in, b_cav, mag_cav):
    """Spec for ``bpkernels::bp_linear_omega_bp``: ω[a,k] = Σ_i m̃ x̃, x̃ = tanh(x_in + b̃) (or x_in)."""
    return (mag_cav * _cavity_input(x_in, b_cav)).sum(dim=1).T


def bp_linear_bwd_bp(b_top, omega, var, x_in, b_cav, mag_cav, hard: bool, compute_b: bool):
    """Spec for ``bpkernels::bp_linear_bwd_bp`` (docs/algorithms.md §4.3 backward steps 1–3)."""
    x_cav = _cavity_input(x_in, b_cav)
    g_cav = cavity_g(b_top, omega, var, x_cav, mag_cav, hard)
    h_in = (g_cav * x_cav).sum(dim=2)
    b = (mag_cav * g_cav).sum(dim=0).T if compute_b else x_in.new_empty(x_in.shape[0], 0)
    return b, h_in


def bp_cavity_update_(mag_cav, b_cav, b_top, omega, var, x_in, b, field, mask, psi: float, hard: bool):
    """Spec for ``bpkernels::bp_cavity_update_``: b̃ ← b − m̃ĝ, m̃ ← ψm̃ + (1 − ψ) tanh(H − ĝx̃)·mask."""
    x_cav = _cavity_input(x_in, b_cav)
    g_cav = cavity_g(b_top, omega, var, x_cav, mag_cav, hard)
    if b_cav is not None:
        b_cav.copy_(b.T[None, :, :] - mag_cav * g_cav)
    msk = 1.0 if mask is None else mask[:, :, None]
    mag_cav.copy_(psi * mag_cav + (1.0 - psi) * torch.tanh(field[:, :, None] - g_cav * x_cav) * msk)


def bp_field_update_(field, mag, h_in, field_prior, mask, rho: float, r: float, psi: float,
                     damp_field: bool) -> Tensor:
    """Spec for ``bpkernels::bp_field_update_`` (docs/algorithms.md §4.1 step 4, §4.5, §5.1)."""
    prior = field if field_prior is None else field_prior
    msk = torch.ones_like(field) if mask is None else mask
    target = h_in + r * field + rho * prior
    if damp_field:
        new_field = psi * field + (1.0 - psi) * target
        new_mag = torch.tanh(new_field) * msk
    else:
        new_field = target
        new_mag = (psi * mag + (1.0 - psi) * torch.tanh(new_field)) * msk
    change = (new_mag - mag).abs().mean()
    field.copy_(new_field)
    mag.copy_(new_mag)
    return change


def bp_bayes_fwd(x_hat, delta, mag, mask):
    """Spec for ``bpkernels::bp_bayes_fwd``: x̂ = erf(ω/√(2V)), Δ = 1 − x̂² (docs/algorithms.md §6)."""
    omega, var = _moments(x_hat, delta, mag, bp_weight_var(mag, mask))
    x_out = torch.erf(omega / (2.0 * var).sqrt())
    return x_out, 1.0 - x_out.square()


# ---- Gaussian (continuous) weight family (docs/algorithms.md §4.7) ------------------------------

MIN_PRECISION = 1e-6


def gauss_linear_fwd(x_hat: Tensor, delta: Tensor | None, mag: Tensor, precision: Tensor):
    """Spec for ``bpkernels::gauss_linear_fwd``: ω, V, u as bp_linear_fwd with σ = 1/Ω."""
    omega, var = _moments(x_hat, delta, mag, 1.0 / precision)
    return omega, var, upfield(omega, var.sqrt())


def gauss_linear_bwd_cbpi(b_top, omega, var, x_hat, delta, mag, hard: bool, compute_b: bool):
    """Spec for ``bpkernels::gauss_linear_bwd_cbpi``: b, H_in of BPI and
    Ω_in[k,i] = Σ_a [(x̂² + Δ)[a,i] Γ[a,k] − Δ[a,i] g[a,k]²], Γ non-finite -> 0."""
    b, h_in = bp_linear_bwd_bpi(b_top, omega, var, x_hat, mag, hard, compute_b)
    g, gamma = bp_output(b_top, omega, var, hard)
    gamma = torch.where(torch.isfinite(gamma), gamma, torch.zeros_like(gamma))
    d = torch.zeros_like(x_hat) if delta is None else delta
    omega_in = gamma.T @ (x_hat.square() + d) - g.square().T @ d
    return b, h_in, omega_in


def gauss_field_update_(field, precision, mag, h_in, omega_in, field_prior, precision_prior,
                        rho: float, r: float, psi: float) -> Tensor:
    """Spec for ``bpkernels::gauss_field_update_``: Ω ← max(1e-6, Ω_in + rΩ + ρΩ_prior),
    H ← H_in + rH + ρH_prior, m ← ψm + (1 − ψ)H/Ω (priors None: the current H, Ω)."""
    h_prior = field if field_prior is None else field_prior
    p_prior = precision if precision_prior is None else precision_prior
    new_precision = (omega_in + r * precision + rho * p_prior).clamp(min=MIN_PRECISION)
    new_field = h_in + r * field + rho * h_prior
    new_mag = psi * mag + (1.0 - psi) * new_field / new_precision
    change = (new_mag - mag).abs().mean()
    field.copy_(new_field)
    precision.copy_(new_precision)
    mag.copy_(new_mag)
    return change
