"""The run folder shared by every trainer (message passing and gradient baselines):

    <run_dir>/config.json      the exact configuration of the run
    <run_dir>/metrics.jsonl    one JSON object per epoch (appended as the run goes)
    <run_dir>/checkpoint.pt    the latest checkpoint, written atomically (temp file + rename),
                               with a checksum, read back without running any code
    <run_dir>/errors.png       train/test error against epochs (point-wise and Bayesian)

Metric rows carry at least: epoch, method, train_error, test_error, train_error_bayes,
test_error_bayes (None where a method has no Bayesian prediction), seconds (training time of
the epoch), peak_mem_bytes (None where unknown). Errors are fractions in [0, 1].
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from typing import Any

import torch


CHECKPOINT_MAGIC = b"BPKCKPT1\n"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, altered or not ours; the message names it."""


def save_checkpoint(obj: Any, path: str) -> None:
    """Writes a checkpoint atomically (temp file in the same folder, fsync, rename: a crash
    never leaves a half-written file under ``path``). File layout: the line ``BPKCKPT1``, the
    SHA-256 of the payload in hex and a newline, then the payload, ``torch.save`` of ``obj``,
    which must hold only tensors and plain data (it is read back with ``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(CHECKPOINT_MAGIC + digest + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, map_location=None) -> Any:
    """Reads a checkpoint written by :func:`save_checkpoint`: checks the header and the
    SHA-256 of the payload, then unpickles tensors and plain data only (no code runs)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc.strerror}") from None
    head = len(CHECKPOINT_MAGIC)
    if not blob.startswith(CHECKPOINT_MAGIC):
        raise CheckpointError(f"{path} is not a bpkernels checkpoint (empty, truncated in its "
                              "header, or written by something else)")
    digest, payload = blob[head:head + 64], blob[head + 65:]
    if len(blob) < head + 65 or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"the checkpoint {path} is corrupt: its content does not match its "
                              "checksum (truncated or altered); use another checkpoint")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # a payload with a valid checksum that torch refuses
        raise CheckpointError(f"the checkpoint {path} holds objects that are not tensors or "
                              f"plain data: {exc}") from None


def atomic_write_text(text: str, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


CHECKPOINT = "checkpoint.pt"
TEMP_PREFIX = ".tmp-"  # files a killed save may leave; a RunLog removes them


class RunLog:
    """Writes one run folder: configuration, per-epoch metrics, checkpoint, plot."""

    def __init__(self, run_dir: str, config: dict | None = None, resume: bool = False,
                 overwrite: bool = False):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.checkpoint_path = os.path.join(run_dir, CHECKPOINT)
        for name in os.listdir(run_dir):  # left by a save that was killed
            if name.startswith(TEMP_PREFIX):
                os.unlink(os.path.join(run_dir, name))
        if not resume and os.path.exists(self.checkpoint_path):
            if not overwrite:
                raise FileExistsError(
                    f"{run_dir} holds a run already ({CHECKPOINT}): resume it (resume=True, "
                    "--resume), replace it (overwrite=True, --overwrite) or choose another folder")
            os.unlink(self.checkpoint_path)
        self.rows: list[dict] = read_metrics(self.metrics_path) if resume else []
        if not resume and os.path.exists(self.metrics_path):
            os.unlink(self.metrics_path)
        if config is not None:
            atomic_write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n",
                              os.path.join(run_dir, "config.json"))

    def truncate(self, epochs: int) -> None:
        """Keeps the rows of the first ``epochs`` epochs (resuming from a checkpoint)."""
        self.rows = [r for r in self.rows if r["epoch"] <= epochs]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in self.rows), self.metrics_path)

    def log(self, row: dict) -> None:
        line = json.dumps(row, allow_nan=False)  # NaN is not JSON: fit stops before it
        self.rows.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")

    def save_checkpoint(self, state: dict) -> None:
        save_checkpoint(state, self.checkpoint_path)

    def plot(self, title: str = "") -> str:
        return plot_errors({title or "run": self.rows}, os.path.join(self.run_dir, "errors.png"))


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_errors(runs: dict[str, list[dict]], path: str, test_only: bool = False) -> str:
    """One PNG of error (%) against epoch: for each run, test error (solid) and train error
    (dashed), point-wise and, where present, Bayesian (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        epochs = [r["epoch"] for r in rows]
        series = [("test_error", "-", "test"), ("test_error_bayes", ":", "test, Bayes")]
        if not test_only:
            series += [("train_error", "--", "train"), ("train_error_bayes", "-.", "train, Bayes")]
        for key, style, label in series:
            values = [r.get(key) for r in rows]
            if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
                continue
            ax.plot(epochs, [100 * v if v is not None else float("nan") for v in values],
                    style, color=color, label=f"{name} {label}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
