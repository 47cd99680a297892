"""Per-layer step timing of a message-passing conv layer, two implementations: the library's
(im2col + the dense operators for BPI, ATen convolutions for MF/AMP) against the other one
(ATen convolutions, im2col + dense operators), checked to agree in float64 first.

    python benchmarks/bench_conv.py --threads 2

Training runs of conv nets go through the command line, e.g.
``bpkernels compare --arch conv32k5s2p2-conv64k3s2p1-dense501-dense10 --methods amp,ste``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import device_name, git_commit  # noqa: E402
from bpkernels import ops  # noqa: E402
from bpkernels.conv import BPConv2d  # noqa: E402
from bpkernels.nn import BPLayer  # noqa: E402
from bpkernels.reference import VAR_EPS  # noqa: E402

# ---- bench: one hidden-layer message-passing step, two implementations --------------------


def aten_step(layer: BPConv2d, u: Tensor, b_top: Tensor, algo: str) -> tuple[Tensor, Tensor]:
    """MF / AMP (τ_max = 1) step of a hidden conv layer with ATen convolutions (spec §9):
    ω = conv(m, x̂), V = conv(σ, x̂²) + conv(m² + σ, Δ) + ε, b = convᵀ(m, g) [+ x̂ convᵀ(m², Γ)],
    H_in = Σ g x̂ [+ m Σ Γ x̂²] (conv2d_weight), then the field update. Returns (u_out, b)."""
    conv = functools.partial(F.conv2d, stride=layer.stride, padding=layer.padding)
    grad_in = functools.partial(torch.nn.grad.conv2d_input, stride=layer.stride, padding=layer.padding)
    grad_w = functools.partial(torch.nn.grad.conv2d_weight, stride=layer.stride, padding=layer.padding)
    mag, sigma = layer.mag, layer.sigma
    x_hat = torch.tanh(u)
    delta = 1.0 - x_hat.square()
    omega = conv(x_hat, mag)
    var = conv(x_hat.square(), sigma) + conv(delta, mag.square() + sigma) + VAR_EPS
    shape = omega.shape
    u_out = ops.bp_upfield(omega.flatten(1), var.flatten(1)).view(shape)
    g, gamma = (t.view(shape) for t in ops.bp_output(b_top.flatten(1), omega.flatten(1), var.flatten(1)))
    b = grad_in(x_hat.shape, mag, g)
    h_in = grad_w(x_hat, mag.shape, g)
    if algo == "amp":
        b = b + x_hat * grad_in(x_hat.shape, mag.square(), gamma)
        h_in = h_in + mag * grad_w(x_hat.square(), mag.shape, gamma)
    k = mag.shape[0]
    ops.bp_field_update_(layer.field.view(k, -1), mag.view(k, -1), sigma.view(k, -1), h_in.view(k, -1),
                         None, None, layer.rho, layer.r, layer.psi)
    return u_out, b


def im2col_step(layer: BPConv2d, u: Tensor, b_top: Tensor) -> tuple[Tensor, Tensor]:
    """The same step through the rows: im2col, the dense operators, col2im (BPLayer's path,
    which BPConv2d takes for BPI). Returns (u_out, b)."""
    layer.mp_reset(u.shape[0], 1)
    u_out = BPLayer.mp_forward(layer, u, first=False)
    b, _ = BPLayer.mp_backward(layer, b_top, 1)
    layer.mp_clear()
    return u_out, b


def best_ms(fn, repeats: int, number: int) -> float:
    """Minimum over ``repeats`` of the mean time of ``number`` calls (the least disturbed
    estimate on a shared CPU)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return 1e3 * min(times)


def cmd_bench(args) -> None:
    torch.set_num_threads(args.threads)
    cases = [("L1 1->32 k3s2p1 28x28", 1, 32, 28), ("L2 32->64 k3s2p1 14x14", 32, 64, 14),
             ("L2' 32->64 k3s1p1 14x14", 32, 64, 14)]
    meta = dict(device=device_name("cpu"), threads=torch.get_num_threads(), batch=args.batch,
                dtype="float32", commit=git_commit(), torch=torch.__version__)
    print(", ".join(f"{k} {v}" for k, v in meta.items()))
    print(f"{'layer':<26} {'algo':<5} {'im2col ms':>10} {'aten ms':>10} {'im2col/aten':>12}")
    rows = []
    for name, c, k, size in cases:
        stride = 1 if "s1" in name else 2
        for algo in args.algos.split(","):
            def make(dtype=torch.float32):
                return BPConv2d(c, k, 3, stride=stride, padding=1, algo=algo, dtype=dtype,
                                generator=torch.Generator().manual_seed(0))
            gen = torch.Generator().manual_seed(1)
            u = torch.randn(args.batch, c, size, size, generator=gen, dtype=torch.float64)
            out = (size + 2 - 3) // stride + 1
            b_top = torch.randn(args.batch, k, out, out, generator=gen, dtype=torch.float64)
            if algo != "bpi":  # the two paths agree (float64) before anything is timed
                first, second = make(dtype=torch.float64), make(dtype=torch.float64)
                for a, b in zip(im2col_step(first, u, b_top), aten_step(second, u, b_top, algo)):
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(first.field, second.field, rtol=1e-9, atol=1e-9)
            layer, u32, b32 = make(), u.float(), b_top.float()
            t_im2col = best_ms(lambda: im2col_step(layer, u32, b32), args.repeats, args.number)
            t_aten = (best_ms(lambda: aten_step(layer, u32, b32, algo), args.repeats, args.number)
                      if algo != "bpi" else None)
            ratio = None if t_aten is None else t_im2col / t_aten
            rows.append(dict(case=name, algo=algo, im2col_ms=t_im2col, aten_ms=t_aten,
                             im2col_over_aten=ratio, **meta))
            print(f"{name:<26} {algo:<5} {t_im2col:>10.2f} "
                  f"{'n/a' if t_aten is None else f'{t_aten:.2f}':>10} "
                  f"{'n/a' if ratio is None else f'{ratio:.2f}':>12}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=5)
    parser.add_argument("--algos", default="mf,amp,bpi")
    parser.add_argument("--out", default=None, help="write the rows as JSON")
    cmd_bench(parser.parse_args(argv))


if __name__ == "__main__":
    main()
