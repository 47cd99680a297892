"""Data-parallel message passing: measured here, and a scaling model on paper.

measure: one epoch of AMP on the full Fashion-MNIST, 784-501-501-10, B = 128, float32, as
  1 process × 2 threads against 2 processes × 1 thread (torchrun, Gloo) on this machine, the
  two alternated ``--repeats`` times in the same run; the bytes all-reduced per step. Appends
  rows to benchmarks/results/distributed_cpu.json.

model: for 8 GPUs, the per-step compute of the fused kernels against the all-reduce time of
  the field messages over NVLink and over 100 Gb/s Ethernet, for 784-501-501-10 and a
  4096-wide 3-hidden-layer net, and the global batch size from which compute dominates.
  Writes benchmarks/results/distributed_scaling_model.md. Every constant is stated there.

    python benchmarks/bench_distributed.py measure --repeats 2
    python benchmarks/bench_distributed.py model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import device_name, git_commit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MLP = [784, 501, 501, 10]


def all_reduce_bytes(sizes: list[int], dtype_bytes: int = 4, tau_max: int = 1) -> int:
    """Bytes of the field messages one step all-reduces: every [K, N] H_in once per inner
    iteration (the payload; a ring all-reduce moves 2(W − 1)/W times it per rank)."""
    return tau_max * dtype_bytes * sum(n * k for n, k in zip(sizes[:-1], sizes[1:]))


def epoch_seconds(nproc: int, threads: int, algo: str) -> float:
    """Seconds of one training epoch (the trainer's own 'seconds', training only)."""
    with tempfile.TemporaryDirectory() as tmp:
        train = ["-m", "bpkernels", "train", "--algo", algo, "--hidden", "501", "501",
                 "--epochs", "1", "--threads", str(threads), "--no-progress", "--no-bayes",
                 "--run-dir", tmp]
        if nproc == 1:
            cmd = [sys.executable, *train]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_port", "29533", *train]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        row = json.loads((Path(tmp) / "metrics.jsonl").read_text().splitlines()[-1])
        return row["seconds"]


def measure(args) -> None:
    rows = []
    for rep in range(args.repeats):
        for nproc, threads in ((1, 2), (2, 1)):
            t = epoch_seconds(nproc, threads, args.algo)
            print(f"repeat {rep}: {nproc} process(es) × {threads} thread(s): {t:.2f} s/epoch",
                  flush=True)
            rows.append((nproc, threads, t))
    one = min(t for n, _, t in rows if n == 1)
    two = min(t for n, _, t in rows if n == 2)
    result = {
        "case": f"{args.algo} 784-501-501-10 B=128 float32, 1 epoch full Fashion-MNIST",
        "single_process_2_threads_s": one, "two_processes_1_thread_s": two,
        "ratio_single_over_two": one / two,
        "all_reduce_bytes_per_step": all_reduce_bytes(MLP),
        "all_reduce_calls_per_step": 1,
        "runs": [{"processes": n, "threads": th, "seconds": t} for n, th, t in rows],
        "load_average_before": os.getloadavg(),
        "device": device_name(torch.device("cpu")), "commit": git_commit(),
        "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(result, indent=2))
    path = RESULTS / "distributed_cpu.json"
    history = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(history + [result], indent=2) + "\n")


# ---- the scaling model ----------------------------------------------------------------------

# Assumptions, stated once (H200 class GPUs, 8 per node):
FP32_RATE = 30e12  # sustained FP32 FLOP/s of the GEMM-like passes (about half of peak)
CAVITY_RATE = 4e11  # BPI cavity evaluations per second (ĝ per edge and sample: an erfcx and a
#                     handful of FLOPs; special-function bound)
LINKS = {  # name: (all-reduce bus bandwidth per GPU in bytes/s, latency per all-reduce in s)
    "NVLink (H200 SXM, ~450 GB/s bus bandwidth)": (450e9, 15e-6),
    "100 Gb/s Ethernet (8 nodes × 1 GPU)": (12.5e9, 50e-6),
}
NETS = {"784-501-501-10": [784, 501, 501, 10], "784-4096-4096-4096-10": [784, 4096, 4096, 4096, 10]}
WORLD = 8


def step_compute_seconds(sizes: list[int], batch_per_gpu: int, algo: str) -> float:
    """Per-GPU compute of one step: AMP ≈ 10 matrix products of K×N×B per layer (forward ω
    and V, backward b and H_in with the self-reaction terms; 2 FLOPs per multiply-add);
    BPI: 3 products plus the K×N×B cavity evaluations."""
    edges = sum(n * k for n, k in zip(sizes[:-1], sizes[1:]))
    if algo == "amp":
        return 10 * 2 * edges * batch_per_gpu / FP32_RATE
    return 3 * 2 * edges * batch_per_gpu / FP32_RATE + edges * batch_per_gpu / CAVITY_RATE


def all_reduce_seconds(sizes: list[int], bandwidth: float, latency: float) -> float:
    """Ring all-reduce: 2(W − 1)/W × payload over the bus bandwidth, plus one latency."""
    return 2 * (WORLD - 1) / WORLD * all_reduce_bytes(sizes) / bandwidth + latency


def model(args) -> None:
    lines = [
        "# Data-parallel message passing: a scaling model for 8 GPUs (on paper)",
        "",
        "Not measured: a model with the constants below, to say where communication stops",
        "dominating. Per step, every GPU computes its shard of the global batch B (B/8 samples)",
        "and all-reduces the field messages H_in of every layer once (float32, one flattened",
        "buffer; payload = 4 bytes × Σ K·N, independent of B). Communication stops dominating",
        "at the B where compute(B/8) = all-reduce time.",
        "",
        f"Constants: sustained FP32 rate {FP32_RATE / 1e12:.0f} TFLOP/s per GPU; BPI cavity "
        f"evaluations {CAVITY_RATE / 1e9:.0f} G/s per GPU; AMP = 10 matrix products of K×N×B per "
        "layer and step, BPI = 3 products + K×N×B cavity evaluations; ring all-reduce "
        "2(W−1)/W × payload / bus bandwidth + latency; " + "; ".join(
            f"{name}: {bw / 1e9:.1f} GB/s, {lat * 1e6:.0f} µs" for name, (bw, lat) in LINKS.items()),
        "",
        "| network | payload per step | link | all-reduce per step | algorithm | compute per step at B = 1024 (8 × 128) | B where compute = communication |",
        "|---|---|---|---|---|---|---|",
    ]
    for net_name, sizes in NETS.items():
        for link, (bw, lat) in LINKS.items():
            comm = all_reduce_seconds(sizes, bw, lat)
            for algo in ("amp", "bpi"):
                per_sample = step_compute_seconds(sizes, 1, algo)
                crossover = WORLD * comm / per_sample
                lines.append(
                    f"| {net_name} | {all_reduce_bytes(sizes) / 2**20:.2f} MiB | {link} | "
                    f"{comm * 1e6:.0f} µs | {algo} | {step_compute_seconds(sizes, 128, algo) * 1e6:.0f} µs | "
                    f"{crossover:,.0f} |")
    lines += ["", "Reading (from the table): at the paper's B = 128 per GPU (1024 global), a step is "
              "communication-bound wherever the last column exceeds 1024. τ_max > 1 all-reduces once "
              "per inner iteration, so it scales compute and communication alike and does not change "
              "the crossover; only a larger batch per all-reduce does.", ""]
    path = RESULTS / "distributed_scaling_model.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--algo", default="amp")
    p.set_defaults(func=measure)
    sub.add_parser("model").set_defaults(func=model)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
