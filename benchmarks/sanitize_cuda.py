"""Driver for compute-sanitizer: runs every CUDA kernel of bpkernels once per variant at odd
sizes (not multiples of any tile; B = 1 and K = 1 included), in float32 and float64, and checks
each result against the CPU kernel so that a sanitizer run also validates the numbers.

Run it under each tool, with PyTorch's caching allocator off (otherwise out-of-bounds accesses
that stay inside a cached block go unnoticed):

    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    compute-sanitizer --tool memcheck  --leak-check full python benchmarks/sanitize_cuda.py
    compute-sanitizer --tool racecheck --racecheck-report all python benchmarks/sanitize_cuda.py
    compute-sanitizer --tool synccheck python benchmarks/sanitize_cuda.py
    compute-sanitizer --tool initcheck python benchmarks/sanitize_cuda.py

(compute-sanitizer ships with the CUDA toolkit: $CUDA_HOME/bin/compute-sanitizer.) The script
exits 1 if a result disagrees with the CPU kernel, 2 without CUDA. ``--quick`` runs one shape.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

# (B, N, K): odd sizes around the tiles (BPI: 32 units × 32 inputs × 16/8 samples; BP: 32 units
# × 8 inputs × 32 samples; field update: 2048 weights per block; argmax: 8 samples per block).
SHAPES = [(1, 1, 1), (3, 17, 5), (1, 45, 33), (33, 65, 67), (17, 97, 41), (9, 2053, 1)]


def build(op, B, N, K, *, hard, first, masked, g):
    """Arguments of ``op`` (float64, CPU) in schema order."""

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    mask = (rand(K, N) < 0.8).double() if masked else None
    H = randn(K, N, scale=1.5)
    m = torch.tanh(H) if mask is None else torch.tanh(H) * mask
    sigma = 1.0 - m.square() if mask is None else (1.0 - m.square()) * mask
    x_hat = randn(B, N) if first else torch.tanh(randn(B, N, scale=2.0))
    delta = None if first else 1.0 - x_hat.square()
    var = max(N, 1) * (0.2 + 1.3 * rand(B, K))
    omega = var.sqrt() * (6.0 * rand(B, K) - 3.0)
    b_top = randn(B, K, scale=2.0)
    if hard:
        b_top = torch.where(b_top < 0, -1.0, 1.0).double()
    m_cav = torch.tanh(randn(K, N, B, scale=1.5))
    b_cav = None if first else randn(K, N, B, scale=0.7)
    x_in = randn(B, N) if first else randn(B, N, scale=2.0)
    return {
        "bp_linear_input": [randn(B, N), None if first else randn(B, N)],
        "bp_linear_fwd": [x_hat, delta, m, sigma],
        "bp_bayes_fwd": [x_hat, delta, m, sigma],
        "bp_linear_fwd_amp": [x_hat, delta, m, sigma, randn(B, K), torch.tanh(randn(B, N)), torch.tanh(randn(K, N))],
        "bp_upfield": [omega, var],
        "bp_output": [b_top, omega, var, hard],
        "bp_argmax_output": [omega, var, torch.randint(0, K, (B,), generator=g)],
        "bp_linear_bwd_mf": [randn(B, K), x_hat, m, not first],
        "bp_linear_bwd_amp": [randn(B, K), rand(B, K), x_hat, delta, m, sigma,
                              *((None, None, None) if first else (randn(B, K), torch.tanh(randn(B, N)), m.flip(0))),
                              not first],
        "bp_linear_bwd_bpi": [b_top, omega, var, x_hat, m, hard, not first],
        "bp_linear_omega_bp": [x_in, b_cav, m_cav],
        "bp_linear_bwd_bp": [b_top, omega, var, x_in, b_cav, m_cav, hard, not first],
        "bp_cavity_update_": [m_cav, b_cav, b_top, omega, var, x_in, None if first else randn(B, N), H, mask,
                              0.8, hard],
        "bp_field_update_": [H, m, sigma, randn(K, N, scale=3.0), None if first else randn(K, N), mask, 0.9,
                             0.1, 0.8, hard],  # `hard` doubles as damp_field here
    }[op]


MUTATED = {"bp_cavity_update_": (0, 1), "bp_field_update_": (0, 1, 2)}


def run(fn, op, args):
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = fn(*args)
    outs = [] if out is None else list(out) if isinstance(out, (tuple, list)) else [out]
    return outs + [args[i] for i in MUTATED.get(op, ()) if args[i] is not None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run every bpkernels CUDA kernel once at odd sizes.")
    p.add_argument("--quick", action="store_true", help="one shape (33x65x67) only")
    p.add_argument("--ops", default="", help="comma-separated subset of operators")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sanitize_cuda.py needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    import bpkernels  # noqa: F401  (registers the operators)

    names = [n for n in a.ops.split(",") if n] or [
        "bp_linear_input", "bp_linear_fwd", "bp_linear_fwd_amp", "bp_upfield", "bp_output", "bp_argmax_output",
        "bp_linear_bwd_mf", "bp_linear_bwd_amp", "bp_linear_bwd_bpi", "bp_linear_omega_bp", "bp_linear_bwd_bp",
        "bp_cavity_update_", "bp_field_update_", "bp_bayes_fwd"]
    shapes = [(33, 65, 67)] if a.quick else SHAPES
    failures, runs = 0, 0
    for op in names:
        fn = getattr(torch.ops.bpkernels, op).default
        for B, N, K in shapes:
            for hard, first, masked in ((False, False, False), (True, True, True), (True, False, False)):
                g = torch.Generator().manual_seed(B * 1000003 + N * 1009 + K)
                args = build(op, B, N, K, hard=hard, first=first, masked=masked, g=g)
                expected = run(fn, op, args)
                for dtype in (torch.float64, torch.float32):
                    dev = [a.to("cuda", dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                           else a.to("cuda") if isinstance(a, torch.Tensor) else a for a in args]
                    got = run(fn, op, dev)
                    torch.cuda.synchronize()
                    runs += 1
                    rtol = 1e-9 if dtype == torch.float64 else 1e-3
                    for i, (x, e) in enumerate(zip(got, expected)):
                        x = x.double().cpu()
                        scale = e.abs().max().item() if e.numel() else 0.0
                        atol = rtol * max(scale, 1.0) * math.sqrt(max(B, N, K))
                        if x.shape != e.shape or not torch.allclose(x, e, rtol=rtol, atol=atol, equal_nan=True):
                            failures += 1
                            diff = (x - e).abs().max().item() if x.shape == e.shape else float("nan")
                            print(f"MISMATCH {op} B={B} N={N} K={K} hard={hard} first={first} masked={masked} "
                                  f"{dtype} output {i}: max |diff| {diff:.3e}")
        print(f"{op}: done")
    print(f"{runs} kernel runs, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
