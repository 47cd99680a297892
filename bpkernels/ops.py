r"""The bpkernels operators: one message-passing update of a dense layer of ±1 weights.

Every function calls ``torch.ops.bpkernels.<name>``, implemented by fused C++ kernels on the
CPU and CUDA kernels on the GPU, and has a pure-PyTorch twin of the same name in
:mod:`bpkernels.reference`. The maths is ``docs/algorithms.md`` §2–§6.

Shapes (batch-first): B samples, N inputs, K units. Activations x̂, Δ, u, b: [B, N];
preactivation moments ω, V, g, Γ, b_top: [B, K]; field H, magnetisation m, mask: [K, N]; BP
cavity state m̃, b̃: [K, N, B]. All floating tensors of one call share dtype (float32 or float64)
and device. The weight variance σ = (1 − m²)·mask is derived from ``mag`` and ``mask`` inside
every operator that needs it (:func:`bp_weight_var` computes it alone, with the same rounding).
None of these operators is differentiable: message passing replaces gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ops = torch.ops.bpkernels


def bp_linear_input(u: Tensor, b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Input moments of a hidden layer, :math:`\hat x = \tanh(u + b)`, :math:`\Delta = 1 - \hat x^2`.

    Args:
        u: [B, N] upward field of the layer below.  b: [B, N] this layer's downward field, or None (0).
    """
    return _ops.bp_linear_input.default(u, b)


def bp_linear_fwd(x_hat: Tensor, delta: Tensor | None, mag: Tensor, mask: Tensor | None = None):
    r"""Preactivation moments and upward field (docs/algorithms.md §4.0).

    .. math::
        \omega = \hat x\, m^\top,\quad V = \hat x^{2}\sigma^\top + \Delta\,(m^2+\sigma)^\top + \varepsilon,
        \quad u = U(\omega, \sqrt V) = \operatorname{atanh}\operatorname{erf}\frac{\omega}{\sqrt{2V}},
        \quad \sigma = (1 - m^2)\odot\mathrm{mask}

    Args:
        x_hat: [B, N] input means.  delta: [B, N] input variances, None for the first layer.
        mag: [K, N] magnetisations m.  mask: [K, N] 0/1 weight mask, None for a dense layer.
    Returns:
        (omega, var, u), each [B, K].

    Representable range: the moments are matrix products of x̂, x̂² and Δ, so every
    :math:`|\hat x|` must stay below :math:`\sqrt{F/N}` (F the dtype's largest value:
    1.8e19/√N in float32, 1.3e154/√N in float64). Beyond it x̂² overflows and V is +∞, or NaN
    where σ = 0 (masked or fully polarised weights) even when the true V is finite; the model
    layer refuses such inputs (``BPSequential.check_inputs``). Within it, u is finite wherever
    :math:`\omega^2/(4V)` is representable.
    """
    return _ops.bp_linear_fwd.default(x_hat, delta, mag, mask)


def bp_linear_fwd_amp(x_hat, delta, mag, mask, g_old, x_hat_old, mag_old):
    r"""AMP forward with the Onsager terms of the previous inner iteration (docs/algorithms.md §4.4):

    .. math::
        \omega = \hat x m^\top - g^{old}\odot[(\hat x\odot\hat x^{old})\sigma^\top]
        - g^{old}\odot[\Delta (m\odot m^{old})^\top] + (g^{old})^2\odot[(\hat x^{old}\odot\Delta)(\sigma\odot m^{old})^\top]

    Args: as :func:`bp_linear_fwd` (mask [K, N] or None), plus g_old [B, K], x_hat_old [B, N],
    mag_old [K, N]. Returns (omega, var, u), each [B, K].

    Representable range: that of :func:`bp_linear_fwd` for x̂ and x̂_old, and the Onsager terms'
    products :math:`|g^{old}\hat x\hat x^{old}|`, :math:`(g^{old})^2|\hat x^{old}|` summed over N
    must stay below the dtype's largest value.
    """
    return _ops.bp_linear_fwd_amp.default(x_hat, delta, mag, mask, g_old, x_hat_old, mag_old)


def bp_upfield(omega: Tensor, var: Tensor) -> Tensor:
    r""":math:`u = U(\omega, \sqrt V)` [B, K] from omega and var [B, K] (docs/algorithms.md §2.2).
    Representable range: u ≈ ω²/(4V) for large |ω|/√V, and is finite wherever that is (V > 0)."""
    return _ops.bp_upfield.default(omega, var)


def bp_output(b_top: Tensor, omega: Tensor, var: Tensor, hard: bool = False):
    r"""Output function of sign units and its curvature (docs/algorithms.md §2.2):

    .. math::
        g = \partial_\omega \ln\!\big[e^{b}\mathcal H(-\omega/s) + e^{-b}\mathcal H(\omega/s)\big],\qquad
        \Gamma = -\partial_\omega g = g\,(\omega/V + g),\quad s = \sqrt V

    evaluated in the log domain, exact for every b including ±∞; Γ in the cancellation-free
    form :math:`\Gamma = 2p(p - x)/V` of docs/algorithms.md §2.2 (accurate to the far
    misclassified tail, margins to ±1e6 and beyond), not as the product above.
    Representable range: g and Γ are finite for every finite ω and V > 0; where the true |g|
    is below about 1e-30 (float32) or 1e-300 (float64) — a unit agreeing with its label by a
    wide margin at a tiny V — they may underflow to 0.

    Args:
        b_top: [B, K] downward field from the layer above, or labels ±1 when ``hard``.
        omega, var: [B, K].  hard: treat b_top as hard labels (b = ±∞).
    Returns:
        (g, gamma), each [B, K].
    """
    return _ops.bp_output.default(b_top, omega, var, hard)


def bp_argmax_output(omega: Tensor, var: Tensor, labels: Tensor) -> Tensor:
    r"""g of the multi-class argmax output layer (docs/algorithms.md §2.3): for sample a of class c and k ≠ c,

    .. math::
        g_{ak} = -\frac{\sqrt{2/\pi}}{s_{ak}\,\mathrm{erfcx}\big(-(\omega_{ac}-\omega_{ak})/(\sqrt2 s_{ak})\big)},
        \quad s_{ak} = \sqrt{V_{ak}+V_{ac}},\qquad g_{ac} = -\sum_{k\ne c} g_{ak}

    Args:
        omega, var: [B, K].  labels: [B] int64 classes in [0, K).

    .. note:: The CPU kernel raises on a label outside [0, K). On CUDA the labels are checked
       on the device, without a host synchronisation: such a label makes that sample's row of
       g NaN (``BPSequential.bp_step`` validates labels before they reach the op).
    """
    return _ops.bp_argmax_output.default(omega, var, labels)


def bp_linear_bwd_mf(g: Tensor, x_hat: Tensor, mag: Tensor, compute_b: bool = True):
    r"""Mean-field backward (docs/algorithms.md §4.1): :math:`b = g\,m` [B, N], :math:`H_{in} = g^\top \hat x` [K, N].

    ``compute_b=False`` (first layer) returns an empty [B, 0] b.
    """
    return _ops.bp_linear_bwd_mf.default(g, x_hat, mag, compute_b)


def bp_linear_bwd_amp(g, gamma, x_hat, delta, mag, mask=None, g_old=None, x_hat_old=None,
                      mag_old=None, compute_b: bool = True):
    r"""AMP backward (docs/algorithms.md §4.4): MF plus the self-reaction terms, and the Onsager terms when the
    previous iteration's (g_old [B, K], x_hat_old [B, N], mag_old [K, N]) are given
    (g, gamma [B, K], x_hat, delta [B, N], mag and mask [K, N] as :func:`bp_linear_fwd`):

    .. math::
        b = g m + \hat x\odot(\Gamma m^2) - \hat x^{old}\odot((g\odot g^{old})\sigma)
            - \hat x\odot\hat x^{old}\odot((g^{old}\odot\Gamma)(\sigma\odot m))

        H_{in} = g^\top\hat x + m\odot(\Gamma^\top\hat x^2) - m^{old}\odot((g\odot g^{old})^\top\Delta)
            - m\odot m^{old}\odot((g^{old}\odot\Gamma)^\top(\Delta\odot\hat x))

    with σ = (1 − m²)·mask. ``compute_b=False`` (first layer) returns an empty [B, 0] b.
    Returns (b [B, N], h_in [K, N]). Representable range: Γ x̂² summed over B, like the moments
    of :func:`bp_linear_fwd`, needs |x̂| below √(F/(B·max Γ)) (F the dtype's largest value).
    """
    return _ops.bp_linear_bwd_amp.default(g, gamma, x_hat, delta, mag, mask, g_old, x_hat_old,
                                          mag_old, compute_b)


def bp_linear_bwd_bpi(b_top, omega, var, x_hat, mag, hard: bool = False, compute_b: bool = True):
    r"""The fused BPI cavity backward (docs/algorithms.md §4.2, §8.4 item 3):

    .. math::
        \hat g_{kia} = g\big(b^{top}_{ak},\ \omega_{ak} - m_{ki}\hat x_{ai},\ \sqrt{V_{ak}}\big),\qquad
        b_{ai} = \sum_k m_{ki}\hat g_{kia},\qquad H_{in,ki} = \sum_a \hat g_{kia}\hat x_{ai}

    ĝ is evaluated in registers and never stored (no K×N×B tensor). Both reductions are
    deterministic on every device.

    Args:
        b_top, omega, var: [B, K].  x_hat: [B, N].  mag: [K, N].
        hard: b_top holds labels ±1.  compute_b: False for the first layer (b is [B, 0]).
    Returns:
        (b [B, N], h_in [K, N]).
    """
    return _ops.bp_linear_bwd_bpi.default(b_top, omega, var, x_hat, mag, hard, compute_b)


def bp_linear_omega_bp(x_in: Tensor, b_cav: Tensor | None, mag_cav: Tensor) -> Tensor:
    r"""BP (τ_max > 1) cavity forward (docs/algorithms.md §4.3): :math:`\omega_{ak} = \sum_i \tilde m_{kia}\tilde x_{kia}`
    with :math:`\tilde x = \tanh(x_{in} + \tilde b)` (hidden layer, x_in = u below) or x_in (first layer,
    b_cav None). x_in [B, N], b_cav and mag_cav [K, N, B]; returns [B, K]."""
    return _ops.bp_linear_omega_bp.default(x_in, b_cav, mag_cav)


def bp_linear_bwd_bp(b_top, omega, var, x_in, b_cav, mag_cav, hard: bool = False,
                     compute_b: bool = True):
    r"""BP (τ_max > 1) cavity backward (docs/algorithms.md §4.3): as :func:`bp_linear_bwd_bpi` with per-edge
    cavity means :math:`\tilde m_{kia}` and inputs :math:`\tilde x_{kia}`."""
    return _ops.bp_linear_bwd_bp.default(b_top, omega, var, x_in, b_cav, mag_cav, hard, compute_b)


def bp_cavity_update_(mag_cav, b_cav, b_top, omega, var, x_in, b, field, mask, psi: float,
                      hard: bool = False) -> None:
    r"""In-place BP cavity-state update after the field update of the same inner iteration:

    .. math::
        \tilde b_{kia} \leftarrow b_{ai} - \tilde m_{kia}\hat g_{kia},\qquad
        \tilde m_{kia} \leftarrow \psi\,\tilde m_{kia} + (1-\psi)\tanh(H_{ki} - \hat g_{kia}\tilde x_{kia})\,\mathrm{mask}_{ki}

    with ĝ and x̃ recomputed from the state before the update. First layer: b_cav and b None.
    """
    _ops.bp_cavity_update_.default(mag_cav, b_cav, b_top, omega, var, x_in, b, field, mask, psi, hard)


def bp_field_update_(field, mag, h_in, field_prior=None, mask=None, rho: float = 1.0,
                     r: float = 0.0, psi: float = 0.8, damp_field: bool = False) -> Tensor:
    r"""In-place field / reinforcement / damping update of a layer (docs/algorithms.md §4.1 step 4, §4.5, §5.1):

    .. math::
        H \leftarrow H_{in} + rH + \rho H^{prior},\qquad m \leftarrow [\psi m + (1-\psi)\tanh H]\odot\mathrm{mask}

    or, with ``damp_field`` (argmax output layer), :math:`H \leftarrow \psi H + (1-\psi)(H_{in} + rH + \rho H^{prior})`,
    :math:`m \leftarrow \tanh(H)\odot\mathrm{mask}`. ``field_prior=None`` means :math:`H^{prior} = H`
    (the posterior-as-prior θ = ρH of the first inner iteration). field and mag [K, N] are updated in
    place (contiguous); h_in, field_prior and mask are [K, N] (mask None: dense).

    Returns:
        The convergence monitor :math:`\delta = \mathrm{mean}\,|m_{new} - m_{old}|` as a 0-dim tensor.
    """
    return _ops.bp_field_update_.default(field, mag, h_in, field_prior, mask, rho, r, psi,
                                         damp_field)


def bp_bayes_fwd(x_hat: Tensor, delta: Tensor | None, mag: Tensor, mask: Tensor | None = None):
    r"""Bayesian moment propagation through one layer (docs/algorithms.md §6):
    :math:`\hat x' = \operatorname{erf}(\omega/\sqrt{2V})`, :math:`\Delta' = 1 - \hat x'^2` with ω, V as
    :func:`bp_linear_fwd` (x_hat, delta [B, N], mag, mask [K, N]). Returns (x_hat_out, delta_out),
    each [B, K]. Representable range: as :func:`bp_linear_fwd` (|x̂| below √(F/N))."""
    return _ops.bp_bayes_fwd.default(x_hat, delta, mag, mask)


def bp_weight_var(mag: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Weight variance :math:`\sigma = (1 - m^2)\odot\mathrm{mask}`, element-wise: the σ that every
    operator above derives from (mag, mask), bit for bit. mag of any shape ([K, N], or a conv
    layer's [K, C, kh, kw]); mask of the same shape, or None (σ = 1 − m²). Returns σ, mag's shape."""
    return _ops.bp_weight_var.default(mag, mask)


# ---- Gaussian (continuous) weight family (docs/algorithms.md §4.7) ------------------------------
# Each weight has a Gaussian marginal: mean ``mag`` (m) and precision ``precision`` (Ω), variance
# σ = 1/Ω, all [K, N]; the natural parameters are (H, Ω) with H = Ω·m at equilibrium. No mask.


def gauss_linear_fwd(x_hat: Tensor, delta: Tensor | None, mag: Tensor, precision: Tensor):
    r"""Preactivation moments and upward field through Gaussian weights (docs/algorithms.md §4.7):

    .. math::
        \omega = \hat x\, m^\top,\quad V = \hat x^{2}\sigma^\top + \Delta\,(m^2+\sigma)^\top + \varepsilon,
        \quad u = U(\omega, \sqrt V),\quad \sigma = 1/\Omega

    Args:
        x_hat: [B, N] input means.  delta: [B, N] input variances, None for the first layer.
        mag: [K, N] weight means m.  precision: [K, N] weight precisions Ω > 0.
    Returns:
        (omega, var, u), each [B, K].
    """
    return _ops.gauss_linear_fwd.default(x_hat, delta, mag, precision)


def gauss_linear_bwd_cbpi(b_top, omega, var, x_hat, delta, mag, hard: bool = False,
                          compute_b: bool = True):
    r"""The fused continuous-weight BPI backward (docs/algorithms.md §4.7): b and H_in as
    :func:`bp_linear_bwd_bpi` (cavity ĝ), and the precision message

    .. math::
        \Omega_{in,ki} = \sum_a \big[(\hat x_{ai}^2 + \Delta_{ai})\,\Gamma_{ak} - \Delta_{ai}\, g_{ak}^2\big]

    with the non-cavity g and Γ = −∂g/∂ω (non-finite Γ set to 0). ĝ is evaluated in registers,
    no K×N×B tensor exists, and the reductions are deterministic.

    Args:
        b_top, omega, var: [B, K].  x_hat: [B, N].  delta: [B, N], None for the first layer.
        mag: [K, N] weight means.  hard: b_top holds labels ±1.  compute_b: False for the first
        layer (b is [B, 0]).
    Returns:
        (b [B, N], h_in [K, N], omega_in [K, N]).
    """
    return _ops.gauss_linear_bwd_cbpi.default(b_top, omega, var, x_hat, delta, mag, hard, compute_b)


def gauss_field_update_(field, precision, mag, h_in, omega_in, field_prior=None,
                        precision_prior=None, rho: float = 1.0, r: float = 0.0,
                        psi: float = 0.8) -> Tensor:
    r"""In-place field / precision / damping update of Gaussian weights (docs/algorithms.md §4.7):

    .. math::
        \Omega \leftarrow \max(10^{-6}, \Omega_{in} + r\Omega + \rho\,\Omega^{prior}),\quad
        H \leftarrow H_{in} + rH + \rho H^{prior},\quad m \leftarrow \psi m + (1-\psi) H/\Omega

    field, precision, mag [K, N] are updated in place (contiguous); h_in, omega_in [K, N]; the
    priors [K, N] both given (a fixed prior) or both None (the current (H, Ω): the PasP prior).

    Returns:
        :math:`\delta = \mathrm{mean}\,|m_{new} - m_{old}|` as a 0-dim tensor.
    """
    return _ops.gauss_field_update_.default(field, precision, mag, h_in, omega_in, field_prior,
                                            precision_prior, rho, r, psi)
