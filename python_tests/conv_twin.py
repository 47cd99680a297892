r"""Pure-PyTorch twin of :class:`bpkernels.conv.BPConv2d` on the explicit factor graph (tests only).

No im2col here: :func:`conv_graph` lists the edges of the weight-sharing factor graph one by one
(loops over output positions, input channels and kernel offsets), and every message of docs
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

from bpkernels import reference
from bpkernels.algorithms import Algorithm, AMPMemory, BatchState
from bpkernels.conv import BPConv2d


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


# ---- the updates of docs §4, edge by edge ---------------------------------------------------

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


class ExplicitGraphAlgorithm(Algorithm):
    """BPI, AMP or MF of a convolution evaluated edge by edge on the explicit factor graph,
    on images (the layer's own tensors, no rows)."""

    on_rows = False

    def __init__(self, name: str):
        if name not in ("bpi", "amp", "mf", "bp"):
            raise ValueError(f"the explicit-graph twin has no algorithm {name!r}")
        self.name = "bpi" if name == "bp" else name

    def check_inner_iterations(self, layer, tau_max):
        if layer.algo == "bp" and tau_max > 1:
            raise NotImplementedError("the twin runs algo='bp' only at tau_max=1 (BPI)")

    def forward(self, st: BatchState, layer) -> Tensor:
        graph = graph_of(layer, st.x_in.shape[1:])
        args = (graph, st.x_hat, st.delta, layer.mag, reference.bp_weight_var(layer.mag, layer.mask))
        if self.name == "amp" and st.memory is not None:
            mem = st.memory
            st.omega, st.var, u = conv_fwd_amp(*args, mem.g_old, mem.x_hat_old, mem.mag_old)
        else:
            st.omega, st.var, u = conv_fwd(*args)
        return u

    def backward(self, st: BatchState, b_top: Tensor, layer, hard: bool, compute_b: bool):
        graph = graph_of(layer, st.x_in.shape[1:])
        args = (graph, b_top, st.omega, st.var, st.x_hat)
        if self.name == "mf":
            return conv_bwd_mf(*args, layer.mag, compute_b)
        if self.name == "amp":
            mem = st.memory
            old = (None, None, None) if mem is None else (mem.g_old, mem.x_hat_old, mem.mag_old)
            sigma = reference.bp_weight_var(layer.mag, layer.mask)
            b, h_in, g = conv_bwd_amp(*args, st.delta, layer.mag, sigma, *old, compute_b)
            if st.tau_max > 1:
                st.memory = AMPMemory(g, st.x_hat, layer.mag.clone())
            return b, h_in
        return conv_bwd_bpi(*args, layer.mag, compute_b)


class TwinBPConv2d(BPConv2d):
    """A BPConv2d whose message passing, field update and predictions run on the explicit
    factor graph above (same buffers, hyper-parameters and mp_* protocol): put it in a
    BPSequential in place of BPConv2d, with the ops replaced by :mod:`bpkernels.reference`
    (``helpers.use_twin_ops``), and the whole network runs on twins."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.algorithm = ExplicitGraphAlgorithm(self.algo)

    def mp_update(self, st: BatchState, h_in: Tensor) -> Tensor:
        w = self.weights()
        return reference.bp_field_update_(w.field, w.mag, h_in, st.field_prior, w.mask, st.rho,
                                          self.r, self.psi, False)

    def preactivation(self, x: Tensor) -> Tensor:
        return conv_pointwise(graph_of(self, x.shape[1:]), x, self.mag)

    def bayes(self, x_hat: Tensor, delta: Tensor | None):
        return conv_bayes_fwd(graph_of(self, x_hat.shape[1:]), x_hat, delta, self.mag,
                              reference.bp_weight_var(self.mag, self.mask))
