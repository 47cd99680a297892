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

from bpkernels import testing

# (B, N, K): odd sizes around the tiles (BPI: 32 units × 32 inputs × 16/8 samples; BP: 32 units
# × 8 inputs × 32 samples; field update: 2048 weights per block; argmax: 8 samples per block).
SHAPES = [(1, 1, 1), (3, 17, 5), (1, 45, 33), (33, 65, 67), (17, 97, 41), (9, 2053, 1)]


def run(fn, op, args):
    """Outputs of one call on copies of the arguments, then the arguments it mutated."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = fn(*args)
    outs = [] if out is None else list(out) if isinstance(out, (tuple, list)) else [out]
    return outs + [args[i] for i in testing.mutated_args(op) if args[i] is not None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run every bpkernels CUDA kernel once at odd sizes.")
    p.add_argument("--quick", action="store_true", help="one shape (33x65x67) only")
    p.add_argument("--ops", default="", help="comma-separated subset of operators")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("sanitize_cuda.py needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    names = [n for n in a.ops.split(",") if n] or list(testing.OPS)
    shapes = [(33, 65, 67)] if a.quick else SHAPES
    failures, runs = 0, 0
    for op in names:
        fn = getattr(torch.ops.bpkernels, op).default
        for B, N, K in shapes:
            for hard, first, masked in ((False, False, False), (True, True, True), (True, False, False)):
                # (`hard` doubles as the field update's damp_field)
                args = testing.build_args(op, (B, N, K), B * 1000003 + N * 1009 + K, hard=hard, first=first,
                                          masked=masked, damp_field=hard)
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
