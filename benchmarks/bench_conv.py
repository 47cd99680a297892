"""Step timing of message-passing conv layers and nets.

Per layer, two implementations: ATen convolutions (BPConv2d's path for MF and AMP) against
im2col + the dense operators (BPLayer's path, which BPConv2d takes for BPI), checked to agree
in float64 first.

    python benchmarks/bench_conv.py --threads 2

Per net (--net): one bp_step of a whole conv net on a Fashion-MNIST-shaped batch, with one
variant per layer, each against AMP on every layer, timed in turn in the same process:

    python benchmarks/bench_conv.py --net --threads 1 --nets amp bpi+amp+amp+amp bpi

Training runs of conv nets go through the command line, e.g.
``bpkernels compare --arch conv32k5s2p2-conv64k3s2p1-dense501-dense10 --methods amp,ste``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import device_name, git_commit  # noqa: E402
from bpkernels import build_arch  # noqa: E402
from bpkernels.algorithms import lookup  # noqa: E402
from bpkernels.conv import BPConv2d  # noqa: E402

# ---- bench: one hidden-layer message-passing step, two implementations --------------------


def library_step(layer: BPConv2d, u: Tensor, b_top: Tensor) -> tuple[Tensor, Tensor]:
    """One hidden-layer step (τ_max = 1: forward, backward, field update) through BPConv2d's own
    path: ATen conv2d / conv2d_input / conv2d_weight for MF and AMP. Returns (u_out, b)."""
    st = layer.mp_begin(1)
    u_out = layer.mp_forward(st, u, first=False)
    b, h_in = layer.mp_backward(st, b_top)
    layer.mp_update(st, h_in)
    return u_out, b


def im2col_step(layer: BPConv2d, u: Tensor, b_top: Tensor) -> tuple[Tensor, Tensor]:
    """The same step through the rows: im2col, the dense operators, col2im (BPLayer's path,
    which BPConv2d takes for BPI): the layer run with the row version of its algorithm.
    Returns (u_out, b)."""
    image_algorithm, layer.algorithm = layer.algorithm, lookup(layer.algo)
    try:
        return library_step(layer, u, b_top)
    finally:
        layer.algorithm = image_algorithm


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


def start(args) -> dict:
    """Sets the threads; returns (and prints) what every row records about the run."""
    torch.set_num_threads(args.threads)
    meta = dict(device=device_name("cpu"), threads=torch.get_num_threads(), batch=args.batch,
                dtype="float32", commit=git_commit(), torch=torch.__version__)
    print(", ".join(f"{k} {v}" for k, v in meta.items()))
    return meta


def write_rows(rows: list[dict], path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def cmd_bench(args) -> None:
    cases = [("L1 1->32 k3s2p1 28x28", 1, 32, 28), ("L2 32->64 k3s2p1 14x14", 32, 64, 14),
             ("L2' 32->64 k3s1p1 14x14", 32, 64, 14)]
    meta = start(args)
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
                for a, b in zip(im2col_step(first, u, b_top), library_step(second, u, b_top)):
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(first.field, second.field, rtol=1e-9, atol=1e-9)
            layer, u32, b32 = make(), u.float(), b_top.float()
            t_im2col = best_ms(lambda: im2col_step(layer, u32, b32), args.repeats, args.number)
            t_aten = (best_ms(lambda: library_step(layer, u32, b32), args.repeats, args.number)
                      if algo != "bpi" else None)
            ratio = None if t_aten is None else t_im2col / t_aten
            rows.append(dict(case=name, algo=algo, im2col_ms=t_im2col, aten_ms=t_aten,
                             im2col_over_aten=ratio, **meta))
            print(f"{name:<26} {algo:<5} {t_im2col:>10.2f} "
                  f"{'n/a' if t_aten is None else f'{t_aten:.2f}':>10} "
                  f"{'n/a' if ratio is None else f'{ratio:.2f}':>12}", flush=True)
    write_rows(rows, args.out)


NET = "conv32k5s2p2-conv64k3s2p1-dense501-dense10"


def cmd_net(args) -> None:
    """One bp_step (τ_max = 1) of NET per configuration in args.nets ("amp", or one variant per
    layer joined by "+"), on one fixed batch of B random ±1 images with random labels, each
    against AMP on every layer; the configurations are timed round-robin, args.repeats rounds,
    and each keeps its best round, so that a shared CPU disturbs them alike."""
    meta = start(args)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (args.batch, 1, 28, 28), generator=gen).float() * 2 - 1
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    names = ["amp", *(name for name in args.nets if name != "amp")]
    nets = {name: build_arch(NET, algo=name.split("+") if "+" in name else name, seed=0)
            for name in names}
    best = dict.fromkeys(names, float("inf"))
    for _ in range(args.repeats):
        for name, net in nets.items():
            best[name] = min(best[name], best_ms(lambda: net.bp_step(x, y), 1, args.number))
    rows = []
    print(f"{'variants':<20} {'step ms':>9} {'AMP ms':>9} {'ratio':>7}")
    for name in names:
        rows.append(dict(case=f"{NET} bp_step, {name}", ms=best[name], amp_ms=best["amp"],
                         over_amp=best[name] / best["amp"], **meta))
        print(f"{name:<20} {best[name]:>9.1f} {best['amp']:>9.1f} {best[name] / best['amp']:>7.2f}")
    write_rows(rows, args.out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=5)
    parser.add_argument("--algos", default="mf,amp,bpi")
    parser.add_argument("--out", default=None, help="write the rows as JSON")
    parser.add_argument("--net", action="store_true", help="time whole-net steps (cmd_net)")
    parser.add_argument("--nets", nargs="+", default=["amp", "bpi+amp+amp+amp", "bpi"],
                        help="--net: variants, one for every layer or one per layer joined by +")
    args = parser.parse_args(argv)
    (cmd_net if args.net else cmd_bench)(args)


if __name__ == "__main__":
    main()
