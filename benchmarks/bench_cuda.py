"""Benchmark of the CUDA kernels against their pure-PyTorch twins on the same GPU.

For each layer (784 → 501 and 1024 → 1024 by default) and batch size (128 and 1024), every
operator runs as the extension kernel (``bpkernels.ops``) and as its twin
(``bpkernels.reference``) on identical inputs. Each pair is first checked to agree (a fast wrong
kernel gets no number), then timed with ``torch.utils.benchmark.Timer.blocked_autorange``
(which synchronises CUDA; the median is reported); the peak memory allocated by one call is
recorded for both.

Rows are appended to ``benchmarks/results/<device>.json`` (a JSON list; the helpers and the
file naming of ``benchmarks/common.py``), one per (case, op): case, op, ext_ms, twin_ms,
ratio = twin_ms / ext_ms, peak_mem_bytes (extension), twin_peak_mem_bytes, commit, torch, plus
dtype, device, date and, for the cavity kernels, ext_gelem_s (G ĝ evaluations per second). A
twin that runs out of memory (the BP twins hold several K×N×B tensors) is recorded with
twin_ms = null and a note; a kernel that disagrees with its twin is recorded untimed.

Usage:  python benchmarks/bench_cuda.py [--layers 784x501,1024x1024] [--batches 128,1024]
                                        [--ops bp_linear_bwd_bpi,...] [--dtype float32]
                                        [--min-run-time 0.5] [--out PATH] [--no-twin]
Needs a CUDA device and a build of the extension with its CUDA kernels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from bpkernels import testing  # noqa: E402

OPS = [*testing.OPS, "bp_linear_bwd_bpi_hard"]  # + the BPI kernel on hard labels
CAVITY = {"bp_linear_bwd_bpi", "bp_linear_bwd_bpi_hard", "bp_linear_omega_bp", "bp_linear_bwd_bp",
          "bp_cavity_update_"}  # one ĝ (or x̃) per (k, i, a)


def make_inputs(op: str, B: int, N: int, K: int, dtype: torch.dtype, seed: int = 0) -> list:
    """Arguments of ``op`` for a hidden layer N → K at batch B, drawn on the GPU
    (bpkernels.testing; AMP with its old state, the field update with a prior)."""
    if op == "bp_linear_bwd_bpi_hard":
        return testing.make_inputs("bp_linear_bwd_bpi", B, N, K, dtype, "cuda", seed, hard=True)
    return testing.make_inputs(op, B, N, K, dtype, "cuda", seed)


def base_op(op: str) -> str:
    """The operator behind a benchmark entry."""
    return "bp_linear_bwd_bpi" if op == "bp_linear_bwd_bpi_hard" else op


def op_fn(module, op: str):
    return getattr(module, base_op(op))


def clones(args: list) -> list:
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def outputs(module, op: str, args: list) -> list:
    """Outputs of one call on copies of the arguments (the mutated ones for in-place ops)."""
    args = clones(args)
    out = op_fn(module, op)(*args)
    outs = [] if out is None else list(out) if isinstance(out, (tuple, list)) else [out]
    return outs + [args[i] for i in testing.mutated_args(base_op(op)) if args[i] is not None]


def peak_bytes(fn, args: list) -> int:
    """Peak memory allocated during one call, above what was allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="784x501,1024x1024", help="comma-separated N_in x N_out")
    p.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated operators")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per timing")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<device>.json)")
    p.add_argument("--no-twin", action="store_true", help="time the extension only")
    a = p.parse_args(argv)

    if not torch.cuda.is_available():
        sys.exit("bench_cuda.py needs a CUDA device: torch.cuda.is_available() is False. It times the CUDA "
                 "kernels against their twins on the same GPU; run it on a GPU machine.")
    import bpkernels
    from bpkernels import ops, reference

    missing = [op for op in OPS if op != "bp_linear_bwd_bpi_hard"
               and not torch._C._dispatch_has_computed_kernel_for_dispatch_key(f"bpkernels::{op}", "CUDA")]
    if missing:
        sys.exit(f"bench_cuda.py: the extension has no CUDA kernels for {missing}; rebuild it with CUDA "
                 "(CUDA_HOME=/usr/local/cuda pip install -e . --no-build-isolation)")

    dtype = getattr(torch, a.dtype)
    info = common.run_info("cuda")
    out_path = Path(a.out) if a.out else common.default_results_path(info["device"])
    layers = [tuple(int(v) for v in s.split("x")) for s in a.layers.split(",")]
    batches = [int(b) for b in a.batches.split(",")]
    op_list = [o for o in a.ops.split(",") if o]
    unknown = sorted(set(op_list) - set(OPS))
    if unknown:
        p.error(f"unknown ops: {unknown}")
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    print(f"# {info['device']} | torch {info['torch']} | bpkernels {bpkernels.__version__} | {a.dtype} | "
          f"commit {info['commit']}")

    rows = []
    for N, K in layers:
        for B in batches:
            case = f"{N}->{K} B={B}"
            for op in op_list:
                args = make_inputs(op, B, N, K, dtype)
                row = dict(case=case, op=op, ext_ms=None, twin_ms=None, ratio=None, peak_mem_bytes=None,
                           twin_peak_mem_bytes=None, dtype=a.dtype, ext_gelem_s=None, note="", **info)
                ext_fn, twin_fn = op_fn(ops, op), op_fn(reference, op)
                kw = dict(label=op, sub_label=case, min_run_time=a.min_run_time)
                if not a.no_twin:
                    try:
                        common.check_close(f"{case} {op}", outputs(ops, op, args), outputs(reference, op, args), **tol)
                        row["twin_peak_mem_bytes"] = peak_bytes(twin_fn, clones(args))
                        row["twin_ms"] = common.time_ms(twin_fn, clones(args), description="twin", **kw)
                    except torch.cuda.OutOfMemoryError:
                        row["note"] = "twin out of memory"
                    except AssertionError as err:
                        row["note"] = f"not timed: {err}"
                        print(f"{case:20s} {op:24s} {row['note']}")
                        rows.append(row)
                        del args
                        torch.cuda.empty_cache()
                        continue
                    torch.cuda.empty_cache()
                # In-place ops are timed in place: repeated updates keep every state bounded.
                row["peak_mem_bytes"] = peak_bytes(ext_fn, clones(args))
                row["ext_ms"] = common.time_ms(ext_fn, clones(args), description="ext", **kw)
                if row["twin_ms"]:
                    row["ratio"] = row["twin_ms"] / row["ext_ms"]
                if op in CAVITY:
                    row["ext_gelem_s"] = K * N * B / (row["ext_ms"] * 1e6)
                rows.append(row)
                twin = f"{row['twin_ms']:9.3f}" if row["twin_ms"] else "        -"
                ratio = f"{row['ratio']:7.1f}x" if row["ratio"] else "       -"
                print(f"{case:20s} {op:24s} ext {row['ext_ms']:9.3f} ms  twin {twin} ms  {ratio}  "
                      f"peak {row['peak_mem_bytes'] / 2**20:8.1f} MiB  {row['note']}")
                del args
                torch.cuda.empty_cache()

    path = common.write_results(rows, out_path)
    print(f"# appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
