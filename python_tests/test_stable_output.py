"""Accuracy of the sign-channel scalar functions far in their tails, against mpmath
(docs/algorithms.md §2.2, §10.15, §10.16): g and Γ = −∂g/∂ω of ``bp_output`` for hard labels and
soft fields b (|b| from 1e-30 to ±∞) over margins ς·ω/√V from −1e6 to 1e6, and the upward field
of ``bp_upfield`` for tiny V, through the operators and through the twin, float32 and float64.

The references are evaluated at 80 digits from the exact (rounded) inputs:
Z = e^b 𝓗(−ω/s) + e^{−b} 𝓗(ω/s), g = 2 sinh(b) G(ω/s)/(s Z), Γ = g (ω/V + g) (exact in
mpmath, where the cancellation costs nothing), hard labels as GH(z)/s and GH(z)(GH(z) − z)/s²,
z = −yω/s. Γ of a soft field is compared on the scale of the two terms whose difference it is
(|Γ| where it changes sign), and every quantity allows for the conditioning of x = αω, whose
rounding any evaluation suffers (x = −ς ω/(√2 s)), and of E = exp(x² + c),
c = ln((1 − |tanh b|)/|tanh b|), also rounded: relative error up to 1 + κ ulps times a small
factor, κ = (2x² + |c|) q + 2x² [x < 0], q = E/(E + erfcx x) (erfcx x ≈ 2 exp(x²) for x < 0; for
x > 0, erfcx and Γ of a hard label are well conditioned in x).
"""

import functools
import math

import mpmath as mp
import numpy as np
import pytest
import torch

from bpkernels import ops, reference

mp.mp.dps = 80
IMPLS = {"ops": ops, "twin": reference}
DTYPES = (torch.float32, torch.float64)
ULPS = {torch.float32: 32.0, torch.float64: 32.0}  # error budget in ulps (times 1 + 2x²)

MARGINS = sorted({s * 10.0 ** e for s in (-1, 1) for e in np.arange(-6, 6.01, 0.5)} | {0.0, -1.5, 2.5, 3.7})
FIELDS = [s * b for s in (-1, 1) for b in (1e-30, 1e-12, 3e-8, 1e-4, 0.1, 0.125, 2.0, 12.0, 30.0, 1e4)]
VARS = (1e-8, 1.0, 1e4)


def _call(impl, op, *args):
    """The op on 1-D tensors as [n, 1] ([B, K]) tensors; outputs flattened back."""
    out = getattr(IMPLS[impl], op)(*(a.reshape(-1, 1) if isinstance(a, torch.Tensor) else a for a in args))
    return tuple(o.reshape(-1) for o in out) if isinstance(out, tuple) else out.reshape(-1)


def _h(u):  # 𝓗(u) = ½ erfc(u/√2)
    return mp.erfc(u / mp.sqrt(2)) / 2


def _gauss(u):
    return mp.exp(-u * u / 2) / mp.sqrt(2 * mp.pi)


def ref_output(b: float, omega: float, var: float):
    """(g, Γ, T, κ): T = the scale of the terms of Γ, 2p(p e K + x q)/V (= |Γ| unless a soft
    field's Γ changes sign), κ the conditioning of the evaluation (module docstring), at 80 digits."""
    b, omega, var = mp.mpf(b), mp.mpf(omega), mp.mpf(var)
    s = mp.sqrt(var)
    u = omega / s
    if mp.isinf(b):
        y = 1 if b > 0 else -1
        z = -y * u
        gh = _gauss(z) / _h(z)
        g, gamma = y * gh / s, gh * (gh - z) / var
        return g, gamma, abs(gamma), (z * z if z < 0 else 0)
    if b == 0:
        return mp.mpf(0), mp.mpf(0), mp.mpf(0), mp.mpf(0)
    zeta = mp.exp(b) * _h(-u) + mp.exp(-b) * _h(u)
    g = 2 * mp.sinh(b) * _gauss(u) / (s * zeta)
    gamma = g * (omega / var + g)
    # Terms: Γ = 2p(p − x)/V with x = −ς u/√2 and p = |g| s/√2; for x > 0 the two terms of
    # p − x = p e K − x q are p(1 − x e) and x q = x(1 − p/x ... ); their magnitudes sum to
    # 2p(p(1 − x e) + x q)/V where e = √π erfcx(x), q = 1 − p e.
    x = -mp.sign(b) * u / mp.sqrt(2)
    p = abs(g) * s / mp.sqrt(2)
    e = mp.sqrt(mp.pi) * mp.erfc(x) * mp.exp(x * x)
    q = 1 - p * e  # E/(E + erfcx x)
    if x > 0:
        scale = 2 * p * (p * (1 - x * e) + x * q) / var
    else:
        scale = abs(gamma)
    c = -abs(b) - mp.log(mp.sinh(abs(b)))
    return g, gamma, max(abs(gamma), scale), (2 * x * x + abs(c)) * q + (2 * x * x if x < 0 else 0)


def ref_upfield(omega: float, var: float):
    y = abs(mp.mpf(omega)) / mp.sqrt(2 * mp.mpf(var))
    if y > 1e6:  # mpmath's erfc fails far out; −ln erfc y = y² + ln(√π y) + 1/(2y²) + O(y⁻⁴)
        return mp.sign(omega) * (mp.log(2) + y * y + mp.log(mp.sqrt(mp.pi) * y) + 1 / (2 * y * y)) / 2
    ec = mp.erfc(y)
    u = mp.log((2 - ec) / ec) / 2
    return u if omega >= 0 else -u


def _cases(hard: bool):
    rows = []
    for var in VARS:
        for m in MARGINS:
            for b in ([1.0, -1.0] if hard else FIELDS + [math.inf, -math.inf]):
                sgn = -1.0 if b < 0 else 1.0
                rows.append((b, sgn * m * math.sqrt(var), var))
    return rows


@functools.lru_cache(maxsize=None)
def _output_table(hard: bool, dtype: torch.dtype):
    rows = _cases(hard)
    t = torch.tensor(rows, dtype=torch.float64).to(dtype)  # the rounded inputs
    b, omega, var = (t[:, i].clone() for i in range(3))
    refs = [ref_output(float(bi) if not hard else float(bi) * math.inf, float(oi), float(vi))
            for bi, oi, vi in zip(b.tolist(), omega.tolist(), var.tolist())]
    return b, omega, var, refs


def _budget(dtype, cond: float) -> float:
    return ULPS[dtype] * torch.finfo(dtype).eps * (1.0 + cond)


def _check(name, out, ref, scale, dtype, cond):
    """|out − ref| within the budget of scale (values below the smallest normal: absolutely)."""
    tiny = torch.finfo(dtype).tiny
    err = abs(mp.mpf(out) - ref)
    bound = _budget(dtype, float(cond)) * max(scale, tiny)
    # A reference beyond the dtype's range must come out as the matching infinity.
    if abs(ref) > torch.finfo(dtype).max:
        return None if math.isinf(out) and (out > 0) == (ref > 0) else f"{name}: {out} vs {mp.nstr(ref, 8)}"
    if not math.isfinite(out) or err > bound:
        return f"{name}: {out!r} vs {mp.nstr(ref, 12)} (err {mp.nstr(err / max(scale, tiny), 3)} rel)"
    return None


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hard", [True, False], ids=["hard", "soft"])
def test_output_g_gamma_against_mpmath(impl, dtype, hard):
    b, omega, var, refs = _output_table(hard, dtype)
    g, gamma = _call(impl, "bp_output", b, omega, var, hard)
    failures = []
    for i, (rg, rgamma, scale, cond) in enumerate(refs):
        where = f"b={float(b[i])!r} omega={float(omega[i])!r} V={float(var[i])!r}"
        for msg in (_check("g", float(g[i]), rg, abs(rg), dtype, cond),
                    _check("gamma", float(gamma[i]), rgamma, scale, dtype, cond)):
            if msg:
                failures.append(f"{where}: {msg}")
    assert not failures, f"{len(failures)} of {2 * len(refs)} off, e.g.\n" + "\n".join(failures[:12])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_soft_g_small_fields(impl, dtype):
    """g for |b| ≤ 0.125, where ln((1 − |t|)/|t|) must not be formed from 1 − e^{−2|b|}."""
    rows = [(s * b, m, 1.0) for s in (-1, 1) for b in (1e-30, 1e-20, 1e-10, 3e-8, 1e-6, 1e-3, 0.05, 0.12)
            for m in (-3.0, -0.5, 0.0, 0.7, 2.0)]
    t = torch.tensor(rows, dtype=torch.float64).to(dtype)
    g, _ = _call(impl, "bp_output", t[:, 0], t[:, 1], t[:, 2], False)
    for i, (bi, oi, vi) in enumerate(t.tolist()):
        rg, _, _, cond = ref_output(bi, oi, vi)
        assert abs(float(g[i]) - rg) <= _budget(dtype, float(cond)) * abs(rg), (bi, oi, float(g[i]), rg)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_upfield_tiny_variance(impl, dtype):
    """U(ω, √V) ~ ω²/(4V) for tiny V: finite wherever the true value is representable."""
    fmax = torch.finfo(dtype).max
    rows = []
    for omega in (1e-3, 1.0, 3.0, 1e3, 1e6):
        for target in (0.3, 0.6, 0.9, 1e-3, 1e-10):  # U / fmax
            rows.append((omega, omega * omega / 4 / target / fmax))
        rows.append((omega, 1e-8))
    rows += [(-o, v) for o, v in rows]
    t = torch.tensor(rows, dtype=torch.float64).to(dtype)
    t = t[t[:, 1] > 0]
    u = _call(impl, "bp_upfield", t[:, 0], t[:, 1])
    for i, (oi, vi) in enumerate(t.tolist()):
        ru = ref_upfield(oi, vi)
        if abs(ru) > fmax:
            assert math.isinf(float(u[i])), (oi, vi)
            continue
        assert abs(float(u[i]) - ru) <= 8 * torch.finfo(dtype).eps * abs(ru), (oi, vi, float(u[i]), mp.nstr(ru, 10))
