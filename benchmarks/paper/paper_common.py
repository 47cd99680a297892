"""Shared parts of the paper-reproduction scripts (``benchmarks/paper/*.py``): the common
command-line options, resumable runs (one run folder per method, task and seed, continued from
its checkpoint when the script is started again), mean ± std over seeds, and the writers of the
Markdown/CSV tables, the per-run logs and the budget note that heads every table."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from benchmarks.common import device_name, git_commit  # noqa: E402
from bpkernels import data as datasets  # noqa: E402
from bpkernels.baselines import train_baseline  # noqa: E402
from bpkernels import ensemble_error, ensemble_errors  # noqa: E402
from bpkernels.runlog import CHECKPOINT  # noqa: E402
from bpkernels.train import fit, load_model  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
                       "paper")
PAPER_EPOCHS, PAPER_SEEDS = 100, 5


def parser(experiment: str, doc: str, epochs: int = PAPER_EPOCHS, seeds: int = 3) -> argparse.ArgumentParser:
    """The options every script takes; results go to --out (default
    benchmarks/results/paper/<experiment>), run folders to --runs (default
    runs/paper/<experiment>, checkpoints included)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs per run (paper: {PAPER_EPOCHS})")
    p.add_argument("--seeds", type=int, default=seeds,
                   help=f"seeds per configuration (the paper used {PAPER_SEEDS})")
    p.add_argument("--subset", type=int, default=None, help="training examples (default: all)")
    p.add_argument("--test-subset", type=int, default=None, help="test examples (default: all)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default="fashion-mnist", choices=list(datasets.INPUT_SHAPES))
    p.add_argument("--data-dir", default=None, help="folder of the dataset's files")
    p.add_argument("--out", default=os.path.join(RESULTS, experiment),
                   help="folder of the table, figure and logs")
    p.add_argument("--runs", default=os.path.join("runs", "paper", experiment),
                   help="folder of the run folders (checkpoints): start the script again with the "
                        "same options (and more --epochs if wanted) to continue them")
    p.add_argument("--beside", default="",
                   help="what else ran on the machine meanwhile (written into the notes)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    return p


def add_average_option(p: argparse.ArgumentParser) -> None:
    """--average-from: message-passing runs also keep the posterior averaged over training
    (bpkernels.averaging) and the tables and figures add the averaged network."""
    p.add_argument("--average-from", type=int, default=None, metavar="EPOCH",
                   help="also average the marginals over the mini-batches from this epoch on and "
                        "report the averaged network (its runs go to their own run folders)")


def average_suffix(args) -> str:
    """The run-folder suffix of runs with a posterior average ('' without)."""
    return f"-avg{args.average_from}" if args.average_from else ""


def average_header(args) -> list[str]:
    """The table columns of the averaged network (none without --average-from)."""
    if not args.average_from:
        return []
    return [f"averaged from epoch {args.average_from}, point-wise %",
            f"averaged from epoch {args.average_from}, Bayesian %"]


def average_cells(args, runs: list[list[dict]]) -> list[str]:
    """The averaged network's last-epoch test errors, mean ± std over the seeds."""
    if not args.average_from:
        return []
    return [fmt(mean_std([rows[-1][f"avg_test_error{kind}"] for rows in runs]))
            for kind in ("", "_bayes")]


def plot_averaged_test_errors(ax, args, runs: list[list[dict]], label: str, color: str) -> None:
    """The averaged network's seed-mean point-wise (dashed) and Bayesian (dash-dot) curves."""
    if not args.average_from:
        return
    for key, style, what in (("avg_test_error", "--", "point-wise"),
                             ("avg_test_error_bayes", "-.", "Bayesian")):
        points = curve(runs, key)
        ax.plot(range(1, len(points) + 1), points, style, color=color,
                label=f"{label}, averaged, {what}")


def setup(args) -> None:
    for name in ("epochs", "seeds", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1")
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)


def load(args, task: str) -> datasets.Dataset:
    """The dataset of the experiment: subsets drawn with seed 0, the same for every seed."""
    try:
        return datasets.load_dataset(args.dataset, args.data_dir, task, args.subset,
                                     args.test_subset, seed=0)
    except datasets.DatasetNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from None


def _resume(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, CHECKPOINT))


def run_message_passing(model, data, args, run_dir: str, seed: int, eval_bayes: bool,
                        config: dict, tau_max: int = 1, ramps=(),
                        average_from: int | None = None) -> list[dict]:
    """Trains (or continues, or just reads back when finished) one message-passing run."""
    return fit(model, data, epochs=args.epochs, batch_size=128, tau_max=tau_max, seed=seed,
               run_dir=run_dir, config=config, resume=_resume(run_dir), progress=args.progress,
               eval_bayes=eval_bayes, method=config.get("method"), overwrite=True, ramps=ramps,
               average_from=average_from)


def run_baseline(method: str, data, args, run_dir: str, seed: int, hidden: list[int],
                 preset: str | None = None, **options) -> list[dict]:
    """Trains (or continues, or reads back) one gradient-baseline run."""
    return train_baseline(method, data, hidden=hidden, epochs=args.epochs, batch_size=128,
                          seed=seed, device=args.device, run_dir=run_dir, progress=args.progress,
                          resume=_resume(run_dir), preset=preset, overwrite=True, **options)


def final_networks(run_dirs: list[str], data, device, average: bool = False) -> dict:
    """The final networks of message-passing runs (their checkpoints; ``average``: their
    posterior averages), on the test set: each one's Bayesian error, and the point-wise and
    Bayesian errors of their ensemble (the mean of the members' output scores,
    :func:`bpkernels.ensemble_errors`), as fractions."""
    models = [load_model(os.path.join(run_dir, CHECKPOINT), device, average=average)[0]
              for run_dir in run_dirs]
    x, y = data.test_x.to(device), data.test_y.to(device)
    ensemble_bayes, bayes = ensemble_errors(models, x, y, "bayes")
    return {"bayes": bayes, "ensemble_pointwise": ensemble_error(models, x, y, "pointwise"),
            "ensemble_bayes": ensemble_bayes}


def keep_log(args, run_dir: str, name: str) -> None:
    """Copies the run's metrics.jsonl to <out>/logs/<name>.jsonl (the committed log)."""
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    shutil.copyfile(os.path.join(run_dir, "metrics.jsonl"),
                    os.path.join(args.out, "logs", f"{name}.jsonl"))


def mean_std(values: list[float | None], scale: float = 100.0) -> tuple[float, float] | None:
    """Mean and sample std (0 for one value) of the non-None values times ``scale`` (errors in
    %); None if none."""
    vals = [scale * v for v in values if v is not None]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return mean, math.sqrt(var)


def fmt(ms: tuple[float, float] | None, digits: int = 2) -> str:
    return "" if ms is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def budget_note(args, experiment: str, seconds: float, runs: list[list[dict]]) -> str:
    """The header of every table: budget against the paper's, machine, threads, what ran
    beside, wall time of this invocation and training time summed over the runs (the same
    when the runs are continued or read back)."""
    train_seconds = sum(r["seconds"] for rows in runs for r in rows)
    reduced = []
    if args.epochs < PAPER_EPOCHS:
        reduced.append(f"{args.epochs} epoch(s) instead of {PAPER_EPOCHS}")
    seeds = f"{args.seeds} seed(s)" + (f" instead of the paper's {PAPER_SEEDS}"
                                       if args.seeds < PAPER_SEEDS else "")
    if args.subset:
        reduced.append(f"{args.subset} training examples instead of all")
    if args.test_subset:
        reduced.append(f"{args.test_subset} test examples instead of all")
    lines = [f"Experiment `{experiment}` on {args.dataset}, written "
             f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
             f"commit {git_commit()}.",
             "",
             ("**Reduced budget**: " + "; ".join(reduced + [seeds]) + ". These numbers do not "
              "reproduce the paper; they check that the pipeline runs.") if reduced else
             f"The paper's budget: {args.epochs} epochs on all examples; {seeds}.",
             "",
             f"Machine: {device_name(args.device)}, {platform.machine()}, torch {torch.__version__}, "
             f"{args.threads} thread(s); wall time of this invocation {seconds / 60:.1f} min, "
             f"training time summed over the runs {train_seconds / 60:.1f} min (evaluation excluded)."
             + (f" Running beside it: {args.beside}." if args.beside else ""),
             ""]
    return "\n".join(lines)


def write_table(args, name: str, header: list[str], rows: list[list[str]], note: str,
                footer: str = "") -> None:
    """<out>/<name>.md (note, table, footer) and <out>/<name>.csv."""
    with open(os.path.join(args.out, f"{name}.csv"), "w") as f:
        f.write(",".join(_csv(c) for c in header) + "\n")
        f.write("".join(",".join(_csv(c) for c in row) + "\n" for row in rows))
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(note + "\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        f.write("".join("| " + " | ".join(row) + " |\n" for row in rows))
        if footer:
            f.write("\n" + footer.rstrip() + "\n")
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump({k: _relative(v) if k in ("out", "runs", "data_dir") else v
                   for k, v in vars(args).items()}, f, indent=2, sort_keys=True)
        f.write("\n")


def _relative(path: str | None) -> str | None:
    """A path inside the repository relative to its root (else as given)."""
    if path is None:
        return None
    rel = os.path.relpath(os.path.abspath(path), REPO)
    return path if rel.startswith("..") else rel


def _csv(cell: str) -> str:
    return f'"{cell}"' if "," in cell else cell


def curve(rows_by_seed: list[list[dict]], key: str) -> list[float]:
    """Mean over seeds of a metric per epoch, in % (NaN where missing)."""
    n = min(len(rows) for rows in rows_by_seed)
    out = []
    for e in range(n):
        vals = [rows[e].get(key) for rows in rows_by_seed if rows[e].get(key) is not None]
        out.append(100 * sum(vals) / len(vals) if vals else float("nan"))
    return out


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_test_errors(ax, runs: list[list[dict]], label: str, color: str) -> None:
    """The seed-mean point-wise (solid) and Bayesian (dotted) test-error curves of a setting."""
    point, bayes = curve(runs, "test_error"), curve(runs, "test_error_bayes")
    epochs = range(1, len(point) + 1)
    ax.plot(epochs, point, "-", color=color, label=f"{label}, point-wise")
    ax.plot(epochs, bayes, ":", color=color, label=f"{label}, Bayesian")


def finish_figure(fig, axes, args, name: str) -> None:
    """Grid and legend on every axis; writes <out>/<name>.png and prints <out>/<name>.md."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f"{name}.png"), dpi=110)
    print(open(os.path.join(args.out, f"{name}.md")).read())


class Clock:
    """Wall time since the script started."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.t0
