"""The message-passing trainer: posterior-as-prior mini-batch epochs over a dataset held as
tensors on the training device (spec §3), with per-epoch point-wise and Bayesian errors, a
metrics file, atomic checkpoints and exact resumption.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .data import Dataset
from .nn import BPSequential
from .runlog import RunLog


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch, a function of (seed, epoch) only, so that a resumed run draws
    exactly the batches of the uninterrupted one."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def evaluate(model: BPSequential, data: Dataset, bayes: bool = True) -> dict:
    """Point-wise (and Bayesian) train/test error of the model."""
    row = {
        "train_error": model.error(data.train_x, data.train_y),
        "test_error": model.error(data.test_x, data.test_y),
        "train_error_bayes": None,
        "test_error_bayes": None,
    }
    if bayes:
        row["train_error_bayes"] = model.error(data.train_x, data.train_y, mode="bayes")
        row["test_error_bayes"] = model.error(data.test_x, data.test_y, mode="bayes")
    return row


def _peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def fit(model: BPSequential, data: Dataset, epochs: int, batch_size: int | None = 128,
        tau_max: int = 1, r_step: float = 0.0, seed: int = 0, run_dir: str | None = None,
        config: dict | None = None, resume: bool = False, progress: bool = True,
        eval_bayes: bool = True, method: str | None = None) -> list[dict]:
    """Trains ``model`` by message passing and returns one metrics row per epoch.

    Args:
        model: a BPSequential (its device and dtype are the training device and dtype).
        data: the dataset; it is moved to the model's device once, as whole tensors.
        epochs: number of epochs (the total, when resuming).
        batch_size: mini-batch size B; each epoch is a seeded shuffle cut into ⌊P/B⌋ batches
            (the last partial batch dropped, as in the paper). None: full-batch mode, one
            batch of all P samples per epoch with no posterior-as-prior step (θ = 0), where
            tau_max inner iterations and internal reinforcement (layer r, r_step) do the work.
        tau_max: inner message-passing iterations per batch.  r_step: reinforcement schedule.
        seed: seed of the shuffles.
        run_dir: if given, writes config.json, metrics.jsonl, checkpoint.pt (after every
            epoch, atomically) and errors.png there.
        resume: continue from run_dir/checkpoint.pt; the result is bit-identical to the run
            that was not interrupted.
        eval_bayes: also compute the Bayesian errors each epoch.
    """
    first = model.bp_layers[0]
    device, dtype = first.field.device, first.field.dtype
    if model.num_classes != data.num_classes:
        raise ValueError(f"the model has {model.num_classes} output classes, the data "
                         f"{data.name} has {data.num_classes}")
    data = data.to(device=device, dtype=dtype)
    n_train = data.train_x.shape[0]
    full_batch = batch_size is None
    if full_batch:
        batch_size = n_train
    if not 1 <= batch_size <= n_train:
        raise ValueError(f"batch_size must be in [1, {n_train}], got {batch_size}")
    method = method or model.bp_layers[0].algo
    config = dict(config or {}, model=model.config(), epochs=epochs, batch_size=batch_size,
                  full_batch=full_batch, tau_max=tau_max, r_step=r_step, seed=seed,
                  dataset_name=data.name, device=str(device), dtype=str(dtype), method=method)

    log = RunLog(run_dir, config, resume=resume) if run_dir else None
    start_epoch = 0
    if resume:
        if log is None:
            raise ValueError("resume=True needs run_dir")
        state = torch.load(log.checkpoint_path, map_location=device, weights_only=False)
        load_training_state(model, state)
        start_epoch = state["epoch"]
        log.truncate(start_epoch)
    rows = list(log.rows) if log else []

    n_batches = n_train // batch_size
    for epoch in range(start_epoch + 1, epochs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        order = epoch_permutation(n_train, seed, epoch).to(device)
        deltas = []
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{epochs}", disable=not progress,
                   leave=False, unit="batch")
        for j in bar:
            idx = order[j * batch_size:(j + 1) * batch_size]
            deltas.append(model.bp_step(data.train_x[idx], data.train_y[idx], tau_max=tau_max,
                                        pasp=not full_batch, r_step=r_step))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        row = dict(epoch=epoch, method=method, **evaluate(model, data, eval_bayes),
                   seconds=seconds, peak_mem_bytes=_peak_memory(device),
                   delta=sum(deltas) / len(deltas))
        rows.append(row)
        if progress:
            bayes = (f", Bayes test {100 * row['test_error_bayes']:.2f}%"
                     if row["test_error_bayes"] is not None else "")
            tqdm.write(f"epoch {epoch}: train {100 * row['train_error']:.2f}%, "
                       f"test {100 * row['test_error']:.2f}%{bayes}, {seconds:.1f} s")
        if log:
            log.log(row)
            log.save_checkpoint(training_state(model, epoch, config))
    if log and rows:
        log.plot(title=method)
    return rows


def training_state(model: BPSequential, epoch: int, config: dict) -> dict:
    """Everything needed to rebuild the model and resume: architecture, buffers, the
    reinforcement state (layer r and the schedule counter) and the epoch."""
    return {
        "epoch": epoch,
        "config": config,
        "model_config": model.config(),
        "state_dict": model.state_dict(),
        "layer_r": [layer.r for layer in model.bp_layers],
        "reinforcement_calls": model.reinforcement_calls,
    }


def load_training_state(model: BPSequential, state: dict) -> None:
    model.load_state_dict(state["state_dict"])
    for layer, r in zip(model.bp_layers, state["layer_r"]):
        layer.r = r
    model.reinforcement_calls = state["reinforcement_calls"]


def load_model(checkpoint_path: str, device=None) -> tuple[BPSequential, dict]:
    """Rebuilds a trained model from a checkpoint written by :func:`fit`."""
    state = torch.load(checkpoint_path, map_location=device or "cpu", weights_only=False)
    if "model_config" not in state:
        raise ValueError(f"{checkpoint_path} is not a bpkernels message-passing checkpoint")
    sd = state["state_dict"]
    dtype = next(v for k, v in sd.items() if k.endswith("field")).dtype
    model = BPSequential.from_config(state["model_config"], dtype=dtype, device=device)
    load_training_state(model, state)
    return model, state
