r"""Drop-in layers trained by message passing instead of gradients.

``BPLinear`` is a dense layer of ±1 weights with sign activations whose weight marginals are
kept as fields H (``.field``) and magnetisations m = tanh H, damped (``.mag``), both [out, in]
buffers; ``BPConv2d`` (:mod:`bpkernels.conv`) is its convolutional sibling, both built on
``BPLayer``. ``BPSequential`` chains layers (and ``nn.Flatten``) and runs one posterior-as-prior
mini-batch update per :meth:`BPSequential.bp_step` (spec ALGORITHMS.md §3–§5):

1. prior θ = ρ·H of every layer (PasP);
2. reset of every downward message (b, BP cavity state, AMP memory), never H and m;
3. τ_max times: a forward sweep (moments ω, V and up-fields u, layer by layer) and a backward
   sweep (output function, downward fields b and the field/reinforcement/damping update).

``model(x)`` predicts point-wise with the signs of the magnetisations;
``model.predict(x, mode="bayes")`` propagates the moments of the factorised weight marginals
(spec §6). Both run under no_grad and never change the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ops

ALGOS = ("bp", "bpi", "amp", "mf")
OUTPUTS = (None, "sign", "argmax")

# Paper defaults (spec §5.2): ρ = 1.0001 on hidden layers and 0.9 on the output layer, ψ = 0.8.
RHO_HIDDEN = 1.0001
RHO_OUTPUT = 0.9
PSI_DEFAULT = 0.8


class BPLayer(nn.Module):
    """Base of the message-passing layers (``BPLinear``, :class:`bpkernels.conv.BPConv2d`).

    Holds the weight marginals as buffers ``field`` H, ``mag`` m (and ``mask``) of shape
    [K, *fan_in] (K output units; σ = (1 − m²)·mask is derived, :attr:`sigma`) and runs the mp_*
    protocol of :meth:`BPSequential.bp_step`. The operators see the weights as [K, N] matrices (N the
    fan-in) and the messages as an effective batch of rows, one factor per (row, unit): a
    subclass maps its activations to rows and back with four hooks, ``_input_rows`` /
    ``_input_unrows`` ([B, *in_shape] <-> [R, N]) and ``_output_rows`` / ``_output_unrows``
    ([B, *out_shape] <-> [R, K]). BPLinear has one row per sample (the identity), BPConv2d one
    per (sample, output position).
    """

    def __init__(self, weight_shape: tuple[int, ...], algo: str, output: str | None,
                 rho: float | None, psi: float, r: float, init_std: float, density: float | None,
                 generator: torch.Generator | None, dtype: torch.dtype, device):
        super().__init__()
        if algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
        if density is not None and not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.algo, self.output = algo, output
        self.rho = (RHO_OUTPUT if output else RHO_HIDDEN) if rho is None else float(rho)
        self.psi, self.r, self.init_std, self.density = float(psi), float(r), float(init_std), density

        field = init_std * torch.randn(weight_shape, generator=generator, dtype=torch.float64)
        if density is None:
            mask = None
        else:
            mask = (torch.rand(weight_shape, generator=generator, dtype=torch.float64) < density).double()
        mag = torch.tanh(field) * (1.0 if mask is None else mask)
        factory = dict(dtype=dtype, device=device)
        self.register_buffer("field", field.to(**factory))
        self.register_buffer("mag", mag.to(**factory))
        self.register_buffer("mask", None if mask is None else mask.to(**factory))

    @property
    def sigma(self) -> Tensor:
        """Weight variances σ = (1 − m²)·mask [K, *fan_in], derived from ``mag`` and ``mask``."""
        return ops.bp_weight_var(self.mag, self.mask)

    def _hyper_repr(self) -> str:
        text = f"rho={self.rho}, psi={self.psi}, r={self.r}"
        return text + (f", density={self.density}" if self.density is not None else "")

    def _hyper_config(self) -> dict:
        return dict(rho=self.rho, psi=self.psi, r=self.r, init_std=self.init_std,
                    density=self.density)

    @staticmethod
    def _matrix(t: Tensor | None) -> Tensor | None:
        """The [K, N] view of a weight-shaped buffer (shares its storage)."""
        return None if t is None else t.view(t.shape[0], -1)

    # ---- row maps (identity here; BPConv2d: im2col / col2im) ------------------------------

    def _input_rows(self, t: Tensor | None) -> Tensor | None:
        return t

    def _input_unrows(self, t: Tensor) -> Tensor:
        return t

    def _output_rows(self, t: Tensor) -> Tensor:
        return t

    def _output_unrows(self, t: Tensor) -> Tensor:
        return t

    # ---- message passing (called by BPSequential.bp_step) --------------------------------

    def mp_reset(self, batch_size: int, tau_max: int) -> None:
        """Resets the downward messages for a new mini-batch (never H and m)."""
        self.b = None  # own downward field [B, *in_shape] from the previous backward sweep
        self.field_prior = self.field.clone() if tau_max > 1 else None  # θ = ρ·H_prior
        self.iteration = 0
        self.g_old = self.x_hat_old = self.mag_old = None  # AMP memory of the last iteration
        self.mag_cav = self.b_cav = None  # BP cavity state [K, N, B]

    def mp_forward(self, x_in: Tensor, first: bool) -> Tensor:
        """Forward sweep. x_in is the input batch (first layer) or the up-field u of the layer
        below, [B, *in_shape]. Returns this layer's up-field u [B, *out_shape]."""
        self.iteration += 1
        self.x_in, self.first = x_in, first
        x_hat, delta = self._input_moments(x_in, first)
        self.x_hat, self.delta = self._input_rows(x_hat), self._input_rows(delta)  # [R, N]
        mag, mask = self._matrix(self.mag), self._matrix(self.mask)
        if self.algo == "amp" and self.g_old is not None:
            self.omega, self.var, u = ops.bp_linear_fwd_amp(
                self.x_hat, self.delta, mag, mask, self.g_old, self.x_hat_old, self.mag_old)
        else:
            self.omega, self.var, u = ops.bp_linear_fwd(self.x_hat, self.delta, mag, mask)
        if self.uses_bp_cavity and self.mag_cav is not None:
            # BP, iteration ≥ 2: cavity preactivation ω = Σ_i m̃ x̃ (V stays non-cavity, §4.3).
            self.omega = ops.bp_linear_omega_bp(x_in, self.b_cav, self.mag_cav)
            u = ops.bp_upfield(self.omega, self.var)
        return self._output_unrows(u)

    def _input_moments(self, x_in: Tensor, first: bool) -> tuple[Tensor, Tensor | None]:
        """Input means and variances [B, *in_shape]: the data and None (first layer), or
        x̂ = tanh(u + b), Δ = 1 − x̂² (hidden layer, b its own downward field)."""
        if first:
            return x_in, None
        b = None if self.b is None else self.b.flatten(1)
        x_hat, delta = ops.bp_linear_input(x_in.flatten(1), b)
        return x_hat.view_as(x_in), delta.view_as(x_in)

    def _update_field(self, h_in: Tensor) -> Tensor:
        """The field/reinforcement/damping update (spec §4.1 step 4, §4.5) on the [K, N] views,
        h_in [K, N]. Returns δ = mean |m_new − m_old|."""
        return ops.bp_field_update_(self._matrix(self.field), self._matrix(self.mag),
                                    h_in, self._matrix(self.field_prior),
                                    self._matrix(self.mask), self.rho, self.r, self.psi,
                                    damp_field=self.output == "argmax")

    @property
    def uses_bp_cavity(self) -> bool:
        return self.algo == "bp" and self.output != "argmax"

    def mp_backward(self, b_top: Tensor, tau_max: int) -> tuple[Tensor | None, Tensor]:
        """Backward sweep. b_top: [B, *out_shape] downward field of the layer above, ±1 labels
        [B, 1] for a sign output, int64 classes [B] for an argmax output. Returns (b, δ): this
        layer's downward field [B, *in_shape] (None for the first layer) and the monitor δ."""
        compute_b = not self.first
        hard = self.output == "sign"
        b_top = self._output_rows(b_top)
        mag, mask = self._matrix(self.mag), self._matrix(self.mask)
        if self.output == "argmax":
            g = ops.bp_argmax_output(self.omega, self.var, b_top)
            b, h_in = ops.bp_linear_bwd_mf(g, self.x_hat, mag, compute_b)
        elif self.algo == "mf":
            g, _ = ops.bp_output(b_top, self.omega, self.var, hard)
            b, h_in = ops.bp_linear_bwd_mf(g, self.x_hat, mag, compute_b)
        elif self.algo == "amp":
            g, gamma = ops.bp_output(b_top, self.omega, self.var, hard)
            b, h_in = ops.bp_linear_bwd_amp(g, gamma, self.x_hat, self.delta, mag, mask,
                                            self.g_old, self.x_hat_old, self.mag_old, compute_b)
            if tau_max > 1:
                self.g_old, self.x_hat_old, self.mag_old = g, self.x_hat, mag.clone()
        elif self.mag_cav is None:
            # BPI, and BP's first inner iteration (BP at τ_max = 1 is BPI, spec §4.3).
            b, h_in = ops.bp_linear_bwd_bpi(b_top, self.omega, self.var, self.x_hat, mag,
                                            hard, compute_b)
            if self.uses_bp_cavity and tau_max > 1:
                # Fresh cavity state m̃ = m, b̃ = 0, updated below after the field update.
                batch = self.x_in.shape[0]
                self.mag_cav = mag.unsqueeze(2).expand(-1, -1, batch).contiguous()
                self.b_cav = None if self.first else torch.zeros_like(self.mag_cav)
        else:
            b, h_in = ops.bp_linear_bwd_bp(b_top, self.omega, self.var, self.x_in, self.b_cav,
                                           self.mag_cav, hard, compute_b)
        delta = self._update_field(h_in)
        if self.mag_cav is not None:  # BPLinear only: [K, N] weights, rows = samples
            ops.bp_cavity_update_(self.mag_cav, self.b_cav, b_top, self.omega, self.var, self.x_in,
                                  None if self.first else b, self.field, self.mask, self.psi, hard)
        return (None if self.first else self._input_unrows(b)), delta

    def mp_clear(self) -> None:
        """Drops the per-batch messages (they hold batch-sized tensors)."""
        for name in ("b", "field_prior", "g_old", "x_hat_old", "mag_old", "mag_cav", "b_cav",
                     "x_in", "x_hat", "delta", "omega", "var"):
            self.__dict__.pop(name, None)


class BPLinear(BPLayer):
    """Dense layer of ±1 weights (fixed random sparsity optional) and sign activations.

    Args:
        in_features, out_features: N and K.
        algo: "bp" | "bpi" | "amp" | "mf" (the argmax output layer always uses the MF-style
            non-cavity update of spec §4.5).
        output: None for a hidden layer; "sign" for a ±1 output unit (hard labels); "argmax"
            for a multi-class output layer (integer labels).
        rho: PasP exponent ρ (default 1.0001 hidden, 0.9 output).  psi: damping ψ (0.8).
        r: internal reinforcement (0).  init_std: ϵ, std of the initial fields (1).
        density: keep each weight with this probability (a fixed random mask); None = dense.
        generator: torch.Generator for the initial fields and the mask.
    """

    def __init__(self, in_features: int, out_features: int, algo: str = "bpi",
                 output: str | None = None, rho: float | None = None, psi: float = PSI_DEFAULT,
                 r: float = 0.0, init_std: float = 1.0, density: float | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device=None):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if output == "sign" and out_features != 1:
            raise ValueError(f"a 'sign' output layer has one unit, got out_features={out_features}")
        super().__init__((out_features, in_features), algo, output, rho, psi, r, init_std, density,
                         generator, dtype, device)
        self.in_features, self.out_features = in_features, out_features

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"algo={self.algo}, output={self.output}, " + self._hyper_repr())

    def config(self) -> dict:
        return dict(type="linear", in_features=self.in_features, out_features=self.out_features,
                    algo=self.algo, output=self.output, **self._hyper_config())

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

    # ---- predictions ---------------------------------------------------------------------

    def pointwise(self, x: Tensor) -> Tensor:
        """Point-wise preactivation with W = sign(m)·mask (sign(0) = 0): x [B, N] -> [B, K]."""
        return x @ torch.sign(self.mag).T

    def bayes(self, x_hat: Tensor, delta: Tensor | None) -> tuple[Tensor, Tensor]:
        """Moment propagation through the weight marginals (spec §6): [B, N] -> [B, K]."""
        return ops.bp_bayes_fwd(x_hat, delta, self.mag, self.mask)


def _flatten_shape(flatten: nn.Flatten, shape: tuple) -> tuple:
    """Per-sample shape after an nn.Flatten (None: unknown size)."""
    full = (None, *shape)  # with the batch dimension
    start, end = flatten.start_dim % len(full), flatten.end_dim % len(full)
    merged = full[start:end + 1]
    size = None if None in merged else int(torch.Size(merged).numel())
    return (*full[1:start], size, *full[end + 1:])


class BPSequential(nn.Module):
    """A binary network of message-passing layers (``BPLinear``, ``BPConv2d``) and ``nn.Flatten``.

    The last layer must be a BPLinear output layer (``output="sign"`` or ``"argmax"``). Messages
    crossing an nn.Flatten are reshaped: the up-fields u flattened going up, the downward fields
    b unflattened going down. Inputs are [B, *in_shape] of the first message-passing layer
    after the leading nn.Flatten layers, if any: [B, N] for a BPLinear, images [B, C, H, W] for a
    BPConv2d, which also takes flat [B, C·H·W] inputs when built with ``input_size``. Layer
    shapes are checked when the network is built, as far as they are known (a first BPConv2d
    without ``input_size`` leaves the image size open until the first batch).
    """

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        for layer in self.layers:
            if not isinstance(layer, (BPLayer, nn.Flatten)):
                raise TypeError("BPSequential accepts BPLinear, BPConv2d and nn.Flatten, got "
                                f"{type(layer).__name__}")
            if isinstance(layer, nn.Flatten) and layer.start_dim == 0:
                raise ValueError("nn.Flatten must keep the batch dimension (start_dim >= 1)")
        bp_layers = self.bp_layers
        if not bp_layers:
            raise ValueError("BPSequential needs at least one BPLinear layer")
        if any(layer.output is not None for layer in bp_layers[:-1]):
            raise ValueError("only the last BPLinear layer may be an output layer")
        if bp_layers[-1].output is None:
            raise ValueError("the last BPLinear layer must have output='sign' or output='argmax'")
        if self.layers[-1] is not bp_layers[-1]:
            raise ValueError("the output layer must be the last layer")
        self._start = list(self.layers).index(bp_layers[0])  # modules before it prepare inputs
        self._chain_shapes(bp_layers[0].input_shape)
        self.reinforcement_calls = 0

    @property
    def bp_layers(self) -> list[BPLayer]:
        return [layer for layer in self.layers if isinstance(layer, BPLayer)]

    @property
    def body(self) -> list[nn.Module]:
        """The modules from the first message-passing layer on."""
        return list(self.layers)[self._start:]

    def _chain_shapes(self, shape: tuple) -> None:
        # Per-sample shapes through the body; every layer raises ValueError where they break.
        for layer in self.body:
            if isinstance(layer, BPLayer):
                shape = layer.output_shape(shape)
            else:
                shape = _flatten_shape(layer, shape)

    @property
    def num_classes(self) -> int:
        last = self.bp_layers[-1]
        return 2 if last.output == "sign" else last.out_features

    def config(self) -> list[dict]:
        return [layer.config() if isinstance(layer, BPLayer)
                else dict(type="flatten", start_dim=layer.start_dim, end_dim=layer.end_dim)
                for layer in self.layers]

    @classmethod
    def from_config(cls, config: list[dict], **factory) -> "BPSequential":
        from .conv import BPConv2d  # conv builds on this module

        kinds = {"linear": BPLinear, "conv2d": BPConv2d}
        layers = []
        for spec in config:
            spec = dict(spec)
            kind = spec.pop("type")
            if kind == "flatten":
                layers.append(nn.Flatten(**spec))
            else:
                layers.append(kinds[kind](**spec, **factory))
        return cls(*layers)

    # ---- inputs --------------------------------------------------------------------------

    def _prepare_x(self, x: Tensor) -> Tensor:
        first = self.bp_layers[0]
        for layer in list(self.layers)[:self._start]:
            x = layer(x)
        in_shape = first.input_shape
        flat_size = None if None in in_shape else int(torch.Size(in_shape).numel())
        if len(in_shape) > 1 and x.dim() == 2 and x.shape[1] == flat_size:
            x = x.reshape(x.shape[0], *in_shape)  # flat images into a conv-first network
        if x.dim() != 1 + len(in_shape) or any(n not in (None, m) for n, m in zip(in_shape, x.shape[1:])):
            dims = ", ".join("*" if n is None else str(n) for n in in_shape)
            flat = f" or [B, {flat_size}]" if len(in_shape) > 1 and flat_size else ""
            raise ValueError(f"input must have shape [B, {dims}]{flat} (after Flatten), got {list(x.shape)}")
        if None in in_shape:
            self._chain_shapes(tuple(x.shape[1:]))
        if x.shape[0] == 0:
            raise ValueError("the batch is empty")
        x = x.to(device=first.field.device, dtype=first.field.dtype).contiguous()
        if not torch.isfinite(x).all():
            raise ValueError("the input contains NaN or infinite values")
        return x

    def _prepare_y(self, y: Tensor, batch: int) -> Tensor:
        last = self.bp_layers[-1]
        if y.shape != (batch,):
            raise ValueError(f"labels must have shape [{batch}], got {list(y.shape)}")
        y = y.to(last.field.device)
        if last.output == "argmax":
            if y.is_floating_point() or y.dtype == torch.bool:
                raise ValueError(f"an argmax output layer needs integer class labels, got {y.dtype}")
            if y.min() < 0 or y.max() >= last.out_features:
                raise ValueError(f"class labels must lie in [0, {last.out_features}), "
                                 f"got range [{int(y.min())}, {int(y.max())}]")
            return y.long()
        y = y.to(last.field.dtype)
        if not ((y == 1) | (y == -1)).all():
            raise ValueError("a sign output layer needs labels ±1")
        return y.unsqueeze(1).contiguous()

    # ---- training ------------------------------------------------------------------------

    @torch.no_grad()
    def bp_step(self, x: Tensor, y: Tensor, tau_max: int = 1, pasp: bool = True,
                r_step: float = 0.0) -> float:
        """One mini-batch update by message passing (spec §3).

        Args:
            x: [B, ...] inputs (see the class docstring).  y: [B] labels (int64 classes for an
                argmax output, ±1 for a sign output).
            tau_max: inner message-passing iterations.
            pasp: posterior-as-prior θ = ρH; False is full-batch mode (θ = 0, ρ ignored).
            r_step: internal reinforcement schedule; after 10 inner iterations (counted across
                calls) every layer's r ← 1 − (1 − r)(1 − r_step).
        Returns:
            The convergence monitor δ of the last inner iteration (max over layers).
        """
        if tau_max < 1:
            raise ValueError(f"tau_max must be >= 1, got {tau_max}")
        x = self._prepare_x(x)
        labels = self._prepare_y(y, x.shape[0])
        layers, body, first = self.bp_layers, self.body, self.bp_layers[0]
        saved_rho = [layer.rho for layer in layers]
        if not pasp:
            for layer in layers:
                layer.rho = 0.0
        try:
            for layer in layers:
                layer.mp_reset(x.shape[0], tau_max)
            for _ in range(tau_max):
                signal, shapes = x, []  # shapes: what each nn.Flatten received
                for layer in body:
                    if isinstance(layer, BPLayer):
                        signal = layer.mp_forward(signal, first=layer is first)
                    else:  # u flattened going up
                        shapes.append(signal.shape)
                        signal = layer(signal)
                b_top = labels
                deltas = []
                for layer in reversed(body):
                    if isinstance(layer, BPLayer):
                        b_top, delta = layer.mp_backward(b_top, tau_max)
                        layer.b = b_top  # None for the first layer
                        deltas.append(delta)
                    else:  # b unflattened going down
                        b_top = b_top.reshape(shapes.pop())
                self._update_reinforcement(r_step)
            return float(torch.stack(deltas).max())
        finally:
            for layer, rho in zip(layers, saved_rho):
                layer.rho = rho
                layer.mp_clear()

    def _update_reinforcement(self, r_step: float) -> None:
        # r ← 1 − (1 − r)(1 − r_step) after the first 10 inner iterations (spec §5.1).
        self.reinforcement_calls += 1
        if r_step and self.reinforcement_calls > 10:
            for layer in self.bp_layers:
                layer.r = 1.0 - (1.0 - layer.r) * (1.0 - r_step)

    # ---- prediction ----------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Point-wise prediction: class indices [B] (argmax output) or ±1 [B] (sign output)."""
        return self.predict(x, mode="pointwise")

    @torch.no_grad()
    def predict(self, x: Tensor, mode: str = "pointwise", chunk: int = 8192) -> Tensor:
        """Predictions for a batch of any size, in chunks.

        mode="pointwise": W = sign(m), x ← sign(W x + 1e-10) through the hidden layers.
        mode="bayes": moment propagation through the weight marginals (spec §6).
        """
        if mode not in ("pointwise", "bayes"):
            raise ValueError(f"mode must be 'pointwise' or 'bayes', got {mode!r}")
        x = self._prepare_x(x)
        out = [self._predict_chunk(x[i:i + chunk], mode) for i in range(0, x.shape[0], chunk)]
        return torch.cat(out)

    def _predict_chunk(self, x: Tensor, mode: str) -> Tensor:
        body = self.body
        if mode == "bayes":
            x_hat, delta = x, None
            for layer in body:
                if isinstance(layer, BPLayer):
                    x_hat, delta = layer.bayes(x_hat, delta)
                else:
                    x_hat, delta = layer(x_hat), None if delta is None else layer(delta)
            z = x_hat
        else:
            for layer in body[:-1]:
                x = torch.sign(layer.pointwise(x) + 1e-10) if isinstance(layer, BPLayer) else layer(x)
            z = body[-1].pointwise(x)
        if body[-1].output == "argmax":
            return z.argmax(dim=1)
        return torch.where(z[:, 0] >= 0, 1.0, -1.0).to(z.dtype)

    @torch.no_grad()
    def error(self, x: Tensor, y: Tensor, mode: str = "pointwise") -> float:
        """Fraction of misclassified samples."""
        pred = self.predict(x, mode)
        return float((pred != y.to(pred.device, pred.dtype)).double().mean())


def per_layer(value, name: str, n_layers: int) -> list:
    """A hyper-parameter given as one value (or None) for every layer, or as one per layer."""
    if value is None or isinstance(value, (int, float)):
        return [value] * n_layers
    if len(value) != n_layers:
        raise ValueError(f"{name} needs one value per layer ({n_layers}), got {len(value)}")
    return list(value)


def mlp(sizes: list[int], algo: str = "bpi", output: str = "argmax", flatten: bool = False,
        rho: list[float] | float | None = None, psi: list[float] | float = PSI_DEFAULT,
        r: float = 0.0, init_std: float = 1.0, density: float | None = None, seed: int = 0,
        dtype: torch.dtype = torch.float32, device=None) -> BPSequential:
    """A BPSequential MLP with layer sizes [N0, N1, ..., K] and paper defaults.

    rho / psi: one value for every layer or one per layer (None: 1.0001 hidden, 0.9 output).
    """
    n_layers = len(sizes) - 1
    if n_layers < 1:
        raise ValueError("sizes needs at least an input and an output size")

    rhos, psis = per_layer(rho, "rho", n_layers), per_layer(psi, "psi", n_layers)
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == n_layers - 1
        layers.append(BPLinear(n_in, n_out, algo=algo, output=output if last else None, rho=rhos[i],
                               psi=psis[i], r=r, init_std=init_std, density=density, generator=gen,
                               dtype=dtype, device=device))
    return BPSequential(*layers)
