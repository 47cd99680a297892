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

from bpkernels import ops, reference  # noqa: E402

CASES = {"784->501": (128, 784, 501), "1024->1024": (128, 1024, 1024)}  # name: (B, N, K)
QUICK_CASES = {"quick 33->17": (8, 33, 17)}


def make_inputs(op: str, B: int, N: int, K: int, dtype, device, seed: int = 0):
    """Realistic arguments of ``op`` for a hidden layer (soft b_top; labels for the argmax op):
    fields H ~ N(0, 1), inputs x̂ = tanh(u) with u ~ N(0, 1), ω and V from the forward."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    H = randn(K, N)
    m = torch.tanh(H)
    sigma = 1.0 - m.square()
    u = randn(B, N)
    x_hat = torch.tanh(u)
    delta = 1.0 - x_hat.square()
    omega, var, _ = reference.bp_linear_fwd(x_hat, delta, m, sigma)
    b_top = randn(B, K, scale=2.0)
    g_out, gamma = reference.bp_output(b_top, omega, var, False)

    def cavity():
        return torch.tanh(randn(K, N, B)), randn(K, N, B, scale=0.5)

    if op == "bp_linear_input":
        return [u, randn(B, N)]
    if op in ("bp_linear_fwd", "bp_bayes_fwd"):
        return [x_hat, delta, m, sigma]
    if op == "bp_linear_fwd_amp":
        return [x_hat, delta, m, sigma, randn(B, K, scale=0.3), torch.tanh(randn(B, N)), torch.tanh(randn(K, N))]
    if op == "bp_upfield":
        return [omega, var]
    if op == "bp_output":
        return [b_top, omega, var, False]
    if op == "bp_argmax_output":
        return [omega, var, torch.randint(0, K, (B,), generator=g).to(device)]
    if op == "bp_linear_bwd_mf":
        return [g_out, x_hat, m, True]
    if op == "bp_linear_bwd_amp":
        return [g_out, gamma, x_hat, delta, m, sigma, None, None, None, True]
    if op == "bp_linear_bwd_bpi":
        return [b_top, omega, var, x_hat, m, False, True]
    if op == "bp_linear_omega_bp":
        m_cav, b_cav = cavity()
        return [u, b_cav, m_cav]
    if op == "bp_linear_bwd_bp":
        m_cav, b_cav = cavity()
        return [b_top, omega, var, u, b_cav, m_cav, False, True]
    if op == "bp_cavity_update_":
        m_cav, b_cav = cavity()
        return [m_cav, b_cav, b_top, omega, var, u, randn(B, N), H, None, 0.8, False]
    if op == "bp_field_update_":
        return [H, m, sigma, randn(K, N), None, None, 1.0, 0.0, 0.8, False]
    raise KeyError(op)


OPS = [
    "bp_linear_input", "bp_linear_fwd", "bp_linear_fwd_amp", "bp_upfield", "bp_output", "bp_argmax_output",
    "bp_linear_bwd_mf", "bp_linear_bwd_amp", "bp_linear_bwd_bpi", "bp_linear_omega_bp", "bp_linear_bwd_bp",
    "bp_cavity_update_", "bp_field_update_", "bp_bayes_fwd",
]
INPLACE = {"bp_cavity_update_": (0, 1), "bp_field_update_": (0, 1, 2)}
# Elements processed per call, for the throughput column: the cavity ops visit K·N·B edges.
CAVITY_OPS = {"bp_linear_bwd_bpi", "bp_linear_omega_bp", "bp_linear_bwd_bp", "bp_cavity_update_"}


def results_of(impl, op, args):
    """Outputs of one call on copies of the arguments (in-place ops: the mutated arguments)."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    out = getattr(impl, op)(*args)
    out = () if out is None else (tuple(out) if isinstance(out, (tuple, list)) else (out,))
    return out + tuple(args[i] for i in INPLACE.get(op, ()) if args[i] is not None)


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
