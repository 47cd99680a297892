"""Table 1 of the DeepMP paper: test and train error of a 784-501-501-(10|1) binary MLP, B = 128,
on the 10-class and the even/odd task, for AMP, MF, BPI (BP at τ_max = 1) with the paper's
hyper-parameters (ρ = 1.0001 hidden, 0.9 output, ψ = 0.8, ϵ = 1; docs/algorithms.md §5.3),
BinaryNet trained as in the paper (STE preset ``binarynet-deepmp``: no BN, 1/√N scaling, plain
SGD at learning rate 10, latent weights clipped to [−1, 1]) and the library's default STE (BN,
Adam). Mean ± std over seeds, seconds per training epoch, and the paper's numbers beside ours.

    python benchmarks/paper/table1.py                        # the full run (long: see README)
    python benchmarks/paper/table1.py --subset 6000 --epochs 3 --seeds 2   # a reduced budget

Start it again with the same options to continue interrupted runs (or with more --epochs).
"""

from __future__ import annotations

import os

from paper_common import (Clock, budget_note, curve, final_networks, finish_figure, fmt, keep_log,
                          load, mean_std, parser, pyplot, run_baseline, run_message_passing,
                          setup, write_table)

from bpkernels import mlp

METHODS = {  # name: (kind, algo / baseline, preset)
    "AMP": ("mp", "amp", None),
    "MF": ("mp", "mf", None),
    "BPI": ("mp", "bpi", None),
    "BinaryNet (paper)": ("baseline", "ste", "binarynet-deepmp"),
    "STE (library default)": ("baseline", "ste", None),
}
PAPER_NAME = {"AMP": "AMP", "MF": "MF", "BPI": "BP", "BinaryNet (paper)": "BinaryNet"}
TASK_LABEL = {"10class": "10 classes", "evenodd": "2 classes"}

# The paper's test errors (%), mean and std over 5 seeds (None: no std given), and its train
# errors where given (docs/algorithms.md §7).
PAPER_TEST = {
    ("mnist", "evenodd"): {"BinaryNet": (1.3, 0.1), "BP": (1.4, 0.2), "AMP": (1.4, 0.1), "MF": (1.3, None)},
    ("fashion-mnist", "evenodd"): {"BinaryNet": (2.4, 0.1), "BP": (2.3, 0.1), "AMP": (2.4, 0.1),
                                   "MF": (2.3, None)},
    ("cifar10", "evenodd"): {"BinaryNet": (30.0, 0.3), "BP": (31.4, 0.1), "AMP": (31.1, 0.3),
                             "MF": (31.1, None)},
    ("mnist", "10class"): {"BinaryNet": (2.2, 0.1), "BP": (2.6, 0.1), "AMP": (2.6, 0.1), "MF": (2.3, None)},
    ("fashion-mnist", "10class"): {"BinaryNet": (12.0, 0.6), "BP": (11.8, 0.3), "AMP": (11.9, 0.2),
                                   "MF": (12.1, None)},
    ("cifar10", "10class"): {"BinaryNet": (59.0, 0.7), "BP": (58.7, 0.3), "AMP": (58.5, 0.2),
                             "MF": (60.4, None)},
}
PAPER_TRAIN = {("fashion-mnist", "10class"): {"BinaryNet": 4.0, "BP": 3.4, "AMP": 3.7, "MF": 2.5}}


def within(ours: tuple[float, float] | None, paper: tuple[float, float | None] | None) -> str:
    """'yes' when the intervals mean ± std of ours and the paper's overlap (a missing paper
    std counts as 0), 'no' otherwise, '' without a paper number."""
    if ours is None or paper is None:
        return ""
    return "yes" if abs(ours[0] - paper[0]) <= ours[1] + (paper[1] or 0.0) else "no"


def run_folder(args, task: str, name: str, seed: int) -> str:
    _, algo, preset = METHODS[name]
    return os.path.join(args.runs, args.dataset, task, algo + (f"-{preset}" if preset else ""),
                        f"seed{seed}")


def train(args, data, task: str, name: str, seed: int) -> list[dict]:
    kind, algo, preset = METHODS[name]
    run_dir = run_folder(args, task, name, seed)
    hidden = [501, 501]
    if kind == "mp":
        sizes = [data.train_x.shape[1], *hidden, 1 if data.binary else data.num_classes]
        model = mlp(sizes, algo=algo, output="sign" if data.binary else "argmax", psi=0.8,
                    seed=seed, device=args.device)
        config = dict(method=algo, dataset=args.dataset, task=task, subset=args.subset,
                      test_subset=args.test_subset, experiment="table1")
        rows = run_message_passing(model, data, args, run_dir, seed, eval_bayes=False, config=config)
    else:
        rows = run_baseline(algo, data, args, run_dir, seed, hidden, preset)
    keep_log(args, run_dir, f"{task}-{algo}{'-' + preset if preset else ''}-seed{seed}")
    return rows


def main(argv=None) -> int:
    p = parser("table1", __doc__)
    p.add_argument("--tasks", nargs="+", default=["10class", "evenodd"], choices=list(TASK_LABEL))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args(argv)
    setup(args)
    clock = Clock()
    results, finals = {}, {}
    for task in args.tasks:
        data = load(args, task)
        for name in args.methods:
            results[(task, name)] = [train(args, data, task, name, seed) for seed in range(args.seeds)]
            if METHODS[name][0] == "mp":
                finals[(task, name)] = final_networks(
                    [run_folder(args, task, name, seed) for seed in range(args.seeds)], data,
                    args.device)

    header = ["task", "method", "test error %", "train error %", "s / epoch",
              "paper test error %", "paper train error %", "within the paper's error bars",
              "Bayesian test error %", f"ensemble of {args.seeds} seeds: point-wise / Bayesian %"]
    table = []
    for (task, name), runs in results.items():
        final = finals.get((task, name))
        test = mean_std([rows[-1]["test_error"] for rows in runs])
        train_err = mean_std([rows[-1]["train_error"] for rows in runs])
        seconds = mean_std([sum(r["seconds"] for r in rows) / len(rows) for rows in runs], scale=1)
        paper_name = PAPER_NAME.get(name)
        paper = PAPER_TEST.get((args.dataset, task), {}).get(paper_name)
        paper_train = PAPER_TRAIN.get((args.dataset, task), {}).get(paper_name)
        table.append([TASK_LABEL[task], name, fmt(test), fmt(train_err), fmt(seconds, 1),
                      "" if paper is None else f"{paper[0]}" + (f" ± {paper[1]}" if paper[1] else ""),
                      "" if paper_train is None else f"{paper_train}", within(test, paper),
                      "" if final is None else fmt(mean_std(final["bayes"])),
                      "" if final is None else (f"{100 * final['ensemble_pointwise']:.2f} / "
                                                f"{100 * final['ensemble_bayes']:.2f}")])
    footer = (
        f"Errors at the last epoch ({args.epochs}), mean ± sample std over {args.seeds} seed(s) "
        "(seeds change the initialisation and the shuffles; the data subset is the same). The "
        "paper's numbers are over 5 seeds at 100 epochs on the full data. 'Within the paper's "
        "error bars': our mean ± std overlaps the paper's (a missing paper std counts as 0). "
        "s / epoch: training wall time of one epoch (evaluation excluded), mean ± std over seeds. "
        "Message passing only, from the final networks: the Bayesian test error (the output "
        "means of the weight marginals, docs/algorithms.md §6), and the ensemble of the seeds' "
        "networks, deciding on the mean of their output scores (preactivations, or Bayesian "
        "output means). "
        "Message passing: ρ = 1.0001 hidden / 0.9 output, ψ = 0.8, ϵ = 1, τ_max = 1, no BN. "
        "BinaryNet (paper): STE preset binarynet-deepmp (no BN, preactivations / √fan-in, "
        "cross-entropy, plain SGD at a constant learning rate 10, Xavier initialisation, clip to "
        "[−1, 1]). STE (library default): BN after every layer, Adam 3e-4 → 3e-6, Glorot-scaled "
        "steps, clip [−1, 1]; it has no paper column.")
    write_table(args, "table1", header, table, budget_note(args, "table1", clock.seconds(),
                                  [rows for runs in results.values() for rows in runs]), footer)

    plt = pyplot()
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(6 * len(args.tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], args.tasks):
        for i, name in enumerate(args.methods):
            runs = results[(task, name)]
            test, train_err = curve(runs, "test_error"), curve(runs, "train_error")
            epochs = range(1, len(test) + 1)
            ax.plot(epochs, test, "-", color=f"C{i}", label=f"{name} test")
            ax.plot(epochs, train_err, "--", color=f"C{i}", label=f"{name} train")
        ax.set_title(f"{args.dataset}, {TASK_LABEL[task]}, 784-501-501")
        ax.set_xlabel("epoch")
        ax.set_ylabel("error (%), mean over seeds")
    finish_figure(fig, axes[0], args, "table1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
