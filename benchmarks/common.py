"""Helpers of the bpkernels benchmarks: device naming, torch.utils.benchmark timing, a
correctness check before any timing, and the results writer.

Results go to ``benchmarks/results/<device>.json``: a JSON list of rows
``{case, op, ext_ms, twin_ms, ratio, commit, torch, threads, device, ...}``, appended run
after run, so that runs of different commits on one machine can be compared.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
from pathlib import Path

import torch
from torch.utils import benchmark

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def device_name(device: torch.device | str) -> str:
    """A readable machine name: the CPU model and its usable core count, or the GPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)"


def device_slug(name: str) -> str:
    """File-name form of a device name: 'AMD EPYC (2 cores)' -> 'amd-epyc-2-cores'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def git_commit() -> str:
    """Short SHA of HEAD, with '-dirty' when the work tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, args, *, label: str, sub_label: str, description: str, min_run_time: float) -> float:
    """Median milliseconds per call of ``fn(*args)`` (torch.utils.benchmark handles warm-up and
    CUDA synchronisation)."""
    timer = benchmark.Timer(stmt="fn(*args)", globals={"fn": fn, "args": args}, label=label,
                            sub_label=sub_label, description=description,
                            num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def check_close(name: str, got, want, *, rtol: float, atol: float) -> None:
    """Asserts that two results agree (tuples elementwise) before either is timed, so that a
    fast wrong kernel never gets a number. ``atol`` is relative to each tensor's largest |want|."""
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    if len(got) != len(want):
        raise AssertionError(f"{name}: {len(got)} outputs vs {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape:
            raise AssertionError(f"{name} output {i}: shape {tuple(g.shape)} vs {tuple(w.shape)}")
        if not torch.isfinite(g).all():
            raise AssertionError(f"{name} output {i}: non-finite values")
        g64, w64 = g.double(), w.double()
        scale = w64.abs().max().item() if w64.numel() else 0.0
        err = (g64 - w64).abs()
        bound = rtol * w64.abs() + atol * scale
        if bool((err > bound).any()):
            raise AssertionError(f"{name} output {i}: max |ext - twin| = {err.max().item():.3e} "
                                 f"(scale {scale:.3e}): the kernel disagrees with its twin")


def write_results(rows: list[dict], path: Path) -> Path:
    """Appends ``rows`` to the JSON list at ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(existing + rows, indent=1) + "\n")
    return path


def default_results_path(device_label: str) -> Path:
    return RESULTS_DIR / f"{device_slug(device_label)}.json"


def run_info(device: torch.device | str) -> dict:
    """Fields shared by every row of one run."""
    return {
        "commit": git_commit(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def print_table(rows: list[dict]) -> None:
    head = f"{'case':<22} {'op':<20} {'ext ms':>10} {'twin ms':>10} {'twin/ext':>9} {'G elem/s':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        rate = f"{r['ext_gelem_s']:.2f}" if r.get("ext_gelem_s") else ""
        print(f"{r['case']:<22} {r['op']:<20} {r['ext_ms']:>10.3f} {r['twin_ms']:>10.3f} "
              f"{r['ratio']:>9.2f} {rate:>9}")
