"""Ceilings of the GPU at hand, to read the kernel benchmark against (METHOD: measure them on
the device rather than trust datasheets).

* copy: a large device-to-device copy through PyTorch (``dst.copy_(src)``, 2 GiB float32 by
  default, 30× the H200's L2), bandwidth = (bytes read + bytes written) / time, in TB/s.
  The memory-bound kernels (element-wise ops, the field update) are measured against it.
* fma32 / fma64: fused multiply-adds in registers (2 FLOP each), TFLOP/s.
* exp: ``expf`` evaluations per second (the device path of ``bpk::vexp<float>``).
* erfcx: ``bpk::erfcx<float>`` evaluations per second (csrc/include/bpkernels/special.h).
* g_soft / g_hard: the inner loop of the fused BPI cavity kernel without its loads: per
  (unit, sample) ĝ = g(b, ω − m x̂, s) from csrc/include/bpkernels/binary_bp.h, accumulated
  into H_in and b, for a soft field b and for a hard label. In G ĝ evaluations per second, the
  unit of bench_cuda.py's ``ext_gelem_s``: the arithmetic roofline of the cavity kernels.

The arithmetic kernels live in benchmarks/gpu_ceilings.cu; this script builds them with nvcc
(sm_90 by default, one target, a few seconds; no torch headers) into a shared library and calls
it through ctypes. Each figure is the median of ``--reps`` timed runs (CUDA events) after
``--warmup`` runs; each run is sized to take milliseconds on the whole chip.

Usage:  python benchmarks/gpu_ceilings.py [--out ceilings.json] [--arch 90] [--build-dir DIR]
        python benchmarks/gpu_ceilings.py --build-only     (compile check; no GPU needed)
Exits 2 without a CUDA device (after building, so that a CPU machine still checks the source).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOURCE = HERE / "gpu_ceilings.cu"

# kernel id in gpu_ceilings.cu -> (name, unit, scale of ops/s to the unit, iterations per run)
KERNELS = {
    0: ("fma32", "TFLOP/s", 1e-12, 4096),
    1: ("fma64", "TFLOP/s", 1e-12, 1024),
    2: ("exp", "G/s", 1e-9, 1024),
    3: ("erfcx", "G/s", 1e-9, 512),
    4: ("g_soft", "G/s", 1e-9, 256),
    5: ("g_hard", "G/s", 1e-9, 256),
}


def find_nvcc() -> str:
    """nvcc from $CUDA_HOME, /usr/local/cuda or the PATH."""
    candidates = [os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")] if os.environ.get("CUDA_HOME") else []
    candidates += ["/usr/local/cuda/bin/nvcc", shutil.which("nvcc") or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit("gpu_ceilings.py: nvcc not found (set CUDA_HOME)")


def build(build_dir: Path, arch: str) -> Path:
    """Compiles gpu_ceilings.cu into build_dir/libbpk_ceilings.so; prints ptxas' resource report."""
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = build_dir / "libbpk_ceilings.so"
    cmd = [find_nvcc(), "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-shared", "-Xcompiler", "-fPIC",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
           "-I", str(REPO / "csrc" / "include"), str(SOURCE), "-o", str(lib)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    # ptxas -v: "Compiling entry function '<mangled>'", then stack/spills and registers.
    report = []
    for line in proc.stderr.splitlines():
        entry = re.search(r"Compiling entry function '.*?(fma_kernel|exp_kernel|erfcx_kernel|g_kernel)(I\w+?E)?E", line)
        if entry:
            args = {"IfE": "<float>", "IdE": "<double>", "ILb0E": "<soft>", "ILb1E": "<hard>"}.get(entry[2] or "", "")
            report.append(f"{entry[1]}{args}:")
        elif "Used" in line or "spill" in line:
            report.append("  " + line.split(":", 1)[-1].strip())
    print(f"# nvcc {'OK' if proc.returncode == 0 else 'FAILED'} in {time.perf_counter() - t0:.1f} s: {' '.join(cmd)}")
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        raise SystemExit(1)
    for line in report:
        print(f"#   {line}")
    return lib


def time_copy(torch, n_bytes: int, warmup: int, reps: int) -> dict:
    n = n_bytes // 4
    src = torch.rand(n, device="cuda")
    dst = torch.empty_like(src)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(warmup + reps):
        start.record()
        dst.copy_(src)
        stop.record()
        stop.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(stop))
    if not torch.equal(dst[:: max(1, n // 4096)], src[:: max(1, n // 4096)]):
        raise AssertionError("device-to-device copy: destination differs from source")
    ms = statistics.median(times)
    del src, dst
    torch.cuda.empty_cache()
    return dict(name="copy", bytes_moved=2 * 4 * n, ms=ms, value=2 * 4 * n / (ms * 1e-3) * 1e-12, unit="TB/s",
                spread_ms=[min(times), max(times)])


def time_kernel(torch, lib, which: int, blocks: int, threads: int, warmup: int, reps: int) -> dict:
    name, unit, scale, iters = KERNELS[which]
    out = torch.empty(blocks * threads, device="cuda")
    torch.cuda.synchronize()
    ms = ctypes.c_float()
    times = []
    for i in range(warmup + reps):
        err = lib.bpk_ceiling_run(which, ctypes.c_void_p(out.data_ptr()), blocks, threads, iters, ctypes.byref(ms))
        if err != 0:
            raise RuntimeError(f"{name}: CUDA error {err}")
        if i >= warmup:
            times.append(ms.value)
    if not bool(torch.isfinite(out).all()):
        raise AssertionError(f"{name}: non-finite results")
    ops = blocks * threads * iters * lib.bpk_ceiling_ops_per_iter(which)
    med = statistics.median(times)
    return dict(name=name, ops=ops, ms=med, value=ops / (med * 1e-3) * scale, unit=unit,
                spread_ms=[min(times), max(times)], blocks=blocks, threads=threads, iters=iters)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    p.add_argument("--arch", default="90", help="compute capability without the dot (default 90: sm_90)")
    p.add_argument("--build-dir", default=str(REPO / "build" / "ceilings"))
    p.add_argument("--build-only", action="store_true", help="compile the kernels and stop")
    p.add_argument("--copy-gib", type=float, default=2.0, help="size of the copied buffer, GiB")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=15)
    a = p.parse_args(argv)

    lib_path = build(Path(a.build_dir), a.arch)
    if a.build_only:
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_ceilings.py needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    torch.cuda.init()  # the primary context, shared with the library's (static) CUDA runtime
    lib = ctypes.CDLL(str(lib_path))
    lib.bpk_ceiling_run.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_float)]
    lib.bpk_ceiling_ops_per_iter.argtypes = [ctypes.c_int]
    props = torch.cuda.get_device_properties(0)
    threads = 256
    blocks = props.multi_processor_count * 2048 // threads * 4  # four full waves of resident blocks
    info = dict(device=torch.cuda.get_device_name(0), sm_count=props.multi_processor_count,
                l2_bytes=getattr(props, "L2_cache_size", None), total_memory=props.total_memory,
                torch=torch.__version__, cuda=torch.version.cuda, arch=f"sm_{a.arch}",
                date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    results = [time_copy(torch, int(a.copy_gib * 2**30), a.warmup, a.reps)]
    for which in KERNELS:
        results.append(time_kernel(torch, lib, which, blocks, threads, a.warmup, a.reps))
    print(f"# {info['device']}: {info['sm_count']} SMs, torch {info['torch']}, CUDA {info['cuda']}")
    for r in results:
        lo, hi = r["spread_ms"]
        print(f"{r['name']:8s} {r['value']:10.2f} {r['unit']:8s} ({r['ms']:.3f} ms median, {lo:.3f}-{hi:.3f})")
    if a.out:
        Path(a.out).write_text(json.dumps(dict(info, results=results), indent=1) + "\n")
        print(f"# wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
