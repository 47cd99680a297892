"""The Bayesian-prediction result of the DeepMP paper (its Fig. 2): a 784-101-101-1 binary MLP on
the even/odd task, B = 128, trained by message passing with the posterior kept less polarised
(ρ = 0.9999 on the hidden layers, 0.9 on the output, ψ = 0.8; docs/algorithms.md §5.3), its
point-wise test error against its Bayesian one (moments propagated through the weight marginals,
docs/algorithms.md §6) over the epochs. The library's default ρ = 1.0001 is run beside it as the
contrast. The paper used MNIST (≈ 2.3 % point-wise, ≈ 1.4 % Bayesian); Fashion-MNIST is the
default here because it is the dataset this machine has (pass --dataset mnist --data-dir DIR).

    python benchmarks/paper/bayes_fig2.py
    python benchmarks/paper/bayes_fig2.py --dataset mnist --data-dir ~/data/mnist
    python benchmarks/paper/bayes_fig2.py --settings paper    # ρ = 0.9999 only

Start it again with the same options to continue interrupted runs (or with more --epochs).
"""

from __future__ import annotations

import os

from paper_common import (Clock, add_average_option, average_cells, average_header,
                          average_suffix, budget_note, curve, finish_figure, fmt, keep_log, load,
                          mean_std, parser, plot_averaged_test_errors, plot_test_errors, pyplot,
                          run_message_passing, setup, write_table)

from bpkernels import mlp

SETTINGS = {"paper": ("ρ = 0.9999 (paper)", 0.9999), "default": ("ρ = 1.0001 (library default)", 1.0001)}
PAPER_MNIST = "MNIST even/odd, 2×101, BP: ≈ 2.3 % point-wise, ≈ 1.4 % Bayesian (docs/algorithms.md §7)"


def main(argv=None) -> int:
    p = parser("bayes_fig2", __doc__)
    p.add_argument("--algo", default="bpi", help="message-passing variant (paper: BP at τ_max = 1 = bpi)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                   help="hidden-layer ρ: paper (0.9999) and/or default (1.0001, the contrast)")
    add_average_option(p)
    args = p.parse_args(argv)
    setup(args)
    clock = Clock()
    data = load(args, "evenodd")
    results = {}
    for label, rho in (SETTINGS[name] for name in args.settings):
        runs = []
        for seed in range(args.seeds):
            name = f"{args.algo}-rho{rho}{average_suffix(args)}"
            run_dir = os.path.join(args.runs, args.dataset, name, f"seed{seed}")
            model = mlp([data.train_x.shape[1], 101, 101, 1], algo=args.algo, output="sign",
                        rho=[rho, rho, 0.9], psi=0.8, seed=seed, device=args.device)
            config = dict(method=args.algo, dataset=args.dataset, task="evenodd", subset=args.subset,
                          test_subset=args.test_subset, experiment="bayes_fig2")
            runs.append(run_message_passing(model, data, args, run_dir, seed, eval_bayes=True,
                                            config=config, average_from=args.average_from))
            keep_log(args, run_dir, f"{name}-seed{seed}")
        results[label] = runs

    header = ["setting", "point-wise test error %", "Bayesian test error %",
              *average_header(args), "best point-wise (epoch)", "best Bayesian (epoch)",
              "point-wise train error %", "Bayesian train error %"]
    table = []
    for label, runs in results.items():
        point, bayes = curve(runs, "test_error"), curve(runs, "test_error_bayes")
        best_p = min(range(len(point)), key=point.__getitem__)
        best_b = min(range(len(bayes)), key=bayes.__getitem__)
        table.append([label, fmt(mean_std([r[-1]["test_error"] for r in runs])),
                      fmt(mean_std([r[-1]["test_error_bayes"] for r in runs])),
                      *average_cells(args, runs), f"{point[best_p]:.2f} ({best_p + 1})",
                      f"{bayes[best_b]:.2f} ({best_b + 1})",
                      fmt(mean_std([r[-1]["train_error"] for r in runs])),
                      fmt(mean_std([r[-1]["train_error_bayes"] for r in runs]))])
    footer = (f"784-101-101-1, {args.algo}, B = 128, ψ = 0.8, output ρ = 0.9; errors at the last "
              f"epoch ({args.epochs}), mean ± sample std over {args.seeds} seed(s); best: the "
              f"minimum over epochs of the seed-mean curve. The paper: {PAPER_MNIST}.")
    write_table(args, "bayes_fig2", header, table, budget_note(args, "bayes_fig2", clock.seconds(),
                                  [rows for runs in results.values() for rows in runs]),
                footer)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, runs) in enumerate(results.items()):
        plot_test_errors(ax, runs, label, f"C{i}")
        plot_averaged_test_errors(ax, args, runs, label, f"C{i}")
    ax.set_title(f"{args.dataset} even/odd, 784-101-101-1, {args.algo}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%), mean over seeds")
    finish_figure(fig, [ax], args, "bayes_fig2")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
