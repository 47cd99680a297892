"""Sparse layers (the DeepMP paper's Fig. 1, right): binary MLPs whose weights are kept with
probability ``density`` (a fixed random mask drawn at initialisation), trained by message passing
(point-wise and Bayesian test error) and by the library's default STE with the very same masks
(``density`` option of the gradient baselines, which draws the masks message passing draws for
the same seed). Fashion-MNIST 10 classes, B = 128, library defaults (ρ = 1.0001 hidden, 0.9
output, ψ = 0.8). The network (default 784-101-101-10) is our choice: change it with --hidden.

    python benchmarks/paper/sparsity.py
    python benchmarks/paper/sparsity.py --densities 1 0.5 0.2 0.1 --hidden 501 501

Start it again with the same options to continue interrupted runs (or with more --epochs).
"""

from __future__ import annotations

import os

from paper_common import (Clock, budget_note, finish_figure, fmt, keep_log, load, mean_std,
                          parser, pyplot, run_baseline, run_message_passing, setup, write_table)

from bpkernels import mlp


def main(argv=None) -> int:
    p = parser("sparsity", __doc__)
    p.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.2, 0.1])
    p.add_argument("--hidden", type=int, nargs="+", default=[101, 101])
    p.add_argument("--algo", default="bpi", help="message-passing variant")
    p.add_argument("--task", default="10class", choices=["10class", "evenodd"])
    args = p.parse_args(argv)
    setup(args)
    if any(not 0 < d <= 1 for d in args.densities):
        raise SystemExit("error: densities must lie in (0, 1]")
    clock = Clock()
    data = load(args, args.task)
    arch = "-".join(map(str, args.hidden))
    sizes = [data.train_x.shape[1], *args.hidden, 1 if data.binary else data.num_classes]
    mp, ste = {}, {}
    for density in args.densities:
        masked = None if density == 1 else density
        mp[density], ste[density] = [], []
        for seed in range(args.seeds):
            tag = f"{arch}-d{density}-seed{seed}"
            run_dir = os.path.join(args.runs, args.dataset, args.task, f"{args.algo}-{tag}")
            model = mlp(sizes, algo=args.algo, output="sign" if data.binary else "argmax",
                        density=masked, seed=seed, device=args.device)
            config = dict(method=args.algo, dataset=args.dataset, task=args.task,
                          subset=args.subset, test_subset=args.test_subset, experiment="sparsity")
            mp[density].append(run_message_passing(model, data, args, run_dir, seed,
                                                   eval_bayes=True, config=config))
            keep_log(args, run_dir, f"{args.algo}-{tag}")
            run_dir = os.path.join(args.runs, args.dataset, args.task, f"ste-{tag}")
            options = {} if masked is None else {"density": masked}
            ste[density].append(run_baseline("ste", data, args, run_dir, seed, args.hidden,
                                             **options))
            keep_log(args, run_dir, f"ste-{tag}")

    header = ["density", f"{args.algo} point-wise test error %", f"{args.algo} Bayesian test error %",
              "STE test error %", f"{args.algo} train error %", "STE train error %",
              f"{args.algo} s / epoch", "STE s / epoch"]
    table = []
    for density in args.densities:
        table.append([f"{density:g}",
                      fmt(mean_std([r[-1]["test_error"] for r in mp[density]])),
                      fmt(mean_std([r[-1]["test_error_bayes"] for r in mp[density]])),
                      fmt(mean_std([r[-1]["test_error"] for r in ste[density]])),
                      fmt(mean_std([r[-1]["train_error"] for r in mp[density]])),
                      fmt(mean_std([r[-1]["train_error"] for r in ste[density]])),
                      fmt(mean_std([sum(x["seconds"] for x in r) / len(r) for r in mp[density]], 1), 1),
                      fmt(mean_std([sum(x["seconds"] for x in r) / len(r) for r in ste[density]], 1), 1)])
    footer = (f"{args.dataset} {args.task}, 784-{arch}-out, B = 128; errors at the last epoch "
              f"({args.epochs}), mean ± sample std over {args.seeds} seed(s). Each weight is kept "
              "with probability `density` by a fixed mask drawn at initialisation; for a seed, "
              f"{args.algo} and STE use the same masks. {args.algo}: ρ = 1.0001 hidden / 0.9 output, "
              "ψ = 0.8, no BN. STE: the library default (BN after every layer, Adam 3e-4 → 3e-6, "
              "Glorot-scaled steps, clip [−1, 1]); masked weights neither act nor learn. "
              "s / epoch: training wall time (evaluation excluded).")
    write_table(args, "sparsity", header, table, budget_note(args, "sparsity", clock.seconds(),
                                  [rows for d in args.densities for rows in mp[d] + ste[d]]), footer)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = args.densities
    for key, style, label, runs in (("test_error", "o-", f"{args.algo} point-wise", mp),
                                    ("test_error_bayes", "s:", f"{args.algo} Bayesian", mp),
                                    ("test_error", "^--", "STE, same masks", ste)):
        stats = [mean_std([r[-1][key] for r in runs[d]]) for d in xs]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], fmt=style, capsize=3,
                    label=label)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs, [f"{d:g}" for d in xs])
    ax.set_xlabel("density")
    ax.set_ylabel(f"test error (%) after {args.epochs} epochs")
    ax.set_title(f"{args.dataset} {args.task}, 784-{arch}, sparse layers")
    finish_figure(fig, [ax], args, "sparsity")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
