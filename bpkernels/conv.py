r"""Message-passing convolutions: ``BPConv2d``.

A convolution is a dense layer with weight sharing (docs/algorithms.md §9). Weights
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

Downsampling is by stride, or by a max-pooling channel after the layer
(:class:`bpkernels.pool.BPMaxPool2d`, docs §9.1). ``algo="bp"`` runs at τ_max = 1, where BP
is BPI (§4.3); its τ_max > 1 cavity state (K×C·R_k×B·P per layer) is not supported and raises.

Two implementations, by variant:

* BPI (and BP at τ_max = 1): im2col. The input moments x̂, Δ are unfolded into patches, each
  (a, p) one row of an effective batch of B·P rows over C·R_k inputs; the dense operators of
  :mod:`bpkernels.ops` run unchanged on the [K, C·R_k] views of field, mag and sigma (the fused
  BPI kernel evaluates ĝ in registers, so the K×(C·R_k)×(B·P) cavity tensor never exists), and
  the per-row downward fields fold back onto the image (col2im, overlapping patches summed).
* MF and AMP need no cavity, only contractions (:class:`ConvMF`, :class:`ConvAMP`, the same
  algorithms on images instead of rows): ATen ``conv2d`` for ω and the V terms,
  ``conv2d_input`` (transposed convolution) for b, ``conv2d_weight`` for H_in, and the same for
  every AMP term; U, g, Γ and the field update are the elementwise operators. Measured per
  hidden-layer step (forward + backward + field update, float32, B = 128, 2 CPU threads,
  ``python benchmarks/bench_conv.py``, ``benchmarks/results/conv_step_cpu.json``), this takes
  0.3–0.4× the time of im2col + dense operators on 32→64 channel layers and 0.85× on a 1→32
  first layer, so im2col is kept for BPI only.

Point-wise and Bayesian predictions use ``conv2d`` for every variant (no patch matrix).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .algorithms import AMP, MF, AMPMemory, Algorithm, BatchState
from .layers import PSI_DEFAULT, BPLayer, register_layer
from .reference import VAR_EPS


def _pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair


@register_layer("conv2d")
class BPConv2d(BPLayer):
    """2-D convolution of ±1 weights with sign activations, trained by message passing.

    The same contract as :class:`bpkernels.layers.BPLinear` (buffers ``field``, ``mag`` and
    optional ``mask``, here of shape [out_channels, in_channels, kh, kw]; marginals, prior,
    hyper-parameters, defaults, the mp_* protocol, point-wise and Bayesian forward). Always a
    hidden layer: inputs [B, C, H, W] (images, or the up-fields of the layer below), up-fields
    [B, K, H_out, W_out], H_out = ⌊(H + 2·padding − kh)/stride⌋ + 1.

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
        prior: "pasp" (default), "anchored", "field" or "none" (see :meth:`BPLayer.set_prior`).
    """

    # MF and AMP run on ATen convolutions (faster than im2col, see the module docstring).
    IMAGE_ALGORITHMS: dict[type[Algorithm], type[Algorithm]] = {}

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 algo: str = "bpi", rho: float | None = None, psi: float = PSI_DEFAULT,
                 r: float = 0.0, init_std: float = 1.0, density: float | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device=None, input_size: int | Sequence[int] | None = None, prior: str = "pasp"):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                   for c in (in_channels, out_channels)):
            raise ValueError(f"channels must be positive ints, got {in_channels!r} -> {out_channels!r}")
        kernel_size, stride = _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1)
        padding = _pair(padding, "padding", 0)
        input_size = None if input_size is None else _pair(input_size, "input_size", 1)
        super().__init__((out_channels, in_channels, *kernel_size), algo, None, rho, psi, r,
                         init_std, density, generator, dtype, device, prior)
        image_algorithm = self.IMAGE_ALGORITHMS.get(type(self.algorithm))
        if image_algorithm is not None:
            self.algorithm = image_algorithm()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.input_size = input_size
        if input_size is not None:
            self.output_shape(self.input_shape)

    def extra_repr(self) -> str:
        size = f", input_size={self.input_size}" if self.input_size else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{size}, " + self._hyper_repr())

    def config(self) -> dict:
        return dict(type=self.kind, in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=list(self.kernel_size), stride=list(self.stride),
                    padding=list(self.padding), **self._hyper_config(),
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

    def _input_unrows(self, t: Tensor, st: BatchState) -> Tensor:
        # [B·P, C·R_k] -> [B, C, H, W] (col2im), overlapping patches summed
        batch, _, height, width = st.x_in.shape
        cols = t.view(batch, -1, t.shape[1]).transpose(1, 2)
        return F.fold(cols, (height, width), self.kernel_size, padding=self.padding, stride=self.stride)

    def _output_rows(self, t: Tensor) -> Tensor:
        # [B, K, H_out, W_out] -> [B·P, K]
        return t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])

    def _output_unrows(self, t: Tensor, st: BatchState) -> Tensor:
        # [B·P, K] -> [B, K, H_out, W_out]
        batch = st.x_in.shape[0]
        out_h, out_w = self.output_size(*st.x_in.shape[2:])
        return t.view(batch, out_h * out_w, -1).transpose(1, 2).reshape(batch, -1, out_h, out_w)

    # ---- contractions of the weight-sharing factor graph ---------------------------------

    def conv(self, x: Tensor, weight: Tensor) -> Tensor:
        """Σ_{c,r} weight_kcr x_{c,p+r,a}: [B, C, H, W] -> [B, K, H_out, W_out]."""
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding)

    def conv_input(self, weight: Tensor, out: Tensor, input_shape) -> Tensor:
        """Transposed convolution onto the input image, [B, K, H_out, W_out] -> [B, C, H, W]."""
        return torch.nn.grad.conv2d_input(input_shape, weight, out, stride=self.stride,
                                          padding=self.padding)

    def conv_weight(self, x: Tensor, out: Tensor) -> Tensor:
        """Σ_{a,p} out_kpa x_{c,p+r,a}: [B, C, H, W] × [B, K, H_out, W_out] -> [K, C, kh, kw]."""
        return torch.nn.grad.conv2d_weight(x, self.mag.shape, out, stride=self.stride,
                                           padding=self.padding)

    def weight_var(self) -> Tensor:
        """σ = (1 − m²)·mask, [K, C, kh, kw]."""
        return ops.bp_weight_var(self.mag, self.mask)

    # ---- predictions ---------------------------------------------------------------------

    def preactivation(self, x: Tensor) -> Tensor:
        """W ⋆ x with W = sign(m)·mask: [B, C, H, W] -> [B, K, H_out, W_out]."""
        return self.conv(x, torch.sign(self.mag))

    def bayes(self, x_hat: Tensor, delta: Tensor | None) -> tuple[Tensor, Tensor]:
        r"""Moment propagation through the weight marginals (docs §6): x̂' = erf(ω/√(2V)),
        Δ' = 1 − x̂'² with ω = conv(m, x̂), V = conv(σ, x̂²) + conv(m² + σ, Δ) + ε:
        [B, C, H, W] -> [B, K, H_out, W_out]."""
        sigma = self.weight_var()
        omega = self.conv(x_hat, self.mag)
        var = self.conv(x_hat.square(), sigma)
        if delta is not None:
            var = var + self.conv(delta, self.mag.square() + sigma)
        x_out = torch.erf(omega / (2.0 * (var + VAR_EPS)).sqrt())
        return x_out, 1.0 - x_out.square()


# ---- MF and AMP on images: x̂, Δ [B, C, H, W]; ω, V, g, Γ [B, K, H_out, W_out] -------------

def _image_moments(layer: BPConv2d, st: BatchState, sigma: Tensor) -> Tensor:
    """ω = conv(m, x̂), V = conv(σ, x̂²) + conv(m² + σ, Δ) (+ ε later); returns ω, sets st.var."""
    mag, x_hat, delta = layer.mag, st.x_hat, st.delta
    var = layer.conv(x_hat.square(), sigma)
    if delta is not None:
        var = var + layer.conv(delta, mag.square() + sigma)
    st.var = var
    return layer.conv(x_hat, mag)


class ConvMF(MF):
    """MF (docs §4.1, §9) by ATen convolutions: H_in = Σ_{p,a} g_kpa x̂_{c,p+r,a}, b = convᵀ(m, g)."""

    on_rows = False

    def forward(self, st, layer):
        return self._upfield(st, _image_moments(layer, st, layer.weight_var()))

    @staticmethod
    def _upfield(st: BatchState, omega: Tensor) -> Tensor:
        """Sets st.omega, adds ε to st.var; returns u = U(ω, √V)."""
        st.omega, st.var = omega, st.var + VAR_EPS
        return ops.bp_upfield(omega.flatten(1), st.var.flatten(1)).view_as(omega)

    def _output(self, st, b_top):
        return (t.view_as(st.omega) for t in ops.bp_output(b_top.flatten(1), st.omega.flatten(1),
                                                           st.var.flatten(1), False))

    def backward(self, st, b_top, layer, hard, compute_b):
        g, _ = self._output(st, b_top)
        h_in = layer.conv_weight(st.x_hat, g)
        b = layer.conv_input(layer.mag, g, st.x_in.shape) if compute_b else None
        return b, h_in


class ConvAMP(ConvMF):
    """AMP (docs §4.4, §9) by ATen convolutions: MF plus the self-reaction and Onsager terms
    per edge."""

    name = AMP.name

    def forward(self, st, layer):
        sigma = layer.weight_var()
        omega = _image_moments(layer, st, sigma)
        if st.memory is not None:
            # Onsager terms (docs §4.4): − g_old conv(σ, x̂ x̂_old) − g_old conv(m m_old, Δ)
            #                            + g_old² conv(σ m_old, x̂_old Δ)
            g_old, x_old, m_old = st.memory.g_old, st.memory.x_hat_old, st.memory.mag_old
            omega = omega - g_old * layer.conv(st.x_hat * x_old, sigma)
            if st.delta is not None:
                omega = (omega - g_old * layer.conv(st.delta, layer.mag * m_old)
                         + g_old.square() * layer.conv(x_old * st.delta, sigma * m_old))
        return self._upfield(st, omega)

    def backward(self, st, b_top, layer, hard, compute_b):
        x_hat, delta, mag = st.x_hat, st.delta, layer.mag
        g, gamma = self._output(st, b_top)
        # MF part, then the self-reaction: H_in += m ⊙ Σ Γ x̂²,  b += x̂ ⊙ convᵀ(m², Γ)
        h_in = layer.conv_weight(x_hat, g)
        b = layer.conv_input(mag, g, st.x_in.shape) if compute_b else None
        h_in = h_in + mag * layer.conv_weight(x_hat.square(), gamma)
        if b is not None:
            b = b + x_hat * layer.conv_input(mag.square(), gamma, st.x_in.shape)
        if st.memory is not None:
            # Onsager: H_in −= m_old ⊙ Σ g g_old Δ + m m_old ⊙ Σ g_old Γ Δ x̂,
            #          b −= x̂_old ⊙ convᵀ(σ, g g_old) + x̂ x̂_old ⊙ convᵀ(σ m, g_old Γ)
            g_old, x_old, m_old = st.memory.g_old, st.memory.x_hat_old, st.memory.mag_old
            if delta is not None:
                h_in = (h_in - m_old * layer.conv_weight(delta, g * g_old)
                        - mag * m_old * layer.conv_weight(delta * x_hat, g_old * gamma))
            if b is not None:
                sigma = layer.weight_var()
                b = (b - x_old * layer.conv_input(sigma, g * g_old, st.x_in.shape)
                     - x_hat * x_old * layer.conv_input(sigma * mag, g_old * gamma, st.x_in.shape))
        if st.tau_max > 1:
            st.memory = AMPMemory(g, x_hat, mag.clone())
        return b, h_in


BPConv2d.IMAGE_ALGORITHMS.update({MF: ConvMF, AMP: ConvAMP})
