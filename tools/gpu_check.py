"""The GPU check of bpkernels: one command that builds, verifies and measures everything on a
fresh GPU machine with no network, inside a few minutes (driver of tools/gpu_check.sh).

    bash tools/gpu_check.sh OUTDIR [--pack DIR] [--expect-gpu] [--only a,b] [--skip a,b] ...

Stages, in order (each with its own time limit; a failed stage does not stop the next ones):

  env          versions and tools (python, torch, CUDA, nvcc, compute-sanitizer, ncu, GPU
               clocks); installs carried wheels (.gpu_carry/whl) for modules that are missing
  build        python setup.py build_ext --inplace against the torch found there, CUDA kernels
               for sm_90 only (BPK_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0, CUDA_HOME found); checks
               that every bpkernels operator has a CUDA kernel
  cuda_tests   pytest python_tests -k cuda: test_cuda.py, the `cuda`-marked tests and the
               [cuda] variants of the device-parametrised tests. A skip is a failure unless its
               reason is structural (ALLOWED_SKIPS)
  memcheck, racecheck, synccheck
               compute-sanitizer over benchmarks/sanitize_cuda.py (caching allocator off);
               these three run one after the other, beside cuda_tests (neither is timed)
  ceilings     benchmarks/gpu_ceilings.py: copy bandwidth, FP32/FP64 FMA, expf, erfcx and the
               cavity ĝ throughput (the roofline of the cavity kernels)
  bench        benchmarks/bench_cuda.py: every op against its twin, 784→501 and 1024→1024,
               B = 128 and 1024, peak memory
  train_amp, train_bpi, train_ste
               python -m bpkernels train --device cuda on full Fashion-MNIST (the files travel
               in .gpu_carry/data), 784-501-501-10, B = 128, --epochs 2 (epoch 1 includes the
               CUDA warm-up; epoch 2 is the steady-state time)
  ncu_bpi      Nsight Compute on one launch of the fused BPI cavity kernel (1024→1024, B = 1024)
  packed, distributed
               OPTIONAL: python_tests/test_packed.py and python_tests/test_dist*.py /
               test_ddp*.py, only when those files exist

Benchmarks, trainings and ncu run alone on the GPU, after the tests and sanitizers.

Without a GPU (a rehearsal) the GPU stages are skipped or replaced by CPU stand-ins that run
their plumbing: the build is CPU-only (BPK_CUDA=0), the test selection is collected (every test
skips), bench_cuda.py / sanitize_cuda.py are asked for the options used here, the ceiling
kernels are compiled, and the trainings run on the CPU on a 1280-image subset.

Status of a stage: pass | fail | timeout | skip (not run; the reason says why) | rehearsed (no
GPU: its CPU stand-in ran). Exit status 1 if a required stage failed or timed out (or, with
--expect-gpu, no GPU was found), else 0.

Outputs in OUTDIR: log.txt (everything, as it happens), stages/<stage>.log, summary.json (per
stage: status, seconds, limit, reason, details; `targets`: the issue's GPU targets, evaluated),
summary.md (the same as a table), env.json, junit_cuda.xml, bench_cuda.json, ceilings.json,
train_<algo>/ (run folders). --pack DIR copies summary.json, summary.md, log.txt,
bench_cuda.json, ceilings.json and a gpu_check.tar.gz of OUTDIR (no checkpoints) into DIR after
every stage, so that a run cut short still leaves its results there (at most 6 files).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY = ROOT / ".gpu_carry"
SITE = Path("/tmp/bpk_gpu_site")  # where carried wheels are installed (--target)

# Skip reasons that are structural, not a missing device: parametrisations without a meaning
# for an op, and two-GPU tests on a one-GPU machine. Any other skip fails cuda_tests.
ALLOWED_SKIPS = [r"^no labels$", r"^no first-layer form$", r"needs two CUDA devices",
                 r"CUDA checks labels on the device"]

# Modules the check can use beyond the image's torch / numpy / pytest / tqdm / matplotlib, and
# the carried wheels (distribution-name prefixes) that provide each when it is missing there.
WHEELS = {
    "ninja": ["ninja"],                                  # parallel extension build
    "xdist": ["pytest_xdist", "execnet"],                # cuda_tests on several workers
    "pytest_timeout": ["pytest_timeout"],                # a per-test limit inside the stage's
    "mpmath": ["mpmath"],
    "hypothesis": ["hypothesis", "attrs", "sortedcontainers"],
}

TRAIN = {"amp": ["--algo", "amp"], "bpi": ["--algo", "bpi"], "ste": ["--method", "ste"]}

# (name, time limit in s, required). The limits are caps; the deadline trims them.
STAGES = [
    ("env", 60, True), ("build", 240, True),
    ("cuda_tests", 240, True), ("memcheck", 150, True), ("racecheck", 120, True), ("synccheck", 90, True),
    ("ceilings", 60, True), ("bench", 150, True),
    ("train_amp", 90, True), ("train_bpi", 90, True), ("train_ste", 90, True),
    ("ncu_bpi", 60, False), ("packed", 90, False), ("distributed", 90, False),
]
MIN_STAGE_S = 15  # a stage is not started with less time than this left


class Check:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.out = Path(a.outdir).resolve()
        (self.out / "stages").mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.lock = threading.Lock()
        self.summary_lock = threading.Lock()
        self.logf = open(self.out / "log.txt", "a", buffering=1)
        self.results: dict[str, dict] = {}
        # The extension is built in place, not installed: scripts run as `python benchmarks/x.py`
        # (sys.path[0] = benchmarks/) find bpkernels through PYTHONPATH.
        path = os.environ.get("PYTHONPATH")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=f"{ROOT}:{path}" if path else str(ROOT))
        self.py = a.python
        self.info: dict = {}
        self.gpu = False
        self.nproc = os.cpu_count() or 1
        self.limits = {name: limit for name, limit, _ in STAGES}
        self.required = {name: req for name, _, req in STAGES}
        names = [n for n, _, _ in STAGES]
        for opt in ("only", "skip"):
            unknown = sorted(set(getattr(a, opt)) - set(names))
            if unknown:
                raise SystemExit(f"gpu_check: unknown stage(s) in --{opt}: {unknown}; stages: {names}")

    # ---- logging and bookkeeping ----------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.a.deadline - self.elapsed()

    def say(self, stage: str, text: str) -> None:
        with self.lock:
            for line in text.rstrip("\n").split("\n"):
                stamped = f"[{self.elapsed():6.1f}s {stage}] {line}"
                print(stamped, flush=True)
                self.logf.write(stamped + "\n")

    def finish(self, name: str, status: str, t_start: float, reason: str = "", cmd=None, details=None,
               limit=None) -> dict:
        res = dict(name=name, status=status, required=self.required[name],
                   seconds=round(time.monotonic() - t_start, 1), limit_s=limit, reason=reason,
                   log=f"stages/{name}.log" if (self.out / "stages" / f"{name}.log").exists() else None,
                   cmd=" ".join(map(str, cmd)) if cmd else None, details=details or {})
        with self.lock:
            self.results[name] = res
        self.say(name, f"== {status.upper()} ({res['seconds']} s){': ' + reason if reason else ''}")
        self.write_summary()
        return res

    def run(self, stage: str, cmd: list, limit: float, env: dict | None = None, log_name: str | None = None,
            cwd: Path = ROOT, show: str | None = None) -> tuple[int | None, bool, str]:
        """Runs cmd in its own process group, its output teed into the stage log and log.txt;
        kills the group at the limit. Returns (exit status, timed out, output). ``show``
        replaces the command line in log.txt (inline scripts are long)."""
        log_path = self.out / "stages" / f"{log_name or stage}.log"
        self.say(stage, f"$ {show or ' '.join(map(str, cmd))}   (limit {limit:.0f} s)")
        chunks: list[str] = []
        with open(log_path, "a", buffering=1) as log:
            log.write(f"$ {' '.join(map(str, cmd))}\n")
            try:
                proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env or self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                        start_new_session=True)
            except OSError as exc:
                log.write(f"cannot start: {exc}\n")
                return None, False, f"cannot start: {exc}"

            def pump():
                for line in proc.stdout:
                    log.write(line)
                    chunks.append(line)
                    self.say(stage, line)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            timed_out = False
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                self.say(stage, f"time limit of {limit:.0f} s reached: stopping the process group")
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=5)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            reader.join(timeout=10)
        return proc.returncode, timed_out, "".join(chunks)

    def limit_for(self, name: str) -> float | None:
        """The stage's limit, trimmed to the time left before the deadline; None if too little is left."""
        left = self.remaining() - 5
        return None if left < MIN_STAGE_S else min(self.limits[name], left)

    def wanted(self, name: str) -> bool:
        """--only never leaves out env and build (the others need them; on a warm machine the
        build is incremental); --skip can."""
        selected = not self.a.only or name in self.a.only or name in ("env", "build")
        return selected and name not in self.a.skip

    def stage(self, name: str, fn, *needs: str) -> None:
        """Runs stage fn(name, limit, t_start) unless deselected, a needed stage did not pass
        (or get rehearsed), or too little time is left."""
        t = time.monotonic()
        if not self.wanted(name):
            self.finish(name, "skip", t, "not selected (--only / --skip)")
            return
        bad = [n for n in needs if self.results.get(n, {}).get("status") not in ("pass", "rehearsed")]
        if bad:
            self.finish(name, "skip", t, f"needs {', '.join(bad)}, which did not pass")
            return
        limit = self.limit_for(name)
        if limit is None:
            self.finish(name, "skip", t, f"no time left before the {self.a.deadline:.0f} s deadline")
            return
        self.say(name, f"== start (limit {limit:.0f} s, {self.remaining():.0f} s left before the deadline)")
        try:
            fn(name, limit, t)
        except Exception as exc:  # a bug in this driver must not stop the other stages
            self.finish(name, "fail", t, f"gpu_check error: {type(exc).__name__}: {exc}")

    def tool(self, name: str, *extra: str) -> str | None:
        """A CUDA tool from the PATH, CUDA_HOME or the usual install folders."""
        cands = [shutil.which(name)]
        home = self.info.get("cuda_home")
        if home:
            cands += [f"{home}/bin/{name}", f"{home}/{name}/{name}"]
        cands += [f"/usr/local/cuda/bin/{name}", *extra]
        for c in cands:
            if c and os.path.isfile(c) and os.access(c, os.X_OK):
                return c
        return None

    # ---- stages --------------------------------------------------------------------------

    def s_env(self, name: str, limit: float, t: float) -> None:
        probe = r"""
import json, os, sys, importlib.metadata as md
r = {"python": sys.version.split()[0], "python_exe": sys.executable}
try:
    import torch
    from torch.utils import cpp_extension
    r.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
             torch_cuda_home=cpp_extension.CUDA_HOME,
             torch_arch_list=torch.cuda.get_arch_list() if torch.version.cuda else [],
             threads=torch.get_num_threads())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        r.update(device_count=torch.cuda.device_count(), device=torch.cuda.get_device_name(0),
                 capability=".".join(map(str, torch.cuda.get_device_capability(0))), sm_count=p.multi_processor_count,
                 total_memory_gib=round(p.total_memory / 2**30, 1), l2_bytes=getattr(p, "L2_cache_size", None))
except Exception as exc:
    r["torch_error"] = repr(exc)
mods, versions = {}, {}
names = ["numpy", "pytest", "xdist", "pytest_timeout", "ninja", "setuptools", "tqdm", "matplotlib", "mpmath",
         "hypothesis"]
for m in names:
    try:
        __import__(m); mods[m] = "ok"
    except Exception:
        mods[m] = "missing"
for d in [{"xdist": "pytest-xdist", "pytest_timeout": "pytest-timeout"}.get(m, m) for m in names]:
    try:
        versions[d] = md.version(d)
    except Exception:
        pass
r["modules"], r["versions"] = mods, versions
print("PROBE " + json.dumps(r))
"""
        rc, to, out = self.run(name, [self.py, "-c", probe], limit, show=f"{self.py} -c <probe of versions>")
        found = [line for line in out.splitlines() if line.startswith("PROBE ")]
        if rc != 0 or not found:
            self.finish(name, "fail", t, f"{self.py} could not be probed (exit {rc})", details={})
            return
        info = self.info = json.loads(found[-1][6:])
        self.gpu = bool(info.get("cuda_available")) and bool(info.get("torch_cuda"))

        # Carried wheels for missing modules: installed into SITE, put first on PYTHONPATH/PATH.
        wheels_dir = CARRY / "whl"
        missing = [m for m, s in info["modules"].items() if s == "missing" and m in WHEELS]
        installed = []
        if missing and wheels_dir.is_dir():
            files = sorted(str(w) for m in missing for prefix in WHEELS[m]
                           for w in wheels_dir.glob(f"{prefix}-*.whl"))
            if files:
                rc, _, _ = self.run(name, [self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                           "--no-compile", "--no-cache-dir", "--upgrade", "--target", SITE, *files],
                                    min(limit, 60))
                if rc == 0:
                    installed = [Path(f).name for f in files]
                    self.env["PYTHONPATH"] = f"{SITE}:{self.env['PYTHONPATH']}"
                    self.env["PATH"] = f"{SITE}/bin:{self.env.get('PATH', '')}"
                    for m in missing:
                        info["modules"][m] = "carried"
        info["carried_wheels_installed"] = installed

        # CUDA_HOME: the environment's, /usr/local/cuda, nvcc's folder on the PATH, torch's guess.
        home, why = None, ""
        cands = [(os.environ.get("CUDA_HOME"), "CUDA_HOME from the environment"),
                 ("/usr/local/cuda", "/usr/local/cuda has bin/nvcc")]
        nvcc_path = shutil.which("nvcc")
        if nvcc_path:
            cands.append((str(Path(nvcc_path).resolve().parent.parent), f"parent of nvcc on the PATH ({nvcc_path})"))
        cands.append((info.get("torch_cuda_home"), "torch.utils.cpp_extension.CUDA_HOME"))
        for cand, reason in cands:
            if cand and os.access(os.path.join(cand, "bin", "nvcc"), os.X_OK):
                home, why = cand, reason
                break
        info["cuda_home"], info["cuda_home_reason"] = home, why
        for tool, args in [("nvcc", ["--version"]), ("compute-sanitizer", ["--version"]), ("ncu", ["--version"]),
                           ("cuobjdump", ["--version"]), ("nvidia-smi", [])]:
            path = self.tool(tool, *sorted(map(str, Path("/opt/nvidia").glob(f"nsight-compute/*/{tool}"))))
            info[f"{tool}_path"] = path
            if path and args:
                try:
                    v = subprocess.run([path, *args], capture_output=True, text=True, timeout=30).stdout.strip()
                    info[f"{tool}_version"] = v.splitlines()[-1] if v else ""
                except (OSError, subprocess.SubprocessError) as exc:
                    info[f"{tool}_version"] = f"error: {exc}"
        if info.get("compute-sanitizer_path"):
            try:
                info["sanitizer_help"] = subprocess.run([info["compute-sanitizer_path"], "--help"], capture_output=True,
                                                        text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                info["sanitizer_help"] = ""
        for cmd in (["gcc", "--version"], ["ninja", "--version"]):
            try:
                info[cmd[0] + "_version"] = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                                                           env=self.env).stdout.strip().splitlines()[0]
            except (OSError, subprocess.SubprocessError, IndexError):
                info[cmd[0] + "_version"] = None
        self.gpu_state(name)
        info["nproc"] = self.nproc
        info["uname"] = " ".join(os.uname())
        commit_file = CARRY / "commit.txt"
        info["commit"] = commit_file.read_text().strip() if commit_file.exists() else None
        data = self.data_dir()
        info["data_dir"] = str(data) if data else None
        (self.out / "env.json").write_text(json.dumps({k: v for k, v in info.items() if k != "sanitizer_help"},
                                                      indent=1) + "\n")
        self.say(name, "mode: " + ("GPU " + str(info.get("device")) if self.gpu else
                                   "REHEARSAL (torch sees no CUDA device): GPU stages are skipped or run as CPU "
                                   "stand-ins"))
        summary = {k: info.get(k) for k in ("python", "torch", "torch_cuda", "device", "capability", "cuda_home",
                                            "cuda_home_reason", "nvcc_version", "compute-sanitizer_version",
                                            "ncu_version", "commit", "data_dir", "carried_wheels_installed")}
        if self.a.expect_gpu and not self.gpu:
            self.finish(name, "fail", t, "--expect-gpu, but torch sees no CUDA device", details=summary, limit=limit)
        else:
            self.finish(name, "pass", t, details=summary, limit=limit)

    def gpu_state(self, stage: str) -> None:
        """Clocks, temperature, power and memory in use, into the stage's log (the card is
        measured as found: nothing here changes its settings)."""
        if self.info.get("nvidia-smi_path"):
            q = ("name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,memory.used,"
                 "memory.total")
            self.run(stage, [self.info["nvidia-smi_path"], f"--query-gpu={q}", "--format=csv"], 30)

    def data_dir(self) -> Path | None:
        for d in (CARRY / "data", Path("/usr/share/datasets/fashion-mnist")):
            if d.is_dir() and any(d.glob("train-images-idx3-ubyte*")):
                return d
        return None

    def s_build(self, name: str, limit: float, t: float) -> None:
        env = dict(self.env)
        if self.gpu:
            set_vars = {"BPK_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": str(self.nproc)}
            if self.info.get("cuda_home"):
                set_vars["CUDA_HOME"] = self.info["cuda_home"]
        else:
            set_vars = {"BPK_CUDA": "0", "MAX_JOBS": os.environ.get("MAX_JOBS", "1")}
        env.update(set_vars)
        if self.a.clean_build:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
            for so in (ROOT / "bpkernels").glob("_C*.so"):
                so.unlink()
        cmd = [self.py, "setup.py", "build_ext", "--inplace"]
        rc, to, out = self.run(name, cmd, limit, env=env)
        decision = [line for line in out.splitlines() if line.startswith("bpkernels build:")]
        details = {"env_set": set_vars, "setup_py_says": decision[-1] if decision else None}
        if to or rc != 0:
            self.finish(name, "timeout" if to else "fail", t, f"setup.py build_ext exited {rc}", cmd, details, limit)
            return
        # sys.path[0] as for `python benchmarks/x.py`: bpkernels must come through PYTHONPATH.
        verify = r"""
import sys; sys.path[0] = "benchmarks"
import json, torch, bpkernels
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("bpkernels::"))
has = lambda n, k: torch._C._dispatch_has_kernel_for_dispatch_key(n, k)
print("VERIFY " + json.dumps({"file": bpkernels._C.__file__, "ops": len(names),
      "no_cpu_kernel": [n for n in names if not has(n, "CPU")],
      "no_cuda_kernel": [n for n in names if not has(n, "CUDA")]}))
"""
        rc, _, vout = self.run(name, [self.py, "-c", verify], 60,
                              show=f"{self.py} -c <import bpkernels as benchmarks/ does; ops with CPU / CUDA kernels>")
        found = [line for line in vout.splitlines() if line.startswith("VERIFY ")]
        if rc != 0 or not found:
            self.finish(name, "fail", t, "the built extension does not import", cmd, details, limit)
            return
        v = json.loads(found[-1][7:])
        details.update(v)
        details["so_bytes"] = os.path.getsize(v["file"])
        cuobjdump = self.info.get("cuobjdump_path")
        if self.gpu and cuobjdump:
            _, _, elf = self.run(name, [cuobjdump, "--list-elf", v["file"]], 30)
            details["sass_targets"] = sorted(set(re.findall(r"sm_\d+a?", elf)))
            self.run(name, [cuobjdump, "--dump-resource-usage", v["file"]], 30, log_name="build_resources")
        # Later stages need CUDA kernels: fail only when none is there, and name what is missing.
        warnings = []
        if self.gpu and v["no_cuda_kernel"]:
            warnings.append(f"no CUDA kernel for {v['no_cuda_kernel']}")
        if self.gpu and details.get("sass_targets") and details["sass_targets"] != ["sm_90"]:
            warnings.append(f"machine code for {details['sass_targets']}, expected sm_90 only")
        if self.gpu and (not v["ops"] or len(v["no_cuda_kernel"]) == v["ops"]):
            self.finish(name, "fail", t, "the extension has no CUDA kernels", cmd, details, limit)
        elif self.gpu:
            self.finish(name, "pass", t, "WARNING: " + "; ".join(warnings) if warnings else "", cmd, details, limit)
        else:
            self.finish(name, "rehearsed", t, "CPU-only build (BPK_CUDA=0): no CUDA torch/GPU here", cmd, details,
                        limit)

    def s_cuda_tests(self, name: str, limit: float, t: float) -> None:
        junit = self.out / "junit_cuda.xml"
        cmd = [self.py, "-m", "pytest", "python_tests", "-k", "cuda", "-q", "-rs", "--durations=15",
               "-p", "no:cacheprovider", f"--junitxml={junit}"]
        env = dict(self.env)
        mods = self.info.get("modules", {})
        if self.gpu and mods.get("xdist") in ("ok", "carried"):
            workers = max(1, min(8, self.nproc // 2))
            cmd += ["-n", str(workers)]
            env["OMP_NUM_THREADS"] = str(max(1, self.nproc // workers))
        if mods.get("pytest_timeout") in ("ok", "carried"):
            cmd += ["--timeout", "200"]  # one hung test is named rather than eating the stage
        rc, to, out = self.run(name, cmd, limit, env=env)
        details = parse_junit(junit)
        tail = [line for line in out.splitlines() if re.search(r"\b(passed|failed|skipped|error)\b", line)]
        details["pytest_says"] = tail[-1].strip() if tail else None
        if to:
            self.finish(name, "timeout", t, "pytest did not finish", cmd, details, limit)
            return
        if not self.gpu:
            ran = details.get("tests", 0) - details.get("skipped", 0)
            ok = rc in (0, 5) and ran == 0
            self.finish(name, "rehearsed" if ok else "fail", t,
                        f"no CUDA device: {details.get('tests', 0)} tests collected, all skipped" if ok
                        else f"without a GPU {ran} selected tests ran or pytest exited {rc}", cmd, details, limit)
            return
        bad = details.get("disallowed_skips", {})
        if rc == 0 and not bad and details.get("tests", 0) > 0:
            self.finish(name, "pass", t, details["pytest_says"] or "", cmd, details, limit)
        else:
            why = []
            if details.get("failures") or details.get("errors"):
                why.append(f"{details.get('failures', 0)} failed, {details.get('errors', 0)} errors")
            if bad:
                why.append(f"{sum(bad.values())} skipped for non-structural reasons: {list(bad)[:3]}")
            if not why:
                why.append(f"pytest exited {rc}")
            self.finish(name, "fail", t, "; ".join(why), cmd, details, limit)

    def sanitizer_cmd(self, tool: str, quick: bool) -> list:
        help_text = self.info.get("sanitizer_help", "")
        cmd = [self.info["compute-sanitizer_path"], "--tool", tool]
        if "--print-limit" in help_text:
            cmd += ["--print-limit", "100"]
        if "--error-exitcode" in help_text:
            cmd += ["--error-exitcode", "97"]
        cmd += [self.py, "benchmarks/sanitize_cuda.py"] + (["--quick"] if quick else [])
        return cmd

    def s_sanitizer(self, name: str, limit: float, t: float) -> None:
        tool = name
        # memcheck over every shape; racecheck and synccheck (slower, shared memory) over the one
        # shape that is a partial tile in every dimension (33×65×67), to fit the time.
        quick = tool != "memcheck"
        if not self.gpu:
            rc, _, out = self.run(name, [self.py, "benchmarks/sanitize_cuda.py", "--help"], 60)
            ok = rc == 0 and "--quick" in out
            self.finish(name, "rehearsed" if ok else "fail", t,
                        "no CUDA device: sanitize_cuda.py --help offers --quick" if ok
                        else "sanitize_cuda.py --help failed or lacks --quick", None, {}, limit)
            return
        if not self.info.get("compute-sanitizer_path"):
            self.finish(name, "fail", t, "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda)", None, {},
                        limit)
            return
        env = dict(self.env, PYTORCH_NO_CUDA_MEMORY_CACHING="1", OMP_NUM_THREADS="4")
        cmd = self.sanitizer_cmd(tool, quick)
        rc, to, out = self.run(name, cmd, limit, env=env)
        # memcheck / synccheck end with "ERROR SUMMARY: N errors", racecheck with
        # "RACECHECK SUMMARY: H hazards displayed (E errors, W warnings)"; sanitize_cuda.py with
        # "R kernel runs, M mismatches".
        errors = [int(x) for x in re.findall(r"ERROR SUMMARY: (\d+) error", out)]
        races = [tuple(map(int, m)) for m in
                 re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", out)]
        runs = re.findall(r"(\d+) kernel runs, (\d+) mismatches", out)
        found = bool(errors or races)
        details = {"errors": sum(errors) + sum(r[1] for r in races) if found else None,
                   "race_warnings": sum(r[2] for r in races) if races else None,
                   "kernel_runs": int(runs[-1][0]) if runs else None,
                   "mismatches": int(runs[-1][1]) if runs else None, "quick": quick,
                   "tool_messages": sorted(set(re.findall(r"========= (Error: .*|.*not supported.*)", out)))[:5]}
        if to:
            self.finish(name, "timeout", t, f"{tool} did not finish", cmd, details, limit)
        elif rc == 0 and found and details["errors"] == 0 and details["mismatches"] == 0:
            warn = f", {details['race_warnings']} race warnings" if details["race_warnings"] else ""
            self.finish(name, "pass", t, f"0 errors over {details['kernel_runs']} kernel runs{warn}", cmd, details,
                        limit)
        else:
            why = f"exit {rc}"
            if details["errors"]:
                why += f", {details['errors']} errors"
            if details["mismatches"]:
                why += f", {details['mismatches']} results differ from the CPU kernel"
            if details["mismatches"] is None:
                why += ", sanitize_cuda.py did not finish its runs"
            if not found:
                why += ", no summary line from the tool (did it run?)"
            self.finish(name, "fail", t, why, cmd, details, limit)

    def s_ceilings(self, name: str, limit: float, t: float) -> None:
        out_json = self.out / "ceilings.json"
        cmd = [self.py, "benchmarks/gpu_ceilings.py", "--build-dir", ROOT / "build" / "ceilings"]
        env = dict(self.env)
        if self.info.get("cuda_home"):
            env["CUDA_HOME"] = self.info["cuda_home"]
        if not self.gpu:
            if not (self.info.get("nvcc_path") or self.info.get("cuda_home")):
                self.finish(name, "skip", t, "no GPU and no nvcc here", None, {}, limit)
                return
            cmd.append("--build-only")
            rc, to, _ = self.run(name, cmd, limit, env=env)
            self.finish(name, "rehearsed" if rc == 0 else "fail", t,
                        "no CUDA device: the ceiling kernels compiled (sm_90)" if rc == 0 else f"nvcc failed ({rc})",
                        cmd, {}, limit)
            return
        cmd += ["--out", out_json]
        rc, to, _ = self.run(name, cmd, limit, env=env)
        details = {}
        if out_json.exists():
            details = {r["name"]: round(r["value"], 3) for r in json.loads(out_json.read_text())["results"]}
            details["units"] = "copy TB/s, fma TFLOP/s, others G evaluations/s"
        status = "timeout" if to else "pass" if rc == 0 and details else "fail"
        self.finish(name, status, t, "" if status == "pass" else f"exit {rc}", cmd, details, limit)

    def s_bench(self, name: str, limit: float, t: float) -> None:
        out_json = self.out / "bench_cuda.json"
        args = ["--layers", "784x501,1024x1024", "--batches", "128,1024", "--min-run-time", "0.2"]
        if not self.gpu:
            rc, _, out = self.run(name, [self.py, "benchmarks/bench_cuda.py", "--help"], 60)
            missing = [o for o in args[::2] + ["--out"] if o not in out]
            ok = rc == 0 and not missing
            self.finish(name, "rehearsed" if ok else "fail", t,
                        "no CUDA device: bench_cuda.py --help offers every option used" if ok
                        else f"bench_cuda.py --help failed or lacks {missing}", None, {}, limit)
            return
        cmd = [self.py, "benchmarks/bench_cuda.py", *args, "--out", out_json]
        self.gpu_state(name)
        rc, to, _ = self.run(name, cmd, limit)
        self.gpu_state(name)
        rows = json.loads(out_json.read_text()) if out_json.exists() else []
        commit = self.info.get("commit")
        if rows and commit:
            for r in rows:  # the machine gets no .git: the commit travels in .gpu_carry/commit.txt
                if r.get("commit") in (None, "unknown"):
                    r["commit"] = commit
            out_json.write_text(json.dumps(rows, indent=1) + "\n")
        untimed = [f"{r['case']} {r['op']}: {r['note']}" for r in rows if r.get("ext_ms") is None]
        keep = ("case", "op", "ext_ms", "twin_ms", "ratio", "ext_gelem_s", "peak_mem_bytes")
        details = {"rows": len(rows), "untimed": untimed[:10],
                   "twin_oom": sum("memory" in (r.get("note") or "") for r in rows),
                   "bpi": [{k: r.get(k) for k in keep}
                           for r in rows if r.get("op", "").startswith("bp_linear_bwd_bpi")]}
        if to:
            self.finish(name, "timeout", t, f"{len(rows)} rows written before the limit", cmd, details, limit)
        elif rc == 0 and rows and not untimed:
            self.finish(name, "pass", t, f"{len(rows)} rows", cmd, details, limit)
        else:
            self.finish(name, "fail", t, f"exit {rc}; {len(untimed)} kernels untimed (disagree with the twin?)",
                        cmd, details, limit)

    def s_train(self, name: str, limit: float, t: float) -> None:
        algo = name.split("_", 1)[1]
        data = self.data_dir()
        if data is None:
            self.finish(name, "skip", t, "no Fashion-MNIST files: run tools/gpu_prepare.sh here first", None, {}, limit)
            return
        run_dir = self.out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [self.py, "-m", "bpkernels", "train", *TRAIN[algo], "--data-dir", data, "--run-dir", run_dir,
               "--no-progress", "--seed", "0"]
        epochs = self.a.epochs
        if self.gpu:
            cmd += ["--device", "cuda", "--epochs", str(epochs)]
        else:
            epochs = 1
            cmd += ["--device", "cpu", "--epochs", "1", "--subset", "1280", "--test-subset", "500"]
        rc, to, _ = self.run(name, cmd, limit)
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        rows = [json.loads(line) for line in lines if line.strip()]
        keep = ("epoch", "seconds", "train_error", "test_error", "test_error_bayes", "peak_mem_bytes")
        details = {"epochs": [{k: r.get(k) for k in keep} for r in rows]}
        if to:
            self.finish(name, "timeout", t, f"{len(rows)} of {epochs} epochs done", cmd, details, limit)
        elif rc != 0 or len(rows) != epochs:
            self.finish(name, "fail", t, f"exit {rc}, {len(rows)} of {epochs} epochs logged", cmd, details, limit)
        elif not self.gpu:
            self.finish(name, "rehearsed", t, "no CUDA device: 1 epoch on the CPU, 1280-image subset", cmd, details,
                        limit)
        elif not rows[-1]["test_error"] < 0.5:
            self.finish(name, "fail", t, f"test error {rows[-1]['test_error']:.3f} after {epochs} epochs: not learning",
                        cmd, details, limit)
        else:
            secs = ", ".join(f"{r['seconds']:.2f}" for r in rows)
            self.finish(name, "pass", t, f"epoch seconds {secs}; test error {100 * rows[-1]['test_error']:.2f}%",
                        cmd, details, limit)

    def s_ncu(self, name: str, limit: float, t: float) -> None:
        ncu = self.info.get("ncu_path")
        if not self.gpu or not ncu:
            self.finish(name, "skip", t, "no CUDA device" if not self.gpu else "ncu not found", None, {}, limit)
            return
        cmd = [ncu, "--clock-control", "none", "--target-processes", "all", "--kernel-name", "regex:bpi_cavity",
               "--launch-skip", "2", "--launch-count", "1", "--section", "SpeedOfLight", "--section", "LaunchStats",
               "--section", "Occupancy", "--section", "ComputeWorkloadAnalysis", "--section", "MemoryWorkloadAnalysis",
               self.py, "benchmarks/bench_cuda.py", "--ops", "bp_linear_bwd_bpi", "--layers", "1024x1024",
               "--batches", "1024", "--no-twin", "--min-run-time", "0.05", "--out", "/tmp/bpk_ncu_bench.json"]
        rc, to, out = self.run(name, cmd, limit)
        keys = ("Duration", "Compute (SM) Throughput", "Memory Throughput", "Registers Per Thread",
                "Achieved Occupancy", "Executed Ipc Active")
        details = {}
        for k in keys:
            m = re.findall(rf"^\s*{re.escape(k)}\s+(\S+)\s+(\S+)", out, flags=re.M)
            if m:
                details[k] = " ".join(m[-1])
        ok = rc == 0 and "bpi_cavity" in out and details
        self.finish(name, "timeout" if to else "pass" if ok else "fail", t,
                    "" if ok else f"exit {rc}; no bpi_cavity_kernel profile in the output", cmd, details, limit)

    def s_optional(self, name: str, limit: float, t: float) -> None:
        pats = ["test_packed.py"] if name == "packed" else ["test_dist*.py", "test_ddp*.py"]
        files = sorted({str(p.relative_to(ROOT)) for pat in pats for p in (ROOT / "python_tests").glob(pat)})
        if not files:
            self.finish(name, "skip", t, f"optional: no python_tests/{' or '.join(pats)} in this checkout", None, {},
                        limit)
            return
        if not self.gpu:
            self.finish(name, "skip", t, f"optional: no CUDA device for {files} (CI runs them on the CPU)", None, {},
                        limit)
            return
        junit = self.out / f"junit_{name}.xml"
        cmd = [self.py, "-m", "pytest", *files, "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        rc, to, _ = self.run(name, cmd, limit)
        details = parse_junit(junit)
        status = "timeout" if to else "pass" if rc == 0 else "fail"
        self.finish(name, status, t, f"pytest exited {rc}" if rc else "", cmd, details, limit)

    # ---- the whole run -----------------------------------------------------------------

    def main(self) -> int:
        self.say("gpu_check", f"output in {self.out}; deadline {self.a.deadline:.0f} s; python {self.py}")
        self.stage("env", self.s_env)
        self.stage("build", self.s_build, "env")

        # Tests and sanitizers together: neither is timed, and the host side of the tests
        # (input draws, float64 CPU kernels) leaves the GPU mostly idle.
        def sanitizers():
            for tool in ("memcheck", "racecheck", "synccheck"):
                self.stage(tool, self.s_sanitizer, "build")

        lane = threading.Thread(target=sanitizers)
        lane.start()
        self.stage("cuda_tests", self.s_cuda_tests, "build")
        lane.join()

        self.stage("ceilings", self.s_ceilings, "env")
        self.stage("bench", self.s_bench, "build")
        for algo in TRAIN:
            self.stage(f"train_{algo}", self.s_train, "build")
        self.stage("ncu_bpi", self.s_ncu, "build")
        self.stage("packed", self.s_optional, "build")
        self.stage("distributed", self.s_optional, "build")

        code = self.exit_code()
        self.write_summary(final=True)
        self.print_table()
        return code

    def exit_code(self) -> int:
        bad = [r for r in self.results.values() if r["required"] and r["status"] in ("fail", "timeout")]
        return 1 if bad else 0

    def targets(self) -> dict:
        """The issue's GPU targets, from the stages' details (None: not measured)."""
        res = self.results
        st = {n: r["status"] for n, r in res.items()}
        out: dict = {}
        if not self.gpu:
            return {"note": "rehearsal: nothing measured on a GPU"}
        out["cuda_tests_pass"] = st.get("cuda_tests") == "pass"
        san = [res.get(n, {}).get("details", {}) for n in ("memcheck", "racecheck", "synccheck")]
        out["sanitizer_errors"] = None if any(d.get("errors") is None for d in san) else sum(d["errors"] for d in san)
        ceil = res.get("ceilings", {}).get("details", {})
        bpi = res.get("bench", {}).get("details", {}).get("bpi", [])
        rows = []
        for r in bpi:
            m = re.match(r"(\d+)->(\d+) B=(\d+)", r.get("case", ""))
            knb = int(m[1]) * int(m[2]) * int(m[3]) * 4 if m else None
            roof = ceil.get("g_hard" if r["op"].endswith("_hard") else "g_soft")
            rows.append(dict(case=r["case"], op=r["op"], speedup_vs_twin=r.get("ratio"),
                             speedup_target_8x=(r.get("ratio") or 0) >= 8 if r.get("ratio") else None,
                             roofline_fraction=(r["ext_gelem_s"] / roof) if roof and r.get("ext_gelem_s") else None,
                             peak_over_knb4=(r["peak_mem_bytes"] / knb) if knb and r.get("peak_mem_bytes") is not None
                             else None))
            rows[-1]["roofline_target_50pct"] = (rows[-1]["roofline_fraction"] >= 0.5
                                                 if rows[-1]["roofline_fraction"] is not None else None)
            rows[-1]["no_knb_allocation"] = (rows[-1]["peak_over_knb4"] < 1.0
                                             if rows[-1]["peak_over_knb4"] is not None else None)
        out["bpi_cavity"] = rows

        def epoch_s(algo):
            eps = res.get(f"train_{algo}", {}).get("details", {}).get("epochs", [])
            return eps[-1]["seconds"] if eps and res[f"train_{algo}"]["status"] == "pass" else None

        amp, bpi_s, ste = epoch_s("amp"), epoch_s("bpi"), epoch_s("ste")
        out["epoch_seconds_last"] = {"amp": amp, "bpi": bpi_s, "ste": ste}
        out["amp_over_ste"] = amp / ste if amp and ste else None
        out["amp_target_0.7"] = out["amp_over_ste"] <= 0.7 if out["amp_over_ste"] else None
        out["bpi_over_ste"] = bpi_s / ste if bpi_s and ste else None
        out["bpi_target_1.0"] = out["bpi_over_ste"] <= 1.0 if out["bpi_over_ste"] else None
        return out

    def write_summary(self, final: bool = False) -> None:
        with self.summary_lock:
            self._write_summary(final)

    def _write_summary(self, final: bool) -> None:
        order = [n for n, _, _ in STAGES]
        with self.lock:
            stages = [self.results[n] for n in order if n in self.results]
        summary = dict(
            started=self.started, wall_s=round(self.elapsed(), 1), deadline_s=self.a.deadline,
            finished=final, mode="gpu" if self.gpu else "rehearsal", commit=self.info.get("commit"),
            device=self.info.get("device"), torch=self.info.get("torch"), cuda=self.info.get("torch_cuda"),
            counts=dict(Counter(s["status"] for s in stages)), stages=stages,
            targets=self.targets() if final else None, exit_code=self.exit_code() if final else None)
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        tmp.replace(self.out / "summary.json")
        lines = [f"# gpu_check {summary['mode']}: {summary['device'] or 'no GPU'}, torch {summary['torch']}, "
                 f"commit {summary['commit']}, {summary['wall_s']} s", "",
                 "| stage | status | seconds | limit | reason |", "|---|---|---|---|---|"]
        for s in stages:
            reason = (s["reason"] or "").replace("|", "/")
            limit = s["limit_s"] and round(s["limit_s"])
            lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {limit} | {reason} |")
        if final:
            lines += ["", "targets: `" + json.dumps(summary["targets"], default=str) + "`"]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")
        self.pack()

    def pack(self) -> None:
        if not self.a.pack:
            return
        dest = Path(self.a.pack)
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("summary.json", "summary.md", "log.txt", "bench_cuda.json", "ceilings.json"):
            if (self.out / f).exists():
                shutil.copyfile(self.out / f, dest / f)
        tmp = dest / "gpu_check.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for p in sorted(self.out.rglob("*")):
                if p.is_file() and p.suffix not in (".pt", ".tmp") and p.stat().st_size < 8 * 2**20:
                    tar.add(p, arcname=str(Path(self.out.name) / p.relative_to(self.out)))
        tmp.replace(dest / "gpu_check.tar.gz")

    def print_table(self) -> None:
        order = [n for n, _, _ in STAGES]
        print("\n" + "=" * 100)
        print(f"gpu_check: {'GPU ' + str(self.info.get('device')) if self.gpu else 'REHEARSAL without a GPU'}; "
              f"{self.elapsed():.0f} s wall; summary in {self.out / 'summary.json'}")
        for n in order:
            r = self.results.get(n)
            if r:
                print(f"  {n:12s} {r['status']:9s} {r['seconds']:6.1f} s  {(r['reason'] or '')[:110]}")
        skipped = [n for n in order if self.results.get(n, {}).get("status") in ("skip", "rehearsed")]
        if skipped:
            print(f"  skipped or CPU stand-in only: {', '.join(skipped)}")
        print(f"  targets: {json.dumps(self.targets(), default=str)[:1500]}")
        print(f"  exit status {self.exit_code()}")


def parse_junit(path: Path) -> dict:
    """Counts, failed test ids and skip reasons from a pytest junit XML file."""
    if not path.exists():
        return {"junit": "missing"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    d = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    reasons: Counter = Counter()
    failed = []
    for case in root.iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        for sk in case.findall("skipped"):
            msg = (sk.get("message") or "").strip()
            msg = re.sub(r"^(Skipped: |.*?: )", "", msg) if msg.startswith(("Skipped", "got skip")) else msg
            reasons[msg] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(tid)
    d["skip_reasons"] = dict(reasons)
    d["disallowed_skips"] = {r: n for r, n in reasons.items() if not any(re.search(p, r) for p in ALLOWED_SKIPS)}
    d["failed"] = failed[:50]
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", help="folder for every output (created)")
    p.add_argument("--pack", default=None, help="also copy the results (at most 6 files) here after each stage")
    p.add_argument("--deadline", type=float, default=450.0, help="seconds; no stage starts or runs past it")
    p.add_argument("--expect-gpu", action="store_true", help="fail (exit 1) if torch sees no CUDA device")
    p.add_argument("--only", default="", help="comma-separated stages to run (env and build are needed by most)")
    p.add_argument("--skip", default="", help="comma-separated stages to leave out")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per method on the GPU")
    p.add_argument("--clean-build", action="store_true", help="remove build/ and bpkernels/_C*.so first")
    p.add_argument("--python", default=os.environ.get("PYTHON", "python3"), help="the torch-holding python")
    a = p.parse_args(argv)
    a.only = [s for s in a.only.split(",") if s]
    a.skip = [s for s in a.skip.split(",") if s]
    return Check(a).main()


if __name__ == "__main__":
    sys.exit(main())
