"""Packed (XNOR-popcount) inference against the same network in float, on the CPU.

    python benchmarks/bench_packed.py --threads 1

For 784-501-501-10, a 3×4096 MLP and conv32k5s2p2-conv64k3s2p1-dense501-dense10: the file size
against the float32 state_dict; latency at batch 1 and throughput at batch 256 of the whole
network; the layers after the first (±1 inputs: XNOR-popcount against a float matmul / conv of
±1 values) at batch 256; the binary GEMM alone, in binary ops/s against sgemm's FLOP/s and the
instruction set's ceiling; and the check that the packed predictions equal ``model(x)`` on the
10 000 Fashion-MNIST test images. Writes ``benchmarks/results/packed_cpu.json`` and ``.md``.

Timing: packed and float alternate in rounds of ``--min-time`` seconds each; a time is the
best round (the least disturbed on a shared machine), a ratio the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import RESULTS_DIR, device_name, git_commit  # noqa: E402
from bpkernels import data, packed_ops  # noqa: E402
from bpkernels import BPConv2d, build_arch  # noqa: E402
from bpkernels import mlp  # noqa: E402
from bpkernels.packed import export, load_packed  # noqa: E402

NETS = {
    "784-501-501-10": lambda: mlp([784, 501, 501, 10], seed=0),
    "784-4096x3-10": lambda: mlp([784, 4096, 4096, 4096, 10], seed=0),
    "conv32k5s2p2-conv64k3s2p1-dense501-dense10":
        lambda: build_arch("conv32k5s2p2-conv64k3s2p1-dense501-dense10", seed=0),
}
GEMMS = [(256, 501, 501), (256, 4096, 4096), (256, 3136, 501), (256 * 49, 288, 64)]


class FloatNet:
    """The point-wise network in float: ±1 / 0 float weights made once, torch matmul / conv2d,
    x ← sign(z + 1e-10) between layers (BPSequential.predict without its per-call sign(m))."""

    def __init__(self, model):
        self.layers = []
        for layer in model.layers:
            if isinstance(layer, nn.Flatten):
                self.layers.append(("flatten", None, None))
            elif isinstance(layer, BPConv2d):
                self.layers.append(("conv", torch.sign(layer.mag), layer))
            else:
                self.layers.append(("linear", torch.sign(layer.mag), layer))
        self.output = model.layers[-1].output

    def layer(self, index, h):
        kind, w, layer = self.layers[index]
        if kind == "flatten":
            return h.flatten(1)
        if kind == "conv":
            return F.conv2d(h, w, stride=layer.stride, padding=layer.padding)
        return h @ w.T

    def __call__(self, x):
        z, first = x, True
        for i, (kind, _, _) in enumerate(self.layers):
            if kind != "flatten":
                if not first:
                    z = torch.sign(z + 1e-10)
                first = False
            z = self.layer(i, z)
        if self.output == "argmax":
            return z.argmax(dim=1)
        return torch.where(z[:, 0] >= 0, 1.0, -1.0)


def time_call(fn, min_time):
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


def paired(packed_fn, float_fn, rounds, min_time):
    """(best packed s, best float s, median per-round float/packed ratio)."""
    tp, tf = [], []
    for _ in range(rounds):
        tp.append(time_call(packed_fn, min_time))
        tf.append(time_call(float_fn, min_time))
    return min(tp), min(tf), statistics.median(f / p for p, f in zip(tp, tf))


def cpu_mhz():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":")[1])
    except OSError:
        pass
    return None


def inputs(name, batch, gen):
    shape = (1, 28, 28) if name.startswith("conv") else (784,)
    return torch.randn(batch, *shape, generator=gen)


def bench_network(name, model, args, gen):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.bpk")
        export(model, path)
        packed_bytes = os.path.getsize(path)
        packed = load_packed(path)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    weights = sum(layer.mag.numel() for layer in model.layers if not isinstance(layer, nn.Flatten))
    rows.append(dict(case=name, what="file size (bytes)", packed=packed_bytes,
                     float=buf.getbuffer().nbytes, ratio=buf.getbuffer().nbytes / packed_bytes,
                     note=f"float = torch.save(state_dict) (field, mag, sigma); float32 ±1 "
                          f"weights alone {4 * weights} B, {4 * weights / packed_bytes:.1f}× "
                          "the packed file"))
    fnet = FloatNet(model)
    for batch, what in ((1, "latency b=1 (s)"), (256, "throughput b=256 (samples/s)")):
        x = inputs(name, batch, gen)
        assert torch.equal(packed(x), model(x)) and torch.equal(fnet(x).to(model(x).dtype), model(x))
        tp, tf, ratio = paired(lambda: packed(x), lambda: fnet(x), args.rounds, args.min_time)
        if batch == 1:
            rows.append(dict(case=name, what=what, packed=tp, float=tf, ratio=ratio))
        else:
            rows.append(dict(case=name, what=what, packed=batch / tp, float=batch / tf, ratio=ratio))
    # The layers after the first (±1 inputs), from the preactivation of the layer below.
    x = inputs(name, 256, gen)
    zs = packed._chunk_preactivations(packed._prepare_x(x))
    float_layers = [i for i, (kind, _, _) in enumerate(fnet.layers) if kind != "flatten"]
    tp_sum = tf_sum = 0.0
    for index in range(1, len(packed.stages)):
        z_prev = zs[index - 1]
        z_float = z_prev.permute(0, 3, 1, 2).float() if len(packed.stages[index - 1]["out_shape"]) == 3 \
            else z_prev.reshape(z_prev.shape[0], -1).float()
        li = float_layers[index]

        def float_layer(z=z_float, li=li):
            h = torch.sign(z + 1e-10)
            if fnet.layers[li - 1][0] == "flatten":
                h = h.flatten(1)
            return fnet.layer(li, h)

        def packed_layer(z=z_prev, index=index):
            return packed._layer(index, z)

        want = float_layer()
        got = packed_layer()
        got = got.permute(0, 3, 1, 2) if want.dim() == 4 else got.reshape(got.shape[0], -1)
        assert torch.equal(got.to(want.dtype), want)
        tp, tf, ratio = paired(packed_layer, float_layer, args.rounds, args.min_time)
        stage = packed.stages[index]
        rows.append(dict(case=name, what=f"layer {index} {stage['kind']} {stage['n']}->{stage['k']}"
                                         f" b=256 (s)", packed=tp, float=tf, ratio=ratio))
        tp_sum, tf_sum = tp_sum + tp, tf_sum + tf
    rows.append(dict(case=name, what="layers after the first, b=256 (s)", packed=tp_sum,
                     float=tf_sum, ratio=tf_sum / tp_sum))
    first = packed.stages[0]
    rows.append(dict(case=name, what="first layer (float in both) b=256 (s)",
                     packed=time_call(lambda: packed._first(packed._prepare_x(x)), args.min_time),
                     float=None, ratio=None,
                     note=f"{first['kind']} {first['n']}->{first['k']}: float x against ±1 weights"))
    return rows, packed


def bench_gemms(args, gen):
    """The binary GEMM against sgemm, on every instruction set this CPU runs (BPK_XNOR_ISA)."""
    rows = []
    mhz = cpu_mhz()
    best = packed_ops.xnor_cpu_isa()
    isas = ["avx512", "avx2", "portable"][["avx512", "avx2", "portable"].index(best):]
    for r, n, k in GEMMS:
        xs = torch.randint(0, 2, (r, n), generator=gen).float() * 2 - 1
        ws = torch.randint(0, 2, (k, n), generator=gen).float() * 2 - 1
        xb, wb = packed_ops.pack_signs(xs), packed_ops.pack_signs(ws)
        for isa in isas if r * n * k < 2e9 else isas[:2]:  # the portable loop is slow
            os.environ["BPK_XNOR_ISA"] = isa
            assert torch.equal(packed_ops.xnor_gemm(xb, wb, None, None, n).float(), xs @ ws.T)
            tp, tf, ratio = paired(lambda: packed_ops.xnor_gemm(xb, wb, None, None, n),
                                   lambda: xs @ ws.T, args.rounds, args.min_time)
            ops = 2 * r * n * k  # a multiply-add is 2 ops, float or binary (XNOR + popcount-add)
            row = dict(case=f"GEMM {r}x{n} · {n}x{k}", what=f"binary GEMM ({isa}) vs sgemm (s)",
                       packed=tp, float=tf, ratio=ratio, binary_gops=ops / tp / 1e9,
                       sgemm_gflops=ops / tf / 1e9)
            if isa == "avx512" and mhz:
                # Ceiling: one 512-bit VPOPCNTQ per cycle = 512 binary multiply-adds per cycle.
                ceiling = 2 * 512 * mhz * 1e6
                row["isa_ceiling_gops"] = ceiling / 1e9
                row["fraction_of_ceiling"] = ops / tp / ceiling
            rows.append(row)
    os.environ.pop("BPK_XNOR_ISA", None)
    return rows


def check_fashion(packed_nets, models):
    try:
        ds = data.load_fashion_mnist()
    except data.DatasetNotFoundError as exc:
        return [dict(case="fashion-mnist test set", what="skipped", note=str(exc))]
    rows = []
    for name, packed in packed_nets.items():
        start = time.perf_counter()
        pred = packed(ds.test_x)
        t_packed = time.perf_counter() - start
        start = time.perf_counter()
        want = models[name](ds.test_x)
        t_model = time.perf_counter() - start
        rows.append(dict(case=name, what="predictions equal model(x) on the 10 000 test images "
                                         "(untrained weights)",
                         packed=t_packed, float=t_model, ratio=t_model / t_packed,
                         mismatches=int((pred != want).sum()), samples=int(len(want)),
                         note="times: one pass over the test set, packed vs model(x)"))
    return rows


def write_markdown(meta, rows, path):
    lines = ["# Packed (XNOR-popcount) inference on the CPU\n",
             f"{meta['cpu']}, {meta['threads']} thread(s), ISA `{meta['isa']}`, torch "
             f"{meta['torch']}, commit `{meta['commit']}`, {meta['date']}. Load average (1 min) "
             f"before / after: {meta['load_before']:.2f} / {meta['load_after']:.2f} on "
             f"{os.cpu_count()} cores shared with other jobs: absolute times are noisy, the "
             "ratios (same-run, alternating rounds) less so.\n",
             "| case | measure | packed | float | float / packed | note |",
             "|---|---|---|---|---|---|"]

    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, int):
            return str(v)
        return f"{v:.3g}"

    for row in rows:
        note = row.get("note", "")
        if "binary_gops" in row:
            note = (f"{row['binary_gops']:.0f} G binary op/s vs {row['sgemm_gflops']:.1f} GFLOP/s")
            if "fraction_of_ceiling" in row:
                note += (f"; {100 * row['fraction_of_ceiling']:.0f}% of the AVX-512 VPOPCNTQ "
                         f"ceiling ({row['isa_ceiling_gops']:.0f} G/s)")
        if "mismatches" in row:
            note = f"{row['mismatches']} mismatches / {row['samples']}; " + note
        lines.append(f"| {row['case']} | {row['what']} | {fmt(row.get('packed'))} | "
                     f"{fmt(row.get('float'))} | {fmt(row.get('ratio'))} | {note} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--no-fashion", action="store_true", help="skip the test-set check")
    parser.add_argument("--out", default=str(RESULTS_DIR / "packed_cpu"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    meta = dict(cpu=device_name("cpu"), threads=torch.get_num_threads(),
                isa=packed_ops.xnor_cpu_isa(), torch=torch.__version__, commit=git_commit(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                load_before=os.getloadavg()[0], cpu_mhz=cpu_mhz())
    rows, packed_nets, models = [], {}, {}
    for name in args.nets.split(","):
        model = NETS[name]()
        net_rows, packed = bench_network(name, model, args, gen)
        rows += net_rows
        packed_nets[name], models[name] = packed, model
        print("\n".join(json.dumps(r) for r in net_rows), flush=True)
    gemm_rows = bench_gemms(args, gen)
    print("\n".join(json.dumps(r) for r in gemm_rows), flush=True)
    rows += gemm_rows
    if not args.no_fashion:
        rows += check_fashion(packed_nets, models)
    meta["load_after"] = os.getloadavg()[0]
    for row in rows:
        row.update(commit=meta["commit"], torch=meta["torch"], cpu=meta["cpu"],
                   threads=meta["threads"], isa=meta["isa"])
    with open(args.out + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    write_markdown(meta, rows, args.out + ".md")
    print(open(args.out + ".md").read())


if __name__ == "__main__":
    main()
