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
from fractions import Fraction

import pytest
import torch
from helpers import F32, F64, TOL, assert_close, assert_equal, assert_error_budget, assert_finite

from bpkernels import ops, reference, testing

INF = math.inf

SHAPES = [(1, 1, 1), (3, 17, 5), (7, 13, 11), (2, 1, 9), (31, 64, 1)]  # (B, N, K)
MEDIUM = (20, 97, 23)
BIG = (128, 784, 501)  # the paper's first layer at the default batch size
DTYPES = [F64, F32]


def shape_id(shape):
    return "x".join(map(str, shape))


# ---- the operator registry (bpkernels.testing) ----------------------------------------------

OPS = testing.OPS
INPLACE = {op: testing.mutated_args(op) for op in OPS}  # mutated argument positions
HAS_LABELS = {op for op in OPS if "hard" in testing.arg_names(op)}
HAS_FIRST = {op for op in OPS if {"delta", "b_cav", "compute_b"} & set(testing.arg_names(op))}
HAS_MASK = {op for op in OPS if "mask" in testing.arg_names(op)}
HAS_OPTIONAL = {op for op in OPS if testing.optional_inputs(op)}
ELEMENTWISE = {"bp_linear_input", "bp_upfield", "bp_output", "bp_weight_var"}  # no sums: relative accuracy everywhere
build_args, cast = testing.build_args, testing.cast


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
    the float32 budget. Both are inherent to the formulas of docs/algorithms.md, kernel and twin alike:
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
    if op == "gauss_linear_bwd_cbpi":  # Ω_in sums Γ (as bp_output) and Δ g² terms
        b_top, omega, var, x_hat, delta = args[:5]
        g, _ = reference.bp_output(b_top, omega, var, args[6])
        gamma_scale = g.abs() * (omega.abs() / var + g.abs())
        d = torch.zeros_like(x_hat) if delta is None else delta
        slack[2] = 8 * eps * (gamma_scale.T @ (x_hat.square() + d) + g.square().T @ d)
    if op == "gauss_field_update_":
        mag_old, mag_new = args[2], ref64[3]
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
    if op in HAS_OPTIONAL:
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
    H, m, h_in, prior, mask, rho, r, psi, _ = [cast(a, F64, device) for a in
                                               build_args("bp_field_update_", (1, 13, 11), masked=True)]
    inputs = [t.clone() for t in (h_in, prior, mask)]
    ptrs = [t.data_ptr() for t in (H, m)]
    m_old = m.clone()
    exp = call(reference, "bp_field_update_", [H, m, h_in, prior, mask, rho, r, psi, False])
    delta = ops.bp_field_update_(H, m, h_in, prior, mask, rho, r, psi, False)
    assert [t.data_ptr() for t in (H, m)] == ptrs
    for got, want, name in zip((delta, H, m), exp, ("δ", "H", "m")):
        assert_close(got, want, **TOL[F64], name=name)
    assert delta.dim() == 0 and delta.dtype == F64
    assert_close(delta, (m - m_old).abs().mean(), **TOL[F64], name="δ = mean|Δm|")
    for before, after in zip(inputs, (h_in, prior, mask)):
        assert_equal(after, before, name="read-only input")
    assert bool((m[mask == 0] == 0).all()), "masked weights stay 0"
    assert bool((ops.bp_weight_var(m, mask)[mask == 0] == 0).all()), "masked weights have σ = 0"


@pytest.mark.parametrize("damp_field", [False, True])
def test_field_update_prior_aliases_field(device, damp_field):
    """field_prior = None means θ = ρH; passing H itself as the prior (an alias of the
    mutated field) must give the same, element by element."""
    H, m, h_in, _, _, rho, r, psi, _ = [cast(a, F64, device) for a in build_args("bp_field_update_", (1, 9, 4))]
    a = [H.clone(), m.clone()]
    b = [H.clone(), m.clone()]
    da = ops.bp_field_update_(*a, h_in, None, None, rho, r, psi, damp_field)
    db = ops.bp_field_update_(*b, h_in, b[0], None, rho, r, psi, damp_field)
    for x, y in zip([da, *a], [db, *b]):
        assert_equal(x, y, name="prior=None vs prior=field")


# ---- the derived weight variance σ = (1 − m²)·mask ------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_weight_var_is_the_sigma_the_ops_use(device, dtype, masked):
    """bp_weight_var is, bit for bit, the σ that bp_linear_fwd derives: with x̂ one-hot on input
    i and no Δ, V[a, k] = σ[k, i] + ε exactly (one product by 1, a sum with zeros, then + ε)."""
    K, N = 37, 300
    _, m, mask = testing.Draw(1, N, K, seed=11).weights(masked)
    m, mask = cast(m, dtype, device), cast(mask, dtype, device)
    sigma = ops.bp_weight_var(m, mask)
    x_hat = torch.eye(N, dtype=dtype, device=device)  # B = N samples, sample a one-hot on input a
    _, var, _ = ops.bp_linear_fwd(x_hat, None, m, mask)
    assert_equal(var, sigma.T + 1e-8, name="V of one-hot x̂ = σᵀ + ε")
    if not masked:
        assert_equal(ops.bp_weight_var(m, torch.ones_like(m)), sigma, name="mask None = a mask of ones")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_weight_var_within_one_ulp(device, dtype):
    """σ is within one ulp of the exact (1 − m²)·mask, computed in rational arithmetic, over the
    whole range of m (|m| → 1, where 1 − fl(m²) would lose every digit); exact zeros where masked;
    any shape (a conv weight)."""
    d = testing.Draw(1, 1, 1, seed=12)
    H = torch.cat([d.randn(3000, scale=3.0), d.uniform(1000, lo=-40, hi=40), torch.tensor([0.0, 1e-30, 30.0])])
    m = cast(torch.tanh(H), dtype, device)
    mask = cast((torch.rand(m.shape, generator=d.g) < 0.7).double(), dtype, device)
    for msk in (None, mask):
        got = ops.bp_weight_var(m, msk).cpu().double().tolist()
        ms = m.cpu().double().tolist()
        ks = [1.0] * len(ms) if msk is None else msk.cpu().double().tolist()
        for g, mv, k in zip(got, ms, ks):
            exact = (1 - Fraction(mv) ** 2) * Fraction(k)
            ulp = math.ulp(torch.tensor(g, dtype=dtype).item()) if dtype == F64 else \
                float(torch.finfo(F32).eps) * 2.0 ** math.floor(math.log2(g)) if g > 0 else 0.0
            assert abs(Fraction(g) - exact) <= Fraction(ulp), f"σ({mv!r}, mask {k}) = {g!r}, exact {float(exact)!r}"
    conv = m[:3000].view(10, 3, 10, 10)
    assert_equal(ops.bp_weight_var(conv, None), ops.bp_weight_var(conv.flatten(), None).view_as(conv), name="any shape")


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
    "bp_field_update_": "field", "bp_weight_var": "mag", "gauss_field_update_": "field",
}


def _schema_names(op):
    return [a.name for a in getattr(torch.ops.bpkernels, op).default._schema.arguments]


def _valid_args(op, device):
    return [cast(a, F32, device) for a in build_args(op, (3, 5, 4), seed=9, masked=op in HAS_MASK)]


def _float_tensor_positions(op, args):
    return [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]


@pytest.mark.parametrize("op", OPS)
def test_rejects_wrong_shapes(device, op):
    names = _schema_names(op)
    for i in [i for i, a in enumerate(_valid_args(op, device)) if isinstance(a, torch.Tensor)]:
        args = _valid_args(op, device)
        args[i] = args[i][..., None]  # one dimension too many
        # bp_weight_var takes mag of any shape: the mask then disagrees with it.
        culprit = r"\w+" if (op, names[i]) == ("bp_weight_var", "mag") else names[i]
        with pytest.raises(RuntimeError, match=rf"{op}: {culprit} must"):
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
