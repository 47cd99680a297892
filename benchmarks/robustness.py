"""Robustness figures: the bad-input matrix, checkpoint fault injection and the op fuzz.

    python benchmarks/robustness.py matrix                 # the bad-input table (from the tests)
    python benchmarks/robustness.py checkpoints --kills 100 --flips 1000
    python benchmarks/robustness.py fuzz --inputs 10000000
    python benchmarks/robustness.py all                    # everything, default sizes

Each writes its section of benchmarks/results/robustness.md (the sections present are kept)
and prints it.

checkpoints: a child process trains a small network, writing a checkpoint after every epoch,
and is killed with SIGKILL at a random moment, ``--kills`` times. After every kill the run
folder's checkpoint must load (when one was written) and resuming it to the end must give
fields bit-identical to the uninterrupted run. Then ``--flips`` copies of a checkpoint get one
random byte changed each; every one must be refused on load.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "python_tests"))
from benchmarks.common import device_name, git_commit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "robustness.md"

# The training the fault injection kills: small enough that an epoch (and its checkpoint)
# takes a few milliseconds, so kills land before, during and after saves.
CHILD = """
import sys, torch
torch.set_num_threads(1)
from bpkernels import data, fit, mlp
ds = data.teacher_student(256, 64, (40, 30, 3), seed=0)
fit(mlp([40, 30, 3], algo="amp", seed=0, dtype=torch.float64), ds, epochs=int(sys.argv[2]),
    batch_size=32, tau_max=2, run_dir=sys.argv[1], resume=sys.argv[3] == "1", progress=False,
    eval_bayes=False)
"""
EPOCHS = 60


def _child(run_dir: str, resume: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", CHILD, run_dir, str(EPOCHS), "1" if resume else "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _fields(run_dir: str) -> dict:
    from bpkernels.runlog import load_checkpoint

    return load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["trainer"]["state_dict"]


def checkpoints(args) -> str:
    from bpkernels.runlog import CheckpointError, load_checkpoint

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "reference")
        _child(reference, False).wait()
        expected = _fields(reference)
        # How long a child runs, to spread the kills over its whole life.
        t0 = time.perf_counter()
        _child(os.path.join(tmp, "timing"), False).wait()
        lifetime = time.perf_counter() - t0

        loads_ok = loads_failed = resumed_identical = resumed_differ = no_checkpoint = 0
        epochs_at_kill = []
        for k in range(args.kills):
            run = os.path.join(tmp, f"kill{k}")
            child = _child(run, False)
            time.sleep(rng.uniform(0.0, lifetime))
            child.send_signal(signal.SIGKILL)
            child.wait()
            path = os.path.join(run, "checkpoint.pt")
            if not os.path.exists(path):
                no_checkpoint += 1
                continue
            try:
                epochs_at_kill.append(load_checkpoint(path)["epoch"])
                loads_ok += 1
            except CheckpointError:
                loads_failed += 1
                continue
            resumer = _child(run, True)
            _, err = resumer.communicate()
            if resumer.returncode != 0:
                raise RuntimeError(f"resume after kill {k} failed: {err.decode()[-2000:]}")
            state = _fields(run)
            same = all(torch.equal(state[n], expected[n]) for n in expected)
            resumed_identical += same
            resumed_differ += not same

        # Byte flips: every altered copy must be refused.
        blob = Path(reference, "checkpoint.pt").read_bytes()
        detected = 0
        flipped = os.path.join(tmp, "flipped.pt")
        for _ in range(args.flips):
            pos = rng.randrange(len(blob))
            data = bytearray(blob)
            data[pos] ^= 1 << rng.randrange(8)
            Path(flipped).write_bytes(bytes(data))
            try:
                load_checkpoint(flipped)
            except CheckpointError:
                detected += 1

    mid_epochs = sorted(set(epochs_at_kill))
    return "\n".join([
        "## Checkpoint fault injection",
        "",
        f"`python benchmarks/robustness.py checkpoints --kills {args.kills} --flips {args.flips}` "
        f"(seed {args.seed}). A child process trains 40-30-3 AMP (float64, τ_max = 2) for "
        f"{EPOCHS} epochs, one atomic checkpoint per epoch, and is killed with SIGKILL at a uniform "
        f"random time in its {lifetime:.1f} s life (process start included).",
        "",
        "| what | count |",
        "|---|---|",
        f"| kills | {args.kills} |",
        f"| killed before the first checkpoint | {no_checkpoint} |",
        f"| checkpoint loads after the kill | {loads_ok} |",
        f"| checkpoint fails to load after the kill | {loads_failed} |",
        f"| resumed to the end: fields bit-identical to the uninterrupted run | {resumed_identical} |",
        f"| resumed to the end: fields differ | {resumed_differ} |",
        f"| epochs at which kills left the last checkpoint | {len(mid_epochs)} distinct, "
        f"{mid_epochs[0] if mid_epochs else '-'}–{mid_epochs[-1] if mid_epochs else '-'} |",
        f"| single-bit flips at random positions | {args.flips} |",
        f"| flips detected on load | {detected} |",
        "",
    ])


def matrix(args) -> str:
    import test_bad_inputs

    lines = ["## Bad-input matrix", "",
             "Every row is a test (`python_tests/test_bad_inputs.py::test_bad_input_matrix`): the "
             "input and the error it gets.", "", "| input | error | message (regular expression) |",
             "|---|---|---|"]
    for name, _, error, match in test_bad_inputs.MATRIX:
        lines.append(f"| {name} | {error.__name__} | `{match}` |")
    lines += ["", "Beyond the table, the same file tests damaged checkpoints (empty, truncated, "
              "altered, foreign), a crafted checkpoint that would run code, resuming with another "
              "configuration, reusing a run folder, divergence to NaN, damaged dataset files and "
              "bad command-line subsets.", ""]
    return "\n".join(lines)


def fuzz(args) -> str:
    from fuzz_ops import run_fuzz

    return run_fuzz(args.inputs, args.seed)


def write_section(text: str) -> None:
    """Replaces (or appends) the section of robustness.md whose heading ``text`` starts with."""
    heading = text.splitlines()[0]
    old = RESULTS.read_text() if RESULTS.exists() else (
        "# Robustness\n\nReproduce with `python benchmarks/robustness.py all`.\n\n")
    sections = re.split(r"(?m)^(?=## )", old)
    kept = [s for s in sections if not s.startswith(heading)]
    stamp = (f"_{device_name('cpu')}, torch {torch.__version__}, commit {git_commit()}, "
             f"{time.strftime('%Y-%m-%d')}_\n\n")
    RESULTS.write_text("".join(kept).rstrip() + "\n\n" + text.rstrip() + "\n\n" + stamp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["matrix", "checkpoints", "fuzz", "all"])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--flips", type=int, default=1000)
    parser.add_argument("--inputs", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    jobs = {"matrix": matrix, "checkpoints": checkpoints, "fuzz": fuzz}
    for name in (jobs if args.what == "all" else [args.what]):
        text = jobs[name](args)
        write_section(text)
        print(text)


if __name__ == "__main__":
    main()
