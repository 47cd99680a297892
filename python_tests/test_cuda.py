"""The CUDA kernels (csrc/cuda/) against the CPU kernels and the pure-PyTorch twin.

* float64: CUDA kernel against the CPU kernel on the same inputs, rtol 1e-12 and an absolute
  1e-14 of the output's largest entry, times √(reduction length) where the kernels sum in
  different orders. This catches index and tiling bugs that a float32 comparison can hide.
* float32: CUDA kernel against the float64 twin under the error budget
  |cuda32 − ref64| ≤ 2 · max|ref32 − ref64| + atol, the twin's error pooled over the shapes of
  a test, atol the element-wise rounding scale of formulas that cancel (f32_slack).
* Tile edges: sizes that are not multiples of the kernels' tiles (32 units, 32 inputs, 8 or 16
  samples), B = 1, K = 1, the paper's 784 → 501 layer at B = 128; saturated inputs (|H| up to
  50, |ω/s| up to 40, V down to ε, |b| up to 30 and ±∞) and hard labels.
* The fused cavity kernel never allocates K×N×B; every reduction is deterministic; kernels run
  on the current stream and on the tensors' device; opcheck on CUDA tensors.

Every test needs a CUDA device (marker ``cuda``; skipped without one). Inputs are drawn in
float64 on the CPU from seeded generators, then cast and moved.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import F32, F64, assert_close, assert_equal, assert_error_budget, assert_finite

from bpkernels import ops, reference, testing

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = "cuda"
INF = math.inf

OPS = testing.OPS
INPLACE = {op: testing.mutated_args(op) for op in OPS}  # mutated argument positions
HAS_LABELS = {op for op in OPS if "hard" in testing.arg_names(op)}
HAS_FIRST = {op for op in OPS if {"delta", "b_cav", "compute_b"} & set(testing.arg_names(op))}
HAS_MASK = {op for op in OPS if "mask" in testing.arg_names(op)}

# (B, N, K). Tiles: BPI 32 units × 32 inputs, 16 (f32) / 8 (f64) samples per chunk; BP 32 units
# × 8 inputs, 32 samples per chunk; field update 2048 weights per block.
SHAPES = [(1, 1, 1), (2, 1, 9), (3, 17, 5), (1, 300, 70), (17, 97, 41), (33, 65, 67), (129, 37, 33)]
BIG = (128, 784, 501)  # the paper's first layer at the default batch size


def shape_id(shape):
    return "x".join(map(str, shape))


# Length of the sum behind each output (for the float64 tolerance): ω = Σ_i, b = Σ_k, H_in = Σ_a.
def reduction_lengths(op, shape):
    B, N, K = shape
    return {
        "bp_linear_fwd": (N, N, N), "bp_linear_fwd_amp": (N, N, N), "bp_bayes_fwd": (N, N),
        "bp_linear_bwd_mf": (K, B), "bp_linear_bwd_amp": (K, B), "bp_linear_bwd_bpi": (K, B),
        "bp_linear_bwd_bp": (K, B), "bp_linear_omega_bp": (N,), "bp_argmax_output": (K,),
        "bp_field_update_": (K * N, 1, 1, 1),
        "gauss_linear_fwd": (N, N, N), "gauss_linear_bwd_cbpi": (K, B, B),
        "gauss_field_update_": (K * N, 1, 1, 1),
    }.get(op, (1, 1, 1, 1))


# ---- inputs (bpkernels.testing) -----------------------------------------------------------


def build(op, shape, **variant):
    """Arguments of ``op`` in schema order (float64 CPU); the field update undamped unless asked."""
    return testing.build_args(op, shape, **{"damp_field": False, **variant})


def variants(op):
    """(keyword arguments of build, id) of the input variants that make sense for ``op``."""
    out = [({}, "plain")]
    if op in HAS_FIRST:
        out.append(({"first": True}, "first"))
    if op in HAS_LABELS:
        out.append(({"hard": True}, "hard"))
    if op in HAS_MASK:
        out.append(({"masked": True}, "masked"))
    if testing.optional_inputs(op):
        out.append(({"extra": False}, "no_optional"))
    if op == "bp_field_update_":
        out.append(({"masked": True, "damp_field": True}, "masked_damp_field"))
    return out


CASES = [pytest.param(op, kw, id=f"{op}-{vid}") for op in OPS for kw, vid in variants(op)]


cast = testing.cast


def call(fn_or_module, op, args):
    """Runs ``op`` of ``ops`` / ``reference`` on copies of the tensors; returns its outputs
    followed by the arguments an in-place operator mutated."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = getattr(fn_or_module, op)(*args)
    outs = () if out is None else tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return outs + tuple(args[i] for i in INPLACE.get(op, ()) if args[i] is not None)


def f64_slack(op, args, outputs):
    """Element-wise absolute slack of outputs whose formula cancels (kernel and twin alike):
    Γ = g (ω/V + g) loses (ω/s)² ulps where the label disagrees with ω."""
    slack = [0.0] * len(outputs)
    if op == "bp_output":
        g = outputs[0]
        omega, var = args[1], args[2]
        slack[1] = 64 * torch.finfo(F64).eps * g.abs() * (omega.abs() / var + g.abs())
    if op == "gauss_linear_bwd_cbpi":  # Ω_in sums Γ (as bp_output) and Δ g² terms
        b_top, omega, var, x_hat, delta = args[:5]
        g, _ = reference.bp_output(b_top, omega, var, args[6])
        d = torch.zeros_like(x_hat) if delta is None else delta
        scale = (g.abs() * (omega.abs() / var + g.abs())).T @ (x_hat.square() + d) + g.square().T @ d
        slack[2] = 64 * torch.finfo(F64).eps * scale
    return slack


def assert_within(actual, expected, *, rtol, atol, name):
    """|actual − expected| ≤ rtol·|expected| + atol element-wise (atol may be a tensor), NaNs
    equal; prints the largest excess on failure."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    nan_a, nan_e = actual.isnan(), expected.isnan()
    assert bool((nan_a == nan_e).all()), f"{name}: NaN at different places"
    same = (actual == expected) | nan_a  # equal infinities included
    excess = torch.where(same, 0.0, (actual - expected).abs() - (rtol * expected.abs() + atol))
    excess = torch.nan_to_num(excess, nan=math.inf)
    if bool((excess > 0).any()):
        idx = tuple(torch.unravel_index(excess.argmax(), excess.shape))
        raise AssertionError(
            f"{name}: |diff| {abs(actual[idx].item() - expected[idx].item()):.3e} at {[int(i) for i in idx]} "
            f"(CUDA {actual[idx].item()!r}, CPU {expected[idx].item()!r}) exceeds rtol {rtol:g} + atol; "
            f"{int((excess > 0).sum())} of {excess.numel()} entries")


def compare_with_cpu_kernel(op, shape, args64, name=""):
    """The CUDA kernel against the CPU kernel, both float64, same inputs: rtol 1e-12 and an
    absolute 1e-14 of the output's largest entry times √(length of the sum behind it)."""
    cpu = call(ops, op, args64)
    gpu = call(ops, op, [cast(a, F64, CUDA) for a in args64])
    assert len(cpu) == len(gpu), name
    lengths = reduction_lengths(op, shape)
    slack = f64_slack(op, args64, cpu)
    for i, (c, g) in enumerate(zip(cpu, gpu)):
        label = f"{name}{op} output {i}"
        assert g.is_cuda and g.dtype == F64, label
        finite = c[torch.isfinite(c)]
        scale = finite.abs().max().item() if finite.numel() else 0.0
        atol = 1e-14 * scale * math.sqrt(lengths[i]) + slack[i]
        assert_within(g.cpu(), c, rtol=1e-12, atol=atol, name=label)


def f32_slack(op, args, ref64):
    """Element-wise rounding scale (absolute) of the float32 outputs whose formula cancels, for
    the budget (None: 8 ulps of the largest |ref64|). Inherent to the formulas, kernel and twin
    alike: Δ = 1 − x̂²; Γ = g (ω/V + g) where the label disagrees with ω; the damped updates
    ψ m + (1 − ψ) tanh(·) and H_in + r H + ρ H_prior of O(1) terms; b̃ = b − m̃ ĝ; δ."""
    eps = torch.finfo(F32).eps
    slack = [None] * len(ref64)
    if op in ("bp_linear_input", "bp_bayes_fwd"):
        slack[1] = torch.full_like(ref64[1], 8 * eps)
    if op == "bp_output":
        g = ref64[0]
        omega, var = args[1], args[2]
        slack[1] = 8 * eps * g.abs() * (omega.abs() / var + g.abs())
    if op == "bp_cavity_update_":
        m_old, psi = args[0], args[9]
        slack[0] = 8 * eps * (psi * m_old.abs() + (1 - psi))
        if len(ref64) > 1:
            b = args[6].T[None, :, :]
            slack[1] = 8 * eps * (b.abs() + (ref64[1] - b).abs())
    if op == "bp_field_update_":
        H, m_old, h_in, rho, r, psi = args[0], args[1], args[2], args[5], args[6], args[7]
        prior = H if args[3] is None else args[3]
        slack_h = 8 * eps * (h_in.abs() + abs(r) * H.abs() + abs(rho) * prior.abs() + psi * H.abs())
        slack_m = 8 * eps * (psi * m_old.abs() + 1) + slack_h
        slack[0] = 8 * eps * (m_old.abs() + ref64[2].abs()).mean()
        slack[1], slack[2] = slack_h, slack_m
    return slack


def check_error_budget(op, cases, name=""):
    """float32 CUDA kernel against the float64 twin, pooled over ``cases`` [(label, args64)]:
    |cuda32 − ref64| ≤ 2 · max|ref32 − ref64| + atol element-wise, the max taken over all cases
    (one tiny case alone makes the twin's error a single lucky sample); atol is the
    element-wise rounding slack of f32_slack, else 8 ulps of the largest |ref64|. The twins run
    on the GPU (the big case materialises K×N×B tensors)."""
    pooled = None
    for label, args64 in cases:
        kernel = call(ops, op, [cast(a, F32, CUDA) for a in args64])
        rounded = [cast(cast(a, F32, "cpu"), F64, CUDA) for a in args64]  # the same inputs, in f64
        ref64 = [t.cpu() for t in call(reference, op, rounded)]
        ref32 = [t.cpu() for t in call(reference, op, [cast(a, F32, CUDA) for a in args64])]
        slack = f32_slack(op, [cast(a, F64, "cpu") for a in rounded], ref64)
        if pooled is None:
            pooled = [([], [], [], [], []) for _ in kernel]
        assert len(kernel) == len(pooled) == len(ref64) == len(ref32), label
        for i, (k, lo, hi) in enumerate(zip(kernel, ref32, ref64)):
            assert k.is_cuda and k.dtype == F32 and k.shape == hi.shape, f"{name}{label}{op} output {i}"
            assert_finite(k, f"{name}{label}{op} output {i}")
            sl = slack[i] if slack[i] is not None else torch.full(hi.shape, math.nan, dtype=F64)
            for bucket, t in zip(pooled[i], (k.cpu().double(), lo.double(), hi, torch.as_tensor(sl).expand(hi.shape))):
                bucket.append(t.reshape(-1))
            pooled[i][4].append(label)
    for i, (ks, los, his, sls, labels) in enumerate(pooled):
        k, lo, hi, sl = (torch.cat(t) for t in (ks, los, his, sls))
        if not k.numel():
            continue
        default = 8 * torch.finfo(F32).eps * hi.abs().max().item()
        atol = torch.where(sl.isnan(), default, sl)
        excess = (k - hi).abs() - (2 * (lo - hi).abs().max() + atol)
        if bool((excess > 0).any()):
            flat = int(excess.argmax())
            sizes = [t.numel() for t in his]
            case = next(j for j in range(len(sizes)) if flat < sum(sizes[: j + 1]))
            assert_error_budget(ks[case].float(), los[case].float(), his[case],
                                atol=torch.as_tensor(atol[sum(sizes[:case]):sum(sizes[: case + 1])]),
                                name=f"{name}{labels[case]}{op} output {i}")
            raise AssertionError(f"{name}{op} output {i}: exceeds the pooled budget in case {labels[case]} "
                                 f"by {excess.max().item():.3e}")


# ---- registration ---------------------------------------------------------------------------


def test_every_op_has_a_cuda_kernel():
    missing = [op for op in OPS if not torch._C._dispatch_has_computed_kernel_for_dispatch_key(f"bpkernels::{op}", "CUDA")]
    assert not missing, f"no CUDA kernel registered for {missing} (was the extension built with CUDA?)"


# ---- CUDA against the CPU kernels, float64 ---------------------------------------------------


@pytest.mark.parametrize("op,kw", CASES)
def test_matches_cpu_kernel_f64(op, kw):
    for shape in SHAPES:
        for saturated in (False, True):
            args = build(op, shape, seed=1, saturated=saturated, **kw)
            compare_with_cpu_kernel(op, shape, args, name=f"{shape_id(shape)} sat={saturated}: ")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_matches_cpu_kernel_f64_big(op, hard):
    if hard and op not in HAS_LABELS:
        pytest.skip("no labels")
    for saturated in (False, True):
        args = build(op, BIG, seed=2, saturated=saturated, hard=hard)
        compare_with_cpu_kernel(op, BIG, args, name=f"sat={saturated}: ")


# ---- float32 against the float64 twin (error budget) ------------------------------------------


@pytest.mark.parametrize("op,kw", CASES)
def test_error_budget_f32(op, kw):
    cases = [(f"{shape_id(shape)} sat={saturated}: ", build(op, shape, seed=3, saturated=saturated, **kw))
             for shape in SHAPES for saturated in (False, True)]
    check_error_budget(op, cases)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_error_budget_f32_big(op, hard):
    if hard and op not in HAS_LABELS:
        pytest.skip("no labels")
    for saturated in (False, True):
        check_error_budget(op, [(f"sat={saturated}: ", build(op, BIG, seed=4, saturated=saturated, hard=hard))])


# ---- memory, determinism, streams, devices ----------------------------------------------------


@pytest.mark.parametrize("compute_b", [True, False])
def test_bpi_never_allocates_knb(compute_b):
    """The fused BPI kernel keeps ĝ in registers: its peak allocation at 784 → 501, B = 128 is
    O(n_ktiles·B·N + K·B + K·N), far below the K·N·B·4 bytes of a materialised ĝ."""
    B, N, K = BIG
    args = [cast(a, F32, CUDA) for a in build("bp_linear_bwd_bpi", BIG, seed=5, first=not compute_b)]
    ops.bp_linear_bwd_bpi(*args)  # warm-up: module load, allocator
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    b, h_in = ops.bp_linear_bwd_bpi(*args)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    knb = K * N * B * 4
    assert peak < knb / 10, f"peak {peak / 2**20:.1f} MiB vs K·N·B·4 = {knb / 2**20:.1f} MiB"
    assert_finite(h_in, "h_in")


@pytest.mark.parametrize("op", ["bp_linear_bwd_bpi", "bp_linear_bwd_bp", "bp_linear_omega_bp",
                                "bp_cavity_update_", "bp_field_update_", "bp_argmax_output"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_deterministic(op, dtype):
    """No atomics: two runs on the same inputs agree bit for bit."""
    bp_state = op in ("bp_linear_bwd_bp", "bp_linear_omega_bp", "bp_cavity_update_")
    shape = (65, 97, 70) if bp_state else (129, 300, 101)
    args = [cast(a, dtype, CUDA) for a in build(op, shape, seed=6, masked=op in HAS_MASK)]
    first = call(ops, op, args)
    second = call(ops, op, args)
    for i, (x, y) in enumerate(zip(first, second)):
        assert_equal(x, y, name=f"{op} output {i}")


def test_argmax_out_of_range_label_gives_nan_row():
    """Labels are checked on the device (a host check would synchronise every call): a label
    outside [0, K) turns its sample's row of g into NaN and leaves the other rows exact."""
    omega, var, labels = [cast(a, F64, CUDA) for a in build("bp_argmax_output", (5, 1, 7), seed=7)]
    good = ops.bp_argmax_output(omega, var, labels)
    for bad in (7, -1, 10**6):
        wrong = labels.clone()
        wrong[1] = bad
        g = ops.bp_argmax_output(omega, var, wrong)
        assert bool(g[1].isnan().all()), f"label {bad}: row not NaN"
        keep = torch.arange(5, device=CUDA) != 1
        assert_equal(g[keep], good[keep], name=f"label {bad}: other rows")


def test_runs_on_current_stream():
    """Inputs produced on a side stream and consumed there, without synchronisation with the
    default stream: correct only if every kernel runs on the current stream."""
    args = build("bp_linear_bwd_bpi", BIG, seed=8)
    expected = call(ops, "bp_linear_bwd_bpi", [cast(a, F32, CUDA) for a in args])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        big = torch.randn(4096, 4096, device=CUDA)
        for _ in range(4):
            big = big @ big / 64  # keep the side stream busy before the inputs are written
        dev = [cast(a, F32, CUDA) if isinstance(a, torch.Tensor) else a for a in args]
        got = call(ops, "bp_linear_bwd_bpi", dev)
        delta = ops.bp_field_update_(*[cast(a, F32, CUDA) for a in build("bp_field_update_", BIG, seed=8)])
    side.synchronize()
    assert_finite(delta, "delta")
    for x, y in zip(got, expected):
        assert_equal(x, y, name="side stream vs default stream")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_runs_on_the_tensors_device():
    args = build("bp_linear_bwd_bpi", (33, 65, 67), seed=9)
    expected = call(ops, "bp_linear_bwd_bpi", [cast(a, F64, "cuda:0") for a in args])
    with torch.cuda.device(0):
        got = call(ops, "bp_linear_bwd_bpi", [cast(a, F64, "cuda:1") for a in args])
    for x, y in zip(got, expected):
        assert x.device == torch.device("cuda:1")
        assert_equal(x.cpu(), y.cpu(), name="cuda:1 vs cuda:0")


@pytest.mark.slow
@pytest.mark.parametrize("op", ["bp_linear_omega_bp", "bp_cavity_update_"])
def test_int64_indexing(op):
    """K·N·B > 2³¹: the last units' rows, past the 32-bit range, match the CPU kernel on the
    same rows (both operators act on each unit k independently)."""
    B, N, K = 2048, 1025, 1025  # K·N·B = 2.15e9
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GiB of GPU memory")
    d = testing.Draw(B, N, K, seed=10)
    x_in = d.randn(B, N).float()
    rows = slice(K - 3, K)
    m_rows = torch.tanh(d.randn(3, N, B)).float()
    b_rows = d.randn(3, N, B, scale=0.7).float()
    m_cav = torch.zeros(K, N, B, device=CUDA)
    b_cav = torch.zeros(K, N, B, device=CUDA)
    m_cav[rows] = m_rows.to(CUDA)
    b_cav[rows] = b_rows.to(CUDA)
    if op == "bp_linear_omega_bp":
        got = ops.bp_linear_omega_bp(x_in.to(CUDA), b_cav, m_cav)[:, rows].cpu()
        want = ops.bp_linear_omega_bp(x_in, b_rows, m_rows)
        assert_close(got, want, rtol=1e-5, atol=1e-5, name="ω of the last units")
        return
    omega, var = (t.float() for t in d.preact())
    b_top = d.b_top(False).float()
    b = d.randn(B, N).float()
    field = d.field(K, N).float()
    ops.bp_cavity_update_(m_cav, b_cav, b_top.to(CUDA), omega.to(CUDA), var.to(CUDA), x_in.to(CUDA),
                          b.to(CUDA), field.to(CUDA), None, 0.8, False)
    ops.bp_cavity_update_(m_rows, b_rows, b_top[:, rows].contiguous(), omega[:, rows].contiguous(),
                          var[:, rows].contiguous(), x_in, b, field[rows].contiguous(), None, 0.8, False)
    assert_close(m_cav[rows].cpu(), m_rows, rtol=1e-5, atol=1e-6, name="m̃ of the last units")
    assert_close(b_cav[rows].cpu(), b_rows, rtol=1e-5, atol=1e-5, name="b̃ of the last units")


# ---- opcheck on CUDA tensors ------------------------------------------------------------------

OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("first", [False, True], ids=["hidden", "first"])
def test_opcheck_cuda(op, first):
    if first and op not in HAS_FIRST:
        pytest.skip("no first-layer form")
    args = [cast(a, F32, CUDA) for a in build(op, (3, 17, 5), seed=11, first=first, hard=op in HAS_LABELS)]
    torch.library.opcheck(getattr(torch.ops.bpkernels, op).default, args, test_utils=OPCHECK_UTILS)
