"""Seeded fuzz of every bpkernels operator over extreme but finite inputs.

Imported by ``benchmarks/robustness.py fuzz`` (the published figures) and by
``python_tests/test_fuzz.py`` (a small CI run). Every operator of :mod:`bpkernels.testing` is
called in float32 and float64 on large tensors drawn log-uniformly over wide ranges: fields
|H|, |u|, |b| up to 1e4, first-layer inputs |x| up to 1e6, preactivation variances V from 1e-8
to 1e8 with margins |ω|/√V up to 1e6, soft labels |b_top| from 1e-30 to 1e4 and ±∞, messages
|g| up to 1e4. Each output is compared with the float64 twin (:mod:`bpkernels.reference`) on
the same (rounded) inputs, and the scalar functions (bp_upfield, bp_output) on a sample of
points with 80-digit mpmath values. Counted per operator and dtype:

- non-finite: outputs that are ±∞ or NaN where the reference is finite and within the dtype's
  range (must be 0);
- premature underflows: outputs that are 0 where the reference is at least the dtype's smallest
  normal (g and Γ of a unit whose mean agrees with its label by a wide margin at a tiny V: the
  true values are below 1e-30 in float32; reported, not a failure);
- worst error against the float64 twin, per operator kind (ERROR_KIND): "rel", elementwise
  relative error, with values below √(smallest normal) (1e-19 in float32, 1e-154 in float64)
  measured absolutely, and Γ of a soft label on the scale of the two terms whose difference it
  is (docs/algorithms.md §10.15); "row", for outputs that are sums (matrix products, cavity
  sums, the field update, the argmax layer's true class), the error relative to the largest
  reference entry of the same output row, as a sum that cancels has no relative accuracy of its
  own; "abs", for outputs in [−1, 1] formed from a rounded tanh or erf (x̂, Δ = 1 − x̂², σ), the
  absolute error;
- worst relative error against mpmath on the sample (scalar functions), same floor.
"""

from __future__ import annotations

import math
import time

import mpmath as mp
import torch

from bpkernels import ops, reference, testing

F64 = torch.float64
ELEMENTWISE = {"bp_linear_input", "bp_upfield", "bp_output", "bp_argmax_output", "bp_weight_var",
               "bp_field_update_"}  # drawn on larger shapes
ERROR_KIND = {"bp_upfield": "rel", "bp_output": "rel", "bp_linear_input": "abs", "bp_bayes_fwd": "abs",
              "bp_weight_var": "abs"}  # every other operator: "row"
CAVITY = {"bp_linear_bwd_bpi", "bp_linear_omega_bp", "bp_linear_bwd_bp", "bp_cavity_update_"}
MPMATH_SAMPLE = 1000  # points per (scalar op, dtype, output)


def _shape(op: str) -> tuple[int, int, int]:
    if op in ELEMENTWISE:
        return 256, 256, 256
    if op in CAVITY:
        return 32, 64, 32
    return 128, 256, 128


class _Extreme:
    """Log-uniform magnitudes with random signs, from a seeded CPU generator (float64)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def u(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g, dtype=F64)

    def mag(self, shape, lo: float, hi: float, signed: bool = True) -> torch.Tensor:
        a = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * self.u(*shape))
        return torch.where(self.u(*shape) < 0.5, -a, a) if signed else a

    def weights(self, shape) -> torch.Tensor:
        return torch.tanh(self.mag(shape, 1e-4, 1e4))  # m = ±1 exactly for a large part


def _draw(op: str, args: list, first: bool, hard: bool, x: _Extreme) -> list:
    """The arguments of ``op`` (laid out by bpkernels.testing) redrawn at extreme values."""
    names = testing.arg_names(op)
    out = list(args)
    omega_var = None
    for i, (name, a) in enumerate(zip(names, args)):
        if not (isinstance(a, torch.Tensor) and a.is_floating_point()):
            continue
        shape = a.shape
        if name in ("precision", "precision_prior"):  # Gaussian weights: Ω > 0
            out[i] = x.mag(shape, 1e-6, 1e6, signed=False)
        elif name in ("field", "h_in", "field_prior", "b_cav", "b", "u", "omega_in"):
            out[i] = x.mag(shape, 1e-4, 1e4)
        elif name in ("mag", "mag_cav", "mag_old"):
            out[i] = x.weights(shape)
            if "mask" in names and args[names.index("mask")] is not None and name == "mag":
                out[i] = out[i] * args[names.index("mask")]
        elif name in ("x_hat", "x_hat_old", "x_in"):
            out[i] = x.mag(shape, 1e-6, 1e6) if (first and name != "x_hat_old") else (
                torch.tanh(x.mag(shape, 1e-4, 1e4)) if name != "x_in" else x.mag(shape, 1e-4, 1e4))
        elif name == "delta":
            xh = out[names.index("x_hat")]
            out[i] = 1.0 - xh.square()
        elif name in ("g", "g_old"):
            out[i] = x.mag(shape, 1e-6, 1e4)
        elif name == "gamma":
            out[i] = x.mag(shape, 1e-6, 1e4, signed=False)
        elif name == "var":
            var = x.mag(shape, 1e-8, 1e8, signed=False)
            omega = var.sqrt() * x.mag(shape, 1e-6, 1e6)
            omega_var = (omega, var)
            out[i] = var
        elif name == "b_top":
            if hard:
                out[i] = torch.where(x.u(*shape) < 0.5, -1.0, 1.0).to(F64)
            else:
                b = x.mag(shape, 1e-30, 1e4)
                pick = x.u(*shape)
                out[i] = torch.where(pick < 0.1, math.inf * torch.sign(b), b)
        elif name != "mask" and name != "omega":
            raise ValueError(f"fuzz: no extreme draw for {op}'s argument {name}")
    if "omega" in names:
        out[names.index("omega")], out[names.index("var")] = omega_var
    return out


def _outputs(impl, op, args):
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = getattr(impl, op)(*args)
    out = () if out is None else (tuple(out) if isinstance(out, (tuple, list)) else (out,))
    return out + tuple(args[i] for i in testing.mutated_args(op) if args[i] is not None)


def _gamma_scale(b_top, omega, var, hard, gamma_ref):
    """The scale of Γ's two terms, 2p(p e K + x q)/V (|Γ| where they do not cancel), float64."""
    alpha, c, _ = reference.output_coef(b_top, var.sqrt(), hard)
    xx = alpha * omega
    e = reference.SQRT_PI * torch.special.erfcx(xx)
    big_e = torch.exp(xx * xx + c)
    p = 1.0 / (reference.SQRT_PI * big_e + e)
    q = 1.0 / (1.0 + e / (reference.SQRT_PI * big_e))
    terms = 2.0 * p * (p * e * reference.mills_excess(xx, e) + xx * q) / var
    return torch.where(xx > 0, torch.maximum(terms, gamma_ref.abs()), gamma_ref.abs())


def _floor(dtype) -> float:
    return math.sqrt(torch.finfo(dtype).tiny)


def _errors(op, out, ref, dtype, scale=None):
    """(non-finite count, premature underflows, worst error) of an output against its float64
    reference (module docstring)."""
    out64 = out.to(F64)
    info = torch.finfo(dtype)
    in_range = torch.isfinite(ref) & (ref.abs() <= info.max)
    bad = int((~torch.isfinite(out64) & in_range).sum())
    under = int(((out64 == 0) & (ref.abs() >= info.tiny) & in_range).sum())
    both = in_range & torch.isfinite(out64)
    if not both.any():
        return bad, under, 0.0
    diff = (out64 - ref).abs()
    kind = ERROR_KIND.get(op, "row")
    if kind == "abs":
        denom = torch.ones_like(ref)
    elif kind == "rel" or ref.dim() == 0:
        denom = (ref.abs() if scale is None else scale).clamp(min=_floor(dtype))
    else:  # a sum over an axis: relative to the largest reference entry of the row
        rows = ref.abs().masked_fill(~in_range, 0).reshape(ref.shape[0], -1).amax(dim=1)
        denom = rows.reshape(-1, *([1] * (ref.dim() - 1))).expand_as(ref).clamp(min=_floor(dtype))
    return bad, under, float((diff / denom)[both].max())


# ---- mpmath references of the scalar functions -------------------------------------------

mp.mp.dps = 80


def _mp_h(u):
    return mp.erfc(u / mp.sqrt(2)) / 2


def _mp_gauss(u):
    return mp.exp(-u * u / 2) / mp.sqrt(2 * mp.pi)


def mp_output(b: float, omega: float, var: float):
    """(g, Γ) at 80 digits: Z = e^b 𝓗(−ω/s) + e^{−b} 𝓗(ω/s), g = ∂ω ln Z, Γ = g(ω/V + g)."""
    b, omega, var = mp.mpf(b), mp.mpf(omega), mp.mpf(var)
    s = mp.sqrt(var)
    u = omega / s
    if mp.isinf(b):
        z = -mp.sign(b) * u
        gh = _mp_gauss(z) / _mp_h(z)
        return mp.sign(b) * gh / s, gh * (gh - z) / var
    zeta = mp.exp(b) * _mp_h(-u) + mp.exp(-b) * _mp_h(u)
    g = 2 * mp.sinh(b) * _mp_gauss(u) / (s * zeta)
    return g, g * (omega / var + g)


def mp_upfield(omega: float, var: float):
    y = abs(mp.mpf(omega)) / mp.sqrt(2 * mp.mpf(var))
    if y > 1e6:  # mpmath's erfc fails far out; −ln erfc y = y² + ln(√π y) + 1/(2y²) + O(y⁻⁴)
        return mp.sign(omega) * (mp.log(2) + y * y + mp.log(mp.sqrt(mp.pi) * y) + 1 / (2 * y * y)) / 2
    ec = mp.erfc(y)
    return mp.sign(omega) * mp.log((2 - ec) / ec) / 2


def _mp_worst(op, args, outs, hard, dtype, scale, gen) -> float:
    """Worst relative error of the scalar op's outputs on a random sample against mpmath."""
    n = outs[0].numel()
    idx = torch.randperm(n, generator=gen)[:MPMATH_SAMPLE].tolist()
    info = torch.finfo(dtype)
    worst = 0.0
    for j in idx:
        if op == "bp_upfield":
            o, v = float(args[0].reshape(-1)[j]), float(args[1].reshape(-1)[j])
            refs, scales = [mp_upfield(o, v)], [None]
        else:
            b, o, v = (float(args[i].reshape(-1)[j]) for i in range(3))
            refs = list(mp_output(b * math.inf if hard else b, o, v))
            scales = [None, float(scale.reshape(-1)[j])]
        for k, ref in enumerate(refs):
            got = float(outs[k].reshape(-1)[j])
            if abs(ref) > info.max or not math.isfinite(got):
                continue
            den = max(abs(ref) if scales[k] is None else max(scales[k], abs(ref)), _floor(dtype))
            worst = max(worst, float(abs(mp.mpf(got) - ref) / den))
    return worst


def fuzz_op(op: str, dtype: torch.dtype, n_inputs: int, seed: int, shape=None) -> dict:
    """Fuzz one operator in one dtype on at least n_inputs scalar inputs, in calls on layers of
    shape (B, N, K) (default: large, per operator kind)."""
    B, N, K = shape or _shape(op)
    x = _Extreme(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    res = dict(op=op, dtype=str(dtype).replace("torch.", ""), inputs=0, calls=0, nonfinite=0,
               underflow=0, err=0.0, mp_err=None)
    variants = [(first, hard) for first in (True, False) for hard in (False, True)]
    call = 0
    while res["inputs"] < n_inputs:
        first, hard = variants[call % len(variants)]
        layout = testing.build_args(op, (B, N, K), seed + call, first=first, hard=hard,
                                    masked=bool(call % 3 == 1))
        args64 = _draw(op, layout, first, hard, x)
        args = [testing.cast(a, dtype, "cpu") for a in args64]
        exact = [testing.cast(a, F64, "cpu") for a in args]  # the rounded inputs, in float64
        outs = _outputs(ops, op, args)
        refs = _outputs(reference, op, exact)
        for k, (o, r) in enumerate(zip(outs, refs)):
            scale = _gamma_scale(*exact[:3], hard, r) if (op == "bp_output" and k == 1) else None
            bad, under, err = _errors(op, o, r, dtype, scale)
            res["nonfinite"] += bad
            res["underflow"] += under
            res["err"] = max(res["err"], err)
        if op in ("bp_upfield", "bp_output"):
            scale = _gamma_scale(*exact[:3], hard, refs[1]) if op == "bp_output" else None
            mp_err = _mp_worst(op, exact, outs, hard, dtype, scale, gen)
            res["mp_err"] = max(res["mp_err"] or 0.0, mp_err)
        res["inputs"] += sum(a.numel() for a in args if isinstance(a, torch.Tensor))
        res["calls"] += 1
        call += 1
    return res


def run_fuzz_results(n_inputs: int, seed: int = 0, shape=None) -> list[dict]:
    """fuzz_op for every operator and dtype, n_inputs scalar inputs in all."""
    combos = [(op, dt) for op in testing.OPS for dt in (torch.float32, F64)]
    per = max(1, -(-n_inputs // len(combos)))
    return [fuzz_op(op, dt, per, seed, shape) for op, dt in combos]


def run_fuzz(n_inputs: int, seed: int = 0) -> str:
    """The "## Op fuzz" section of benchmarks/results/robustness.md (Markdown)."""
    t0 = time.time()
    results = run_fuzz_results(n_inputs, seed)
    total = sum(r["inputs"] for r in results)
    lines = ["## Op fuzz", "",
             f"`python benchmarks/robustness.py fuzz --inputs {n_inputs}` (seed {seed}): "
             f"{total:,} scalar inputs in {sum(r['calls'] for r in results)} calls, "
             f"{time.time() - t0:.0f} s on 1 thread. Inputs: |H|, |u|, |b| up to 1e4, first-layer "
             "|x| up to 1e6, V from 1e-8 to 1e8 with |ω|/√V up to 1e6, |b_top| from 1e-30 to 1e4 "
             "and ±∞ (10 %), |g| up to 1e4, log-uniform with random signs; hidden and first "
             "layers, hard and soft labels, with and without masks. Reference: the float64 "
             "twin on the same rounded inputs (error kinds: rel = elementwise relative, values "
             "below √(smallest normal) measured absolutely, Γ of soft labels on the scale of its "
             "two terms; row = relative to the row's largest entry, for sums; abs = absolute, for "
             "x̂, Δ = 1 − x̂² and σ in [−1, 1]), and 80-digit mpmath on "
             f"{MPMATH_SAMPLE} random points per call for the scalar functions "
             "(python_tests/fuzz_ops.py).", "",
             "| op | dtype | inputs | non-finite where the reference is finite | premature underflows | "
             "worst error vs float64 twin (kind) | worst rel. error vs mpmath (sample) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        mp_col = "" if r["mp_err"] is None else f"{r['mp_err']:.1e}"
        lines.append(f"| {r['op']} | {r['dtype']} | {r['inputs']:,} | {r['nonfinite']} | {r['underflow']} | "
                     f"{r['err']:.1e} ({ERROR_KIND.get(r['op'], 'row')}) | {mp_col} |")
    lines.append("")
    return "\n".join(lines)
