"""Is the hidden code of the old tasks kept? After a continual-learning run, retrain only the
output layer of the final network on each task (the hidden layers' marginals restored after
every step) and compare its accuracy with the final one. A large gain means the forgetting is
in the read-out, not in the hidden layers.

    python benchmarks/continual_readout.py runs/cl/amp-default/task-5/checkpoint.pt \\
        --subset 10000 --test-subset 5000 --out readout.md
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bpkernels import continual  # noqa: E402
from bpkernels.data import load_dataset  # noqa: E402
from bpkernels.train import load_model  # noqa: E402


def retrain_readout(checkpoint: str, task, epochs: int, batch_size: int, seed: int) -> tuple[float, float]:
    """(final accuracy, accuracy after retraining the output layer alone) on ``task``."""
    model, _ = load_model(checkpoint, device="cpu")
    hidden = model.bp_layers[:-1]
    kept = [(layer.field.clone(), layer.mag.clone()) for layer in hidden]
    before = 1 - model.error(task.test_x, task.test_y)
    gen = torch.Generator().manual_seed(seed)
    n = task.train_x.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            model.bp_step(task.train_x[idx], task.train_y[idx])
            for layer, (field, mag) in zip(hidden, kept):
                layer.set_marginals(field, mag)
    return before, 1 - model.error(task.test_x, task.test_y)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the last checkpoint of a continual run (task-<T-1>)")
    p.add_argument("--tasks", type=int, default=6)
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--epochs", type=int, default=3, help="epochs of read-out retraining per task")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="the continual run's seed (permutations)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the table here (Markdown)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_dataset("fashion-mnist", None, "10class", args.subset, args.test_subset,
                        seed=args.seed)
    tasks = continual.permuted_tasks(base, args.tasks, seed=args.seed)
    lines = ["| task | final accuracy % | output layer retrained % |", "|---|---|---|"]
    for t, task in enumerate(tasks):
        before, after = retrain_readout(args.checkpoint, task, args.epochs, args.batch_size, t)
        lines.append(f"| {t + 1} | {100 * before:.1f} | {100 * after:.1f} |")
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"Read-out retraining ({args.epochs} epochs per task, hidden layers fixed) of "
                    f"`{args.checkpoint}`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
