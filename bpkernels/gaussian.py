r"""Continuous weights: a dense layer whose weights have Gaussian marginals, trained by
continuous-weight BPI (docs §4.7, algorithm ``"cbpi"``).

Each weight's marginal has natural parameters (H, Ω): precision Ω and field H, with mean H/Ω
and variance σ = 1/Ω. :class:`GaussianBPLinear` keeps them as buffers ``field`` (H) and
``precision`` (Ω), plus ``mag``: the damped mean m ← ψ m + (1 − ψ) H/Ω that the next forward
pass uses (the same role as the binary layers' damped magnetisation; m = H/Ω when ψ = 0 and
at initialisation). σ is derived from Ω where it is used. The update of one inner iteration is

    Ω ← max(10⁻⁶, Ω_in + rΩ + ρΩ_prior),   H ← H_in + rH + ρH_prior,   m ← ψm + (1 − ψ)H/Ω,

with the PasP prior (H_prior, Ω_prior) = (H, Ω) at the start of the mini-batch (or a fixed
prior pair, :meth:`GaussianBPLinear.set_prior`). Initialisation: Ω = N/ϵ², H = (√N/ϵ)·N(0, 1),
so m ~ N(0, ϵ²/N) and σ = ϵ²/N.

Predictions: point-wise with W = m (sign activations on hidden layers), Bayesian by moment
propagation with the Gaussian variances.

Mixed networks: a Gaussian layer exchanges the same messages with its neighbours as a binary
one (up-fields u going up, downward fields b going down, both over ±1 activations), so Gaussian
and binary layers (BPLinear, BPConv2d, with any binary algorithm) combine freely in one
BPSequential, with one exception: a Gaussian layer cannot be an argmax output layer (the
multi-class output function has no precision message in docs §4.7); use a binary argmax output
layer above Gaussian hidden layers, or a Gaussian sign output (one unit, binary tasks).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import ops
from .algorithms import BatchState, GaussianWeights
from .layers import PSI_DEFAULT, BPLayer, BPLinear, check_size, register_layer

MIN_PRECISION = 1e-6  # Ω is clamped below at this value after every update (docs §4.7)


@register_layer("gaussian_linear")
class GaussianBPLinear(BPLayer):
    """Dense layer of continuous (Gaussian) weights and sign activations.

    Args:
        in_features, out_features: N and K.
        algo: "cbpi" (continuous-weight BPI, the only algorithm of this family).
        output: None for a hidden layer, "sign" for a ±1 output unit (hard labels). An argmax
            output is not supported (see the module docstring).
        rho: PasP exponent ρ on (H, Ω) (default 1.0001 hidden, 0.9 output).  psi: damping ψ of
            the mean (0.8).  r: internal reinforcement (0).  init_std: ϵ > 0, the initial
            weight std is ϵ/√N.
        generator: torch.Generator for the initial fields.
        prior: "pasp" (default), "anchored", "field" (a fixed pair (H, Ω)) or "none"; see
            :meth:`set_prior`.
    """

    family = "gaussian"

    def __init__(self, in_features: int, out_features: int, algo: str = "cbpi",
                 output: str | None = None, rho: float | None = None, psi: float = PSI_DEFAULT,
                 r: float = 0.0, init_std: float = 1.0, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device=None, prior: str = "pasp"):
        check_size("in_features", in_features)
        check_size("out_features", out_features)
        if output == "argmax":
            raise ValueError("GaussianBPLinear cannot be an argmax output layer (no precision "
                             "message for the multi-class output); use a binary BPLinear output "
                             "layer above Gaussian hidden layers")
        if output == "sign" and out_features != 1:
            raise ValueError(f"a 'sign' output layer has one unit, got out_features={out_features}")
        if not (isinstance(init_std, (int, float)) and init_std > 0):
            raise ValueError(f"init_std must be > 0 for Gaussian weights (Ω = N/ϵ²), got {init_std!r}")
        super().__init__((out_features, in_features), algo, output, rho, psi, r, init_std, None,
                         generator, dtype, device, prior)
        self.in_features, self.out_features = in_features, out_features

    def _init_marginals(self, weight_shape, generator, factory):
        # Ω = N/ϵ², H = (√N/ϵ)·N(0, 1): m = H/Ω ~ N(0, ϵ²/N), σ = ϵ²/N (docs §4.7).
        n = math.prod(weight_shape[1:])
        field = (math.sqrt(n) / self.init_std) * torch.randn(weight_shape, generator=generator,
                                                             dtype=torch.float64)
        precision = torch.full(weight_shape, n / self.init_std ** 2, dtype=torch.float64)
        self.register_buffer("field", field.to(**factory))
        self.register_buffer("precision", precision.to(**factory))
        self.register_buffer("mag", (field / precision).to(**factory))
        self.register_buffer("mask", None)

    # The dense layer's shapes and description are BPLinear's.
    extra_repr = BPLinear.extra_repr
    config = BPLinear.config
    input_shape = BPLinear.input_shape
    output_shape = BPLinear.output_shape

    def _hyper_config(self) -> dict:
        config = super()._hyper_config()
        del config["density"]
        return config

    # ---- marginals and prior -------------------------------------------------------------

    @property
    def variance(self) -> Tensor:
        """σ = 1/Ω, [K, N] (derived)."""
        return 1.0 / self.precision

    @torch.no_grad()
    def set_marginals(self, field: Tensor, precision: Tensor, mag: Tensor | None = None) -> None:
        """Sets the weight marginals: field H, precision Ω > 0 and the mean m (default H/Ω),
        each [K, N]."""
        field, precision = torch.as_tensor(field), torch.as_tensor(precision)
        if not (precision >= MIN_PRECISION).all():
            raise ValueError(f"precision must be >= {MIN_PRECISION}")
        mag = field / precision if mag is None else torch.as_tensor(mag)
        for name, t in (("field", field), ("precision", precision), ("mag", mag)):
            if t.shape != self.field.shape:
                raise ValueError(f"{name} must have shape {list(self.field.shape)}, got {list(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite")
        self.field.copy_(field)
        self.precision.copy_(precision)
        self.mag.copy_(mag)

    def moments(self) -> list[Tensor]:
        """The moments a mixture of Gaussian marginals averages: m, m² and σ, each [K, N]; the
        mixture's variance is mean(σ) + mean(m²) − mean(m)²."""
        return [self.mag, self.mag * self.mag, self.variance]

    @torch.no_grad()
    def set_moments(self, moments: list[Tensor]) -> None:
        """Sets the marginals to the Gaussian with the mixture's mean m̄ and variance
        σ̄ = mean(σ) + [mean(m²) − m̄²]₊ (the bracket is a variance; rounding can make it
        slightly negative), its precision floored at MIN_PRECISION like every update's."""
        mean, mean_sq, variance = moments
        variance = variance + (mean_sq - mean * mean).clamp_min(0.0)
        precision = (1.0 / variance).clamp_min(MIN_PRECISION)
        self.set_marginals(mean * precision, precision, mean)

    def set_prior(self, prior) -> None:
        """The prior (H_prior, Ω_prior) of the updates: "pasp" (the current (H, Ω) at the start
        of each mini-batch, weighted by ρ), "anchored" (A + ρ·((H, Ω) − A) with the anchor pair
        A = the current (H, Ω), held fixed), a pair of tensors (field, precision) of the weights'
        shape (a fixed prior, weight 1), or None (no prior)."""
        if isinstance(prior, (tuple, list)):
            if len(prior) != 2 or not all(isinstance(t, Tensor) for t in prior):
                raise ValueError("a fixed Gaussian prior is a pair of tensors (field, precision)")
            field, precision = prior
            for name, t in (("field", field), ("precision", precision)):
                if t.shape != self.field.shape:
                    raise ValueError(f"a prior {name} must have shape {list(self.field.shape)}, got "
                                     f"{list(t.shape)}")
            self.prior = "field"
            self.prior_field = field.detach().to(self.field).clone()
            self.prior_precision = precision.detach().to(self.field).clone()
        elif isinstance(prior, str) and prior == "anchored":
            self.prior = "anchored"
            self.prior_field = self.field.detach().clone()
            self.prior_precision = self.precision.detach().clone()
        elif prior in ("pasp", None):
            self.prior = "pasp" if prior else "none"
            self.prior_field = self.prior_precision = None
        else:
            raise ValueError(f"prior must be 'pasp', 'anchored', a pair (field, precision) or None, "
                             f"got {prior!r}")

    def use_prior_kind(self, kind: str) -> None:
        super().use_prior_kind(kind)
        self.register_buffer("prior_precision", None if self.prior_field is None
                             else torch.zeros_like(self.precision))

    def weights(self) -> GaussianWeights:
        return GaussianWeights(self.field, self.mag, None, self.psi, self.precision)

    def check_state(self, name: str = "") -> None:
        """Raises unless the marginals are consistent: H and m finite, Ω finite and ≥ 1e-6."""
        name = name or type(self).__name__
        for what, t in (("field", self.field), ("mean", self.mag), ("precision", self.precision)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name}: the {what} holds NaN or infinite values")
        if not (self.precision >= MIN_PRECISION).all():
            raise ValueError(f"{name}: the precisions must be >= {MIN_PRECISION}")

    # ---- message passing -----------------------------------------------------------------

    def mp_begin(self, tau_max: int, pasp: bool = True) -> BatchState:
        self.algorithm.check_inner_iterations(self, tau_max)
        if not pasp or self.prior == "none":
            return BatchState(tau_max, 0.0, None)
        if self.prior == "field":
            return BatchState(tau_max, 1.0, self.prior_field, precision_prior=self.prior_precision)
        if self.prior == "anchored":
            # (H_prior, Ω_prior) = A + ρ·((H, Ω) − A) at the start of the batch, A the anchor pair
            return BatchState(tau_max, 1.0, torch.lerp(self.prior_field, self.field, self.rho),
                              precision_prior=torch.lerp(self.prior_precision, self.precision,
                                                         self.rho))
        # PasP (H_prior, Ω_prior) = (H, Ω) at the start of the batch: the kernel reads them
        # itself on the first inner iteration; later iterations need copies.
        if tau_max > 1:
            return BatchState(tau_max, self.rho, self.field.clone(),
                              precision_prior=self.precision.clone())
        return BatchState(tau_max, self.rho, None)

    def mp_update(self, st: BatchState, h_in: Tensor) -> Tensor:
        """The field / precision / damping update (docs §4.7) with the stacked weight messages
        h_in = (H_in, Ω_in), [2, K, N]. Returns δ = mean |Δm|."""
        return ops.gauss_field_update_(self.field, self.precision, self.mag, h_in[0], h_in[1],
                                       st.field_prior, st.precision_prior, st.rho, self.r,
                                       self.psi)

    # ---- predictions ---------------------------------------------------------------------

    def preactivation(self, x: Tensor) -> Tensor:
        """x [B, N] -> W x [B, K] with the point-wise weights W = m."""
        return x @ self.mag.T

    def bayes(self, x_hat: Tensor, delta: Tensor | None) -> tuple[Tensor, Tensor]:
        """[B, N] -> [B, K]: x̂' = erf(ω/√(2V)), Δ' = 1 − x̂', with ω, V through the Gaussian
        marginals (mean m, variance 1/Ω)."""
        omega, var, _ = ops.gauss_linear_fwd(x_hat, delta, self.mag, self.precision)
        x_out = torch.erf(omega * (2.0 * var).rsqrt())
        return x_out, 1.0 - x_out.square()
