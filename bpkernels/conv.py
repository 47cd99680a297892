r"""Message-passing convolutions: ``BPConv2d``, and ``build_arch`` for networks from spec strings.

A convolution is a dense layer with weight sharing (spec ALGORITHMS.md §9). Weights
:math:`W_{kcr}` (out channel k, in channel c, kernel offset r), one factor per (sample a, output
position p, out channel k) with preactivation :math:`z_{kpa} = \sum_{c,r} W_{kcr}\,x_{c,p+r,a}`.
Every factor is a dense-layer factor over its C·R_k inputs (R_k = kh·kw), so the updates of §4
hold edge by edge; summed:

* forward: :math:`\omega = \mathrm{conv}(m, \hat x)`,
  :math:`V = \mathrm{conv}(\sigma, \hat x^2) + \mathrm{conv}(m^2+\sigma, \Delta) + \varepsilon`,
  :math:`u = U(\omega, \sqrt V)` per (k, p, a);
* backward: b sums the messages of every (k, p, r) with p + r = q into input pixel q (the
  transposed convolution), :math:`H_{\mathrm{in},kcr}` sums over all B·P factors of its weight
  (the weight-gradient correlation), e.g. MF :math:`b = \mathrm{conv}^\top(m, g)`,
  :math:`H_{\mathrm{in},kcr} = \sum_{p,a} g_{kpa}\hat x_{c,p+r,a}`; AMP adds the self-reaction and
  Onsager terms of §4.4 per edge, e.g. :math:`b \mathrel{+}= \hat x\odot\mathrm{conv}^\top(m^2, \Gamma)`;
* BPI: :math:`\hat g_{kcrpa} = g(b^{top}_{kpa},\ \omega_{kpa} - m_{kcr}\hat x_{c,p+r,a},\ s_{kpa})`,
  reduced into b and H_in the same way;
* zero padding: padded pixels are deterministic zeros (x̂ = Δ = 0) and contribute nothing;
* the field/reinforcement/damping update is unchanged per weight (H_in now sums B·P terms, so
  conv layers polarise faster than dense ones; ρ may need retuning).

Downsampling is by stride only (no pooling channel). ``algo="bp"`` runs at τ_max = 1, where BP
is BPI (§4.3); its τ_max > 1 cavity state (K×C·R_k×B·P per layer) is not supported and raises.

Two implementations, by variant:

* BPI (and BP at τ_max = 1): im2col. The input moments x̂, Δ are unfolded into patches, each
  (a, p) one row of an effective batch of B·P rows over C·R_k inputs; the dense operators of
  :mod:`bpkernels.ops` run unchanged on the [K, C·R_k] views of field, mag and mask (the fused
  BPI kernel evaluates ĝ in registers, so the K×(C·R_k)×(B·P) cavity tensor never exists), and
  the per-row downward fields fold back onto the image (col2im, overlapping patches summed).
* MF and AMP need no cavity, only contractions: ATen ``conv2d`` for ω and the V terms,
  ``conv2d_input`` (transposed convolution) for b, ``conv2d_weight`` for H_in, and the same for
  every AMP term; U, g, Γ and the field update are the elementwise operators. Measured per
  hidden-layer step (forward + backward + field update, float32, B = 128, 2 CPU threads,
  ``python benchmarks/bench_conv.py``, ``benchmarks/results/conv_step_cpu.json``), this takes
  0.3–0.4× the time of im2col + dense operators on 32→64 channel layers and 0.85× on a 1→32
  first layer, so im2col is kept for BPI only.

Point-wise and Bayesian predictions use ``conv2d`` for every variant (no patch matrix).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .nn import PSI_DEFAULT, BPLayer, BPLinear, BPSequential, per_layer
from .reference import VAR_EPS


def _pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair


class BPConv2d(BPLayer):
    """2-D convolution of ±1 weights with sign activations, trained by message passing.

    The same contract as :class:`bpkernels.nn.BPLinear` (buffers ``field``, ``mag`` and
    optional ``mask``, here of shape [out_channels, in_channels, kh, kw]; hyper-parameters,
    defaults, the mp_* protocol of ``BPSequential.bp_step``, point-wise and Bayesian forward).
    Always a hidden layer: inputs [B, C, H, W] (images, or the up-fields of the layer below),
    up-fields [B, K, H_out, W_out], H_out = ⌊(H + 2·padding − kh)/stride⌋ + 1.

    Args:
        in_channels, out_channels: C and K.
        kernel_size, stride, padding: ints or (h, w) pairs; zero padding.
        algo: "bp" (τ_max = 1 only) | "bpi" | "amp" | "mf".
        rho: PasP exponent ρ (default 1.0001).  psi: damping ψ (0.8).  r: reinforcement (0).
        init_std: ϵ, std of the initial fields (1).  density: fixed random mask, None = dense.
        generator: torch.Generator for the initial fields and the mask.
        input_size: (H, W) of the input images, optional. It lets BPSequential check every
            layer shape when the network is built and, on a first layer, accept flat inputs
            [B, C·H·W] (as the datasets hold them).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 algo: str = "bpi", rho: float | None = None, psi: float = PSI_DEFAULT,
                 r: float = 0.0, init_std: float = 1.0, density: float | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device=None, input_size: int | Sequence[int] | None = None):
        if not (isinstance(in_channels, int) and isinstance(out_channels, int)
                and in_channels >= 1 and out_channels >= 1):
            raise ValueError(f"channels must be positive ints, got {in_channels!r} -> {out_channels!r}")
        kernel_size, stride = _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1)
        padding = _pair(padding, "padding", 0)
        input_size = None if input_size is None else _pair(input_size, "input_size", 1)
        super().__init__((out_channels, in_channels, *kernel_size), algo, None, rho, psi, r,
                         init_std, density, generator, dtype, device)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.input_size = input_size
        if input_size is not None:
            self.output_shape(self.input_shape)

    def extra_repr(self) -> str:
        size = f", input_size={self.input_size}" if self.input_size else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{size}, algo={self.algo}, "
                + self._hyper_repr())

    def config(self) -> dict:
        return dict(type="conv2d", in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=list(self.stride),
                    padding=list(self.padding), algo=self.algo, **self._hyper_config(),
                    input_size=None if self.input_size is None else list(self.input_size))

    # ---- shapes --------------------------------------------------------------------------

    @property
    def input_shape(self) -> tuple:
        """Per-sample input shape (C, H, W); H, W are None without ``input_size``."""
        return (self.in_channels, *(self.input_size or (None, None)))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1

    def output_shape(self, input_shape: tuple) -> tuple:
        """Per-sample output shape (K, H_out, W_out), checking a per-sample input shape (None:
        unknown size)."""
        name = f"BPConv2d({self.in_channels} -> {self.out_channels})"
        if len(input_shape) != 3:
            raise ValueError(f"{name} needs images [B, {self.in_channels}, H, W], got per-sample "
                             f"shape {list(input_shape)}")
        channels, *size = input_shape
        if channels is not None and channels != self.in_channels:
            raise ValueError(f"layer sizes do not chain: {channels} channels -> {name}")
        if None in size:
            return (self.out_channels, None, None)
        if self.input_size is not None and tuple(size) != self.input_size:
            raise ValueError(f"{name} was built for {list(self.input_size)} images, got {size}")
        out = self.output_size(*size)
        if min(out) < 1:
            raise ValueError(f"{name}: a {size[0]}×{size[1]} image is smaller than the kernel "
                             f"{self.kernel_size[0]}×{self.kernel_size[1]} (padding {self.padding})")
        return (self.out_channels, *out)

    # ---- row maps: one row per (sample, output position) ---------------------------------

    def _input_rows(self, t: Tensor | None) -> Tensor | None:
        # [B, C, H, W] -> patches [B·P, C·R_k] (im2col); padded pixels are zeros
        if t is None:
            return None
        cols = F.unfold(t, self.kernel_size, padding=self.padding, stride=self.stride)  # [B, C·R_k, P]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def _input_unrows(self, t: Tensor) -> Tensor:
        # [B·P, C·R_k] -> [B, C, H, W] (col2im), overlapping patches summed
        batch, _, height, width = self.x_in.shape
        cols = t.view(batch, -1, t.shape[1]).transpose(1, 2)
        return F.fold(cols, (height, width), self.kernel_size, padding=self.padding, stride=self.stride)

    def _output_rows(self, t: Tensor) -> Tensor:
        # [B, K, H_out, W_out] -> [B·P, K]
        return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])

    def _output_unrows(self, t: Tensor) -> Tensor:
        # [B·P, K] -> [B, K, H_out, W_out]
        batch = self.x_in.shape[0]
        out_h, out_w = self.output_size(*self.x_in.shape[2:])
        return t.view(batch, out_h * out_w, -1).transpose(1, 2).reshape(batch, -1, out_h, out_w)

    # ---- message passing: BPI and BP through the rows (BPLayer), MF and AMP by ATen convs ---

    def mp_reset(self, batch_size: int, tau_max: int) -> None:
        if self.algo == "bp" and tau_max > 1:
            raise NotImplementedError(
                "BPConv2d runs algo='bp' only at tau_max=1, where BP is BPI (spec §4.3); its "
                "tau_max > 1 cavity state would be K×(C·kh·kw)×(B·P) per layer. Use algo 'bpi', "
                "'amp' or 'mf' for more inner iterations.")
        super().mp_reset(batch_size, tau_max)

    def mp_forward(self, x_in: Tensor, first: bool) -> Tensor:
        if self.algo not in ("mf", "amp"):
            return super().mp_forward(x_in, first)
        self.x_in, self.first = x_in, first
        self.x_hat, self.delta = x_hat, delta = self._input_moments(x_in, first)  # [B, C, H, W]
        mag, sigma = self.mag, self.sigma
        # ω = conv(m, x̂), V = conv(σ, x̂²) + conv(m² + σ, Δ) + ε   [B, K, H_out, W_out]
        omega = self._conv(x_hat, mag)
        var = self._conv(x_hat.square(), sigma)
        if delta is not None:
            var = var + self._conv(delta, mag.square() + sigma)
        if self.g_old is not None:
            # AMP Onsager terms (§4.4): − g_old conv(σ, x̂ x̂_old) − g_old conv(m m_old, Δ)
            #                           + g_old² conv(σ m_old, x̂_old Δ)
            g_old, x_old, m_old = self.g_old, self.x_hat_old, self.mag_old
            omega = omega - g_old * self._conv(x_hat * x_old, sigma)
            if delta is not None:
                omega = (omega - g_old * self._conv(delta, mag * m_old)
                         + g_old.square() * self._conv(x_old * delta, sigma * m_old))
        self.omega, self.var = omega, var + VAR_EPS
        return ops.bp_upfield(omega.flatten(1), self.var.flatten(1)).view_as(omega)

    def mp_backward(self, b_top: Tensor, tau_max: int) -> tuple[Tensor | None, Tensor]:
        if self.algo not in ("mf", "amp"):
            return super().mp_backward(b_top, tau_max)
        omega, x_hat, delta, mag, sigma = self.omega, self.x_hat, self.delta, self.mag, self.sigma
        g, gamma = (t.view_as(omega) for t in ops.bp_output(b_top.flatten(1), omega.flatten(1),
                                                           self.var.flatten(1), False))
        # MF: H_in = Σ_{p,a} g_kpa x̂_{c,p+r,a},  b = convᵀ(m, g)
        h_in = self._conv_weight(x_hat, g)
        b = None if self.first else self._conv_input(mag, g)
        if self.algo == "amp":
            # self-reaction: H_in += m ⊙ Σ Γ x̂²,  b += x̂ ⊙ convᵀ(m², Γ)
            h_in = h_in + mag * self._conv_weight(x_hat.square(), gamma)
            if b is not None:
                b = b + x_hat * self._conv_input(mag.square(), gamma)
            if self.g_old is not None:
                # Onsager: H_in −= m_old ⊙ Σ g g_old Δ + m m_old ⊙ Σ g_old Γ Δ x̂,
                #          b −= x̂_old ⊙ convᵀ(σ, g g_old) + x̂ x̂_old ⊙ convᵀ(σ m, g_old Γ)
                g_old, x_old, m_old = self.g_old, self.x_hat_old, self.mag_old
                if delta is not None:
                    h_in = (h_in - m_old * self._conv_weight(delta, g * g_old)
                            - mag * m_old * self._conv_weight(delta * x_hat, g_old * gamma))
                if b is not None:
                    b = (b - x_old * self._conv_input(sigma, g * g_old)
                         - x_hat * x_old * self._conv_input(sigma * mag, g_old * gamma))
            if tau_max > 1:
                self.g_old, self.x_hat_old, self.mag_old = g, x_hat, mag.clone()
        return b, self._update_field(self._matrix(h_in))

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding)

    def _conv_input(self, weight: Tensor, out: Tensor) -> Tensor:
        # transposed convolution onto the input image, [B, K, H_out, W_out] -> [B, C, H, W]
        return torch.nn.grad.conv2d_input(self.x_in.shape, weight, out, stride=self.stride,
                                          padding=self.padding)

    def _conv_weight(self, x: Tensor, out: Tensor) -> Tensor:
        # Σ_{a,p} out_kpa x_{c,p+r,a}, [B, C, H, W] × [B, K, H_out, W_out] -> [K, C, kh, kw]
        return torch.nn.grad.conv2d_weight(x, self.mag.shape, out, stride=self.stride,
                                           padding=self.padding)

    # ---- predictions ---------------------------------------------------------------------

    def pointwise(self, x: Tensor) -> Tensor:
        """Point-wise preactivation with W = sign(m)·mask: [B, C, H, W] -> [B, K, H_out, W_out]."""
        return self._conv(x, torch.sign(self.mag))

    def bayes(self, x_hat: Tensor, delta: Tensor | None) -> tuple[Tensor, Tensor]:
        r"""Moment propagation through the weight marginals (spec §6):
        :math:`\hat x' = \mathrm{erf}(\omega/\sqrt{2V})`, :math:`\Delta' = 1 - \hat x'^2` with
        ω = conv(m, x̂), V = conv(σ, x̂²) + conv(m² + σ, Δ) + ε:
        [B, C, H, W] -> [B, K, H_out, W_out]."""
        omega, sigma = self._conv(x_hat, self.mag), self.sigma
        var = self._conv(x_hat.square(), sigma)
        if delta is not None:
            var = var + self._conv(delta, self.mag.square() + sigma)
        x_out = torch.erf(omega / (2.0 * (var + VAR_EPS)).sqrt())
        return x_out, 1.0 - x_out.square()


# ---- architectures from spec strings ------------------------------------------------------

_TOKEN = re.compile(r"conv(?P<k>\d+)k(?P<ks>\d+)(?:s(?P<s>\d+))?(?:p(?P<p>\d+))?"
                    r"|flatten|dense(?P<n>\d+)")


@dataclass(frozen=True)
class LayerSpec:
    """One weight layer of an architecture string: ``kind`` "conv" (weights [K, C, k, k]) or
    "dense" (weights [N, D]), with the per-sample shapes it maps, ``in_shape`` -> ``out_shape``
    ((C, H, W) or (D,)). ``flatten_before``: the layer takes the flattened output of the one
    below."""

    kind: str
    weight_shape: tuple[int, ...]
    stride: int
    padding: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    flatten_before: bool


def parse_arch(spec: str, num_classes: int = 10,
               input_shape: Sequence[int] = (1, 28, 28)) -> list[LayerSpec]:
    """The weight layers of an architecture string (grammar: :func:`build_arch`), shapes
    checked. One parser for the message-passing nets and the gradient baselines."""
    tokens = spec.strip().lower().split("-")
    matches = [_TOKEN.fullmatch(t) for t in tokens]
    if not tokens or None in matches:
        bad = [t for t, m in zip(tokens, matches) if m is None]
        raise ValueError(f"bad architecture spec {spec!r}: cannot parse {bad}; expected tokens "
                         "conv<K>k<k>[s<s>][p<p>], flatten, dense<N> joined by '-'")
    if not tokens[-1].startswith("dense"):
        raise ValueError(f"architecture {spec!r} must end with the output layer dense<N>")
    n_out = 1 if num_classes == 2 else num_classes
    if int(matches[-1]["n"]) != n_out:
        raise ValueError(f"architecture {spec!r} must end with dense{n_out} for {num_classes} classes")
    shape, flatten, layers = tuple(input_shape), False, []
    for token, match in zip(tokens, matches):
        if token == "flatten" or (token.startswith("dense") and len(shape) > 1):
            shape, flatten = (math.prod(shape),), True
            if token == "flatten":
                continue
        if token.startswith("conv"):
            if len(shape) != 3:
                raise ValueError(f"architecture {spec!r}: {token} needs images, got flat inputs")
            k, ks = int(match["k"]), int(match["ks"])
            s, p = int(match["s"] or 1), int(match["p"] or 0)
            out = tuple((n + 2 * p - ks) // s + 1 for n in shape[1:])
            if min(out) < 1:
                raise ValueError(f"architecture {spec!r}: {token} does not fit a "
                                 f"{shape[1]}×{shape[2]} image")
            layers.append(LayerSpec("conv", (k, shape[0], ks, ks), s, p, shape, (k, *out), flatten))
        else:
            n = int(match["n"])
            layers.append(LayerSpec("dense", (n, shape[0]), 1, 0, shape, (n,), flatten))
        shape, flatten = layers[-1].out_shape, False
    return layers


def build_arch(spec: str, algo: str = "bpi", num_classes: int = 10,
               input_shape: Sequence[int] = (1, 28, 28), rho: Sequence[float] | float | None = None,
               psi: Sequence[float] | float = PSI_DEFAULT, r: float = 0.0, init_std: float = 1.0,
               density: float | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
               device=None) -> BPSequential:
    """A BPSequential from an architecture string, layers separated by "-":

    * ``conv<K>k<k>[s<s>][p<p>]``: BPConv2d with K out channels, a k×k kernel, stride s
      (default 1) and zero padding p (default 0), e.g. ``conv32k3s2p1``;
    * ``flatten``: nn.Flatten (optional: inserted before the first dense layer after a conv);
    * ``dense<N>``: BPLinear with N units. The last layer must be dense, the output layer:
      ``dense<num_classes>`` (argmax), or ``dense1`` for num_classes = 2 (one sign unit).

    Example: ``"conv32k3s2p1-conv64k3s2p1-flatten-dense10"`` on Fashion-MNIST: 1×28×28 ->
    32×14×14 -> 64×7×7 -> 3136 -> 10. A dense-first network gets a leading nn.Flatten.

    Args:
        spec: the string above.  algo: message-passing variant of every layer.
        num_classes: classes of the task (2: sign output with labels ±1).
        input_shape: per-sample input (C, H, W); flat [B, C·H·W] inputs are accepted too.
        rho, psi: one value for every layer or one per message-passing layer (rho None: 1.0001
            hidden, 0.9 output).  r, init_std, density: as BPLinear, for every layer.
        seed: seed of the initial fields and masks.
    """
    specs = parse_arch(spec, num_classes, input_shape)
    output = "sign" if num_classes == 2 else "argmax"
    n_bp = len(specs)

    rhos, psis = per_layer(rho, "rho", n_bp), per_layer(psi, "psi", n_bp)
    gen = torch.Generator().manual_seed(seed)
    common = dict(algo=algo, r=r, init_std=init_std, density=density, generator=gen, dtype=dtype,
                  device=device)
    layers: list[nn.Module] = []
    for i, layer_spec in enumerate(specs):
        if layer_spec.flatten_before:
            layers.append(nn.Flatten())
        hyper = dict(rho=rhos[i], psi=psis[i], **common)
        if layer_spec.kind == "conv":
            k, c, ks, _ = layer_spec.weight_shape
            layers.append(BPConv2d(c, k, ks, stride=layer_spec.stride, padding=layer_spec.padding,
                                   input_size=layer_spec.in_shape[1:], **hyper))
        else:
            n, d = layer_spec.weight_shape
            layers.append(BPLinear(d, n, output=output if i == n_bp - 1 else None, **hyper))
    return BPSequential(*layers)
