"""Every bpkernels operator against its pure-PyTorch twin (``bpkernels.reference``) on random
inputs: many shapes, soft and hard labels, saturated inputs, float64 tight and float32 under
the error budget, non-contiguous inputs, in-place semantics, ``torch.library.opcheck`` and
input validation.

Inputs are drawn in float64 on the CPU from a seeded generator, then cast and moved, so every
device and dtype sees the same numbers. A float32 run is compared with the float64 twin applied
to the same float32-rounded inputs, under the flash-attention budget (helpers.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import F32, F64, TOL, assert_close, assert_equal, assert_error_budget, assert_finite, generator

from bpkernels import ops, reference

INF = math.inf

SHAPES = [(1, 1, 1), (3, 17, 5), (7, 13, 11), (2, 1, 9), (31, 64, 1)]  # (B, N, K)
MEDIUM = (20, 97, 23)
BIG = (128, 784, 501)  # the paper's first layer at the default batch size
DTYPES = [F64, F32]


def shape_id(shape):
    return "x".join(map(str, shape))


# ---- input builders -------------------------------------------------------------------------


class Draw:
    """Seeded float64 draws on the CPU. ``saturated`` pushes every input into its tails:
    |H| up to 50 (m = ±1, σ = 0), |u| up to 50 (x̂ = ±1, Δ = 0), |ω/s| up to 40, V down to ε,
    |b_top| up to 30 and ±inf."""

    def __init__(self, B, N, K, seed=0, saturated=False):
        self.B, self.N, self.K = B, N, K
        self.g = generator(seed)
        self.sat = saturated

    def randn(self, *shape, scale=1.0):
        return torch.randn(*shape, generator=self.g, dtype=F64) * scale

    def uniform(self, *shape, lo=-1.0, hi=1.0):
        return torch.rand(*shape, generator=self.g, dtype=F64) * (hi - lo) + lo

    def field(self, *shape):  # H
        return self.uniform(*shape, lo=-50, hi=50) if self.sat else self.randn(*shape, scale=1.5)

    def upfield(self, *shape):  # u (and b) of activations
        return self.uniform(*shape, lo=-50, hi=50) if self.sat else self.randn(*shape, scale=2.0)

    def mask(self):
        return (torch.rand(self.K, self.N, generator=self.g, dtype=F64) < 0.8).to(F64)

    def weights(self, masked=False):
        """(H, m, σ, mask) with m = tanh(H)·mask, σ = (1 − m²)·mask; mask None when unmasked."""
        H = self.field(self.K, self.N)
        mask = self.mask() if masked else None
        m = torch.tanh(H) if mask is None else torch.tanh(H) * mask
        sigma = 1.0 - m.square()
        return H, m, sigma if mask is None else sigma * mask, mask

    def inputs(self, first):
        """(x̂, Δ): real inputs and Δ = None for a first layer, tanh(u) and 1 − x̂² otherwise."""
        if first:
            return self.randn(self.B, self.N), None
        x_hat = torch.tanh(self.upfield(self.B, self.N))
        return x_hat, 1.0 - x_hat.square()

    def preact(self, n_units=None):
        """(ω, V), [B, K]: V ~ N·U(0.2, 1.5) (ε in the saturated regime for a third of them),
        ω/√V uniform in ±3 (±40 saturated)."""
        K = self.K if n_units is None else n_units
        var = self.N * self.uniform(self.B, K, lo=0.2, hi=1.5)
        if self.sat:
            var = torch.where(torch.rand(self.B, K, generator=self.g) < 0.33, torch.full_like(var, 1e-8), var)
        lim = 40.0 if self.sat else 3.0
        return var.sqrt() * self.uniform(self.B, K, lo=-lim, hi=lim), var

    def b_top(self, hard):
        """Labels ±1 when hard; else fields (|b| up to 30 and ±inf when saturated)."""
        b = self.randn(self.B, self.K, scale=2.0)
        if hard:
            return torch.where(b < 0, -1.0, 1.0).to(F64)
        if self.sat:
            b = b * 15
            pick = torch.rand(self.B, self.K, generator=self.g)
            b = torch.where(pick < 0.25, torch.where(b < 0, -INF, INF).to(F64), b)
        return b

    def cavity_state(self, first):
        """BP's per-edge state at an inner iteration τ > 1: m̃ [K, N, B], b̃ (None on a first layer)."""
        m_cav = torch.tanh(self.field(self.K, self.N, self.B))
        b_cav = None if first else self.randn(self.K, self.N, self.B, scale=0.7)
        return m_cav, b_cav


def build_args(op, shape, seed=0, saturated=False, hard=False, first=False, masked=False, extra=True):
    """Arguments of ``op`` in schema order (float64 CPU tensors, None, bools, floats).

    first: the first layer (Δ = None, no b); extra: optional inputs given (AMP's old state,
    field_prior, ...); masked: a 0/1 weight mask."""
    B, N, K = shape
    d = Draw(B, N, K, seed, saturated)
    compute_b = not first
    if op == "bp_linear_input":
        return [d.upfield(B, N), d.upfield(B, N) if extra else None]
    if op in ("bp_linear_fwd", "bp_bayes_fwd"):
        x_hat, delta = d.inputs(first)
        _, m, sigma, _ = d.weights(masked)
        return [x_hat, delta, m, sigma]
    if op == "bp_linear_fwd_amp":
        x_hat, delta = d.inputs(first)
        _, m, sigma, _ = d.weights(masked)
        _, m_old, _, _ = d.weights(masked)
        return [x_hat, delta, m, sigma, d.randn(B, K, scale=0.5), torch.tanh(d.upfield(B, N)), m_old]
    if op == "bp_upfield":
        return list(d.preact())
    if op == "bp_output":
        omega, var = d.preact()
        return [d.b_top(hard), omega, var, hard]
    if op == "bp_argmax_output":
        omega, var = d.preact()
        return [omega, var, torch.randint(0, K, (B,), generator=d.g)]
    if op == "bp_linear_bwd_mf":
        x_hat, _ = d.inputs(first)
        _, m, _, _ = d.weights(masked)
        return [d.randn(B, K), x_hat, m, compute_b]
    if op == "bp_linear_bwd_amp":
        x_hat, delta = d.inputs(first)
        _, m, sigma, _ = d.weights(masked)
        g, gamma = d.randn(B, K), d.uniform(B, K, lo=0.0, hi=1.0)
        old = [None, None, None]
        if extra:
            _, m_old, _, _ = d.weights(masked)
            old = [d.randn(B, K, scale=0.5), torch.tanh(d.upfield(B, N)), m_old]
        return [g, gamma, x_hat, delta, m, sigma, *old, compute_b]
    if op == "bp_linear_bwd_bpi":
        x_hat, _ = d.inputs(first)
        _, m, _, _ = d.weights(masked)
        omega, var = d.preact()
        return [d.b_top(hard), omega, var, x_hat, m, hard, compute_b]
    if op == "bp_linear_omega_bp":
        x_in = d.randn(B, N) if first else d.upfield(B, N)
        m_cav, b_cav = d.cavity_state(first)
        return [x_in, b_cav, m_cav]
    if op == "bp_linear_bwd_bp":
        x_in = d.randn(B, N) if first else d.upfield(B, N)
        m_cav, b_cav = d.cavity_state(first)
        omega, var = d.preact()
        return [d.b_top(hard), omega, var, x_in, b_cav, m_cav, hard, compute_b]
    if op == "bp_cavity_update_":
        x_in = d.randn(B, N) if first else d.upfield(B, N)
        m_cav, b_cav = d.cavity_state(first)
        omega, var = d.preact()
        b = None if first else d.randn(B, N)
        mask = d.mask() if masked else None
        return [m_cav, b_cav, d.b_top(hard), omega, var, x_in, b, d.field(K, N), mask, 0.8, hard]
    if op == "bp_field_update_":
        H, m, sigma, mask = d.weights(masked)
        prior = d.field(K, N) if extra else None
        damp_field = bool(seed % 2)
        return [H, m, sigma, d.randn(K, N, scale=3.0), prior, mask, 0.9, 0.1 if extra else 0.0, 0.8, damp_field]
    raise KeyError(op)


OPS = [
    "bp_linear_input", "bp_linear_fwd", "bp_linear_fwd_amp", "bp_upfield", "bp_output",
    "bp_argmax_output", "bp_linear_bwd_mf", "bp_linear_bwd_amp", "bp_linear_bwd_bpi",
    "bp_linear_omega_bp", "bp_linear_bwd_bp", "bp_cavity_update_", "bp_field_update_", "bp_bayes_fwd",
]
INPLACE = {"bp_cavity_update_": (0, 1), "bp_field_update_": (0, 1, 2)}  # mutated argument positions
HAS_LABELS = {"bp_output", "bp_linear_bwd_bpi", "bp_linear_bwd_bp", "bp_cavity_update_"}
HAS_FIRST = {"bp_linear_fwd", "bp_bayes_fwd", "bp_linear_fwd_amp", "bp_linear_bwd_mf", "bp_linear_bwd_amp",
             "bp_linear_bwd_bpi", "bp_linear_omega_bp", "bp_linear_bwd_bp", "bp_cavity_update_"}
ELEMENTWISE = {"bp_linear_input", "bp_upfield", "bp_output"}  # no sums: relative accuracy everywhere
HAS_MASK = {"bp_linear_fwd", "bp_bayes_fwd", "bp_linear_fwd_amp", "bp_cavity_update_", "bp_field_update_"}


def cast(a, dtype, device):
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        return a.to(dtype=dtype).to(device)
    if isinstance(a, torch.Tensor):
        return a.to(device)
    return a


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def call(impl, op, args):
    """Runs ``impl.<op>`` on copies of the tensors; returns its outputs followed by the
    mutated arguments of an in-place op."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = getattr(impl, op)(*args)
    outs = () if out is None else as_tuple(out)
    return outs + tuple(args[i] for i in INPLACE.get(op, ()) if args[i] is not None)


def rounding_slack(op, args, ref64, eps):
    """Element-wise rounding scale (None: the default) of outputs whose formula cancels, for
    the float32 budget. Both are inherent to the spec's formulas, kernel and twin alike:
    Γ = g (ω/V + g) cancels where the label disagrees strongly with ω (ω/V ≈ −g; relative
    error ~ (ω/s)² ulps), and δ = mean |m_new − m_old| is a difference of O(1) magnetisations."""
    slack = [None] * len(ref64)
    if op == "bp_output":
        g, _ = ref64
        omega, var = args[1], args[2]
        slack[1] = 8 * eps * g.abs() * (omega.abs() / var + g.abs())
    if op == "bp_field_update_":
        mag_old, mag_new = args[1], ref64[2]
        slack[0] = 8 * eps * (mag_old.abs() + mag_new.abs()).mean()
    return slack


def check_against_twin(op, args64, dtype, device, name=""):
    """The kernel in ``dtype`` on ``device`` against the twin: float64 to TOL (plus, where sums
    or differences may cancel, an absolute 1e-14 of the output's largest entry), float32 under
    the error budget of the float32 twin. Every output must be finite."""
    kernel = call(ops, op, [cast(a, dtype, device) for a in args64])
    rounded = [cast(cast(a, dtype, "cpu"), F64, "cpu") for a in args64]  # same inputs in f64
    ref64 = call(reference, op, rounded)
    assert len(kernel) == len(ref64)
    for i, (k, r) in enumerate(zip(kernel, ref64)):
        label = f"{name}{op} output {i}"
        assert k.device.type == torch.device(device).type and k.dtype == dtype, label
        assert_finite(k, label)
        assert_finite(r, label + " (twin)")
        if dtype == F64:
            scale = r.abs().max().item() if r.numel() and op not in ELEMENTWISE else 0.0
            assert_close(k.cpu(), r, rtol=TOL[F64]["rtol"], atol=TOL[F64]["atol"] + 1e-14 * scale, name=label)
    if dtype != F64:
        ref_lo = call(reference, op, [cast(a, dtype, "cpu") for a in args64])
        slack = rounding_slack(op, rounded, ref64, torch.finfo(dtype).eps)
        for i, (k, lo, hi) in enumerate(zip(kernel, ref_lo, ref64)):
            assert_error_budget(k, lo, hi, atol=slack[i], name=f"{name}{op} output {i}")
    return kernel


def variants(op):
    """(kwargs, id) of the input variants that make sense for ``op``."""
    out = [({}, "plain")]
    if op in HAS_FIRST:
        out.append(({"first": True}, "first"))
    if op in HAS_LABELS:
        out.append(({"hard": True}, "hard"))
    if op in HAS_MASK:
        out.append(({"masked": True}, "masked"))
    if op in ("bp_linear_input", "bp_linear_bwd_amp", "bp_field_update_"):
        out.append(({"extra": False}, "no_optional"))
    if op == "bp_field_update_":
        out.append(({"masked": True, "seed": 1}, "masked_damp_field"))
    return out


CASES = [pytest.param(op, kw, id=f"{op}-{vid}") for op in OPS for kw, vid in variants(op)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op,kw", CASES)
def test_matches_twin(device, op, kw, dtype):
    kw = dict(kw)
    seed = kw.pop("seed", 0)
    for shape in SHAPES:
        for saturated in (False, True):
            args = build_args(op, shape, seed=seed, saturated=saturated, **kw)
            check_against_twin(op, args, dtype, device, name=f"{shape_id(shape)} sat={saturated}: ")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("op", ["bp_linear_fwd", "bp_output", "bp_linear_bwd_bpi", "bp_linear_bwd_bp",
                                "bp_cavity_update_", "bp_field_update_", "bp_linear_bwd_amp"])
def test_matches_twin_medium(device, op, dtype):
    for hard in ((False, True) if op in HAS_LABELS else (False,)):
        for saturated in (False, True):
            args = build_args(op, MEDIUM, seed=3, saturated=saturated, hard=hard)
            check_against_twin(op, args, dtype, device, name=f"hard={hard} sat={saturated}: ")


# The realistic size, where blocking, tiling and threading of the fused kernels really run.
BIG_CASES = [
    pytest.param(op, dtype, hard, id=f"{op}-{'f64' if dtype == F64 else 'f32'}-{'hard' if hard else 'soft'}")
    for op, dtype, hard in [
        ("bp_linear_fwd", F64, False), ("bp_linear_fwd", F32, False),
        ("bp_linear_bwd_bpi", F64, True), ("bp_linear_bwd_bpi", F32, False), ("bp_linear_bwd_bpi", F32, True),
        ("bp_linear_bwd_amp", F32, False), ("bp_field_update_", F32, False), ("bp_bayes_fwd", F32, False),
    ]
]


@pytest.mark.slow
@pytest.mark.parametrize("op,dtype,hard", BIG_CASES)
def test_matches_twin_big(device, op, dtype, hard):
    check_against_twin(op, build_args(op, BIG, seed=4, hard=hard), dtype, device)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["bp_linear_omega_bp", "bp_linear_bwd_bp", "bp_cavity_update_"])
def test_bp_cavity_ops_big(device, op):
    check_against_twin(op, build_args(op, (128, 256, 101), seed=5), F32, device)


# ---- layouts, aliasing, determinism ---------------------------------------------------------


def _noncontiguous(a):
    if not isinstance(a, torch.Tensor) or a.dim() < 2:
        return a
    perm = list(reversed(range(a.dim())))
    out = a.permute(*perm).contiguous().permute(*perm)
    assert out.equal(a) and not out.is_contiguous()
    return out


@pytest.mark.parametrize("op", OPS)
def test_noncontiguous_inputs(device, op):
    """Transposed-storage inputs (`.t().contiguous().t()`) give the results of contiguous ones;
    arguments updated in place must stay contiguous and are left alone."""
    args = [cast(a, F64, device) for a in build_args(op, (7, 13, 11), seed=2)]
    expected = call(ops, op, args)
    mutated = INPLACE.get(op, ())
    strided = [a if i in mutated else _noncontiguous(a) for i, a in enumerate(args)]
    got = call(ops, op, strided)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert_close(g, e, rtol=1e-13, atol=1e-14, name=f"{op} output {i}")


def test_field_update_in_place(device):
    H, m, sigma, h_in, prior, mask, rho, r, psi, _ = [cast(a, F64, device) for a in
                                                      build_args("bp_field_update_", (1, 13, 11), masked=True)]
    inputs = [t.clone() for t in (h_in, prior, mask)]
    ptrs = [t.data_ptr() for t in (H, m, sigma)]
    m_old = m.clone()
    exp = call(reference, "bp_field_update_", [H, m, sigma, h_in, prior, mask, rho, r, psi, False])
    delta = ops.bp_field_update_(H, m, sigma, h_in, prior, mask, rho, r, psi, False)
    assert [t.data_ptr() for t in (H, m, sigma)] == ptrs
    for got, want, name in zip((delta, H, m, sigma), exp, ("δ", "H", "m", "σ")):
        assert_close(got, want, **TOL[F64], name=name)
    assert delta.dim() == 0 and delta.dtype == F64
    assert_close(delta, (m - m_old).abs().mean(), **TOL[F64], name="δ = mean|Δm|")
    for before, after in zip(inputs, (h_in, prior, mask)):
        assert_equal(after, before, name="read-only input")
    assert bool((m[mask == 0] == 0).all() and (sigma[mask == 0] == 0).all()), "masked weights stay 0"


@pytest.mark.parametrize("damp_field", [False, True])
def test_field_update_prior_aliases_field(device, damp_field):
    """field_prior = None means θ = ρH; passing H itself as the prior (an alias of the
    mutated field) must give the same, element by element."""
    H, m, sigma, h_in, _, _, rho, r, psi, _ = [cast(a, F64, device) for a in build_args("bp_field_update_", (1, 9, 4))]
    a = [H.clone(), m.clone(), sigma.clone()]
    b = [H.clone(), m.clone(), sigma.clone()]
    da = ops.bp_field_update_(*a, h_in, None, None, rho, r, psi, damp_field)
    db = ops.bp_field_update_(*b, h_in, b[0], None, rho, r, psi, damp_field)
    for x, y in zip([da, *a], [db, *b]):
        assert_equal(x, y, name="prior=None vs prior=field")


@pytest.mark.parametrize("first", [False, True], ids=["hidden", "first"])
def test_cavity_update_in_place(device, first):
    args = [cast(a, F64, device) for a in build_args("bp_cavity_update_", (5, 7, 3), first=first, masked=True)]
    m_cav, b_cav = args[0], args[1]
    read_only = [a.clone() for a in args[2:] if isinstance(a, torch.Tensor)]
    ptrs = [t.data_ptr() for t in (m_cav, b_cav) if t is not None]
    expected = call(reference, "bp_cavity_update_", args)
    assert ops.bp_cavity_update_(*args) is None
    assert [t.data_ptr() for t in (m_cav, b_cav) if t is not None] == ptrs
    for got, want in zip([t for t in (m_cav, b_cav) if t is not None], expected):
        assert_close(got, want, **TOL[F64], name="cavity state")
    for before, after in zip(read_only, [a for a in args[2:] if isinstance(a, torch.Tensor)]):
        assert_equal(after, before, name="read-only input")


@pytest.mark.parametrize("op", ["bp_linear_bwd_bpi", "bp_linear_bwd_bp", "bp_linear_omega_bp",
                                "bp_cavity_update_", "bp_field_update_", "bp_argmax_output"])
def test_cpu_results_do_not_depend_on_thread_count(op):
    """The CPU kernels partition work so that every reduction has a fixed order: one thread
    and all threads agree bit for bit."""
    args = build_args(op, (64, 300, 37), seed=6, masked=op in HAS_MASK)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = call(ops, op, [cast(a, F32, "cpu") for a in args])
        torch.set_num_threads(max(2, threads))
        many = call(ops, op, [cast(a, F32, "cpu") for a in args])
    finally:
        torch.set_num_threads(threads)
    for i, (x, y) in enumerate(zip(one, many)):
        assert_equal(x, y, name=f"{op} output {i}")


# ---- torch.library.opcheck -----------------------------------------------------------------

# Pure operators get opcheck's full default set (schema, autograd registration, fake tensor,
# AOT dispatch with dynamic shapes). The in-place ones too; the list is the contract.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("op,first", [pytest.param(op, first, id=f"{op}-{'first' if first else 'hidden'}")
                                      for op in OPS for first in (False, True) if op in HAS_FIRST or not first])
def test_opcheck(device, op, first):
    args = [cast(a, F32, device) for a in build_args(op, (3, 17, 5), seed=8, first=first, hard=op in HAS_LABELS)]
    torch.library.opcheck(getattr(torch.ops.bpkernels, op).default, args, test_utils=OPCHECK_UTILS)


# ---- input validation ----------------------------------------------------------------------

# The tensor every other input is checked against (its dtype and device).
REFERENCE_ARG = {
    "bp_linear_input": "u", "bp_upfield": "omega", "bp_output": "omega", "bp_argmax_output": "omega",
    "bp_linear_omega_bp": "x_in", "bp_linear_bwd_bp": "x_in", "bp_cavity_update_": "x_in",
    "bp_field_update_": "field",
}


def _schema_names(op):
    return [a.name for a in getattr(torch.ops.bpkernels, op).default._schema.arguments]


def _valid_args(op, device):
    return [cast(a, F32, device) for a in build_args(op, (3, 5, 4), seed=9)]


def _float_tensor_positions(op, args):
    return [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]


@pytest.mark.parametrize("op", OPS)
def test_rejects_wrong_shapes(device, op):
    names = _schema_names(op)
    for i in [i for i, a in enumerate(_valid_args(op, device)) if isinstance(a, torch.Tensor)]:
        args = _valid_args(op, device)
        args[i] = args[i][..., None]  # one dimension too many
        with pytest.raises(RuntimeError, match=rf"{op}: {names[i]} must"):
            getattr(ops, op)(*args)
        if args[i].dim() >= 2 and args[i].shape[-2] > 1:  # right rank, one size off
            args = _valid_args(op, device)
            args[i] = (args[i][..., :-1] if names[i] != "labels" else args[i][:-1]).contiguous()
            with pytest.raises(RuntimeError, match=rf"{op}: \w+ must"):
                getattr(ops, op)(*args)


@pytest.mark.parametrize("op", OPS)
def test_rejects_mixed_dtypes(device, op):
    names = _schema_names(op)
    ref = REFERENCE_ARG.get(op, "x_hat")
    for i in _float_tensor_positions(op, _valid_args(op, device)):
        args = _valid_args(op, device)
        args[i] = args[i].double()
        match = rf"{op}: \w+ must have dtype" if names[i] == ref else rf"{op}: {names[i]} must have dtype"
        with pytest.raises(RuntimeError, match=match):
            getattr(ops, op)(*args)


@pytest.mark.parametrize("op", OPS)
def test_rejects_integer_tensors(device, op):
    args = _valid_args(op, device)
    for i in _float_tensor_positions(op, args):
        args[i] = (args[i] * 10).to(torch.int64)
    with pytest.raises(RuntimeError, match="must be float32 or float64"):
        getattr(ops, op)(*args)


def test_rejects_half_precision(device):
    args = [a.half() if isinstance(a, torch.Tensor) else a for a in _valid_args("bp_linear_bwd_bpi", device)]
    with pytest.raises(RuntimeError, match="x_hat must be float32 or float64"):
        ops.bp_linear_bwd_bpi(*args)


BATCH_CHECKED = ["bp_linear_fwd", "bp_linear_fwd_amp", "bp_linear_bwd_amp", "bp_linear_bwd_bpi",
                 "bp_linear_omega_bp", "bp_linear_bwd_bp", "bp_cavity_update_", "bp_bayes_fwd"]


@pytest.mark.parametrize("op", BATCH_CHECKED)
def test_rejects_empty_batch(device, op):
    args = [cast(a, F32, device) for a in build_args(op, (0, 5, 4), seed=9)]
    with pytest.raises(RuntimeError, match=rf"{op}: the batch is empty"):
        getattr(ops, op)(*args)


def test_argmax_rejects_bad_labels(device):
    if torch.device(device).type == "cuda":
        pytest.skip("CUDA checks labels on the device (a NaN row of g, no host sync): "
                    "see test_cuda.py::test_argmax_out_of_range_label_gives_nan_row")
    omega, var, labels = _valid_args("bp_argmax_output", device)
    K = omega.shape[1]
    for bad in (K, -1, 10**6):
        wrong = labels.clone()
        wrong[1] = bad
        with pytest.raises(RuntimeError, match=rf"label {bad} of sample 1 is outside \[0, {K}\)"):
            ops.bp_argmax_output(omega, var, wrong)
    with pytest.raises(RuntimeError, match="labels must be an int64 tensor"):
        ops.bp_argmax_output(omega, var, labels.int())
    with pytest.raises(RuntimeError, match="labels must be an int64 tensor"):
        ops.bp_argmax_output(omega, var, labels[:-1])


def test_rejects_inconsistent_optional_groups(device):
    args = _valid_args("bp_linear_bwd_amp", device)
    args[7] = None  # x_hat_old without g_old / mag_old
    with pytest.raises(RuntimeError, match="g_old, x_hat_old and mag_old must be given together"):
        ops.bp_linear_bwd_amp(*args)
    args = _valid_args("bp_cavity_update_", device)
    args[6] = None  # b_cav without b
    with pytest.raises(RuntimeError, match="b_cav and b must be given together"):
        ops.bp_cavity_update_(*args)


def test_in_place_arguments_must_be_contiguous(device):
    args = _valid_args("bp_field_update_", device)
    args[1] = _noncontiguous(args[1])
    with pytest.raises(RuntimeError, match="bp_field_update_: mag is updated in place and must be contiguous"):
        ops.bp_field_update_(*args)
    args = _valid_args("bp_cavity_update_", device)
    args[0] = _noncontiguous(args[0])
    with pytest.raises(RuntimeError, match="bp_cavity_update_: mag_cav is updated in place and must be contiguous"):
        ops.bp_cavity_update_(*args)


@pytest.mark.cuda
@pytest.mark.parametrize("op", OPS)
def test_rejects_mixed_devices(op):
    names = _schema_names(op)
    ref = REFERENCE_ARG.get(op, "x_hat")
    for i in _float_tensor_positions(op, _valid_args(op, "cuda")):
        if names[i] == ref:
            continue
        args = _valid_args(op, "cuda")
        args[i] = args[i].cpu()
        with pytest.raises(RuntimeError, match=rf"{names[i]} must be on device"):
            getattr(ops, op)(*args)
