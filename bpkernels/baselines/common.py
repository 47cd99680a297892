r"""The trainer side of the gradient baselines (docs/baselines.md §1, §7); the network they
train is :mod:`bpkernels.baselines.binarynet`.

* Learning-rate schedules and BinaryNet's per-layer step scale.
* ``reestimated_bn``: batch-norm statistics of the evaluation network (§1.4, Decision 4).
* ``BaselineTrainer`` (one per method): the :class:`bpkernels.train.Trainer` of a BinaryNet
  (step, evaluation, epoch metrics, state), trained by the harness's one loop
  :func:`bpkernels.train.fit` (seeded shuffles shared with message passing, run folder,
  checkpoints, resumption).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Iterator

import torch
from torch import Tensor, nn

from ..arch import LayerSpec
from ..data import Dataset
from .binarynet import (LOSSES, BinaryNet, error_rate, message_passing_masks, mlp_layers,
                        probabilities, sign_pm)

SCHEDULES = ("geometric", "cosine", "constant")


# ----------------------------------------------------------------------------------------
# Learning-rate schedules

def schedule_factor(kind: str, step: int, total: int, lr: float, lr_end: float) -> float:
    """Learning-rate multiplier after ``step`` of ``total`` steps, from lr to lr_end.

    geometric: (lr_end/lr)^{t/T};  cosine: [lr_end + (lr − lr_end)(1 + cos πt/T)/2]/lr;
    constant (or lr = 0): 1.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind == "constant" or lr == 0:
        return 1.0
    frac = min(step, total) / max(total, 1)
    if kind == "geometric":
        if lr_end <= 0 or lr <= 0:
            raise ValueError(f"a geometric schedule needs lr, lr_end > 0, got {lr}, {lr_end}")
        return (lr_end / lr) ** frac
    return (lr_end + (lr - lr_end) * 0.5 * (1 + math.cos(math.pi * frac))) / lr


def glorot_factor(n_in: int, n_out: int) -> float:
    """c = (1.5/(n_in + n_out))^{−1/2}, BinaryNet's per-layer step scale (§2.4)."""
    return (1.5 / (n_in + n_out)) ** -0.5


# ----------------------------------------------------------------------------------------
# Evaluation

@contextlib.contextmanager
def reestimated_bn(model: BinaryNet, x: Tensor, weights: list[Tensor],
                   batch_size: int) -> Iterator[None]:
    """Within the block, BN running statistics are those of the network with ``weights``
    (deterministic activations), re-estimated as cumulative averages over the full mini-batches
    of x [M, n_0] (one batch of all M if M < batch_size) (§1.4); on exit the training
    statistics and momenta are restored."""
    norms = list(model.norms)
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(),
              bn.momentum) for bn in norms]
    was_training = model.training
    try:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            for i in range(0, max(x.shape[0] - batch_size, 0) + 1, batch_size):
                model(x[i:i + batch_size], weights)
        model.eval()
        yield
    finally:
        for bn, (mean, var, count, momentum) in zip(norms, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
            bn.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def outputs(model: BinaryNet, x: Tensor, weights: list[Tensor], act_noise: bool = False,
            chunk: int = 10_000) -> Tensor:
    """Logits [P, n_L] of x [P, n_0] in evaluation mode (BN running statistics), in chunks."""
    model.eval()
    return torch.cat([model(x[i:i + chunk], weights, act_noise)
                      for i in range(0, x.shape[0], chunk)])


def _subset(n: int, size: int | None, seed: int, device) -> Tensor | None:
    """A fixed seeded subset of range(n) of the given size (None: all)."""
    if size is None or size >= n:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:size].to(device)


# ----------------------------------------------------------------------------------------
# Trainers and the training loop

COMMON_DEFAULTS = dict(
    loss="ce", activation="sign", proxy="hardtanh", proxy_scale=1.0, stochastic_acts=False,
    batch_norm=True, bn_affine=True, bn_eps=1e-4, bn_momentum=0.1, dropout_in=0.0,
    dropout_hidden=0.0,
    # Sparse layers: fixed masks of this density, the ones message passing draws with the same
    # seed (message_passing_masks); None: dense.
    density=None,
    # Evaluation: BN re-estimation of the evaluation network over bn_examples training examples
    # when it differs from the training network; evaluation forward passes in chunks.
    reestimate_bn=True, bn_examples=20_000, eval_chunk=10_000,
)

# Options of the methods with a weight distribution (B, C): MC predictions with mc_samples
# sampled networks averaging probabilities ("probs") or logits ("logits", the BayesBiNN
# repository's choice), the MC train error on mc_train_examples training examples (None: all).
MC_DEFAULTS = dict(mc_samples=16, mc_average="probs", mc_train_examples=10_000)


class BaselineTrainer:
    """One gradient trainer of a BinaryNet: subclasses define the update (``train_step``), the
    evaluation weights and, for Bayesian methods, a weight sampler.

    Args:
        layers: layer widths [n_0, ..., n_L] (an MLP), or LayerSpecs (``parse_arch``).  binary: ±1 labels with one output unit.
        n_train: training-set size N.  total_steps: optimiser steps of the whole run (schedules).
        seed: seed of initialisation, noise and evaluation draws.
        options: the method's options (``DEFAULTS`` keys) after preset resolution.
    """

    method = ""
    DEFAULTS: dict = {}
    PRESETS: dict[str, dict] = {}

    def __init__(self, layers: list[int] | list[LayerSpec], binary: bool, n_train: int, total_steps: int,
                 seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32, **options):
        unknown = set(options) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown {self.method} options {sorted(unknown)}; "
                            f"valid: {sorted(self.DEFAULTS)}")
        self.opt = {**self.DEFAULTS, **options}
        if self.opt["loss"] not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.opt['loss']!r}")
        if self.opt.get("mc_average", "probs") not in ("probs", "logits"):
            raise ValueError("mc_average must be 'probs' or 'logits', "
                             f"got {self.opt['mc_average']!r}")
        if all(isinstance(n, int) for n in layers):
            layers = mlp_layers(list(layers))
        self.layers, self.binary, self.n_train = list(layers), binary, n_train
        self.total_steps, self.seed = total_steps, seed
        self.device = torch.device(device)
        o = self.opt
        masks = None if o["density"] is None else message_passing_masks(
            [layer.weight_shape for layer in self.layers], o["density"], seed)
        self.model = BinaryNet(self.layers, o["activation"], o["proxy"], o["proxy_scale"],
                               o["batch_norm"], o["bn_affine"], o["bn_eps"], o["bn_momentum"],
                               o["dropout_in"], o["dropout_hidden"], masks, self.device, dtype)
        # The module the training forward passes go through: the model, or its
        # DistributedDataParallel wrapper in a data-parallel run (distribute).
        self.network: nn.Module = self.model
        self.generator = torch.Generator(self.device).manual_seed(seed * 1_000_003 + 1)
        self.model.generator = self.generator
        self.prev_signs: list[Tensor] | None = None

    # -- to be defined by the methods
    def init_fields(self, gen: torch.Generator) -> list[Tensor]:
        """Initial binary-weight state, drawn on the CPU with gen (same on every device)."""
        raise NotImplementedError

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One optimiser step on the mini-batch x [B, n_0], y [B]; returns the detached loss."""
        raise NotImplementedError

    def eval_weights(self) -> list[Tensor]:
        """±1 weights of the point-wise evaluation network."""
        return [sign_pm(f.detach()) for f in self.model.fields]

    def sample_weights(self, gen: torch.Generator) -> list[Tensor]:
        """One sample of the weights for MC predictions (Bayesian methods)."""
        raise NotImplementedError

    @property
    def training_is_stochastic(self) -> bool:
        """True when the training forward passes differ from the evaluation network (then BN is
        re-estimated for the evaluation network, Decision 4)."""
        return self.opt["stochastic_acts"]

    def lr(self) -> float:
        """Current learning rate of the binary-weight state (logged)."""
        raise NotImplementedError

    def extra_metrics(self) -> dict:
        """Method-specific per-epoch metrics; called once per epoch after training."""
        return {}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "generator": self.generator.get_state(),
                "prev_signs": self.prev_signs}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"].cpu())
        self.prev_signs = state["prev_signs"]

    # -- the Trainer protocol of bpkernels.train.fit
    def prepare(self, data: Dataset) -> Dataset:
        return data.to(device=self.device)

    def begin_epoch(self, epoch: int) -> None:
        """Nothing: the learning-rate schedules run on the step count."""

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        return self.train_step(x, y)

    def begin_task(self, task: int) -> None:
        """A new task of a sequence (continual learning); methods override what they reset."""

    @torch.no_grad()
    def test_error(self, x: Tensor, y: Tensor) -> float:
        """Point-wise error of the evaluation network (training BN statistics) on (x, y)."""
        logits = outputs(self.model, x, self.eval_weights(), chunk=self.opt["eval_chunk"])
        return error_rate(logits, y, self.binary)

    def distribute(self, data_parallel) -> None:
        """Data-parallel training with DistributedDataParallel: gradients averaged over the
        ranks' shards, BN statistics broadcast from rank 0."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def epoch_metrics(self, stats: list[Tensor]) -> dict:
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        for loss in stats:
            loss_sum += loss
        return dict(train_loss=float(loss_sum) / max(len(stats), 1), lr=self.lr(),
                    **self.extra_metrics())

    # -- shared
    def _initialise(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for field, init in zip(self.model.fields, self.init_fields(gen)):
                field.copy_(init)
        self.prev_signs = [w >= 0 for w in self.eval_weights()]

    def field_summary(self) -> dict:
        """Median |field| and fraction of fields with |field| < 1 (B, C posterior summary)."""
        flat = torch.cat([f.detach().abs().flatten() for f in self.model.fields])
        return {"median_abs_field": float(flat.median()),
                "frac_abs_field_lt1": float((flat < 1).double().mean())}

    @torch.no_grad()
    def evaluate(self, data: Dataset, epoch: int, batch_size: int) -> dict:
        """Point-wise errors (BN re-estimated for the evaluation network when training was
        stochastic, plus the test error with the training statistics) and, with mc_samples > 0,
        MC-averaged errors with the training BN statistics."""
        o, model = self.opt, self.model
        chunk = o["eval_chunk"]
        weights = self.eval_weights()
        signs = [w >= 0 for w in weights]
        flips = sum(int((s != p).sum()) for s, p in zip(signs, self.prev_signs))
        row: dict = {"flip_ratio": flips / sum(s.numel() for s in signs)}
        self.prev_signs = signs
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            if self.training_is_stochastic and o["reestimate_bn"] and len(model.norms):
                row["test_error_train_bn"] = error_rate(
                    outputs(model, data.test_x, weights, chunk=chunk), data.test_y, self.binary)
                idx = _subset(data.train_x.shape[0], o["bn_examples"], self.seed + 2,
                              data.train_x.device)
                t_bn = time.perf_counter()
                stack.enter_context(reestimated_bn(
                    model, data.train_x if idx is None else data.train_x[idx], weights, batch_size))
                row["bn_seconds"] = time.perf_counter() - t_bn
            row["train_error"] = error_rate(outputs(model, data.train_x, weights, chunk=chunk),
                                            data.train_y, self.binary)
            row["test_error"] = error_rate(outputs(model, data.test_x, weights, chunk=chunk),
                                           data.test_y, self.binary)
        row["train_error_bayes"] = row["test_error_bayes"] = None
        if o.get("mc_samples", 0) > 0:
            row.update(self._mc_errors(data, epoch))
        row["eval_seconds"] = time.perf_counter() - t0
        return row

    def _mc_errors(self, data: Dataset, epoch: int) -> dict:
        # p̄ = (1/K) Σ_k softmax(z^(k)) (or mean logits), with K sampled networks shared by the
        # train subset and the test set.
        o = self.opt
        gen = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + 500_009 + epoch)
        idx = _subset(data.train_x.shape[0], o["mc_train_examples"], self.seed + 3,
                      data.train_x.device)
        x_tr, y_tr = data.train_x, data.train_y
        if idx is not None:
            x_tr, y_tr = x_tr[idx], y_tr[idx]
        noisy = o["stochastic_acts"]
        saved_gen, self.model.generator = self.model.generator, gen
        try:
            acc_tr = acc_te = 0
            for _ in range(o["mc_samples"]):
                weights = self.sample_weights(gen)
                z_tr = outputs(self.model, x_tr, weights, noisy, o["eval_chunk"])
                z_te = outputs(self.model, data.test_x, weights, noisy, o["eval_chunk"])
                if o["mc_average"] == "probs":
                    z_tr, z_te = probabilities(z_tr, self.binary), probabilities(z_te, self.binary)
                acc_tr, acc_te = acc_tr + z_tr, acc_te + z_te
        finally:
            self.model.generator = saved_gen
        threshold = 0.5 * o["mc_samples"] if o["mc_average"] == "probs" else 0.0
        return {"train_error_bayes": error_rate(acc_tr, y_tr, self.binary, threshold),
                "test_error_bayes": error_rate(acc_te, data.test_y, self.binary, threshold)}
