"""The training loop of every method: message passing and the gradient baselines.

:func:`fit` runs epochs of seeded mini-batches over a dataset held as tensors on the training
device, for any :class:`Trainer`: per-epoch errors, timings and the trainer's own metrics, a
run folder (config, metrics.jsonl, atomic checkpoints, plot) and exact resumption. The data is
validated once per run; a step makes no host synchronisation (its statistic stays a tensor
until the epoch ends). :class:`MessagePassingTrainer` adapts a
:class:`~bpkernels.sequential.BPSequential`; the gradient baselines' trainers live in
:mod:`bpkernels.baselines`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .averaging import PosteriorAverage
from .data import Dataset, as_dataset
from .distributed import DataParallel
from .layers import LAYER_KINDS
from .runlog import CHECKPOINT, RunLog, load_checkpoint
from .sequential import BPSequential


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch, a function of (seed, epoch) only, so that a resumed run draws
    exactly the batches of the uninterrupted one, and every method the same batches."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


class Trainer(Protocol):
    """What :func:`fit` needs of a method."""

    method: str
    device: torch.device

    def prepare(self, data: Dataset) -> Dataset:
        """The dataset on the training device and dtype, validated once for the whole run."""

    def begin_epoch(self, epoch: int) -> None:
        """Called before the first mini-batch of every epoch (counted from 1), also after a
        resume: per-epoch schedules are set here, as a function of ``epoch`` alone."""

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """One update on the mini-batch x [B, ...], y [B]; returns a 0-dim statistic (δ, loss)."""

    def epoch_metrics(self, stats: list[Tensor]) -> dict:
        """Metric fields of an epoch from its per-step statistics (one host transfer)."""

    def evaluate(self, data: Dataset, epoch: int, batch_size: int) -> dict:
        """train_error, test_error, train_error_bayes, test_error_bayes (None where a method
        has no Bayesian prediction), and method-specific fields."""

    def distribute(self, data_parallel: DataParallel) -> None:
        """Prepares a data-parallel run: every step sees this rank's shard of the batch."""

    def state_dict(self) -> dict:
        """Everything needed to resume (tensors and plain data only)."""

    def load_state_dict(self, state: dict) -> None:
        ...


def evaluate(model: BPSequential, data: Dataset, bayes: bool = True,
             data_parallel: DataParallel | None = None) -> dict:
    """Point-wise (and Bayesian) train/test error of the model (None for an empty test set).
    Data-parallel: every rank predicts its shard and the error counts are summed."""
    row = {}
    for mode, suffix in (("pointwise", ""), ("bayes", "_bayes")):
        for part, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
            wanted = (mode == "pointwise" or bayes) and x.shape[0] > 0
            row[f"{part}_error{suffix}"] = _error(model, x, y, mode, data_parallel) if wanted else None
    return {k: row[k] for k in ("train_error", "test_error", "train_error_bayes", "test_error_bayes")}


def _error(model: BPSequential, x: Tensor, y: Tensor, mode: str,
           data_parallel: DataParallel | None) -> float:
    """Fraction of misclassified samples; data-parallel, the sum of every rank's count over
    the whole size (the same float as one process computes)."""
    if data_parallel is None:
        return model.error(x, y, mode)
    total = x.shape[0]
    x, y = data_parallel.shard(x), data_parallel.shard(y)
    wrong = torch.zeros((), dtype=torch.float64, device=model.device)
    if x.shape[0]:
        pred = model.predict(x, mode)
        wrong = (pred != y.to(pred.device, pred.dtype)).double().sum()
    return float(data_parallel.sum(wrong)) / total


@dataclass(frozen=True)
class Ramp:
    """A per-epoch schedule of one layer hyper-parameter of message passing: ``param`` ("rho"
    or "psi") of the ``layers`` ("hidden", "output" or "all") goes linearly from ``start`` at
    epoch 1 to ``end`` at epoch ``epochs`` and stays at ``end`` afterwards. Its horizon is its
    own, not the run's, so a run extended with more epochs equals a longer run.

    Written ``param:start:end:epochs[:layers]`` on the command line (:meth:`parse`), e.g.
    ``psi:0.8:0.95:100``: the damping ψ of every layer from 0.8 to 0.95 over 100 epochs.
    """

    param: str
    start: float
    end: float
    epochs: int
    layers: str = "all"

    PARAMS = {"rho": (0.0, math.inf), "psi": (0.0, 1.0)}
    LAYERS = ("hidden", "output", "all")

    def __post_init__(self):
        if self.param not in self.PARAMS:
            raise ValueError(f"a ramp schedules one of {tuple(self.PARAMS)}, got {self.param!r}")
        lo, hi = self.PARAMS[self.param]
        for name in ("start", "end"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"ramp of {self.param}: {name} must be finite and lie in "
                                 f"[{lo}, {hi}], got {value!r}")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"ramp of {self.param}: epochs must be an integer >= 1, "
                             f"got {self.epochs!r}")
        if self.layers not in self.LAYERS:
            raise ValueError(f"ramp of {self.param}: layers must be one of {self.LAYERS}, "
                             f"got {self.layers!r}")

    @classmethod
    def parse(cls, text: str) -> "Ramp":
        """``param:start:end:epochs[:layers]`` → Ramp."""
        parts = text.split(":")
        if len(parts) not in (4, 5):
            raise ValueError(f"a ramp is param:start:end:epochs[:layers], got {text!r}")
        try:
            start, end, epochs = float(parts[1]), float(parts[2]), int(parts[3])
        except ValueError:
            raise ValueError(f"a ramp is param:start:end:epochs[:layers] with numbers for "
                             f"start, end and epochs, got {text!r}") from None
        return cls(parts[0], start, end, epochs, *parts[4:])

    def value(self, epoch: int) -> float:
        """The value during ``epoch`` (1-based); a one-epoch ramp is ``end`` throughout."""
        t = 1.0 if self.epochs == 1 else min(max(epoch - 1, 0) / (self.epochs - 1), 1.0)
        return self.start + t * (self.end - self.start)

    def layer_indices(self, n_layers: int) -> range:
        """The indices of the layers it sets in a network of ``n_layers`` BP layers."""
        return {"hidden": range(n_layers - 1), "output": range(n_layers - 1, n_layers),
                "all": range(n_layers)}[self.layers]

    def apply(self, layers: Sequence, epoch: int) -> None:
        """Sets the hyper-parameter of the chosen layers of ``layers`` (a network's BP layers,
        the output last) for ``epoch``."""
        for i in self.layer_indices(len(layers)):
            setattr(layers[i], self.param, self.value(epoch))


class MessagePassingTrainer:
    """A BPSequential trained by posterior-as-prior message passing (docs §3).

    Args:
        model: the network (its device and dtype are the training device and dtype).
        tau_max: inner iterations per mini-batch.  r_step: reinforcement schedule.
        pasp: the layers' priors (False: full-batch mode, θ = 0).
        eval_bayes: also compute the Bayesian errors each epoch.
        anchor: continual learning, the layers whose posterior becomes the fixed anchor A of
            their prior θ = A + ρ·(H − A) at every task boundary after the first: "none" (θ =
            ρ·H carries over unchanged), "output" or "all" (docs §6.1).
        anchor_rho: with anchor="all", the ρ of the anchored hidden layers from the second
            task on (None: their own); 1/(1 − ρ) mini-batches is the window over which a new
            task's evidence accumulates on top of A.
        ramps: per-epoch schedules of ρ or ψ (:class:`Ramp`), applied in order at the start of
            every epoch; at most one per (parameter, layer).
        average_from: if given, from this epoch on the marginals after every mini-batch join a
            :class:`~bpkernels.averaging.PosteriorAverage`, and every evaluation adds the
            averaged network's errors (``avg_`` + the usual names; None before the epoch).
    """

    ANCHORS = ("none", "output", "all")

    def __init__(self, model: BPSequential, tau_max: int = 1, r_step: float = 0.0,
                 pasp: bool = True, eval_bayes: bool = True, method: str | None = None,
                 anchor: str = "none", anchor_rho: float | None = None,
                 ramps: Sequence[Ramp] = (), average_from: int | None = None):
        if tau_max < 1:
            raise ValueError(f"tau_max must be >= 1, got {tau_max}")
        if anchor not in self.ANCHORS:
            raise ValueError(f"anchor must be one of {self.ANCHORS}, got {anchor!r}")
        if anchor_rho is not None and anchor != "all":
            raise ValueError("anchor_rho sets the ρ of anchored hidden layers: it needs anchor='all'")
        if anchor_rho is not None and not 0.0 <= anchor_rho <= 1.0:
            raise ValueError(f"anchor_rho must lie in [0, 1], got {anchor_rho!r}")
        self.anchor, self.anchor_rho = anchor, anchor_rho
        self.ramps = tuple(ramps)
        n_layers = len(model.bp_layers)
        owners = {}
        for ramp in self.ramps:
            if not isinstance(ramp, Ramp):
                raise TypeError(f"ramps must be Ramp schedules, got {type(ramp).__name__}")
            if ramp.layers == "hidden" and n_layers < 2:
                raise ValueError(f"a ramp of {ramp.param} on the hidden layers needs a network "
                                 "with hidden layers")
            for i in ramp.layer_indices(n_layers):
                if owners.setdefault((ramp.param, i), ramp) is not ramp:
                    raise ValueError(f"two ramps set {ramp.param} of layer {i}")
        if anchor_rho is not None and any(r.param == "rho" and r.layers != "output"
                                          for r in self.ramps):
            raise ValueError("anchor_rho and a ramp of rho on the hidden layers both set their ρ")
        self.model, self.tau_max, self.r_step, self.pasp = model, tau_max, r_step, pasp
        self.eval_bayes = eval_bayes
        self.method = method or model.algo
        self.device = model.device
        self.data_parallel: DataParallel | None = None
        if average_from is not None and not (isinstance(average_from, int)
                                             and not isinstance(average_from, bool)
                                             and average_from >= 1):
            raise ValueError(f"average_from must be an epoch >= 1, got {average_from!r}")
        self.average_from = average_from
        self.average = PosteriorAverage(model) if average_from is not None else None
        self.averaging = False

    def distribute(self, data_parallel: DataParallel) -> None:
        """Data-parallel training: the field messages of every step are summed over the ranks
        (one flattened all-reduce per inner iteration), the errors are counted on shards."""
        self.data_parallel = data_parallel
        self.model.h_in_reduction = data_parallel.all_reduce_

    def prepare(self, data: Dataset) -> Dataset:
        model = self.model
        if model.num_classes != data.num_classes:
            raise ValueError(f"the model has {model.num_classes} output classes, the data "
                             f"{data.name} has {data.num_classes}")
        data = data.to(device=self.device, dtype=model.dtype)
        for part in ("train", "test"):
            x, y = getattr(data, f"{part}_x"), getattr(data, f"{part}_y")
            if x.shape[0] or part == "train":
                model.check_labels(y, model.check_inputs(x).shape[0])
        return data

    def begin_epoch(self, epoch: int) -> None:
        for ramp in self.ramps:
            ramp.apply(self.model.bp_layers, epoch)
        self.averaging = self.average is not None and epoch >= self.average_from

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        delta = self.model.bp_step(x, y, tau_max=self.tau_max, pasp=self.pasp, r_step=self.r_step,
                                   checked=True)
        if self.averaging:
            self.average.add()
        return delta

    def epoch_metrics(self, stats: list[Tensor]) -> dict:
        deltas = torch.stack(stats).tolist()
        return {"delta": sum(deltas) / len(deltas)}

    def evaluate(self, data: Dataset, epoch: int, batch_size: int) -> dict:
        row = evaluate(self.model, data, self.eval_bayes, self.data_parallel)
        if self.average is not None:
            averaged = (evaluate(self.average.network(), data, self.eval_bayes, self.data_parallel)
                        if self.average.count else dict.fromkeys(row))
            row.update({f"avg_{key}": value for key, value in averaged.items()})
        return row

    def state_dict(self) -> dict:
        """The architecture, the buffers, the reinforcement state (layer r, schedule clock) and
        the posterior average, if any."""
        model = self.model
        state = {"model_config": model.config(), "state_dict": model.state_dict(),
                 "layer_r": [layer.r for layer in model.bp_layers],
                 "reinforcement_calls": model.reinforcement_calls}
        if self.average is not None:
            state["average"] = self.average.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        load_model_state(self.model, state)
        if self.average is not None:
            self.average.load_state_dict(state["average"])

    def begin_task(self, task: int) -> None:
        """A new task of a sequence (continual learning): nothing is reset, so the first
        mini-batch of the task takes θ = ρ·H with H the posterior of the previous task; the
        ``anchor`` layers hold that posterior fixed as the anchor A of θ = A + ρ·(H − A) for
        the whole task."""
        if task == 0 or self.anchor == "none":
            return
        layers = self.model.bp_layers
        for layer in layers if self.anchor == "all" else layers[-1:]:
            layer.set_prior("anchored")
            if self.anchor_rho is not None and layer is not layers[-1]:
                layer.rho = self.anchor_rho

    def test_error(self, x: Tensor, y: Tensor) -> float:
        """Point-wise error of the network on (x, y)."""
        return self.model.error(x, y)


def load_model_state(model: BPSequential, state: dict) -> None:
    """Loads a :meth:`MessagePassingTrainer.state_dict` into ``model``."""
    # the saved layers' prior kind and ρ (both can change during continual learning)
    specs = [spec for spec in state["model_config"] if spec["type"] in LAYER_KINDS]
    for layer, spec in zip(model.bp_layers, specs):
        layer.use_prior_kind(spec["prior"])  # its buffers, if any, are loaded next
        layer.rho = spec["rho"]
    model.load_state_dict(state["state_dict"])
    for layer, r in zip(model.bp_layers, state["layer_r"]):
        layer.r = r
    model.reinforcement_calls = state["reinforcement_calls"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Configuration keys a resumed run may change; every other key must equal the checkpoint's.
RESUMABLE_CHANGES = frozenset({"epochs", "resume", "overwrite", "threads", "no_progress",
                               "progress", "device", "run_dir", "out", "data_dir"})


def check_resume_config(saved: dict, config: dict, run_dir: str) -> None:
    """Refuses to resume with another configuration (algorithm, dtype, seed, data, batch
    size, ...), naming the keys that differ."""
    keys = (set(saved) | set(config)) - RESUMABLE_CHANGES
    differ = sorted(k for k in keys if saved.get(k) != config.get(k))
    if differ:
        details = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {config.get(k)!r} now"
                            for k in differ)
        raise ValueError(f"cannot resume {run_dir} with another configuration ({details}); "
                         "start a new run instead")


def check_finite(row: dict, state: dict, epoch: int, run_dir: str | None) -> None:
    """Stops a run whose metrics or state became NaN or infinite, before they are written:
    the last checkpoint (the previous epoch's) stays the last good one."""
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]

    def walk(name, value):
        if isinstance(value, Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            bad.append(name)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{name}.{k}" if name else str(k), v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{name}[{i}]", v)

    walk("", state)
    if bad:
        kept = f"; {run_dir} keeps the checkpoint of epoch {epoch - 1}" if run_dir else ""
        raise FloatingPointError(f"training diverged in epoch {epoch}: non-finite {', '.join(bad[:6])}"
                                 f"{kept}. Check the inputs' scale and the hyper-parameters.")


def fit(model: BPSequential | Trainer, data, epochs: int, batch_size: int | None = 128,
        tau_max: int = 1, r_step: float = 0.0, seed: int = 0, run_dir: str | None = None,
        config: dict | None = None, resume: bool = False, progress: bool = True,
        eval_bayes: bool = True, method: str | None = None, test_data=None,
        extra_eval: Callable[[], dict] | None = None, overwrite: bool = False,
        ramps: Sequence[Ramp] = (), average_from: int | None = None) -> list[dict]:
    """Trains a model (by message passing) or any :class:`Trainer`, and returns one metrics row
    per epoch.

    Args:
        model: a BPSequential (trained by :class:`MessagePassingTrainer` with tau_max, r_step,
            eval_bayes, method, ramps, average_from), or a Trainer (a gradient baseline, or
            your own).
        data: a :class:`~bpkernels.data.Dataset`; or the training set as a pair of tensors
            (x [P, ...], y [P]), a map-style torch Dataset or a DataLoader of (x, y) pairs,
            with ``test_data`` the test set in any of these forms (see
            :func:`bpkernels.data.as_dataset`). It is moved to the training device once, as
            whole tensors, and validated once.
        epochs: number of epochs (the total, when resuming).
        batch_size: mini-batch size B; each epoch is a seeded shuffle cut into ⌊P/B⌋ batches
            (the last partial batch dropped, as in the paper). None: full-batch mode, one
            batch of all P samples per epoch with no prior (θ = 0), where tau_max inner
            iterations and internal reinforcement (layer r, r_step) do the work.
        seed: seed of the shuffles.
        run_dir: if given, writes config.json, metrics.jsonl, checkpoint.pt (after every
            epoch, atomically) and errors.png there.
        resume: continue from run_dir/checkpoint.pt; the result is bit-identical to the run
            that was not interrupted. The configuration must match the checkpoint's except
            for the keys of RESUMABLE_CHANGES (e.g. more epochs).
        overwrite: start a new run in a run_dir that holds one (else that is an error).
        average_from: message passing: from this epoch on, also keep the posterior averaged
            over the mini-batches (:class:`~bpkernels.averaging.PosteriorAverage`, docs §6.2);
            it is checkpointed, and ``load_model(..., average=True)`` rebuilds its network.
        extra_eval: called after each epoch's evaluation; its fields join the row (e.g. the
            accuracies on every task of a continual-learning run).

    Rows: epoch, method, train_error, test_error, train_error_bayes, test_error_bayes, the
    trainer's evaluation fields (with average_from: the same four errors of the averaged
    network, prefixed avg_), seconds (training wall time of the epoch), cpu_seconds,
    peak_mem_bytes (CUDA, else None), and the trainer's epoch metrics (δ for message passing).
    """
    full_batch = batch_size is None
    if isinstance(model, BPSequential):
        trainer = MessagePassingTrainer(model, tau_max, r_step, not full_batch, eval_bayes, method,
                                        ramps=ramps, average_from=average_from)
    elif ramps:
        raise ValueError("ramps schedule message passing: give them to your trainer, not to fit")
    elif average_from is not None:
        raise ValueError("average_from averages message-passing marginals: a BPSequential only")
    else:
        trainer = model
    device = trainer.device
    data = trainer.prepare(as_dataset(data, test_data))
    n_train = data.train_x.shape[0]
    if full_batch:
        batch_size = n_train
    if not 1 <= batch_size <= n_train:
        raise ValueError(f"batch_size must be in [1, {n_train}], got {batch_size}")
    if isinstance(model, BPSequential):
        config = dict(config or {}, model=model.config(), epochs=epochs, batch_size=batch_size,
                      full_batch=full_batch, tau_max=tau_max, r_step=r_step, seed=seed,
                      dataset_name=data.name, device=str(model.device), dtype=str(model.dtype),
                      method=trainer.method)
        if ramps:  # only then, so that runs from before ramps existed still resume
            config["ramps"] = [asdict(ramp) for ramp in ramps]
        if average_from is not None:  # likewise
            config["average_from"] = average_from
    data_parallel = DataParallel.current()
    world_size = data_parallel.world_size if data_parallel else 1
    config = dict(config or {}, world_size=world_size,
                  backend=data_parallel.backend if data_parallel else None)
    if data_parallel:
        if batch_size < world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than the world size {world_size}: "
                             "every rank needs at least one sample of each mini-batch")
        data_parallel.check_same("(seed, batch size, epochs, training-set size)",
                                 (seed, batch_size, epochs, n_train))
        trainer.distribute(data_parallel)
    is_main = data_parallel is None or data_parallel.is_main

    if resume and not run_dir:
        raise ValueError("resume=True needs run_dir")
    start_epoch = 0
    if resume:
        state = load_checkpoint(os.path.join(run_dir, CHECKPOINT), map_location=device)
        saved_world = (state.get("config") or {}).get("world_size", 1)
        if saved_world != world_size:
            raise ValueError(f"{run_dir} was trained with {saved_world} data-parallel "
                             f"process(es); resume it with the same number, not {world_size}")
        check_resume_config(state.get("config") or {}, config, run_dir)
        trainer.load_state_dict(state["trainer"])
        start_epoch = state["epoch"]
    log = RunLog(run_dir, config, resume=resume, overwrite=overwrite) if run_dir and is_main else None
    if log and resume:
        log.truncate(start_epoch)
    rows = list(log.rows) if log else []
    progress = progress and is_main

    n_batches = n_train // batch_size
    for epoch in range(start_epoch + 1, epochs + 1):
        order = epoch_permutation(n_train, seed, epoch).to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.begin_epoch(epoch)
        stats = []
        bar = tqdm(range(n_batches), desc=f"{trainer.method} epoch {epoch}/{epochs}",
                   disable=not progress, leave=False, unit="batch")
        for j in bar:
            idx = order[j * batch_size:(j + 1) * batch_size]
            if data_parallel:
                idx = data_parallel.shard(idx)
            stats.append(trainer.step(data.train_x[idx], data.train_y[idx]))
        _synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        row = {"epoch": epoch, "method": trainer.method}
        row.update(trainer.evaluate(data, epoch, batch_size))
        row.update(seconds=seconds, cpu_seconds=cpu_seconds,
                   peak_mem_bytes=(torch.cuda.max_memory_allocated(device)
                                   if device.type == "cuda" else None))
        row.update(trainer.epoch_metrics(stats))
        if extra_eval is not None:
            row.update(extra_eval())
        state = trainer.state_dict()
        check_finite(row, state, epoch, run_dir)
        rows.append(row)
        if progress:
            bayes = (f", Bayes test {100 * row['test_error_bayes']:.2f}%"
                     if row["test_error_bayes"] is not None else "")
            test = f"{100 * row['test_error']:.2f}%" if row["test_error"] is not None else "-"
            tqdm.write(f"{trainer.method} epoch {epoch}: train {100 * row['train_error']:.2f}%, "
                       f"test {test}{bayes}, {seconds:.1f} s")
        if log:
            log.log(row)
            log.save_checkpoint({"epoch": epoch, "config": config, "trainer": state})
    if log and rows:
        log.plot(title=trainer.method)
    return rows


def load_model(checkpoint_path: str, device=None,
               average: bool = False) -> tuple[BPSequential, dict]:
    """Rebuilds a trained message-passing model from a checkpoint written by :func:`fit`;
    with ``average``, the network of its posterior average (a run with ``average_from``).
    Returns (model, checkpoint)."""
    state = load_checkpoint(checkpoint_path, map_location=device or "cpu")
    trainer_state = state.get("trainer") if isinstance(state, dict) else None
    if not isinstance(trainer_state, dict) or "model_config" not in trainer_state:
        raise ValueError(f"{checkpoint_path} is not a bpkernels message-passing checkpoint")
    sd = trainer_state["state_dict"]
    dtype = next(v for k, v in sd.items() if k.endswith("field")).dtype
    model = BPSequential.from_config(trainer_state["model_config"], dtype=dtype, device=device)
    load_model_state(model, trainer_state)
    if average:
        if not trainer_state.get("average", {}).get("count"):
            raise ValueError(f"{checkpoint_path} holds no posterior average: train with "
                             "average_from (--average-from) and past that epoch")
        posterior_average = PosteriorAverage(model)
        posterior_average.load_state_dict(trainer_state["average"])
        model = posterior_average.network()
    return model, state
