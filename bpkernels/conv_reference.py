r"""Pure-PyTorch twin of :class:`bpkernels.conv.BPConv2d` on the explicit factor graph.

No im2col here: :func:`conv_graph` lists the edges of the weight-sharing factor graph one by one
(loops over output positions, input channels and kernel offsets), and every message of spec
§4 is evaluated per edge, then summed into its factor (ω, V), its input pixel (b) or its
weight (H_in) with ``index_add_``. Padded inputs are constant zeros, edges to them carry
x̂ = Δ = 0. For small sizes only: it stores [B, K, E] per-edge tensors, E = P·C·kh·kw.

Factor (a, k, p): sample a, out channel k, output position p = i·W_out + j. Its edges e, one per
(c, ki, kj): weight j_e = (c·kh + ki)·kw + kj of row k, input pixel q_e = (c·H + y)·W + x with
y = i·sh + ki − ph, x = j·sw + kj − pw (or padding when outside the image).

Shapes: images x̂, Δ, u, b [B, C, H, W]; factor quantities ω, V, g, b_top [B, K, H_out, W_out];
weights [K, C, kh, kw].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from . import reference
from .conv import BPConv2d


@dataclass(frozen=True)
class ConvGraph:
    """Edges of one (sample, out channel) slice of the factor graph; the same for every a, k."""

    in_shape: tuple[int, int, int]  # (C, H, W)
    out_size: tuple[int, int]  # (H_out, W_out)
    edge_p: Tensor  # [E] output position of the edge's factor
    edge_w: Tensor  # [E] weight index in [0, C·kh·kw)
    edge_q: Tensor  # [E] input pixel index in [0, C·H·W); C·H·W marks a padded (zero) input

    @property
    def n_pixels(self) -> int:
        c, h, w = self.in_shape
        return c * h * w

    @property
    def n_positions(self) -> int:
        return self.out_size[0] * self.out_size[1]


@functools.lru_cache(maxsize=64)
def conv_graph(in_shape: tuple[int, int, int], kernel_size: tuple[int, int],
               stride: tuple[int, int], padding: tuple[int, int]) -> ConvGraph:
    """Builds the edge lists by enumeration."""
    c_in, height, width = in_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    pad = c_in * height * width
    edges = []
    for i in range(out_h):
        for j in range(out_w):
            for c in range(c_in):
                for ki in range(kh):
                    for kj in range(kw):
                        y, x = i * sh + ki - ph, j * sw + kj - pw
                        inside = 0 <= y < height and 0 <= x < width
                        edges.append((i * out_w + j, (c * kh + ki) * kw + kj,
                                      (c * height + y) * width + x if inside else pad))
    p, w, q = torch.tensor(edges, dtype=torch.long).T
    return ConvGraph(in_shape, (out_h, out_w), p, w, q)


def graph_of(layer: BPConv2d, image_shape) -> ConvGraph:
    return conv_graph(tuple(image_shape), layer.kernel_size, layer.stride, layer.padding)


# ---- gathers (variables -> edges) and sums (edges -> factors, pixels, weights) -----------

def edge_inputs(graph: ConvGraph, t: Tensor | None) -> Tensor:
    """Per-edge value of an image quantity [B, C, H, W] -> [B, 1, E] (0 on padding; None -> 0)."""
    if t is None:
        return 0.0
    flat = torch.cat([t.flatten(1), t.new_zeros(t.shape[0], 1)], dim=1)
    return flat[:, graph.edge_q].unsqueeze(1)


def edge_weights(graph: ConvGraph, t: Tensor) -> Tensor:
    """Per-edge value of a weight quantity [K, C, kh, kw] -> [1, K, E]."""
    return t.flatten(1)[:, graph.edge_w].unsqueeze(0)


def edge_factors(graph: ConvGraph, t: Tensor) -> Tensor:
    """Per-edge value of a factor quantity [B, K, H_out, W_out] -> [B, K, E]."""
    return t.flatten(2)[:, :, graph.edge_p]


def factor_sum(graph: ConvGraph, vals: Tensor) -> Tensor:
    """Σ over the edges of each factor: [B, K, E] -> [B, K, H_out, W_out]."""
    out = vals.new_zeros(vals.shape[0], vals.shape[1], graph.n_positions)
    out.index_add_(2, graph.edge_p, vals)
    return out.view(vals.shape[0], vals.shape[1], *graph.out_size)


def pixel_sum(graph: ConvGraph, vals: Tensor) -> Tensor:
    """Σ over every edge (all k, all factors) into its input pixel: [B, K, E] -> [B, C, H, W]."""
    out = vals.new_zeros(vals.shape[0], graph.n_pixels + 1)
    out.index_add_(1, graph.edge_q, vals.sum(dim=1))
    return out[:, :-1].reshape(vals.shape[0], *graph.in_shape)


def weight_sum(graph: ConvGraph, vals: Tensor, weight_shape) -> Tensor:
    """Σ over every edge (all samples, all positions) into its weight: [B, K, E] -> [K, C, kh, kw]."""
    out = vals.new_zeros(vals.shape[1], weight_shape[1] * weight_shape[2] * weight_shape[3])
    out.index_add_(1, graph.edge_w, vals.sum(dim=0))
    return out.view(weight_shape)


# ---- the updates of spec §4, edge by edge ---------------------------------------------------

def conv_moments(graph, x_hat, delta, mag, sigma):
    """ω = Σ_e m_e x̂_e and V = Σ_e [σ_e x̂_e² + (m_e² + σ_e) Δ_e] + ε per factor (§4.0)."""
    m_e, s_e = edge_weights(graph, mag), edge_weights(graph, sigma)
    x_e, d_e = edge_inputs(graph, x_hat), edge_inputs(graph, delta)
    omega = factor_sum(graph, m_e * x_e)
    var = factor_sum(graph, s_e * x_e * x_e + (m_e * m_e + s_e) * d_e)
    return omega, var + reference.VAR_EPS


def conv_fwd(graph, x_hat, delta, mag, sigma):
    """(ω, V, u = U(ω, √V)), each [B, K, H_out, W_out]."""
    omega, var = conv_moments(graph, x_hat, delta, mag, sigma)
    return omega, var, reference.upfield(omega, var.sqrt())


def conv_fwd_amp(graph, x_hat, delta, mag, sigma, g_old, x_hat_old, mag_old):
    """AMP forward (§4.4): ω_kpa = Σ_e [m x̂ − g_old σ x̂ x̂_old − g_old m m_old Δ
    + g_old² σ m_old x̂_old Δ]."""
    _, var = conv_moments(graph, x_hat, delta, mag, sigma)
    m_e, s_e, mo_e = (edge_weights(graph, t) for t in (mag, sigma, mag_old))
    x_e, d_e, xo_e = (edge_inputs(graph, t) for t in (x_hat, delta, x_hat_old))
    go_e = edge_factors(graph, g_old)
    terms = (m_e * x_e - go_e * s_e * x_e * xo_e - go_e * m_e * mo_e * d_e
             + go_e ** 2 * s_e * mo_e * xo_e * d_e)
    omega = factor_sum(graph, terms)
    return omega, var, reference.upfield(omega, var.sqrt())


def conv_bwd_bpi(graph, b_top, omega, var, x_hat, mag, compute_b=True):
    """BPI (§4.2): ĝ_e = g(b_top, ω − m_e x̂_e, s) per edge; b_q = Σ_{e→q} m_e ĝ_e,
    H_in,j = Σ_{e→j} ĝ_e x̂_e. Returns (b or None, H_in)."""
    alpha, c, num = (edge_factors(graph, t) for t in reference.output_coef(b_top, var.sqrt(), False))
    m_e, x_e = edge_weights(graph, mag), edge_inputs(graph, x_hat)
    g_cav = reference.output_g(alpha, c, num, edge_factors(graph, omega) - m_e * x_e)
    b = pixel_sum(graph, m_e * g_cav) if compute_b else None
    return b, weight_sum(graph, g_cav * x_e, mag.shape)


def conv_bwd_mf(graph, b_top, omega, var, x_hat, mag, compute_b=True):
    """MF (§4.1): g per factor; b_q = Σ_{e→q} m_e g_e, H_in,j = Σ_{e→j} g_e x̂_e.
    Returns (b or None, H_in)."""
    g, _ = reference.bp_output(b_top, omega, var, False)
    g_e, m_e, x_e = edge_factors(graph, g), edge_weights(graph, mag), edge_inputs(graph, x_hat)
    b = pixel_sum(graph, m_e * g_e) if compute_b else None
    return b, weight_sum(graph, g_e * x_e, mag.shape)


def conv_bwd_amp(graph, b_top, omega, var, x_hat, delta, mag, sigma, g_old=None, x_hat_old=None,
                 mag_old=None, compute_b=True):
    """AMP (§4.4), per edge:
    b_q = Σ_{e→q} [m g + x̂ m² Γ − x̂_old σ g g_old − x̂ x̂_old σ m g_old Γ],
    H_in,j = Σ_{e→j} [g x̂ + m Γ x̂² − m_old g g_old Δ − m m_old g_old Γ Δ x̂].
    Returns (b or None, H_in, g)."""
    g, gamma = reference.bp_output(b_top, omega, var, False)
    g_e, gm_e = edge_factors(graph, g), edge_factors(graph, gamma)
    m_e, s_e = edge_weights(graph, mag), edge_weights(graph, sigma)
    x_e, d_e = edge_inputs(graph, x_hat), edge_inputs(graph, delta)
    b_terms = m_e * g_e + x_e * m_e ** 2 * gm_e
    h_terms = g_e * x_e + m_e * gm_e * x_e ** 2
    if g_old is not None:
        go_e, mo_e = edge_factors(graph, g_old), edge_weights(graph, mag_old)
        xo_e = edge_inputs(graph, x_hat_old)
        b_terms = b_terms - xo_e * s_e * g_e * go_e - x_e * xo_e * s_e * m_e * go_e * gm_e
        h_terms = h_terms - mo_e * g_e * go_e * d_e - m_e * mo_e * go_e * gm_e * d_e * x_e
    b = pixel_sum(graph, b_terms) if compute_b else None
    return b, weight_sum(graph, h_terms, mag.shape), g


def conv_bayes_fwd(graph, x_hat, delta, mag, sigma):
    """Bayesian moment propagation (§6): x̂' = erf(ω/√(2V)), Δ' = 1 − x̂'²."""
    omega, var = conv_moments(graph, x_hat, delta, mag, sigma)
    x_out = torch.erf(omega / (2.0 * var).sqrt())
    return x_out, 1.0 - x_out.square()


def conv_pointwise(graph, x, mag):
    """Point-wise preactivation Σ_e sign(m)_e x_e per factor."""
    return factor_sum(graph, edge_weights(graph, torch.sign(mag)) * edge_inputs(graph, x))


class TwinBPConv2d(BPConv2d):
    """A BPConv2d whose message passing and predictions run on the explicit factor graph above
    (same buffers, hyper-parameters and mp_* protocol), for tests: put it in a BPSequential in
    place of BPConv2d, with ``bpkernels.nn.ops`` replaced by :mod:`bpkernels.reference`, and the
    whole network runs on twins."""

    def mp_reset(self, batch_size: int, tau_max: int) -> None:
        if self.algo == "bp" and tau_max > 1:
            raise NotImplementedError("the twin runs algo='bp' only at tau_max=1 (BPI)")
        self.b = None
        self.field_prior = self.field.clone() if tau_max > 1 else None
        self.g_old = self.x_hat_old = self.mag_old = None

    def mp_forward(self, x_in: Tensor, first: bool) -> Tensor:
        self.graph, self.first = graph_of(self, x_in.shape[1:]), first
        if first:
            self.x_hat, self.delta = x_in, None
        else:
            self.x_hat = torch.tanh(x_in if self.b is None else x_in + self.b)
            self.delta = 1.0 - self.x_hat.square()
        args = (self.graph, self.x_hat, self.delta, self.mag, self.sigma)
        if self.algo == "amp" and self.g_old is not None:
            self.omega, self.var, u = conv_fwd_amp(*args, self.g_old, self.x_hat_old, self.mag_old)
        else:
            self.omega, self.var, u = conv_fwd(*args)
        return u

    def mp_backward(self, b_top: Tensor, tau_max: int):
        args = (self.graph, b_top, self.omega, self.var, self.x_hat)
        if self.algo == "mf":
            b, h_in = conv_bwd_mf(*args, self.mag, not self.first)
        elif self.algo == "amp":
            b, h_in, g = conv_bwd_amp(*args, self.delta, self.mag, self.sigma, self.g_old,
                                      self.x_hat_old, self.mag_old, not self.first)
            if tau_max > 1:
                self.g_old, self.x_hat_old, self.mag_old = g, self.x_hat, self.mag.clone()
        else:
            b, h_in = conv_bwd_bpi(*args, self.mag, not self.first)
        flat = [None if t is None else t.view(t.shape[0], -1)
                for t in (self.field, self.mag, self.field_prior, self.mask)]
        field, mag, prior, mask = flat
        delta = reference.bp_field_update_(field, mag, h_in.view(h_in.shape[0], -1), prior,
                                           mask, self.rho, self.r, self.psi, False)
        return b, delta

    def mp_clear(self) -> None:
        for name in ("b", "field_prior", "g_old", "x_hat_old", "mag_old", "graph", "x_hat",
                     "delta", "omega", "var"):
            self.__dict__.pop(name, None)

    def pointwise(self, x: Tensor) -> Tensor:
        return conv_pointwise(graph_of(self, x.shape[1:]), x, self.mag)

    def bayes(self, x_hat: Tensor, delta: Tensor | None):
        return conv_bayes_fwd(graph_of(self, x_hat.shape[1:]), x_hat, delta, self.mag, self.sigma)
