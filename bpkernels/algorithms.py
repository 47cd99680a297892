r"""The message-passing algorithms, one class each, on the row view of a layer.

A layer hands an algorithm its weights as [K, N] matrices (K units, N fan-in) and its
messages as an effective batch of R rows: a dense layer has one row per sample, a convolution
one per (sample, output position) (:mod:`bpkernels.conv`). Per mini-batch, the sweep of
:class:`bpkernels.sequential.BPSequential` calls, for every inner iteration,

1. :meth:`Algorithm.forward`: the preactivation moments ω, V and the up-field u (docs §4.0);
2. :meth:`Algorithm.backward`: the downward field b and the field message H_in (§4.1–§4.5);
3. after the field update of the layer, :meth:`Algorithm.after_update` (BP's cavity state).

Everything an algorithm remembers between inner iterations lives in the layer's
:class:`BatchState` (its ``memory`` slot), never on the algorithm or the layer. Algorithms are
stateless and looked up by name in :data:`ALGORITHMS`; a new one is a subclass plus a
:func:`register_algorithm` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from . import ops


@dataclass(eq=False)
class BatchState:
    """The messages of one layer during one mini-batch. The sweep creates it, passes it
    through the forward and backward sweeps and drops it; nothing here outlives the batch.

    Shapes: B samples, R rows (B for a dense layer, B·P for a convolution with P output
    positions), N fan-in, K units. ``x_in`` and ``b`` have the layer's input shape
    [B, *in_shape]; ``x_hat``, ``delta`` are [R, N] rows and ``omega``, ``var`` [R, K] rows
    (or images, for an algorithm with ``on_rows = False``).
    """

    tau_max: int
    rho: float  # the prior's weight in the field update, H ← H_in + rH + ρ·H_prior
    field_prior: Tensor | None  # H_prior, [K, *fan_in]; None: the layer's own field H (PasP)
    first: bool = False  # the first layer (its input is data, not up-fields)
    x_in: Tensor | None = None  # the input of the forward sweep, [B, *in_shape]
    b: Tensor | None = None  # this layer's downward field of the last backward sweep
    x_hat: Tensor | None = None
    delta: Tensor | None = None
    omega: Tensor | None = None
    var: Tensor | None = None
    memory: Any = None  # the algorithm's own state between inner iterations
    h_in: Tensor | None = None  # the last field message [K, N], until the field update
    b_top: Tensor | None = None  # the downward field from above of the last backward, rows
    b_rows: Tensor | None = None  # this layer's downward field of the last backward, rows
    # Gaussian weights: Ω_prior of the precision update Ω ← Ω_in + rΩ + ρ·Ω_prior; None with
    # field_prior None (PasP: the layer's own Ω)
    precision_prior: Tensor | None = None


@dataclass(frozen=True)
class Weights:
    """A layer's weight marginals as [K, N] matrix views (sharing storage): field H,
    magnetisation m and the optional 0/1 mask."""

    field: Tensor
    mag: Tensor
    mask: Tensor | None
    psi: float


@dataclass(frozen=True)
class GaussianWeights(Weights):
    """Gaussian weight marginals (docs §4.7) as [K, N] views: ``field`` H, ``mag`` the damped
    mean m, ``precision`` Ω (variance σ = 1/Ω); no mask."""

    precision: Tensor


class Algorithm:
    """One message-passing variant. Subclasses implement :meth:`forward` and :meth:`backward`;
    they are stateless (the state of a batch is the :class:`BatchState`).

    Attributes:
        name: the registry name.
        family: the weight family it updates: "binary" (±1 weights, :class:`Weights`) or
            "gaussian" (continuous weights, :class:`GaussianWeights`).
        on_rows: the algorithm works on [R, N] rows (True) or on the layer's own tensors.
        damp_field: the field update damps H instead of m (the argmax output layer, §4.5).
    """

    name = ""
    family = "binary"
    on_rows = True
    damp_field = False

    def check_inner_iterations(self, layer, tau_max: int) -> None:
        """Raises if the algorithm cannot run ``tau_max`` inner iterations on ``layer``."""

    def forward(self, st: BatchState, w: Weights) -> Tensor:
        """Sets st.omega, st.var [R, K] from st.x_hat, st.delta [R, N]; returns u [R, K]."""
        st.omega, st.var, u = ops.bp_linear_fwd(st.x_hat, st.delta, w.mag, w.mask)
        return u

    def backward(self, st: BatchState, b_top: Tensor, w: Weights, hard: bool,
                 compute_b: bool) -> tuple[Tensor, Tensor]:
        """b_top [R, K] (labels ±1 [R, 1] when ``hard``; int64 classes [R] for argmax).
        Returns (b [R, N] ([R, 0] when not compute_b), H_in [K, N])."""
        raise NotImplementedError

    def after_update(self, st: BatchState, w: Weights, hard: bool) -> None:
        """Runs after the layer's field update of the same inner iteration."""


class MF(Algorithm):
    """Mean field (§4.1): b = g m, H_in = gᵀ x̂."""

    name = "mf"

    def backward(self, st, b_top, w, hard, compute_b):
        g, _ = ops.bp_output(b_top, st.omega, st.var, hard)
        return ops.bp_linear_bwd_mf(g, st.x_hat, w.mag, compute_b)


@dataclass(eq=False)
class AMPMemory:
    """AMP's messages of the previous inner iteration: g [R, K], x̂ [R, N], m [K, N]."""

    g_old: Tensor
    x_hat_old: Tensor
    mag_old: Tensor


class AMP(Algorithm):
    """AMP / TAP (§4.4): MF plus the self-reaction terms and, from the second inner iteration
    on, the Onsager terms of the previous iteration's messages."""

    name = "amp"

    def forward(self, st, w):
        mem = st.memory
        if mem is None:
            return super().forward(st, w)
        st.omega, st.var, u = ops.bp_linear_fwd_amp(st.x_hat, st.delta, w.mag, w.mask, mem.g_old,
                                                     mem.x_hat_old, mem.mag_old)
        return u

    def backward(self, st, b_top, w, hard, compute_b):
        mem = st.memory
        g, gamma = ops.bp_output(b_top, st.omega, st.var, hard)
        old = (None, None, None) if mem is None else (mem.g_old, mem.x_hat_old, mem.mag_old)
        b, h_in = ops.bp_linear_bwd_amp(g, gamma, st.x_hat, st.delta, w.mag, w.mask, *old,
                                        compute_b)
        if st.tau_max > 1:
            st.memory = AMPMemory(g, st.x_hat, w.mag.clone())
        return b, h_in


class BPI(Algorithm):
    """BP-inspired (§4.2): the fused cavity backward, ĝ = g(b_top, ω − m x̂, √V) per edge,
    b = Σ_k m ĝ, H_in = Σ_a ĝ x̂ (no K×N×R tensor)."""

    name = "bpi"

    def backward(self, st, b_top, w, hard, compute_b):
        return ops.bp_linear_bwd_bpi(b_top, st.omega, st.var, st.x_hat, w.mag, hard, compute_b)


@dataclass(eq=False)
class BPCavity:
    """BP's per-edge cavity state: m̃ [K, N, R] and b̃ [K, N, R] (None for the first layer)."""

    mag_cav: Tensor
    b_cav: Tensor | None


class BP(BPI):
    """Relaxed BP with per-edge cavity messages (§4.3). The first inner iteration is BPI (so
    BP at τ_max = 1 is BPI bit for bit); from the second on, ω and the backward use the cavity
    means m̃ and inputs x̃ = tanh(u + b̃), kept in a :class:`BPCavity` of K×N×R per layer
    (dense layers only: a convolution's would be K×(C·kh·kw)×(B·P))."""

    name = "bp"

    def check_inner_iterations(self, layer, tau_max):
        if tau_max > 1 and not layer.supports_cavity_state:
            raise NotImplementedError(
                f"{type(layer).__name__} runs algo='bp' only at tau_max=1, where BP is BPI "
                "(docs/algorithms.md §4.3): its cavity state would be K×(C·kh·kw)×(B·P) per "
                "layer. Use algo 'bpi', 'amp' or 'mf' for more inner iterations.")

    def forward(self, st, w):
        u = super().forward(st, w)
        if st.memory is None:
            return u
        # Cavity preactivation ω = Σ_i m̃ x̃ (V stays the non-cavity one, §4.3).
        st.omega = ops.bp_linear_omega_bp(st.x_in, st.memory.b_cav, st.memory.mag_cav)
        return ops.bp_upfield(st.omega, st.var)

    def backward(self, st, b_top, w, hard, compute_b):
        cav = st.memory
        if cav is not None:
            return ops.bp_linear_bwd_bp(b_top, st.omega, st.var, st.x_in, cav.b_cav, cav.mag_cav,
                                        hard, compute_b)
        b, h_in = super().backward(st, b_top, w, hard, compute_b)
        if st.tau_max > 1:
            # Fresh cavity state m̃ = m (before this iteration's field update), b̃ = 0.
            mag_cav = w.mag.unsqueeze(2).expand(-1, -1, st.x_in.shape[0]).contiguous()
            st.memory = BPCavity(mag_cav, None if st.first else torch.zeros_like(mag_cav))
        return b, h_in

    def after_update(self, st, w, hard):
        cav = st.memory
        if cav is None:
            return
        # b̃ ← b − m̃ĝ,  m̃ ← ψ m̃ + (1 − ψ) tanh(H − ĝ x̃)·mask, with the new field H
        ops.bp_cavity_update_(cav.mag_cav, cav.b_cav, st.b_top, st.omega, st.var, st.x_in,
                              None if st.first else st.b_rows, w.field, w.mask, w.psi, hard)


class ArgmaxOutput(Algorithm):
    """The multi-class output layer (§2.3, §4.5), whatever the network's algorithm: the
    argmax output function g, the MF backward, and the damped-field update."""

    name = "argmax"
    damp_field = True

    def backward(self, st, b_top, w, hard, compute_b):
        g = ops.bp_argmax_output(st.omega, st.var, b_top)
        return ops.bp_linear_bwd_mf(g, st.x_hat, w.mag, compute_b)


class CBPI(Algorithm):
    """Continuous-weight BPI (docs §4.7) on Gaussian weights (:class:`GaussianWeights`): BPI's
    forward moments with σ = 1/Ω, BPI's cavity ĝ, b and H_in, and the precision message
    Ω_in = Σ_a [(x̂² + Δ)Γ − Δ g²], all from one fused kernel. ``backward`` returns the two
    weight messages stacked, [2, K, N] = (H_in, Ω_in), so that the sweep's reduction hook
    (e.g. the data-parallel all-reduce) sums both."""

    name = "cbpi"
    family = "gaussian"

    def forward(self, st, w):
        st.omega, st.var, u = ops.gauss_linear_fwd(st.x_hat, st.delta, w.mag, w.precision)
        return u

    def backward(self, st, b_top, w, hard, compute_b):
        b, h_in, omega_in = ops.gauss_linear_bwd_cbpi(b_top, st.omega, st.var, st.x_hat, st.delta,
                                                      w.mag, hard, compute_b)
        return b, torch.stack((h_in, omega_in))


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Makes ``cls`` available as ``algo=cls.name`` on every layer."""
    ALGORITHMS[cls.name] = cls
    return cls


for _cls in (MF, AMP, BPI, BP, CBPI):
    register_algorithm(_cls)

OUTPUT_ALGORITHMS: dict[str, Callable[[], Algorithm]] = {"argmax": ArgmaxOutput}


def lookup(algo: str, output: str | None = None) -> Algorithm:
    """The algorithm of a layer: ``algo`` from the registry, or the output layer's own update
    where its output kind has one (the argmax layer)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {tuple(ALGORITHMS)}, got {algo!r}")
    return OUTPUT_ALGORITHMS.get(output, ALGORITHMS[algo])()
