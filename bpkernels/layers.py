r"""Drop-in layers of ±1 weights and sign activations, trained by message passing.

A layer keeps the marginals of its weights as buffers: the field H (``field``) and the damped
magnetisation m ≈ tanh H (``mag``), both [K, *fan_in] (K units), and an optional fixed 0/1
``mask`` (sparse layers). The variance σ = (1 − m²)·mask is derived from them where it is
used (inside the kernels), never stored. :meth:`BPLayer.set_marginals` sets a consistent
state; :meth:`BPLayer.set_prior` chooses the prior θ of the field update (docs §3):

* ``"pasp"`` (default): posterior-as-prior, θ = ρ·H with H the field at the start of each
  mini-batch;
* ``"anchored"``: posterior-as-prior tempered toward a fixed anchor field A instead of toward
  0, θ = A + ρ·(H − A); ``set_prior("anchored")`` takes A = the current posterior H (continual
  learning: the posterior of the tasks so far stays the prior of the new one, docs §6.1);
* a tensor F of the weights' shape: a fixed external field, θ = F (e.g. the posterior of an
  earlier task);
* ``None``: no prior, θ = 0.

``layer(x)`` is the point-wise layer with W = sign(m): sign activations for a hidden layer,
the preactivation W x for the output layer. Message passing goes through the mp_* protocol of
:class:`bpkernels.sequential.BPSequential`, with the algorithm object of
:mod:`bpkernels.algorithms` working on rows: a layer kind only maps its activations to rows
[R, N] and back (``_input_rows`` / ``_input_unrows`` / ``_output_rows`` /
``_output_unrows``). New layer kinds register themselves with :func:`register_layer` under
their config type.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import ops
from .algorithms import BatchState, Weights, lookup
from .pool import BPMaxPool2d

OUTPUTS = (None, "sign", "argmax")
PRIORS = ("pasp", "anchored", "field", "none")

# Paper defaults (docs §5.2): ρ = 1.0001 on hidden layers and 0.9 on the output layer, ψ = 0.8.
RHO_HIDDEN = 1.0001
RHO_OUTPUT = 0.9
PSI_DEFAULT = 0.8

# Tie rule of point-wise hidden activations: x ← sign(W x + 1e-10), so W x = 0 gives +1.
POINTWISE_TIE = 1e-10

LAYER_KINDS: dict[str, type["BPLayer"]] = {}


def register_layer(kind: str):
    """Class decorator: registers a layer class under the ``type`` of its config."""
    def register(cls):
        cls.kind = kind
        LAYER_KINDS[kind] = cls
        return cls
    return register


def layer_from_config(spec: dict, **factory) -> nn.Module:
    """A layer from its config dict (``layer.config()``), an nn.Flatten or a BPMaxPool2d."""
    spec = dict(spec)
    kind = spec.pop("type")
    if kind == "flatten":
        return nn.Flatten(**spec)
    if kind == BPMaxPool2d.kind:
        return BPMaxPool2d(**spec)
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer type {kind!r}; known: {sorted(LAYER_KINDS)}, "
                         f"{BPMaxPool2d.kind!r} and 'flatten'")
    return LAYER_KINDS[kind](**spec, **factory)


def check_hyper(name: str, value, low: float, high: float, text: str, include_low: bool = True,
                include_high: bool = True) -> float:
    """value as a float, checked to be a finite number in the range ``text``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in {text}, got {value!r}") from None
    inside = ((value >= low if include_low else value > low)
              and (value <= high if include_high else value < high))
    if not (math.isfinite(value) and inside):
        raise ValueError(f"{name} must be a finite number in {text}, got {value}")
    return value


def check_size(name: str, value) -> int:
    """A layer size: a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _matrix(t: Tensor | None) -> Tensor | None:
    """The [K, N] view of a weight-shaped tensor (shares its storage)."""
    return None if t is None else t.view(t.shape[0], -1)


class BPLayer(nn.Module):
    """Base of the message-passing layers: weight marginals, prior, hyper-parameters, the
    algorithm, and the mp_* protocol. Subclasses give the weight shape, the row maps and the
    point-wise and Bayesian forward.

    Args: see :class:`BPLinear`.
    """

    kind = ""
    family = "binary"  # the weight family; an algorithm updates one family (Algorithm.family)
    supports_cavity_state = False  # BP τ_max > 1 keeps a K×N×R state (dense layers only)

    def __init__(self, weight_shape: tuple[int, ...], algo: str, output: str | None,
                 rho: float | None, psi: float, r: float, init_std: float, density: float | None,
                 generator: torch.Generator | None, dtype: torch.dtype, device,
                 prior: str = "pasp"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        self.algorithm = lookup(algo, output)
        if self.algorithm.family != self.family:
            raise ValueError(f"algo {algo!r} updates {self.algorithm.family} weights; "
                             f"{type(self).__name__} has {self.family} weights")
        self.algo, self.output = algo, output
        rho = (RHO_OUTPUT if output else RHO_HIDDEN) if rho is None else rho
        self.rho = check_hyper("rho", rho, 0.0, math.inf, "[0, inf)")
        self.psi = check_hyper("psi", psi, 0.0, 1.0, "[0, 1]")
        self.r = check_hyper("r", r, 0.0, 1.0, "[0, 1)", include_high=False)
        self.init_std = check_hyper("init_std", init_std, 0.0, math.inf, "[0, inf)")
        self.density = None if density is None else check_hyper(
            "density", density, 0.0, 1.0, "(0, 1]", include_low=False)

        self._init_marginals(weight_shape, generator, dict(dtype=dtype, device=device))
        self.register_buffer("prior_field", None)
        self.use_prior_kind(prior)

    def _init_marginals(self, weight_shape: tuple[int, ...], generator: torch.Generator | None,
                        factory: dict) -> None:
        """Registers the weight buffers at their initial values (docs §5.1): H ~ ϵ·N(0, 1),
        mask ~ Bernoulli(density), m = tanh(H)·mask."""
        field = self.init_std * torch.randn(weight_shape, generator=generator, dtype=torch.float64)
        mask = None
        if self.density is not None:
            mask = (torch.rand(weight_shape, generator=generator, dtype=torch.float64) < self.density).double()
        mag = torch.tanh(field) * (1.0 if mask is None else mask)
        self.register_buffer("field", field.to(**factory))
        self.register_buffer("mag", mag.to(**factory))
        self.register_buffer("mask", None if mask is None else mask.to(**factory))

    # ---- marginals and prior -------------------------------------------------------------

    @torch.no_grad()
    def set_marginals(self, field: Tensor, mag: Tensor | None = None) -> None:
        """Sets the weight marginals: field H and magnetisation m (default tanh H), both of the
        weights' shape; masked weights get m = 0. σ follows from m."""
        field = torch.as_tensor(field)
        if field.shape != self.field.shape:
            raise ValueError(f"field must have shape {list(self.field.shape)}, got {list(field.shape)}")
        if mag is not None and torch.as_tensor(mag).shape != self.field.shape:
            raise ValueError(f"mag must have shape {list(self.field.shape)}, got {list(mag.shape)}")
        if not torch.isfinite(field).all():
            raise ValueError("field must be finite (an infinite field gives NaN updates)")
        mag = torch.tanh(field) if mag is None else torch.as_tensor(mag)
        if not (torch.isfinite(mag).all() and (mag.abs() <= 1).all()):
            raise ValueError("mag must be finite and lie in [-1, 1]")
        self.field.copy_(field)
        self.mag.copy_(mag if self.mask is None else mag.to(self.mag) * self.mask)

    def moments(self) -> list[Tensor]:
        """The weight moments that a mixture of marginals averages (:mod:`bpkernels.averaging`):
        for ±1 weights the mean m alone (E[w²] = 1), of the weights' shape."""
        return [self.mag]

    @torch.no_grad()
    def set_moments(self, moments: list[Tensor]) -> None:
        """Sets the marginals to those of the given mean moments: m = m̄ and H = atanh m̄ (m̄
        clipped one float step inside ±1, so that H stays finite)."""
        (mean,) = moments
        inside = 1.0 - torch.finfo(self.field.dtype).eps
        self.set_marginals(torch.atanh(mean.clamp(-inside, inside)), mean)

    def set_prior(self, prior: str | Tensor | None) -> None:
        """The prior θ of the field update: "pasp" (θ = ρ·H, the default), "anchored"
        (θ = A + ρ·(H − A) with the anchor A = the current H, held fixed), a tensor of the
        weights' shape (a fixed external field θ = F), or None (θ = 0)."""
        if isinstance(prior, Tensor):
            if prior.shape != self.field.shape:
                raise ValueError(f"a prior field must have shape {list(self.field.shape)}, got "
                                 f"{list(prior.shape)}")
            self.prior = "field"
            self.prior_field = prior.detach().to(self.field).clone()
        elif prior == "anchored":
            self.prior = "anchored"
            self.prior_field = self.field.detach().clone()
        elif prior in ("pasp", None):
            self.prior = "pasp" if prior else "none"
            self.prior_field = None
        else:
            raise ValueError(f"prior must be 'pasp', 'anchored', a field tensor or None, got {prior!r}")

    def use_prior_kind(self, kind: str) -> None:
        """Sets the kind of prior with zero placeholder buffers (the fixed field F or the
        anchor A), for a state that holds them to be loaded into."""
        self.prior = kind
        self.prior_field = torch.zeros_like(self.field) if kind in ("field", "anchored") else None

    def weights(self) -> Weights:
        """The [K, N] matrix views the algorithms work on."""
        return Weights(_matrix(self.field), _matrix(self.mag), _matrix(self.mask), self.psi)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # σ was a buffer in checkpoints before version 0.2; it is derived from m now.
        state_dict.pop(prefix + "sigma", None)
        has_mask = prefix + "mask" in state_dict
        if has_mask != (self.mask is not None):
            raise ValueError(
                f"{prefix or 'layer'}: the state {'has' if has_mask else 'has no'} mask but the "
                f"layer {'has none' if has_mask else 'is masked'}: build the layer with the "
                "density of the saved one (masked weights must stay masked)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.check_state(prefix)

    def check_state(self, name: str = "") -> None:
        """Raises unless the marginals are consistent: H finite, m in [-1, 1], m = 0 where
        masked."""
        name = name or type(self).__name__
        if not torch.isfinite(self.field).all():
            raise ValueError(f"{name}: the field holds NaN or infinite values")
        if not (torch.isfinite(self.mag).all() and (self.mag.abs() <= 1).all()):
            raise ValueError(f"{name}: the magnetisations must be finite and lie in [-1, 1]")
        if self.mask is not None and (self.mag[self.mask == 0] != 0).any():
            raise ValueError(f"{name}: masked weights have non-zero magnetisations")

    # ---- description ---------------------------------------------------------------------

    def _hyper_repr(self) -> str:
        text = f"algo={self.algo}, rho={self.rho}, psi={self.psi}, r={self.r}"
        text += f", density={self.density}" if self.density is not None else ""
        return text + (f", prior={self.prior}" if self.prior != "pasp" else "")

    def _hyper_config(self) -> dict:
        return dict(algo=self.algo, rho=self.rho, psi=self.psi, r=self.r, init_std=self.init_std,
                    density=self.density, prior=self.prior)

    # ---- row maps (identity here; BPConv2d: im2col / col2im) -----------------------------

    def _input_rows(self, t: Tensor | None) -> Tensor | None:
        """[B, *in_shape] -> [R, N]."""
        return t

    def _input_unrows(self, t: Tensor, st: BatchState) -> Tensor:
        """[R, N] -> [B, *in_shape]."""
        return t

    def _output_rows(self, t: Tensor) -> Tensor:
        """[B, *out_shape] -> [R, K]."""
        return t

    def _output_unrows(self, t: Tensor, st: BatchState) -> Tensor:
        """[R, K] -> [B, *out_shape]."""
        return t

    # ---- message passing (called by BPSequential.bp_step) --------------------------------

    def mp_begin(self, tau_max: int, pasp: bool = True) -> BatchState:
        """The state of a new mini-batch: the prior θ of its field updates and empty messages
        (H and m are never reset). ``pasp=False`` drops the prior (full-batch mode)."""
        self.algorithm.check_inner_iterations(self, tau_max)
        if not pasp or self.prior == "none":
            return BatchState(tau_max, 0.0, None)
        if self.prior == "field":
            return BatchState(tau_max, 1.0, _matrix(self.prior_field))
        if self.prior == "anchored":
            # θ = A + ρ·(H − A) with H at the start of the batch, A the anchor
            return BatchState(tau_max, 1.0, _matrix(torch.lerp(self.prior_field, self.field, self.rho)))
        # PasP θ = ρ·H with H at the start of the batch: the kernel reads H itself on the
        # first inner iteration; later iterations need a copy.
        return BatchState(tau_max, self.rho, _matrix(self.field.clone()) if tau_max > 1 else None)

    def mp_forward(self, st: BatchState, x_in: Tensor, first: bool) -> Tensor:
        """Forward sweep. x_in: the input batch (first layer) or the up-field u of the layer
        below, [B, *in_shape]. Returns this layer's up-field u [B, *out_shape]."""
        st.x_in, st.first = x_in, first
        x_hat, delta = self._input_moments(x_in, st.b, first)
        if not self.algorithm.on_rows:
            st.x_hat, st.delta = x_hat, delta
            return self.algorithm.forward(st, self)
        st.x_hat, st.delta = self._input_rows(x_hat), self._input_rows(delta)
        return self._output_unrows(self.algorithm.forward(st, self.weights()), st)

    @staticmethod
    def _input_moments(x_in: Tensor, b: Tensor | None, first: bool) -> tuple[Tensor, Tensor | None]:
        """Input means and variances [B, *in_shape]: the data and None (first layer), or
        x̂ = tanh(u + b), Δ = 1 − x̂² (hidden layer, b its own downward field)."""
        if first:
            return x_in, None
        x_hat, delta = ops.bp_linear_input(x_in.flatten(1), None if b is None else b.flatten(1))
        return x_hat.view_as(x_in), delta.view_as(x_in)

    def mp_backward(self, st: BatchState, b_top: Tensor) -> tuple[Tensor | None, Tensor]:
        """Backward sweep. b_top: [B, *out_shape] downward field of the layer above, ±1 labels
        [B, 1] for a sign output, int64 classes [B] for an argmax output. Returns this layer's
        downward field b [B, *in_shape] (None for the first layer) and the field message
        H_in [K, N]; the field update waits for :meth:`mp_update`."""
        hard, compute_b = self.output == "sign", not st.first
        if not self.algorithm.on_rows:
            b, h_in = self.algorithm.backward(st, b_top, self, hard, compute_b)
            return b, _matrix(h_in)
        st.b_top = self._output_rows(b_top)
        b, h_in = self.algorithm.backward(st, st.b_top, self.weights(), hard, compute_b)
        st.b_rows = b
        return (None if st.first else self._input_unrows(b, st)), h_in

    def mp_update(self, st: BatchState, h_in: Tensor) -> Tensor:
        """The field/reinforcement/damping update with the field message h_in [K, N] (docs
        §4.1 step 4, §4.5, §5.1), then the algorithm's own state. Returns δ = mean |Δm|."""
        w = self.weights()
        delta = ops.bp_field_update_(w.field, w.mag, h_in, st.field_prior, w.mask, st.rho, self.r,
                                     self.psi, damp_field=self.algorithm.damp_field)
        self.algorithm.after_update(st, w, self.output == "sign")
        return delta

    # ---- predictions ---------------------------------------------------------------------

    def preactivation(self, x: Tensor) -> Tensor:
        """Point-wise preactivation with W = sign(m)·mask (sign(0) = 0)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """The point-wise layer: sign(W x + 1e-10) for a hidden layer (ties give +1), the
        preactivation W x for an output layer."""
        z = self.preactivation(x)
        return z if self.output else torch.sign(z + POINTWISE_TIE)

    def bayes(self, x_hat: Tensor, delta: Tensor | None) -> tuple[Tensor, Tensor]:
        """Moment propagation through the weight marginals (docs §6)."""
        raise NotImplementedError


@register_layer("linear")
class BPLinear(BPLayer):
    """Dense layer of ±1 weights (fixed random sparsity optional) and sign activations.

    Args:
        in_features, out_features: N and K.
        algo: "bp" | "bpi" | "amp" | "mf" (an argmax output layer always runs the argmax
            update of docs §4.5).
        output: None for a hidden layer; "sign" for a ±1 output unit (hard labels); "argmax"
            for a multi-class output layer (integer labels).
        rho: PasP exponent ρ (default 1.0001 hidden, 0.9 output).  psi: damping ψ (0.8).
        r: internal reinforcement (0).  init_std: ϵ, std of the initial fields (1).
        density: keep each weight with this probability (a fixed random mask); None = dense.
        generator: torch.Generator for the initial fields and the mask.
        prior: "pasp" (default), "anchored", "field" (a fixed field) or "none"; see
            :meth:`set_prior`.
    """

    supports_cavity_state = True

    def __init__(self, in_features: int, out_features: int, algo: str = "bpi",
                 output: str | None = None, rho: float | None = None, psi: float = PSI_DEFAULT,
                 r: float = 0.0, init_std: float = 1.0, density: float | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device=None, prior: str = "pasp"):
        check_size("in_features", in_features)
        check_size("out_features", out_features)
        if output == "sign" and out_features != 1:
            raise ValueError(f"a 'sign' output layer has one unit, got out_features={out_features}")
        super().__init__((out_features, in_features), algo, output, rho, psi, r, init_std, density,
                         generator, dtype, device, prior)
        self.in_features, self.out_features = in_features, out_features

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"output={self.output}, " + self._hyper_repr())

    def config(self) -> dict:
        return dict(type=self.kind, in_features=self.in_features, out_features=self.out_features,
                    output=self.output, **self._hyper_config())

    @property
    def input_shape(self) -> tuple[int]:
        """Per-sample input shape (N,)."""
        return (self.in_features,)

    def output_shape(self, input_shape: tuple) -> tuple[int]:
        """Per-sample output shape (K,), checking a per-sample input shape (None: unknown size)."""
        if len(input_shape) != 1:
            raise ValueError(f"{self.__class__.__name__}({self.in_features} -> {self.out_features}) "
                             f"needs flat inputs [B, {self.in_features}], got per-sample shape "
                             f"{list(input_shape)}: put an nn.Flatten before it")
        if input_shape[0] is not None and input_shape[0] != self.in_features:
            raise ValueError(f"layer sizes do not chain: {input_shape[0]} -> {self.in_features}")
        return (self.out_features,)

    def preactivation(self, x: Tensor) -> Tensor:
        """x [B, N] -> W x [B, K], W = sign(m)."""
        return x @ torch.sign(self.mag).T

    def bayes(self, x_hat: Tensor, delta: Tensor | None) -> tuple[Tensor, Tensor]:
        """[B, N] -> [B, K]: x̂' = erf(ω/√(2V)), Δ' = 1 − x̂'²."""
        return ops.bp_bayes_fwd(x_hat, delta, self.mag, self.mask)
