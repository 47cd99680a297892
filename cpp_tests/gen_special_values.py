#!/usr/bin/env python3
"""Derives the coefficients in csrc/include/bpkernels/special.h and writes the mpmath reference
values for cpp_tests/test_special.cpp into cpp_tests/special_values.bin.

    python cpp_tests/gen_special_values.py            # fit, print the C++ coefficient blocks,
                                                      # write cpp_tests/special_values.bin
    python cpp_tests/gen_special_values.py --check    # also fail unless special.h holds exactly
                                                      # the printed coefficient blocks
    python cpp_tests/gen_special_values.py --values-only   # only the reference values

Everything is derived here from first principles; nothing is copied from a library:

* vexp<float>: exp(r) ~ 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3 + c6 r^4) on |r| <= 0.35 (the
  Cody-Waite reduced range |r| <= ln2/2 plus slack), minimax in relative error.
* erfcx<float>: with q = 2 + |x|, t = 2/q, s = 2t - 1 in [-1, 1] and u = 1 - s,
  erfcx(|x|) = t exp(u Q(s)), Q a polynomial fitted minimax (absolute error of u Q(s), which is
  the relative error of erfcx) to log(erfcx(|x|)/t) over the whole half line.
* erfcx<double> for x >= 10: the asymptotic series
  erfcx(x) = 1/(x sqrt(pi)) sum_k (-1)^k (2k-1)!! / (2 x^2)^k, truncated after k = 12; its
  coefficients in w = 1/x^2 are the exact dyadic rationals (-1)^k (2k-1)!! / 2^k.

The minimax fits use Lawson's iteratively reweighted least squares on a dense Chebyshev grid,
then round the coefficients to float one at a time, lowest degree first, refitting the
higher ones after each rounding so that they absorb the rounding error.

Reference values are computed with mpmath at 50 significant digits and stored as
mantissa * 2^exponent (mantissa in [0.5, 1) rounded to double, exponent an int) so that values
outside the double range (erfcx(x) for x < -26.63) are represented too; exponents above
EXP_CAP are capped (such values overflow every floating-point type by far).

special_values.bin (little-endian; read by cpp_tests/test_special.cpp):
    8 bytes  magic b"BPKSV1\0\0"
    uint32   number of tables,  uint32  EXP_CAP
    per table: 16 bytes name (NUL-padded), uint64 n, then n records of
               float64 x, float64 mantissa, int32 exponent  (20 bytes, packed)
"""

import argparse
import math
import os
import struct
import sys

import mpmath as mp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "..", "csrc", "include", "bpkernels", "special.h")
VALUES = os.path.join(HERE, "special_values.bin")
MAGIC = b"BPKSV1\0\0"

mp.mp.dps = 50
EXP_CAP = 100000

# ---------------------------------------------------------------------------------------------
# Reference functions (50 digits)
# ---------------------------------------------------------------------------------------------


def erfcx_mp(x):
    """exp(x^2) erfc(x) at 50 digits (x an mpf or float). For x >= 1e4 the asymptotic series
    (30 terms, remainder below 1e-200 there) replaces erfc, whose mpmath implementation
    cannot handle huge arguments."""
    x = mp.mpf(x)
    if x >= 10000:
        s, term = mp.mpf(0), mp.mpf(1)
        for k in range(30):
            s += term
            term *= -(2 * k + 1) / (2 * x * x)
        return s / (x * mp.sqrt(mp.pi))
    return mp.exp(x * x) * mp.erfc(x)


def mant_exp(v):
    """v > 0 (mpf) -> (mantissa in [0.5, 1) as double, exponent capped at EXP_CAP)."""
    m, e = mp.frexp(v)
    e = int(e)
    if e > EXP_CAP:
        return 0.75, EXP_CAP
    return float(m), e


# ---------------------------------------------------------------------------------------------
# Minimax fitting
# ---------------------------------------------------------------------------------------------


def lawson(basis, target, fixed=None, iters=4000):
    """min_c max_i |basis @ c + fixed - target| by Lawson's iteratively reweighted least squares
    (converges to the discrete minimax solution). Returns (c, max error)."""
    rhs = target - (0.0 if fixed is None else fixed)
    w = np.full(len(rhs), 1.0 / len(rhs))
    best = None
    for _ in range(iters):
        sw = np.sqrt(w)
        c = np.linalg.lstsq(basis * sw[:, None], rhs * sw, rcond=None)[0]
        err = np.abs(basis @ c - rhs)
        emax = err.max()
        if best is None or emax < best[1]:
            best = (c, emax)
        w = w * err
        w /= w.sum()
    return best


def fit_rounded(basis, target):
    """Minimax fit whose coefficients are float32 numbers: round the lowest-degree coefficient
    of the minimax fit, refit the higher ones with it fixed, round the next, and so on, so that
    the higher coefficients absorb the rounding errors of the lower ones. Returns (float32
    coefficients, max error in exact arithmetic)."""
    n = basis.shape[1]
    coef = np.zeros(n)
    for k in range(n):
        c, _ = lawson(basis[:, k:], target, basis[:, :k] @ coef[:k])
        coef[k] = float(np.float32(c[0]))
    return coef.astype(np.float32), np.abs(basis @ coef - target).max()


def cheb_grid(a, b, n):
    """n Chebyshev extrema on [a, b], endpoints included."""
    k = np.arange(n)
    return a + (b - a) * (1 - np.cos(np.pi * k / (n - 1))) / 2


def fit_vexp():
    """exp(r) = 1 + r + r^2 q(r), q of degree 4, minimax relative error on |r| <= 0.35."""
    r = cheb_grid(-0.35, 0.35, 3000)
    er = np.array([float(mp.exp(v)) for v in r])
    # relative error (1 + r + r^2 q(r) - e^r) / e^r: basis r^(2+k)/e^r, target (e^r-1-r)/e^r
    target = np.array([float((mp.exp(v) - 1 - mp.mpf(v)) / mp.exp(v)) for v in r])
    basis = np.stack([r ** (2 + k) / er for k in range(5)], axis=1)
    return fit_rounded(basis, target)


def erfcx_log_ratio(s):
    """log(erfcx(x)/t) with t = (1 + s)/2 = 2/(2 + x), i.e. x = 2(1 - s)/(1 + s)."""
    s = mp.mpf(s)
    if s == -1:
        return -mp.log(2 * mp.sqrt(mp.pi))
    t = (1 + s) / 2
    x = 2 * (1 - s) / (1 + s)
    return mp.log(erfcx_mp(x) / t)


ERFCX_F32_DEGREE = 10  # degree of Q; p = u Q(s) has degree 11


def fit_erfcx_f32():
    s = cheb_grid(-1.0, 1.0, 3000)
    target = np.array([float(erfcx_log_ratio(v)) for v in s])
    basis = np.stack([(1 - s) * s**k for k in range(ERFCX_F32_DEGREE + 1)], axis=1)
    coef, err = fit_rounded(basis, target)
    # independent check on a fresh grid, evaluated exactly (mpmath) with the float coefficients
    worst = mp.mpf(0)
    for v in np.linspace(-1, 1, 4001):
        v = mp.mpf(v)
        p = mp.mpf(0)
        for c in coef[::-1]:
            p = p * v + mp.mpf(float(c))
        worst = max(worst, abs((1 - v) * p - erfcx_log_ratio(v)))
    return coef, err, float(worst)


ASYM_TERMS = 13  # k = 0 .. 12


def asym_coefficients():
    """(-1)^k (2k-1)!!/2^k, k = 0..12: erfcx(x) = (1/(x sqrt(pi))) sum_k a_k x^(-2k)."""
    out = []
    dfact = 1
    for k in range(ASYM_TERMS):
        if k > 0:
            dfact *= 2 * k - 1
        out.append((-1) ** k * dfact / 2**k)  # exact: dfact < 2^53, power-of-two denominator
    first_omitted = mp.mpf(math.prod(range(1, 2 * ASYM_TERMS, 2))) / mp.mpf(200) ** ASYM_TERMS
    return out, first_omitted


# ---------------------------------------------------------------------------------------------
# C++ text
# ---------------------------------------------------------------------------------------------


def f32_literal(c):
    """Shortest decimal that reads back as the same float."""
    return str(np.float32(c)) + "f"


def f64_literal(c):
    return repr(float(c))


def cxx_array(name, ctype, literals):
    """A local constexpr array as it appears in the function bodies of special.h."""
    body = ",\n".join("      " + lit for lit in literals)
    return f"  constexpr {ctype} {name}[] = {{\n{body}}};"


def coefficient_blocks():
    vexp_c, vexp_err = fit_vexp()
    erfcx_c, erfcx_err, erfcx_err_check = fit_erfcx_f32()
    asym_c, asym_tail = asym_coefficients()
    blocks = [
        cxx_array("kExpPoly", "float", [f32_literal(c) for c in vexp_c]),
        cxx_array("kErfcxPolyF32", "float", [f32_literal(c) for c in erfcx_c]),
        cxx_array("kErfcxAsymF64", "double", [f64_literal(c) for c in asym_c]),
    ]
    notes = [
        f"vexp<float> polynomial: max relative error (exact arithmetic, float coefficients) "
        f"{vexp_err:.3e}",
        f"erfcx<float> polynomial: max |u Q(s) - log(erfcx/t)| (float coefficients) "
        f"{erfcx_err:.3e} on the fit grid, {erfcx_err_check:.3e} on a fresh grid",
        f"erfcx<double> asymptotic series: first omitted term at x = 10: {mp.nstr(asym_tail, 3)}",
    ]
    return blocks, notes


# ---------------------------------------------------------------------------------------------
# Reference grids
# ---------------------------------------------------------------------------------------------


def logspace(lo_exp, hi_exp, per_decade):
    n = int(round((hi_exp - lo_exp) * per_decade)) + 1
    return [float(v) for v in 10.0 ** np.linspace(lo_exp, hi_exp, n)]


def linspace(a, b, step):
    n = int(round((b - a) / step)) + 1
    return [float(v) for v in np.linspace(a, b, n)]


def around(x, n_ulps, step_ulps, dtype):
    """Points x + k ulp(x) (k = -n_ulps .. n_ulps, step step_ulps) in dtype."""
    v = dtype(x)
    out = []
    for k in range(-n_ulps, n_ulps + 1, step_ulps):
        y = v
        direction = dtype(np.inf) if k > 0 else dtype(-np.inf)
        for _ in range(abs(k)):
            y = np.nextafter(y, direction)
        out.append(float(y))
    return out


def erfcx_grid_f64():
    mags = (
        logspace(-300, 300, 4)  # whole range, 4 per decade
        + logspace(-3, 3, 100)  # dense around the scale changes
        + [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]
        + [2e307, 3e307, 5e307, 1e308, 1.5e308]  # subnormal results from 2.5e307 on
    )
    pts = mags + [-m for m in mags]
    pts += linspace(-27.0, 27.0, 0.02)
    pts += linspace(9.9, 10.1, 0.0005)  # switch to the asymptotic series at x = 10
    pts += around(10.0, 64, 1, np.float64)
    pts += linspace(-26.66, -26.60, 0.0002)  # overflow boundary on the negative side
    x_ovf = -float(mp.sqrt(mp.log(mp.mpf(2) ** 1024 / 2)))  # 2 exp(x^2) = 2^1024
    pts += around(x_ovf, 200, 5, np.float64)
    return sorted(set(pts))


def erfcx_grid_f32():
    f32 = np.float32
    mags = (
        logspace(-30, 30, 20)
        + logspace(-3, 3, 100)
        + [float(np.finfo(f32).smallest_subnormal), float(np.finfo(f32).tiny)]
        + [float(np.finfo(f32).max)]
        + [4e37, 6e37, 1e38, 2e38, 3e38]  # subnormal results from 4.8e37 on
    )
    pts = mags + [-m for m in mags]
    pts += linspace(-10.0, 10.0, 0.01)
    x_ovf = -float(mp.sqrt(mp.log(mp.mpf(2) ** 128 / 2)))  # 2 exp(x^2) = 2^128
    pts += linspace(-9.45, -9.30, 0.0005)
    pts += around(x_ovf, 200, 5, np.float32)
    return sorted(set(float(f32(p)) for p in pts))


def symmetry_grid(limit, dtype):
    pts = linspace(0.0, limit, 0.02) + logspace(-30, math.log10(limit), 20)
    return sorted(set(float(dtype(p)) for p in pts))


def vexp_grid():
    f32 = np.float32
    pts = linspace(-110.0, 100.0, 0.1) + logspace(-30, 2, 5) + [-p for p in logspace(-30, 2, 5)]
    for edge in (mp.log(mp.mpf(2) ** 128), mp.log(mp.mpf(2) ** -126), mp.log(mp.mpf(2) ** -150)):
        pts += around(float(edge), 100, 1, f32)
    return sorted(set(float(f32(p)) for p in pts if -110.0 <= float(f32(p)) <= 100.0))


def reference_values():
    """The reference tables as bytes in the special_values.bin format (module docstring)."""
    tables = []

    def table(name, xs, fn):
        records = b"".join(struct.pack("<ddi", x, *mant_exp(fn(x))) for x in xs)
        tables.append(name.encode().ljust(16, b"\0") + struct.pack("<Q", len(xs)) + records)

    def erfcx_ref(x):
        if x < -400.0:  # exp(x^2) > 2^EXP_CAP: only "huge" matters
            return mp.mpf(2) ** (EXP_CAP + 1)
        return erfcx_mp(x)

    def two_exp_sq(x):
        return 2 * mp.exp(mp.mpf(x) ** 2)

    # erfcx at double x; erfcx at float x (every x is a float); 2 exp(x^2) = erfcx(x) + erfcx(-x)
    # at double x in [0, 26.6] and at float x in [0, 9.3]; exp at float x in [-110, 100].
    table("kErfcxF64", erfcx_grid_f64(), erfcx_ref)
    table("kErfcxF32", erfcx_grid_f32(), erfcx_ref)
    table("kTwoExpSqF64", symmetry_grid(26.6, np.float64), two_exp_sq)
    table("kTwoExpSqF32", symmetry_grid(9.3, np.float32), two_exp_sq)
    table("kExpF32", vexp_grid(), lambda x: mp.exp(mp.mpf(x)))
    return MAGIC + struct.pack("<II", len(tables), EXP_CAP) + b"".join(tables)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--check", action="store_true", help="fail unless special.h holds the coefficient blocks"
    )
    ap.add_argument("--no-values", action="store_true", help="do not write special_values.bin")
    ap.add_argument("--values-only", action="store_true", help="only write special_values.bin")
    ap.add_argument("--out", default=VALUES, help="where to write the values (default: %(default)s)")
    args = ap.parse_args()

    if args.values_only:
        write_values(args.out)
        return
    blocks, notes = coefficient_blocks()
    for b in blocks:
        print(b)
        print()
    for n in notes:
        print("//", n)

    if args.check:
        with open(HEADER) as f:
            text = f.read()
        missing = [b.split("[")[0] for b in blocks if b not in text]
        if missing:
            sys.exit(f"special.h does not hold the generated blocks: {missing}")
        print("special.h coefficient blocks: OK")

    if not args.no_values:
        write_values(args.out)


def write_values(path):
    with open(path, "wb") as f:
        f.write(reference_values())
    print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
