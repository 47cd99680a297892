"""Every bpkernels operator against its pure-PyTorch twin on the same device.

Cases: the paper's first layer 784 → 501 and a 1024 → 1024 hidden layer, both at B = 128.
Each (case, op) is first checked for agreement with the twin, then both are timed with
torch.utils.benchmark. Prints a table and appends the rows to
``benchmarks/results/<device>.json`` (ratio = twin_ms / ext_ms, the kernel's speed-up).

    python benchmarks/bench_ops.py                      # CPU, float32, both cases
    python benchmarks/bench_ops.py --device cuda --ops bp_linear_bwd_bpi,bp_linear_fwd
    python benchmarks/bench_ops.py --quick              # tiny smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from bpkernels import ops, reference, testing  # noqa: E402

CASES = {"784->501": (128, 784, 501), "1024->1024": (128, 1024, 1024)}  # name: (B, N, K)
QUICK_CASES = {"quick 33->17": (8, 33, 17)}


# The call each op is timed on (bpkernels.testing builds the inputs): a hidden layer, soft
# b_top, no mask; AMP's backward at its first inner iteration (no old state) and the field
# update with the posterior-as-prior θ = ρH (no separate prior).
VARIANT = {"bp_linear_bwd_amp": dict(extra=False), "bp_field_update_": dict(extra=False)}
OPS = testing.OPS
# Elements processed per call, for the throughput column: the cavity ops visit K·N·B edges.
CAVITY_OPS = {"bp_linear_bwd_bpi", "bp_linear_omega_bp", "bp_linear_bwd_bp", "bp_cavity_update_"}


def make_inputs(op: str, B: int, N: int, K: int, dtype, device, seed: int = 0) -> list:
    return testing.make_inputs(op, B, N, K, dtype, device, seed, **VARIANT.get(op, {}))


def results_of(impl, op, args):
    """Outputs of one call on copies of the arguments (in-place ops: the mutated arguments)."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = getattr(impl, op)(*args)
    out = () if out is None else (tuple(out) if isinstance(out, (tuple, list)) else (out,))
    return out + tuple(args[i] for i in testing.mutated_args(op) if args[i] is not None)


def bench(case: str, shape, op: str, dtype, device, min_run_time: float, info: dict) -> dict:
    B, N, K = shape
    args = make_inputs(op, B, N, K, dtype, device)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    common.check_close(f"{case} {op}", results_of(ops, op, args), results_of(reference, op, args), **tol)
    # In-place ops are timed in place: repeated updates keep every state bounded.
    ext_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    twin_args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    kw = dict(label=op, sub_label=case, min_run_time=min_run_time)
    ext_ms = common.time_ms(getattr(ops, op), ext_args, description="ext", **kw)
    twin_ms = common.time_ms(getattr(reference, op), twin_args, description="twin", **kw)
    elems = K * N * B if op in CAVITY_OPS else None
    return dict(case=case, op=op, ext_ms=round(ext_ms, 4), twin_ms=round(twin_ms, 4),
                ratio=round(twin_ms / ext_ms, 3), dtype=str(dtype).removeprefix("torch."),
                ext_gelem_s=round(elems / (ext_ms * 1e6), 3) if elems else None, **info)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of the operators")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--quick", action="store_true", help="one tiny case, short timings; writes nothing")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default benchmarks/results/<device>.json)")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    op_list = [o for o in a.ops.split(",") if o]
    unknown = sorted(set(op_list) - set(OPS))
    if unknown:
        p.error(f"unknown ops: {unknown}")
    if a.quick:
        cases, min_run_time = QUICK_CASES, 0.02
    else:
        cases, min_run_time = {c: CASES[c] for c in a.cases.split(",") if c}, a.min_run_time
    info = common.run_info(device)
    print(f"# {info['device']} | torch {info['torch']} | {info['threads']} threads | {a.dtype} | "
          f"commit {info['commit']}")
    rows = []
    for case, shape in cases.items():
        for op in op_list:
            rows.append(bench(case, shape, op, dtype, device, min_run_time, info))
            common.synchronize(device)
    common.print_table(rows)
    if not (a.quick or a.no_write) or a.out is not None:
        path = common.write_results(rows, a.out or common.default_results_path(info["device"]))
        print(f"# appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
