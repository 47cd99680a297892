"""Binary conv nets on Fashion-MNIST: message passing (BPConv2d) and a straight-through baseline.

    # per-layer step timing: im2col + dense operators (the library's path) vs ATen convolutions
    python benchmarks/train_conv.py bench --threads 2
    # message passing through bpkernels.train.fit (run folder with metrics.jsonl, errors.png)
    python benchmarks/train_conv.py bp --arch conv32k5s2p2-conv64k3s2p1-dense10 --algo amp \
        --rho 1.0001 1.0001 0.99 --epochs 100 --minutes 20 --run-dir runs/conv-amp
    # the straight-through baseline of the same shape
    python benchmarks/train_conv.py ste --arch conv32k5s2p2-conv64k3s2p1-dense10 --epochs 8 \
        --run-dir runs/conv-ste

The STE net (``STEConvNet``): latent weights w ∈ [−1, 1] per layer, forward with W = sign(w)
(straight-through: the gradient of W goes to w unchanged; w clipped to [−1, 1] after each step),
preactivations scaled by 1/√fan-in, sign activations with the hard-tanh straight-through
gradient (1{|a| ≤ 1}), no biases and no batch norm (the message-passing net has neither), a
learnable scalar logit scale, cross-entropy, Adam lr 1e-3, batch 128, the same seeded epoch
shuffles as ``fit``. It is a baseline for this comparison only (bpkernels.baselines holds the
library's gradient trainers).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import device_name, git_commit  # noqa: E402
from bpkernels import data, ops  # noqa: E402
from bpkernels.conv import BPConv2d, _TOKEN, build_arch  # noqa: E402
from bpkernels.reference import VAR_EPS  # noqa: E402
from bpkernels.train import epoch_permutation, fit  # noqa: E402

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


def unfold_step(layer: BPConv2d, u: Tensor, b_top: Tensor) -> tuple[Tensor, Tensor]:
    """The library's step: BPConv2d.mp_forward / mp_backward (im2col + dense operators)."""
    layer.mp_reset(u.shape[0], 1)
    u_out = layer.mp_forward(u, first=False)
    b, _ = layer.mp_backward(b_top, 1)
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
    print(f"device {device_name('cpu')}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"commit {git_commit()}, B = {args.batch}")
    print(f"{'layer':<26} {'algo':<5} {'unfold ms':>10} {'aten ms':>10}")
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
                for a, b in zip(unfold_step(first, u, b_top), aten_step(second, u, b_top, algo)):
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
                torch.testing.assert_close(first.field, second.field, rtol=1e-9, atol=1e-9)
            layer, u32, b32 = make(), u.float(), b_top.float()
            t_unfold = best_ms(lambda: unfold_step(layer, u32, b32), args.repeats, args.number)
            t_aten = (best_ms(lambda: aten_step(layer, u32, b32, algo), args.repeats, args.number)
                      if algo != "bpi" else float("nan"))
            print(f"{name:<26} {algo:<5} {t_unfold:>10.2f} {t_aten:>10.2f}", flush=True)


# ---- bp: message passing ---------------------------------------------------------------------


def per_layer(values):
    return None if not values else values[0] if len(values) == 1 else values


def cmd_bp(args) -> None:
    torch.set_num_threads(args.threads)
    ds = data.load_fashion_mnist(subset=args.subset, test_subset=args.test_subset, seed=args.seed)
    model = build_arch(args.arch, algo=args.algo, num_classes=10, rho=per_layer(args.rho),
                       psi=per_layer(args.psi), init_std=args.init_std, seed=args.seed)
    print(model, flush=True)
    config = dict(script="benchmarks/train_conv.py", argv=sys.argv[1:], arch=args.arch,
                  threads=args.threads, commit=git_commit(), torch=torch.__version__,
                  cpu=device_name("cpu"))
    train = functools.partial(fit, model, ds, batch_size=args.batch_size, tau_max=args.tau_max,
                              seed=args.seed, run_dir=args.run_dir, config=config,
                              progress=not args.no_progress, eval_bayes=not args.no_bayes,
                              method=f"bp-{args.algo}")
    if not args.minutes:
        train(epochs=args.epochs)
        return
    # Epoch by epoch (fit resumes exactly from its checkpoint) while the next epoch is expected
    # to end within the wall-clock budget.
    start, epoch, last = time.perf_counter(), 0, 0.0
    while epoch < args.epochs and (epoch == 0 or time.perf_counter() - start + last <= 60 * args.minutes):
        t0 = time.perf_counter()
        train(epochs=epoch + 1, resume=epoch > 0)
        epoch, last = epoch + 1, time.perf_counter() - t0


# ---- ste: straight-through baseline ------------------------------------------------------------


class SignWeight(torch.autograd.Function):
    """W = sign(w) (sign(0) = +1), gradient handed to w unchanged."""

    @staticmethod
    def forward(ctx, w):
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class SignActivation(torch.autograd.Function):
    """h = sign(a) (ties to +1), hard-tanh straight-through gradient 1{|a| ≤ 1}."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return torch.where(a >= 0, 1.0, -1.0).to(a.dtype)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        return grad * (a.abs() <= 1).to(grad.dtype)


class STEConvNet(nn.Module):
    """The binary net of an architecture string (conv<K>k<k>[s<s>][p<p>], flatten, dense<N>)
    with latent weights; see the module docstring."""

    def __init__(self, spec: str, input_shape=(1, 28, 28), seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.plan, self.weights = [], nn.ParameterList()
        shape = tuple(input_shape)
        for token in spec.split("-"):
            match = _TOKEN.fullmatch(token)
            if token == "flatten" or (token.startswith("dense") and len(shape) > 1):
                shape = (math.prod(shape),)
                if token == "flatten":
                    continue
            if token.startswith("conv"):
                k, ks = int(match["k"]), int(match["ks"])
                s, p = int(match["s"] or 1), int(match["p"] or 0)
                wshape = (k, shape[0], ks, ks)
                self.plan.append(("conv", s, p))
                size = [(n + 2 * p - ks) // s + 1 for n in shape[1:]]
                shape = (k, *size)
            else:
                wshape = (int(match["n"]), shape[0])
                self.plan.append(("dense", 1, 0))
                shape = (wshape[0],)
            fan_in = math.prod(wshape[1:])
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter((torch.rand(wshape, generator=gen) * 2 - 1) * bound))
        self.logit_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        h = x.view(x.shape[0], 1, 28, 28) if self.plan[0][0] == "conv" else x
        for i, ((kind, s, p), w) in enumerate(zip(self.plan, self.weights)):
            wb = SignWeight.apply(w)
            if kind == "conv":
                a = F.conv2d(h, wb, stride=s, padding=p)
            else:
                a = h.flatten(1) @ wb.T
            a = a / math.sqrt(w[0].numel())
            h = SignActivation.apply(a) if i < len(self.plan) - 1 else a
        return self.logit_scale * h

    @torch.no_grad()
    def error(self, x: Tensor, y: Tensor, chunk: int = 8192) -> float:
        wrong = sum(int((self(x[i:i + chunk]).argmax(1) != y[i:i + chunk]).sum())
                    for i in range(0, len(x), chunk))
        return wrong / len(x)


def cmd_ste(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ds = data.load_fashion_mnist(subset=args.subset, test_subset=args.test_subset, seed=args.seed)
    model = STEConvNet(args.arch, seed=args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    os.makedirs(args.run_dir, exist_ok=True)
    with open(os.path.join(args.run_dir, "config.json"), "w") as f:
        json.dump(dict({k: v for k, v in vars(args).items() if k != "func"}, commit=git_commit(), torch=torch.__version__,
                       cpu=device_name("cpu")), f, indent=1)
    n, bs = len(ds.train_x), args.batch_size
    metrics = open(os.path.join(args.run_dir, "metrics.jsonl"), "w")
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        order = epoch_permutation(n, args.seed, epoch)
        for j in range(n // bs):
            idx = order[j * bs:(j + 1) * bs]
            loss = F.cross_entropy(model(ds.train_x[idx]), ds.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for w in model.weights:
                    w.clamp_(-1.0, 1.0)
        seconds = time.perf_counter() - t0
        row = dict(epoch=epoch, method="ste", train_error=model.error(ds.train_x, ds.train_y),
                   test_error=model.error(ds.test_x, ds.test_y), seconds=seconds)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        print(f"epoch {epoch}: train {100 * row['train_error']:.2f}%, test {100 * row['test_error']:.2f}%, "
              f"{seconds:.1f} s", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bench")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--number", type=int, default=5)
    p.add_argument("--algos", default="mf,amp,bpi")
    p.set_defaults(func=cmd_bench)
    for name, func in (("bp", cmd_bp), ("ste", cmd_ste)):
        p = sub.add_parser(name)
        p.add_argument("--arch", default="conv32k3s2p1-conv64k3s2p1-dense10")
        p.add_argument("--epochs", type=int, default=20)
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--subset", type=int, default=None)
        p.add_argument("--test-subset", type=int, default=None)
        p.add_argument("--run-dir", required=True)
        p.add_argument("--no-progress", action="store_true")
        p.set_defaults(func=func)
        if name == "bp":
            p.add_argument("--algo", default="amp", choices=["bp", "bpi", "amp", "mf"])
            p.add_argument("--rho", type=float, nargs="*", default=None)
            p.add_argument("--psi", type=float, nargs="*", default=[0.8])
            p.add_argument("--init-std", type=float, default=1.0)
            p.add_argument("--tau-max", type=int, default=1)
            p.add_argument("--no-bayes", action="store_true")
            p.add_argument("--minutes", type=float, default=None,
                           help="wall-clock budget: stop before an epoch expected to overrun it")
        else:
            p.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
