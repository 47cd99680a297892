"""The run folder shared by every trainer (message passing and gradient baselines):

    <run_dir>/config.json      the exact configuration of the run
    <run_dir>/metrics.jsonl    one JSON object per epoch (appended as the run goes)
    <run_dir>/checkpoint.pt    the latest checkpoint, written atomically (temp file + rename)
    <run_dir>/errors.png       train/test error against epochs (point-wise and Bayesian)

Metric rows carry at least: epoch, method, train_error, test_error, train_error_bayes,
test_error_bayes (None where a method has no Bayesian prediction), seconds (training time of
the epoch), peak_mem_bytes (None where unknown). Errors are fractions in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over ``path``: a crash
    never leaves a half-written checkpoint."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


CHECKPOINT = "checkpoint.pt"


class RunLog:
    """Writes one run folder: configuration, per-epoch metrics, checkpoint, plot."""

    def __init__(self, run_dir: str, config: dict | None = None, resume: bool = False):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.checkpoint_path = os.path.join(run_dir, CHECKPOINT)
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
        self.rows.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(state, self.checkpoint_path)

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
