r"""The one registry of the bpkernels operators for the tests, the benchmarks and the CUDA
sanitizer driver: the operator list, what each schema says about its arguments, and one seeded
input builder per operator.

The list is derived from :mod:`bpkernels.ops` (its public functions), the argument facts from
the registered schemas, so adding an operator means its kernel, its schema, its twin in
:mod:`bpkernels.reference`, its fake in ``bpkernels._ops`` and one line in :data:`BUILDERS`
(python_tests/test_registry.py checks that all of them exist).

Inputs are drawn in float64 on the CPU from a seeded generator, then cast and moved, so every
device and dtype sees the same numbers. Shapes: B samples, N inputs, K units; activations
[B, N], per-unit messages [B, K], weights [K, N], BP cavity state [K, N, B].
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from bpkernels import ops, packed_ops, packed_reference, reference

F64 = torch.float64
INF = math.inf


def _public(module) -> tuple[str, ...]:
    return tuple(name for name, fn in vars(module).items()
                 if inspect.isfunction(fn) and fn.__module__ == module.__name__
                 and not name.startswith("_") and hasattr(torch.ops.bpkernels, name))


# The message-passing operators, in the order bpkernels.ops defines them (one builder each).
OPS: tuple[str, ...] = _public(ops)
# The packed-inference operators (their tests: python_tests/test_packed.py).
PACKED_OPS: tuple[str, ...] = _public(packed_ops)
# Where each operator's wrapper and pure-PyTorch twin live.
TWINS = {**{op: (ops, reference) for op in OPS},
         **{op: (packed_ops, packed_reference) for op in PACKED_OPS}}


def schema(op: str) -> torch.FunctionSchema:
    """The registered schema of ``bpkernels::<op>``."""
    return getattr(torch.ops.bpkernels, op).default._schema


def arg_names(op: str) -> list[str]:
    return [a.name for a in schema(op).arguments]


def mutated_args(op: str) -> tuple[int, ...]:
    """Positions of the arguments the operator updates in place (``Tensor(a!)`` in its schema)."""
    return tuple(i for i, a in enumerate(schema(op).arguments)
                 if a.alias_info is not None and a.alias_info.is_write)


def optional_inputs(op: str) -> set[str]:
    """Optional tensor inputs that :func:`build_args`'s ``extra`` switches on and off: every
    optional tensor except the first layer's absent ones (Δ; b̃ and b of BP) and the mask."""
    names = {a.name for a in schema(op).arguments
             if isinstance(a.type, torch.OptionalType) and isinstance(a.type.getElementType(), torch.TensorType)}
    first_layer = {"delta", "b_cav", "b"} if "b_cav" in names else {"delta"}
    return names - first_layer - {"mask"}


class Draw:
    """Seeded float64 draws, on the CPU unless ``device`` says otherwise (the same seed gives the
    same numbers on every device only when drawn on the CPU). ``saturated`` pushes every input
    into its tails: |H| up to 50 (m = ±1, σ = 0), |u| up to 50 (x̂ = ±1, Δ = 0), |ω/s| up to 40,
    V down to ε, |b_top| up to 30 and ±inf."""

    def __init__(self, B: int, N: int, K: int, seed: int = 0, saturated: bool = False, device="cpu"):
        self.B, self.N, self.K = B, N, K
        self.device = torch.device(device)
        self.g = torch.Generator(device=self.device).manual_seed(seed)
        self.sat = saturated

    def randn(self, *shape, scale=1.0) -> Tensor:
        return torch.randn(*shape, generator=self.g, dtype=F64, device=self.device) * scale

    def rand(self, *shape) -> Tensor:
        return torch.rand(*shape, generator=self.g, dtype=F64, device=self.device)

    def uniform(self, *shape, lo=-1.0, hi=1.0) -> Tensor:
        return self.rand(*shape) * (hi - lo) + lo

    def randint(self, high: int, n: int) -> Tensor:
        return torch.randint(0, high, (n,), generator=self.g, device=self.device)

    def field(self, *shape) -> Tensor:  # H
        return self.uniform(*shape, lo=-50, hi=50) if self.sat else self.randn(*shape, scale=1.5)

    def upfield(self, *shape) -> Tensor:  # u (and b) of activations
        return self.uniform(*shape, lo=-50, hi=50) if self.sat else self.randn(*shape, scale=2.0)

    def mask(self) -> Tensor:
        return (self.rand(self.K, self.N) < 0.8).to(F64)

    def weights(self, masked: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(H, m, mask) with m = tanh(H)·mask [K, N]; mask None when unmasked."""
        H = self.field(self.K, self.N)
        mask = self.mask() if masked else None
        m = torch.tanh(H) if mask is None else torch.tanh(H) * mask
        return H, m, mask

    def inputs(self, first: bool) -> tuple[Tensor, Tensor | None]:
        """(x̂, Δ) [B, N]: real inputs and Δ = None for a first layer, tanh(u) and 1 − x̂² otherwise."""
        if first:
            return self.randn(self.B, self.N), None
        x_hat = torch.tanh(self.upfield(self.B, self.N))
        return x_hat, 1.0 - x_hat.square()

    def x_in(self, first: bool) -> Tensor:
        """BP's layer input [B, N]: the data (first layer) or the up-field u of the layer below."""
        return self.randn(self.B, self.N) if first else self.upfield(self.B, self.N)

    def preact(self) -> tuple[Tensor, Tensor]:
        """(ω, V), [B, K]: V ~ N·U(0.2, 1.5) (ε in the saturated regime for a third of them),
        ω/√V uniform in ±3 (±40 saturated)."""
        var = self.N * self.uniform(self.B, self.K, lo=0.2, hi=1.5)
        if self.sat:
            var = torch.where(self.rand(self.B, self.K) < 0.33, torch.full_like(var, 1e-8), var)
        lim = 40.0 if self.sat else 3.0
        return var.sqrt() * self.uniform(self.B, self.K, lo=-lim, hi=lim), var

    def b_top(self, hard: bool) -> Tensor:
        """[B, K]: labels ±1 when hard; else fields (|b| up to 30 and ±inf when saturated)."""
        b = self.randn(self.B, self.K, scale=2.0)
        if hard:
            return torch.where(b < 0, -1.0, 1.0).to(F64)
        if self.sat:
            b = b * 15
            pick = self.rand(self.B, self.K)
            b = torch.where(pick < 0.25, torch.where(b < 0, -INF, INF).to(F64), b)
        return b

    def cavity_state(self, first: bool) -> tuple[Tensor, Tensor | None]:
        """BP's per-edge state at an inner iteration τ > 1: m̃ [K, N, B], b̃ (None on a first layer)."""
        m_cav = torch.tanh(self.field(self.K, self.N, self.B))
        b_cav = None if first else self.randn(self.K, self.N, self.B, scale=0.7)
        return m_cav, b_cav

    def amp_old(self, masked: bool) -> list[Tensor]:
        """AMP's state of the previous inner iteration: g_old [B, K], x̂_old [B, N], m_old [K, N]."""
        _, m_old, _ = self.weights(masked)
        return [self.randn(self.B, self.K, scale=0.5), torch.tanh(self.upfield(self.B, self.N)), m_old]


@dataclass(frozen=True)
class Variant:
    """Which form of an operator's call to build (see :func:`build_args`)."""

    first: bool = False
    hard: bool = False
    masked: bool = False
    extra: bool = True
    damp_field: bool = False


def _fwd(d: Draw, v: Variant) -> list:
    x_hat, delta = d.inputs(v.first)
    _, m, mask = d.weights(v.masked)
    return [x_hat, delta, m, mask]


def _fwd_amp(d: Draw, v: Variant) -> list:
    return [*_fwd(d, v), *d.amp_old(v.masked)]


def _bwd_mf(d: Draw, v: Variant) -> list:
    return [d.randn(d.B, d.K), d.inputs(v.first)[0], d.weights(v.masked)[1], not v.first]


def _bwd_amp(d: Draw, v: Variant) -> list:
    x_hat, delta, m, mask = _fwd(d, v)
    g, gamma = d.randn(d.B, d.K), d.uniform(d.B, d.K, lo=0.0, hi=1.0)
    old = d.amp_old(v.masked) if v.extra else [None, None, None]
    return [g, gamma, x_hat, delta, m, mask, *old, not v.first]


def _bwd_bpi(d: Draw, v: Variant) -> list:
    x_hat, _ = d.inputs(v.first)
    _, m, _ = d.weights(v.masked)
    omega, var = d.preact()
    return [d.b_top(v.hard), omega, var, x_hat, m, v.hard, not v.first]


def _omega_bp(d: Draw, v: Variant) -> list:
    x_in = d.x_in(v.first)
    m_cav, b_cav = d.cavity_state(v.first)
    return [x_in, b_cav, m_cav]


def _bwd_bp(d: Draw, v: Variant) -> list:
    x_in, b_cav, m_cav = _omega_bp(d, v)
    omega, var = d.preact()
    return [d.b_top(v.hard), omega, var, x_in, b_cav, m_cav, v.hard, not v.first]


def _cavity_update(d: Draw, v: Variant) -> list:
    x_in, b_cav, m_cav = _omega_bp(d, v)
    omega, var = d.preact()
    b = None if v.first else d.randn(d.B, d.N)
    mask = d.mask() if v.masked else None
    return [m_cav, b_cav, d.b_top(v.hard), omega, var, x_in, b, d.field(d.K, d.N), mask, 0.8, v.hard]


def _field_update(d: Draw, v: Variant) -> list:
    H, m, mask = d.weights(v.masked)
    prior = d.field(d.K, d.N) if v.extra else None
    return [H, m, d.randn(d.K, d.N, scale=3.0), prior, mask, 0.9, 0.1 if v.extra else 0.0, 0.8, v.damp_field]


# One builder per operator: (draw, variant) -> arguments in schema order.
BUILDERS: dict[str, Callable[[Draw, Variant], list]] = {
    "bp_linear_input": lambda d, v: [d.upfield(d.B, d.N), d.upfield(d.B, d.N) if v.extra else None],
    "bp_linear_fwd": _fwd,
    "bp_linear_fwd_amp": _fwd_amp,
    "bp_upfield": lambda d, v: list(d.preact()),
    "bp_output": lambda d, v: [d.b_top(v.hard), *d.preact(), v.hard],
    "bp_argmax_output": lambda d, v: [*d.preact(), d.randint(d.K, d.B)],
    "bp_linear_bwd_mf": _bwd_mf,
    "bp_linear_bwd_amp": _bwd_amp,
    "bp_linear_bwd_bpi": _bwd_bpi,
    "bp_linear_omega_bp": _omega_bp,
    "bp_linear_bwd_bp": _bwd_bp,
    "bp_cavity_update_": _cavity_update,
    "bp_field_update_": _field_update,
    "bp_bayes_fwd": _fwd,
    "bp_weight_var": lambda d, v: list(d.weights(v.masked)[1:]),
}


# ---- Gaussian (continuous) weight family ---------------------------------------------------

def _gauss_weights(d: Draw) -> tuple[Tensor, Tensor, Tensor]:
    """(H, Ω, m) [K, N] of Gaussian weights, m = H/Ω: means of either sign (|m| up to 50 when
    saturated) and precisions e^U(−2, 4) (e^U(−13.8, 13.8), down to 1e-6, when saturated)."""
    lim = 13.8 if d.sat else None
    precision = torch.exp(d.uniform(d.K, d.N, lo=-lim, hi=lim) if lim else d.uniform(d.K, d.N, lo=-2.0, hi=4.0))
    mag = d.uniform(d.K, d.N, lo=-50, hi=50) if d.sat else d.randn(d.K, d.N, scale=0.7)
    return mag * precision, precision, mag


def _gauss_fwd(d: Draw, v: Variant) -> list:
    x_hat, delta = d.inputs(v.first)
    _, precision, mag = _gauss_weights(d)
    return [x_hat, delta, mag, precision]


def _gauss_bwd(d: Draw, v: Variant) -> list:
    x_hat, delta = d.inputs(v.first)
    _, _, mag = _gauss_weights(d)
    omega, var = d.preact()
    return [d.b_top(v.hard), omega, var, x_hat, delta, mag, v.hard, not v.first]


def _gauss_update(d: Draw, v: Variant) -> list:
    H, precision, mag = _gauss_weights(d)
    # Ω_in of either sign, so that the clamp Ω ≥ 1e-6 is exercised.
    h_in, omega_in = d.randn(d.K, d.N, scale=3.0), d.randn(d.K, d.N, scale=3.0)
    priors = list(_gauss_weights(d)[:2]) if v.extra else [None, None]
    return [H, precision, mag, h_in, omega_in, *priors, 0.9, 0.1 if v.extra else 0.0, 0.8]


BUILDERS.update({
    "gauss_linear_fwd": _gauss_fwd,
    "gauss_linear_bwd_cbpi": _gauss_bwd,
    "gauss_field_update_": _gauss_update,
})


def build_args(op: str, shape: tuple[int, int, int], seed: int = 0, *, saturated: bool = False,
               hard: bool = False, first: bool = False, masked: bool = False, extra: bool = True,
               damp_field: bool | None = None, device="cpu") -> list:
    """Arguments of ``op`` in schema order (float64 tensors on ``device``, None, bools, floats)
    for a layer of shape (B, N, K).

    first: the first layer (Δ = None, no b̃, compute_b False); hard: b_top holds labels ±1;
    masked: a 0/1 weight mask; extra: the optional inputs of :func:`optional_inputs` given (AMP's
    old state, the field prior, ...); damp_field: the field update's flag (default: seed odd)."""
    B, N, K = shape
    damp_field = bool(seed % 2) if damp_field is None else damp_field
    return BUILDERS[op](Draw(B, N, K, seed, saturated, device), Variant(first, hard, masked, extra, damp_field))


def cast(a, dtype: torch.dtype, device):
    """A floating tensor to dtype and device, another tensor to device, anything else as is."""
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        return a.to(dtype=dtype).to(device)
    if isinstance(a, torch.Tensor):
        return a.to(device)
    return a


def make_inputs(op: str, B: int, N: int, K: int, dtype: torch.dtype = F64, device="cpu", seed: int = 0,
                **variant) -> list:
    """:func:`build_args` drawn on ``device`` (the GPU draws the large BP state itself) and cast
    to ``dtype``."""
    return [cast(a, dtype, device) for a in build_args(op, (B, N, K), seed, device=device, **variant)]
