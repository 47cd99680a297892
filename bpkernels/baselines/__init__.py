"""Gradient-based baselines for binary networks, trained in the same harness as the
message-passing trainers (docs/baselines.md):

* ``"ste"``: STE BinaryNet (Courbariaux et al. 2016), :mod:`.ste`;
* ``"bayesbinn"``: BayesBiNN (Meng et al. 2020), :mod:`.bayesbinn`, with the
  :class:`BayesBiNN` optimiser;
* ``"st"``: principled straight-through for stochastic binary networks (Shekhovtsov & Yanush
  2021), :mod:`.st`.

Entry point: :func:`train_baseline`. Every method trains an MLP input → hidden… → output, or
the network of an architecture string (convolutions, ``bpkernels.arch.parse_arch``), of
binary weights with BN (10 output units and cross-entropy for a multi-class task, one unit
for ±1 labels) and returns the harness's metric rows.
"""

from __future__ import annotations

import math

import torch

from ..arch import parse_arch
from ..data import Dataset
from ..train import fit
from .bayesbinn import BayesBiNN, BayesBiNNTrainer, log_gumbel_scale
from .binarynet import BinaryNet, SignSTE, WeightSTE, proxy_derivative, sign_pm
from .common import BaselineTrainer, reestimated_bn
from .st import STTrainer
from .ste import STETrainer

TRAINERS: dict[str, type[BaselineTrainer]] = {"ste": STETrainer, "bayesbinn": BayesBiNNTrainer,
                                              "st": STTrainer}
BASELINE_METHODS = tuple(TRAINERS)


def method_options(method: str, preset: str | None = None, **options) -> dict:
    """The full option set of ``method``: its defaults, updated by ``preset`` and ``options``."""
    if method not in TRAINERS:
        raise ValueError(f"method must be one of {BASELINE_METHODS}, got {method!r}")
    cls = TRAINERS[method]
    if preset is not None and preset not in cls.PRESETS:
        raise ValueError(f"unknown preset {preset!r} for {method}; valid: {sorted(cls.PRESETS)}")
    unknown = set(options) - set(cls.DEFAULTS)
    if unknown:
        raise TypeError(f"unknown {method} options {sorted(unknown)}; "
                        f"valid: {sorted(cls.DEFAULTS)}")
    return {**cls.DEFAULTS, **(cls.PRESETS[preset] if preset else {}), **options}


def train_baseline(method: str, data: Dataset, hidden: list[int] | None, epochs: int,
                   batch_size: int = 128, seed: int = 0, device="cpu", run_dir: str | None = None,
                   progress: bool = True, resume: bool = False, preset: str | None = None,
                   arch: str | None = None, input_shape: tuple[int, ...] = (1, 28, 28),
                   overwrite: bool = False, **method_options_) -> list[dict]:
    """Trains one gradient baseline on ``data`` and returns one metrics row per epoch.

    Args:
        method: "ste", "bayesbinn" or "st".
        data: the dataset (moved to ``device`` once; its dtype is the training dtype).
        hidden: hidden widths; the network is [D] + hidden + [10-class: num_classes, ±1: 1].
        arch: instead of hidden, an architecture string (``bpkernels.conv.build_arch``'s
            grammar, e.g. "conv32k5s2p2-conv64k3s2p1-dense10") over images ``input_shape``.
        epochs: epochs of the run (learning-rate schedules span them; the total when resuming).
        batch_size: B; ⌊N/B⌋ mini-batches per epoch in the message-passing trainer's seeded
            order.
        seed: seed of the shuffles, the initialisation, the noise and the MC draws.
        run_dir: write config.json, metrics.jsonl, checkpoint.pt (every epoch) and errors.png.
        resume: continue from run_dir/checkpoint.pt (same arguments as the interrupted run).
        preset: a named recipe of the method (``TRAINERS[method].PRESETS``).
        method_options_: the method's options (``TRAINERS[method].DEFAULTS``), over the preset.

    Rows: epoch, method, train_error, test_error (point-wise network: A sign w; B mode sign λ
    and C sign η, both with BN re-estimated), train_error_bayes, test_error_bayes (MC average
    for B and C; None for A), seconds (training only), cpu_seconds, peak_mem_bytes (CUDA, else
    None), train_loss, lr, eval_seconds, flip_ratio, and where they apply test_error_train_bn
    (point-wise with the training BN statistics), bn_seconds, median_abs_field,
    frac_abs_field_lt1, clamp_events.
    """
    n_train = data.train_x.shape[0]
    if not 1 <= batch_size <= n_train:
        raise ValueError(f"batch_size must be in [1, {n_train}], got {batch_size}")
    trainer = make_trainer(method, data, hidden, epochs * (n_train // batch_size), seed, device,
                           preset, arch, input_shape, **method_options_)
    config = dict(method=method, preset=preset, options=trainer.opt, arch=arch,
                  sizes=None if arch else mlp_sizes(data, hidden), epochs=epochs,
                  batch_size=batch_size, seed=seed, dataset=data.name, n_train=n_train,
                  device=str(trainer.device), dtype=str(data.train_x.dtype), torch=str(torch.__version__))
    return fit(trainer, data, epochs, batch_size, seed=seed, run_dir=run_dir, config=config,
               resume=resume, progress=progress, overwrite=overwrite)


def mlp_sizes(data: Dataset, hidden: list[int]) -> list[int]:
    """[D, *hidden, outputs]: 10-class tasks num_classes outputs, ±1 labels one."""
    return [data.train_x.shape[1], *hidden, 1 if data.binary else data.num_classes]


def make_trainer(method: str, data: Dataset, hidden: list[int] | None, total_steps: int,
                 seed: int = 0, device="cpu", preset: str | None = None, arch: str | None = None,
                 input_shape: tuple[int, ...] = (1, 28, 28), method_name: str | None = None,
                 **method_options_) -> BaselineTrainer:
    """The trainer of one gradient baseline for ``data`` (see :func:`train_baseline`), its
    schedules spanning ``total_steps`` optimiser steps; ``method_name`` labels its rows."""
    options = method_options(method, preset, **method_options_)
    if arch is not None:
        if math.prod(input_shape) != data.train_x.shape[1]:
            raise ValueError(f"arch {arch!r} expects {list(input_shape)} images, but the examples "
                             f"have {data.train_x.shape[1]} features")
        layers = parse_arch(arch, 2 if data.binary else data.num_classes, input_shape)
    else:
        layers = mlp_sizes(data, hidden)
    trainer = TRAINERS[method](layers, data.binary, data.train_x.shape[0], total_steps, seed,
                               torch.device(device), data.train_x.dtype, **options)
    if method_name:
        trainer.method = method_name
    return trainer


__all__ = ["BASELINE_METHODS", "TRAINERS", "BaselineTrainer", "BayesBiNN", "BayesBiNNTrainer",
           "BinaryNet", "STETrainer", "STTrainer", "SignSTE", "WeightSTE",
           "log_gumbel_scale", "make_trainer", "method_options", "proxy_derivative", "reestimated_bn", "sign_pm",
           "train_baseline"]
