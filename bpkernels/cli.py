"""Command line: ``bpkernels train``, ``bpkernels eval`` and ``bpkernels compare``
(also ``python -m bpkernels``)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

from . import data as datasets
from .algorithms import ALGORITHMS
from .distributed import init_from_environment, is_main_process
from .arch import build_arch, mlp, per_layer
from .runlog import plot_errors
from .sequential import algo_name, ensemble_error, ensemble_errors
from .train import Ramp, evaluate, fit, load_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but torch sees no CUDA device")
    return device


def load_data(args) -> datasets.Dataset:
    dtype = getattr(torch, args.dtype)
    if args.dataset in datasets.INPUT_SHAPES:
        try:
            return datasets.load_dataset(args.dataset, args.data_dir, args.task, args.subset,
                                         args.test_subset, seed=args.seed, dtype=dtype)
        except datasets.DatasetNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from None
    n_out = 1 if args.task == "evenodd" else 10
    sizes = (784, 101, n_out)
    return datasets.teacher_student(args.subset or 6000, args.test_subset or 2000, sizes,
                                    seed=args.seed, dtype=dtype)


def input_shape(args) -> tuple[int, ...]:
    """Per-sample image shape (C, H, W) of the dataset, for --arch networks."""
    return datasets.INPUT_SHAPES.get(args.dataset, (1, 28, 28))


DATASETS = [*datasets.INPUT_SHAPES, "teacher"]


def int_at_least(minimum: int, name: str):
    """An argparse type: an int >= ``minimum``, which its messages call ``name``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {name}, got {value}")
        return value
    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS,
                   help="Fashion-MNIST, MNIST or CIFAR-10 (their standard files in --data-dir), "
                        "or data from a random binary teacher 784-101-out")
    p.add_argument("--task", default="10class", choices=list(datasets.TASKS))
    p.add_argument("--data-dir", default=None,
                   help="folder of the dataset's files (Fashion-MNIST default: "
                        "/usr/share/datasets/fashion-mnist; MNIST: its IDX files; CIFAR-10: its "
                        "python or binary batches)")
    p.add_argument("--subset", type=positive_int, default=None, help="use this many training examples")
    p.add_argument("--test-subset", type=positive_int, default=None, help="use this many test examples")
    p.add_argument("--hidden", type=int, nargs="*", default=[501, 501], help="hidden layer sizes")
    p.add_argument("--epochs", type=positive_int, default=100)
    p.add_argument("--batch-size", type=non_negative_int, default=128,
                   help="mini-batch size; 0 = one batch of all the training examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a run folder that holds one (its checkpoint is replaced)")


def ramp_type(text: str) -> Ramp:
    try:
        return Ramp.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_mp_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rho", type=float, nargs="*", default=None,
                   help="PasP exponent ρ: one value, or one per layer (default 1.0001 hidden, 0.9 output)")
    p.add_argument("--psi", type=float, nargs="*", default=[0.8],
                   help="damping ψ: one value, or one per layer (default 0.8)")
    p.add_argument("--init-std", type=float, default=1.0, help="ϵ, std of the initial fields")
    p.add_argument("--r", type=float, default=0.0, help="internal reinforcement r")
    p.add_argument("--r-step", type=float, default=0.0, help="reinforcement schedule step")
    p.add_argument("--tau-max", type=int, default=1, help="inner message-passing iterations")
    p.add_argument("--ramp", type=ramp_type, action="append", default=None,
                   metavar="PARAM:START:END:EPOCHS[:LAYERS]",
                   help="a per-epoch linear schedule of rho or psi over the hidden, output or all "
                        "(default) layers, e.g. psi:0.8:0.95:100 (repeatable)")
    p.add_argument("--average-from", type=int, default=None, metavar="EPOCH",
                   help="message passing: from this epoch on, average the weight marginals over "
                        "the mini-batches and also report the averaged network's errors "
                        "(avg_* metrics; `eval --average`, `export --average`)")
    p.add_argument("--density", type=float, default=None,
                   help="weight density of a fixed random mask (the gradient baselines get the "
                        "masks message passing draws for the same seed)")
    p.add_argument("--weights", default="binary", choices=["binary", "gaussian"],
                   help="weight family of an MLP: gaussian = continuous weights trained by cbpi "
                        "(a multi-class output layer stays binary); --algo cbpi implies it")
    p.add_argument("--no-bayes", action="store_true", help="skip the Bayesian errors each epoch")
    p.add_argument("--arch", default=None,
                   help="an architecture string instead of --hidden (message passing and the "
                        "gradient baselines), e.g. conv32k5s2p2-conv64k3s2p1-dense10 "
                        "(see bpkernels.arch.build_arch)")
    p.add_argument("--preset", default=None,
                   help="gradient baselines: a named recipe (e.g. binarynet-mnist, det-uniform)")
    p.add_argument("--opt", action="append", default=None, metavar="KEY=VALUE",
                   help="gradient baselines: an option of the method (repeatable), e.g. lr=0.003")


def _per_layer(values, n_layers, option):
    """An option given on the command line as one value for every layer or one per layer:
    None, the one value, or the list (a wrong count exits naming ``option``)."""
    if not values or isinstance(values, str):
        return values or None
    if len(values) == 1:
        return values[0]
    try:
        return per_layer(values, option, n_layers)
    except ValueError as error:
        sys.exit(f"error: {error}")


def _weight_families(family: str, n_layers: int, binary_task: bool):
    """--weights gaussian (or --algo cbpi): every layer Gaussian, except a multi-class output
    layer, which stays binary (a Gaussian argmax layer is not defined, bpkernels.gaussian)."""
    if family == "binary":
        return "binary"
    return ["gaussian"] * (n_layers - 1) + ["gaussian" if binary_task else "binary"]


def run_message_passing(args, data, device, run_dir):
    algos = [args.algo] if isinstance(args.algo, str) else args.algo
    if "cbpi" in algos or args.weights == "gaussian":
        if len(algos) > 1:
            sys.exit("error: --weights gaussian (algo cbpi) takes one --algo for every layer, "
                     "not one per layer")
        if getattr(args, "arch", None):
            sys.exit("error: --weights gaussian (algo cbpi) builds MLPs only, not --arch")
        args = argparse.Namespace(**{**vars(args), "algo": "cbpi", "weights": "gaussian"})
    factory = dict(r=args.r, init_std=args.init_std, density=args.density, seed=args.seed,
                   dtype=getattr(torch, args.dtype), device=device)
    # Binary runs record no "weights" key, so runs started before --weights still resume; fit
    # records the ramps itself.
    config = {k: v for k, v in vars(args).items()
              if k not in ("func", "ramp") and not (k == "weights" and v == "binary")}
    arch = getattr(args, "arch", None)
    if arch:
        n_layers = sum(token.startswith(("conv", "dense")) for token in arch.lower().split("-"))
    else:
        sizes = [data.train_x.shape[1], *args.hidden, 1 if data.binary else data.num_classes]
        n_layers = len(sizes) - 1
    per_layer = {name: _per_layer(getattr(args, name), n_layers, f"--{name}")
                 for name in ("algo", "rho", "psi")}
    if arch:
        model = build_arch(arch, num_classes=data.num_classes, input_shape=input_shape(args),
                           **per_layer, **factory)
    else:
        model = mlp(sizes, output="sign" if data.binary else "argmax",
                    weights=_weight_families(args.weights, n_layers, data.binary), **per_layer,
                    **factory)
    return fit(model, data, epochs=args.epochs, batch_size=args.batch_size or None,
               tau_max=args.tau_max, r_step=args.r_step, seed=args.seed, run_dir=run_dir,
               config=config, resume=getattr(args, "resume", False),
               progress=not args.no_progress, eval_bayes=not args.no_bayes, method=model.algo,
               overwrite=args.overwrite, ramps=getattr(args, "ramp", None) or (),
               average_from=getattr(args, "average_from", None))


def run_method(method: str, args, data, device, run_dir):
    """Trains one method of `compare`: a message-passing variant ("amp"), one variant per layer
    joined by "+" ("bpi+amp+amp+amp", as :func:`algo_name` names it), or a gradient baseline."""
    if is_message_passing(method):
        variants = method.split("+")
        algo = variants[0] if len(variants) == 1 else variants
        return run_message_passing(argparse.Namespace(**{**vars(args), "algo": algo}), data,
                                   device, run_dir)
    from .baselines import BASELINE_METHODS, train_baseline

    if method not in BASELINE_METHODS:
        raise SystemExit(f"error: unknown method {method!r}; choose from "
                         f"{tuple(ALGORITHMS) + BASELINE_METHODS}, or variants joined by +")
    return train_baseline(method, data, hidden=args.hidden, arch=getattr(args, "arch", None),
                          input_shape=input_shape(args), epochs=args.epochs,
                          batch_size=args.batch_size or data.train_x.shape[0], seed=args.seed,
                          device=device,
                          run_dir=run_dir, progress=not args.no_progress,
                          resume=getattr(args, "resume", False), preset=args.preset,
                          overwrite=args.overwrite,
                          **{**({"density": args.density} if args.density is not None else {}),
                             **parse_options(args.opt)})


def parse_options(items: list[str] | None) -> dict:
    """--opt key=value pairs of a gradient baseline; values are JSON (numbers, true, strings)."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --opt expects key=value, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def default_run_dir(kind: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{kind}-{stamp}")


# The options of train that one family of methods reads and the other does not.
MESSAGE_PASSING_ONLY = ("algo", "rho", "psi", "init_std", "r", "r_step", "tau_max", "ramp",
                        "average_from", "weights", "no_bayes")
GRADIENT_ONLY = ("preset", "opt")


def refuse_unread_options(args, message_passing: bool, gradient: bool, methods: str) -> None:
    """Exits naming the options given to the command that none of its methods reads: the
    message-passing options when it trains no message passing, --preset and --opt when it trains
    no gradient baseline (``methods`` names the methods in the message)."""
    defaults = build_parser().parse_args([args.command])

    def given(dests):
        return ["--" + dest.replace("_", "-") for dest in dests
                if getattr(args, dest, None) != getattr(defaults, dest, None)]

    if not gradient and given(GRADIENT_ONLY):
        sys.exit(f"error: {', '.join(given(GRADIENT_ONLY))}: options of the gradient baselines "
                 f"(ste, bayesbinn, st), which {methods} does not read")
    if not message_passing and given(MESSAGE_PASSING_ONLY):
        sys.exit(f"error: {', '.join(given(MESSAGE_PASSING_ONLY))}: message-passing options, "
                 f"which {methods} does not read")


def check_batch_size(args, n_train: int) -> None:
    """Exits when --batch-size cannot cut the n_train training examples into mini-batches."""
    if args.batch_size > n_train:
        sys.exit(f"error: --batch-size {args.batch_size} is larger than the {n_train} training "
                 f"examples; give at most {n_train}, or 0 for one batch of all of them")


def is_message_passing(method: str) -> bool:
    """Whether a method of compare names message passing: a variant ("amp"), or one variant
    per layer joined by "+" ("bpi+amp+amp+amp")."""
    return all(variant in ALGORITHMS for variant in method.split("+"))


def cmd_train(args) -> int:
    message_passing = args.method == "bp"
    refuse_unread_options(args, message_passing=message_passing, gradient=not message_passing,
                          methods="message passing" if message_passing
                          else f"--method {args.method}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = init_from_environment(resolve_device(args.device))
    data = load_data(args)
    check_batch_size(args, data.train_x.shape[0])
    method = (args.algo if isinstance(args.algo, str) else algo_name(args.algo)) \
        if message_passing else args.method
    run_dir = args.run_dir or default_run_dir(method)
    print(f"training {method} on {data.name} ({data.train_x.shape[0]} train / "
          f"{data.test_x.shape[0]} test) on {device}; run folder {run_dir}")
    rows = (run_message_passing(args, data, device, run_dir) if message_passing
            else run_method(method, args, data, device, run_dir))
    if rows and is_main_process():
        last = rows[-1]
        print(json.dumps({k: last[k] for k in ("epoch", "train_error", "test_error",
                                               "test_error_bayes", "seconds")}))
    return 0


def _checkpoint_data(args, state: dict, dtype: torch.dtype) -> argparse.Namespace:
    """The data options of a checkpoint's run (--dataset, --task, --data-dir override them)."""
    cfg = state["config"]
    return argparse.Namespace(dataset=args.dataset or cfg.get("dataset", "fashion-mnist"),
                              task=args.task or cfg.get("task", "10class"),
                              data_dir=args.data_dir or cfg.get("data_dir"),
                              subset=cfg.get("subset"), test_subset=cfg.get("test_subset"),
                              seed=cfg.get("seed", 0), dtype=str(dtype).replace("torch.", ""))


def _same_data(a: argparse.Namespace, b: argparse.Namespace) -> bool:
    """Whether two runs' data options load the same examples: the seed draws the teacher's data
    and the subsets, and nothing else."""
    seeded = a.dataset == "teacher" or a.subset or a.test_subset
    return {**vars(a), **({} if seeded else {"seed": None})} == \
        {**vars(b), **({} if seeded else {"seed": None})}


def _load_checkpoint(path: str, device, average: bool):
    """load_model for the command line: a file that is no message-passing checkpoint (a gradient
    baseline's, or one without the posterior average asked for) exits in one line."""
    try:
        return load_model(path, device=device, average=average)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


def cmd_eval(args) -> int:
    device = resolve_device(args.device)
    loaded = [_load_checkpoint(checkpoint, device, args.average) for checkpoint in args.checkpoint]
    dtypes = sorted({str(model.dtype) for model, _ in loaded})
    if len(dtypes) > 1:
        sys.exit(f"error: the members of an ensemble must share a dtype, got {', '.join(dtypes)}")
    data_args = [_checkpoint_data(args, state, model.dtype) for model, state in loaded]
    for checkpoint, other in zip(args.checkpoint[1:], data_args[1:]):
        if not _same_data(data_args[0], other):
            sys.exit(f"error: {checkpoint} was trained on other data than {args.checkpoint[0]} "
                     f"({vars(other)} against {vars(data_args[0])}); an ensemble is evaluated "
                     f"on one test set")
    data = load_data(data_args[0]).to(device)
    models = [model for model, _ in loaded]
    if len(models) == 1:
        result = {**evaluate(models[0], data, bayes=True), "epoch": loaded[0][1]["epoch"]}
    else:  # the ensemble's errors, and each member's on the test set
        result = {"members": len(models), "epochs": [state["epoch"] for _, state in loaded]}
        for mode, suffix in (("pointwise", ""), ("bayes", "_bayes")):
            result[f"train_error{suffix}"] = ensemble_error(models, data.train_x, data.train_y,
                                                            mode)
            result[f"test_error{suffix}"], result[f"members_test_error{suffix}"] = \
                ensemble_errors(models, data.test_x, data.test_y, mode)
    print(json.dumps(result))
    return 0


def cmd_compare(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    message_passing = [is_message_passing(method) for method in methods]
    refuse_unread_options(args, message_passing=any(message_passing),
                          gradient=not all(message_passing), methods=f"--methods {args.methods}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = init_from_environment(resolve_device(args.device))
    data = load_data(args)
    check_batch_size(args, data.train_x.shape[0])
    out_dir = args.out or default_run_dir("compare")
    results = {}
    for method in methods:
        print(f"== {method}")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results[method] = run_method(method, args, data, device, os.path.join(out_dir, method))
    if is_main_process():
        write_comparison(results, out_dir)
        print(open(os.path.join(out_dir, "compare.md")).read())
    return 0


# --anchor-window default, in epochs: the best of 1, 2.6 and 6.4 on permuted Fashion-MNIST
# (benchmarks/results/continual_reduced/README.md)
ANCHOR_WINDOW_EPOCHS = 2.5


def continual_trainer(method: str, args, data, n_train: int, device):
    """The trainer of one continual-learning method: message passing ("amp": the paper's
    setting ρ = 1, ψ = 0.8 on every layer including the output; "amp-default": the library's
    defaults; "amp-anchored": the defaults, with the posterior of the earlier tasks as the
    fixed anchor of the prior of the --anchor layers; --rho overrides any of them), or a
    gradient baseline ("ste", "bayesbinn", "st", "meta": STE with the metaplastic preset)."""
    from .train import MessagePassingTrainer

    algo, _, variant = method.partition("-")
    if algo in ALGORITHMS and variant in ("", "default", "anchored"):
        sizes = [data.train_x.shape[1], *args.hidden, 1 if data.binary else data.num_classes]
        # --rho overrides both settings (one value, or one per layer)
        rho = _per_layer(args.rho, len(sizes) - 1, "--rho") if args.rho else (None if variant else 1.0)
        model = mlp(sizes, algo=algo, output="sign" if data.binary else "argmax", rho=rho,
                    psi=_per_layer(args.psi, len(sizes) - 1, "--psi") or 0.8, r=args.r,
                    init_std=args.init_std, density=args.density, seed=args.seed,
                    dtype=getattr(torch, args.dtype), device=device,
                    weights=_weight_families("gaussian" if algo == "cbpi" else "binary",
                                             len(sizes) - 1, data.binary))
        anchor = args.anchor if variant == "anchored" else "none"
        anchor_rho = None
        if anchor == "all":  # the new task's evidence accumulates over --anchor-window epochs
            batches = n_train // args.batch_size
            anchor_rho = 1.0 - 1.0 / (args.anchor_window * batches)
        return MessagePassingTrainer(model, tau_max=args.tau_max, r_step=args.r_step,
                                     eval_bayes=False, method=method, anchor=anchor,
                                     anchor_rho=anchor_rho)
    from .baselines import make_trainer

    base, preset = ("ste", "metaplastic") if method == "meta" else (method, None)
    options = {**({"density": args.density} if args.density is not None else {}),
               **parse_options(args.opt)}
    if base == "bayesbinn":
        options.setdefault("mc_samples", 0)  # per-task accuracies are point-wise
    steps = args.epochs_per_task * (n_train // args.batch_size)
    return make_trainer(base, data, hidden=args.hidden, total_steps=steps, seed=args.seed,
                        device=device, preset=preset, method_name=method, **options)


def cmd_continual(args) -> int:
    from . import continual

    unsupported = {"--ramp": (args.ramp, "its epochs restart every task"),
                   "--average-from": (args.average_from, "its epochs restart every task"),
                   "--arch": (args.arch, "it trains MLPs of --hidden"),
                   "--weights": (args.weights != "binary", "name the method cbpi for Gaussian "
                                                           "weights"),
                   "--preset": (args.preset, "the method meta is STE with the metaplastic "
                                             "preset"),
                   "--batch-size 0": (args.batch_size == 0, "message passing learns a task on "
                                      "top of the last through the posterior it carries as the "
                                      "prior, which full-batch mode drops")}
    for flag, (given, why) in unsupported.items():
        if given:
            sys.exit(f"error: {flag} is not supported by continual ({why})")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    message_passing = [m.partition("-")[0] in ALGORITHMS for m in methods]
    refuse_unread_options(args, message_passing=any(message_passing),
                          gradient=not all(message_passing), methods=f"--methods {args.methods}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = init_from_environment(resolve_device(args.device))
    base = load_data(args)
    check_batch_size(args, base.train_x.shape[0])
    tasks = continual.permuted_tasks(base, args.tasks, seed=args.seed)
    out_dir = args.out or default_run_dir("continual")
    results = {}
    for method in methods:
        print(f"== {method}: {args.tasks} tasks × {args.epochs_per_task} epochs")
        trainer = continual_trainer(method, args, base, base.train_x.shape[0], device)
        results[method] = continual.train_continual(
            trainer, tasks, args.epochs_per_task, args.batch_size, seed=args.seed,
            run_dir=os.path.join(out_dir, method), resume=args.resume,
            progress=not args.no_progress, overwrite=args.overwrite)
    if is_main_process():
        continual.write_report(results, args.tasks, out_dir)
        print(open(os.path.join(out_dir, "summary.md")).read())
    return 0


def cmd_export(args) -> int:
    from .packed import export

    model, _ = _load_checkpoint(args.checkpoint, "cpu", args.average)
    header = export(model, args.out)
    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()
                      if t is not None)
    print(json.dumps({"out": args.out, "bytes": os.path.getsize(args.out),
                      "state_dict_bytes": float_bytes, "dtype": header["dtype"],
                      "layers": [layer["type"] for layer in header["layers"]]}))
    return 0


def cmd_predict(args) -> int:
    import time

    from .packed import PackedFormatError, load_packed

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        net = load_packed(args.packed)
    except (OSError, PackedFormatError) as exc:
        raise SystemExit(f"error: {exc}") from None
    binary = net.stages[-1]["output"] == "sign"
    task = args.task or ("evenodd" if binary else "10class")
    if (task == "evenodd") != binary:
        raise SystemExit(f"error: the network has a {net.stages[-1]['output']} output, which "
                         f"does not fit --task {task}")
    ns = argparse.Namespace(dataset=args.dataset, task=task, data_dir=args.data_dir, subset=None,
                            test_subset=args.test_subset, seed=args.seed,
                            dtype=str(net.dtype).replace("torch.", ""))
    data = load_data(ns)
    start = time.perf_counter()
    try:
        error = net.error(data.test_x, data.test_y)
    except ValueError as exc:
        raise SystemExit(f"error: the network does not fit {data.name}'s examples: {exc}") from None
    print(json.dumps({"test_error": error, "test_samples": int(data.test_x.shape[0]),
                      "seconds": round(time.perf_counter() - start, 4),
                      "threads": torch.get_num_threads()}))
    return 0


def write_comparison(results: dict[str, list[dict]], out_dir: str) -> None:
    """compare.md / compare.csv (one row per method and epoch) and compare.png."""
    os.makedirs(out_dir, exist_ok=True)
    header = ["method", "epoch", "test_error_%", "test_error_bayes_%", "train_error_%",
              "seconds_per_epoch", "peak_mem_MB"]

    def fmt(v, scale=1.0, digits=2):
        return "" if v is None else f"{v * scale:.{digits}f}"

    lines = []
    for method, rows in results.items():
        for r in rows:
            mem = r.get("peak_mem_bytes")
            lines.append([method, str(r["epoch"]), fmt(r["test_error"], 100),
                          fmt(r.get("test_error_bayes"), 100), fmt(r["train_error"], 100),
                          fmt(r["seconds"], 1, 2), "" if mem is None else f"{mem / 2**20:.0f}"])
    with open(os.path.join(out_dir, "compare.csv"), "w") as f:
        f.write(",".join(header) + "\n" + "".join(",".join(line) + "\n" for line in lines))
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        f.write("".join("| " + " | ".join(line) + " |\n" for line in lines))
    plot_errors(results, os.path.join(out_dir, "compare.png"), test_only=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpkernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a binary network and write a run folder")
    add_common_options(p)
    add_mp_options(p)
    p.add_argument("--algo", default="bpi", nargs="+", choices=list(ALGORITHMS),
                   help="message-passing variant: one, or one per layer (e.g. --algo bpi amp amp "
                        "amp: exact cavities on a first conv layer, AMP above it)")
    p.add_argument("--method", default="bp", choices=["bp", "ste", "bayesbinn", "st"],
                   help="bp: message passing (variant --algo); or a gradient baseline")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<method>-<time>)")
    p.add_argument("--resume", action="store_true", help="resume from <run-dir>/checkpoint.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="point-wise and Bayesian errors of a checkpoint, or of the "
                                    "ensemble of several (e.g. one per seed)")
    p.add_argument("checkpoint", nargs="+",
                   help="checkpoint.pt of a message-passing run; several: their ensemble, which "
                        "decides on the mean of the members' output scores")
    p.add_argument("--dataset", default=None, choices=DATASETS)
    p.add_argument("--task", default=None, choices=list(datasets.TASKS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--average", action="store_true",
                   help="the network of the run's posterior average (trained with --average-from)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("continual", help="continual learning on permuted tasks: accuracy matrix "
                                         "per method, average final accuracy, backward transfer")
    add_common_options(p)
    add_mp_options(p)
    p.add_argument("--methods", default="amp-anchored,amp,amp-default,ste,bayesbinn,meta",
                   help="comma-separated: bp|bpi|amp|mf (paper setting ρ = 1 on every layer), "
                        "<algo>-default (library defaults), <algo>-anchored (defaults, the "
                        "earlier tasks' posterior anchors the prior of the --anchor layers), "
                        "ste, bayesbinn, st, meta (metaplastic STE)")
    p.add_argument("--anchor", default="all", choices=["output", "all"],
                   help="the layers an <algo>-anchored method anchors at each task boundary")
    p.add_argument("--anchor-window", type=float, default=ANCHOR_WINDOW_EPOCHS,
                   help="--anchor all: from task 2 on, the anchored hidden layers take "
                        "ρ = 1 − 1/(window × batches per epoch), so a new task's evidence "
                        "accumulates on top of the anchor over about this many epochs")
    p.add_argument("--tasks", type=int, default=6, help="number of tasks (task 1 unpermuted)")
    p.add_argument("--epochs-per-task", type=int, default=40)
    p.add_argument("--out", default=None, help="output folder (default runs/continual-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out")
    p.set_defaults(func=cmd_continual)

    p = sub.add_parser("compare", help="train several methods on the same data and tabulate")
    add_common_options(p)
    add_mp_options(p)
    p.add_argument("--methods", default="bpi,amp,mf,ste,bayesbinn",
                   help="comma-separated: bp, bpi, amp, mf, ste, bayesbinn, st, or one "
                        "message-passing variant per layer joined by + (bpi+amp+amp+amp)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<time>)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write a checkpoint's ±1 network as a bit-packed file")
    p.add_argument("checkpoint", help="checkpoint.pt of a message-passing run")
    p.add_argument("out", help="the packed file to write (docs/packed_format.md)")
    p.add_argument("--average", action="store_true",
                   help="export the run's posterior-average network (trained with --average-from)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="test error of a packed network (XNOR-popcount kernels)")
    p.add_argument("packed", help="a file written by `bpkernels export`")
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument("--task", default=None, choices=list(datasets.TASKS),
                   help="default: evenodd for a sign output, 10class for an argmax output")
    p.add_argument("--data-dir", default=None,
                   help="folder of the dataset's files (as for train)")
    p.add_argument("--test-subset", type=int, default=None, help="use this many test examples")
    p.add_argument("--seed", type=int, default=0, help="seed of the test subset draw")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if isinstance(getattr(args, "algo", None), list) and len(set(args.algo)) == 1:
        args.algo = args.algo[0]  # one variant for every layer, recorded as a name
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
