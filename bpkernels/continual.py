r"""Continual learning: tasks trained in sequence, the posterior of one task as the prior of
the next (docs §6.1), and the same protocol for the gradient baselines.

Message passing needs no special machinery: nothing is reset at a task boundary, so the first
mini-batch of task n+1 takes the PasP prior θ = ρ·H with H the posterior field after task n
(with ρ = 1 on every layer, the paper's setting, the whole accumulated posterior is the prior).
A trainer's ``begin_task(n)`` is called before each task: a no-op for message passing; the
learning-rate schedule restarts for the gradient baselines, and BayesBiNN takes the previous
posterior λ as its prior λ_0.

:func:`permuted_tasks` builds the permuted-pixel benchmark; :func:`train_continual` trains a
trainer through the tasks with :func:`bpkernels.fit` (one run folder per task, so any epoch of
any task can be resumed) and records after every epoch the test accuracy on every task;
:func:`accuracy_matrix` and :func:`summary` turn that into A[i, j] (accuracy on task j after
task i), the average final accuracy and the backward transfer.
"""

from __future__ import annotations

import os

import torch

from .data import Dataset
from .runlog import CHECKPOINT, load_checkpoint, read_metrics
from .train import fit


def permuted_tasks(base: Dataset, n_tasks: int, seed: int = 0) -> list[Dataset]:
    """Task 0 is ``base``; task t ≥ 1 the same examples with the D input features reordered
    by a seeded random permutation of its own (labels unchanged)."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    tasks = [base]
    n_features = base.train_x.shape[1]
    for t in range(1, n_tasks):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * t)
        perm = torch.randperm(n_features, generator=gen).to(base.train_x.device)
        tasks.append(Dataset(base.train_x[:, perm], base.train_y, base.test_x[:, perm],
                             base.test_y, base.num_classes, f"{base.name}-perm{t}"))
    return tasks


def task_errors(trainer, tasks: list[Dataset]) -> list[float]:
    """The point-wise test error of the trainer's network on every task."""
    return [trainer.test_error(task.test_x, task.test_y) for task in tasks]


def train_continual(trainer, tasks: list[Dataset], epochs_per_task: int, batch_size: int = 128,
                    seed: int = 0, run_dir: str | None = None, resume: bool = False,
                    progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Trains ``trainer`` on the tasks in order, ``epochs_per_task`` epochs each, and returns
    one row per epoch: the row of :func:`bpkernels.fit` plus ``task`` (0-based), ``task_epoch``
    and ``task_accuracy`` (the test accuracy on every task, seen or not yet seen).

    The shuffles of task t are those of ``fit`` with seed ``seed + t``, the same for every
    method. With ``run_dir``, task t writes ``run_dir/task-<t>/`` (a run folder of ``fit``);
    ``resume`` continues from the last checkpoint written, at any epoch of any task;
    ``overwrite`` replaces the runs a run_dir holds."""
    tasks = [trainer.prepare(task) for task in tasks]
    rows: list[dict] = []
    for t, task in enumerate(tasks):
        task_dir = None if run_dir is None else os.path.join(run_dir, f"task-{t}")
        done = _epochs_done(task_dir) if resume else 0
        if done == epochs_per_task:
            next_dir = None if t + 1 == len(tasks) else os.path.join(run_dir, f"task-{t + 1}")
            if next_dir is None or _epochs_done(next_dir) == 0:
                state = load_checkpoint(os.path.join(task_dir, CHECKPOINT))
                trainer.load_state_dict(state["trainer"])
            rows += read_metrics(os.path.join(task_dir, "metrics.jsonl"))
            continue
        if done == 0:
            trainer.begin_task(t)

        def on_epoch(t=t):
            return {"task": t, "task_accuracy": [1.0 - e for e in task_errors(trainer, tasks)]}

        task_rows = fit(trainer, task, epochs_per_task, batch_size, seed=seed + t,
                        run_dir=task_dir, config={"task": t, "epochs_per_task": epochs_per_task},
                        resume=done > 0, progress=progress, extra_eval=on_epoch,
                        overwrite=overwrite)
        rows += task_rows
    for i, row in enumerate(rows):
        row["task_epoch"] = i % epochs_per_task + 1
    return rows


def read_rows(run_dir: str, n_tasks: int) -> list[dict]:
    """The rows :func:`train_continual` returned, read back from its ``run_dir`` (e.g. to
    write one report over methods trained in separate processes)."""
    rows = []
    for t in range(n_tasks):
        task_rows = read_metrics(os.path.join(run_dir, f"task-{t}", "metrics.jsonl"))
        rows += [{**row, "task_epoch": e + 1} for e, row in enumerate(task_rows)]
    return rows


def _epochs_done(task_dir: str | None) -> int:
    if task_dir is None or not os.path.exists(os.path.join(task_dir, CHECKPOINT)):
        return 0
    return load_checkpoint(os.path.join(task_dir, CHECKPOINT))["epoch"]


def accuracy_matrix(rows: list[dict], n_tasks: int) -> list[list[float]]:
    """A[i][j]: test accuracy on task j after the last epoch of task i."""
    last = {row["task"]: row["task_accuracy"] for row in rows}
    return [last[i] for i in range(n_tasks)]


def summary(matrix: list[list[float]]) -> dict:
    """Average final accuracy mean_j A[T−1][j] and backward transfer
    mean_{j<T−1} (A[T−1][j] − A[j][j])."""
    final = matrix[-1]
    n = len(final)
    bwt = sum(final[j] - matrix[j][j] for j in range(n - 1)) / (n - 1) if n > 1 else 0.0
    return {"average_final_accuracy": sum(final) / n, "backward_transfer": bwt}


def write_report(results: dict[str, list[dict]], n_tasks: int, out_dir: str) -> dict:
    """Writes, for every method, ``<method>/accuracy_matrix.csv`` and a heat map
    ``<method>/accuracy_matrix.png``; and ``summary.md`` / ``summary.csv`` (average final
    accuracy, backward transfer, final accuracy per task) and ``continual.png`` (task-1
    accuracy against total epochs, final accuracy per task) over all methods. Returns the
    summaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    summaries = {}
    for method, rows in results.items():
        matrix = accuracy_matrix(rows, n_tasks)
        summaries[method] = {**summary(matrix), "final": matrix[-1]}
        folder = os.path.join(out_dir, method)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "accuracy_matrix.csv"), "w") as f:
            f.write("after_task," + ",".join(f"task_{j + 1}" for j in range(n_tasks)) + "\n")
            for i, line in enumerate(matrix):
                f.write(f"{i + 1}," + ",".join(f"{a:.4f}" for a in line) + "\n")
        fig, ax = plt.subplots(figsize=(4.5, 4))
        image = ax.imshow([[100 * a for a in line] for line in matrix], vmin=0, vmax=100, cmap="viridis")
        for i, line in enumerate(matrix):
            for j, a in enumerate(line):
                ax.text(j, i, f"{100 * a:.0f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(n_tasks), [str(j + 1) for j in range(n_tasks)])
        ax.set_yticks(range(n_tasks), [str(i + 1) for i in range(n_tasks)])
        ax.set_xlabel("test accuracy (%) on task")
        ax.set_ylabel("after training task")
        ax.set_title(method)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "accuracy_matrix.png"), dpi=110)
        plt.close(fig)

    header = ["method", "average_final_accuracy_%", "backward_transfer_%"] + [
        f"final_task_{j + 1}_%" for j in range(n_tasks)]
    lines = [[m, f"{100 * s['average_final_accuracy']:.2f}", f"{100 * s['backward_transfer']:.2f}"]
             + [f"{100 * a:.2f}" for a in s["final"]] for m, s in summaries.items()]
    with open(os.path.join(out_dir, "summary.csv"), "w") as f:
        f.write(",".join(header) + "\n" + "".join(",".join(line) + "\n" for line in lines))
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        f.write("".join("| " + " | ".join(line) + " |\n" for line in lines))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (method, rows) in enumerate(results.items()):
        color = f"C{i % 10}"
        left.plot(range(1, len(rows) + 1), [100 * r["task_accuracy"][0] for r in rows], color=color,
                  label=method)
        right.plot(range(1, n_tasks + 1), [100 * a for a in summaries[method]["final"]], "o-",
                   color=color, label=method)
    epochs = len(next(iter(results.values()))) // n_tasks
    for boundary in range(1, n_tasks):
        left.axvline(boundary * epochs + 0.5, color="0.85", lw=0.8)
    left.set_xlabel("total epochs")
    left.set_ylabel("task-1 test accuracy (%)")
    right.set_xlabel("task")
    right.set_ylabel("final test accuracy (%)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "continual.png"), dpi=110)
    plt.close(fig)
    return summaries
