r"""Shared parts of the gradient baselines (docs/baselines.md §1, §7).

* Sign and straight-through primitives: ``sign_pm`` (sign(0) = +1, Decision 1), ``SignSTE``
  (forward sign(a − z), backward × κ(a)) and ``WeightSTE`` (forward sign(state − z), backward
  identity), both autograd Functions acting on the state tensor (§1.3).
* ``BinaryNet``: bias-free dense or convolutional layers of binary weights, batch norm after
  every layer (output included), sign (or ReLU) activations; the binary weights are *passed in* by the trainer, so
  one module serves the latent weights of A, the fields λ of B and η of C.
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
import torch.nn.functional as F
from torch import Tensor, nn

from ..arch import LayerSpec
from ..data import Dataset

PROXIES = ("hardtanh", "tanh", "erf", "identity")
LOSSES = ("ce", "sqhinge")
SCHEDULES = ("geometric", "cosine", "constant")


# ----------------------------------------------------------------------------------------
# Sign and straight-through primitives (§1.3)

def sign_pm(x: Tensor) -> Tensor:
    """sign with sign(0) = +1, in x's dtype (torch.sign(0) = 0 is never used)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def proxy_derivative(a: Tensor, proxy: str, scale: float) -> Tensor:
    """κ(a) = d/da E_z[sign(a − z)] for the noise of ``proxy`` with scale s (§1.3 table)."""
    if proxy == "hardtanh":
        # z ~ U[−s, s]: κ = 1{|a| ≤ s}/s
        return (a.abs() <= scale).to(a.dtype) / scale
    if proxy == "tanh":
        # z ~ Logistic(0, s): κ = sech²(a/2s)/(2s), with sech²x = 4e^{−2|x|}/(1 + e^{−2|x|})²
        e = torch.exp(-a.abs() / scale)
        return 2 * e / (scale * (1 + e) ** 2)
    if proxy == "erf":
        # z ~ N(0, s²): κ = (2/s) φ(a/s)
        return (2 / (scale * math.sqrt(2 * math.pi))) * torch.exp(-0.5 * (a / scale) ** 2)
    if proxy == "identity":
        return torch.ones_like(a)
    raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")


def logistic_noise(shape: torch.Size, scale: float, generator: torch.Generator | None,
                   device, dtype) -> Tensor:
    """z ~ Logistic(0, s): z = s ln(u/(1 − u)), u ~ U[0, 1); u = 0 gives z = −∞ (no NaN)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return torch.logit(u).mul_(scale)


def activation_noise(shape: torch.Size, proxy: str, scale: float,
                     generator: torch.Generator | None, device, dtype) -> Tensor:
    """A sample of the activation noise whose mean sign is the proxy (§1.3, §4.1)."""
    if proxy == "hardtanh":
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return scale * (2 * u - 1)
    if proxy == "tanh":
        return logistic_noise(shape, scale, generator, device, dtype)
    if proxy == "erf":
        return scale * torch.randn(shape, generator=generator, device=device, dtype=dtype)
    raise ValueError(f"the {proxy!r} proxy has no noise distribution (stochastic activations "
                     "need hardtanh, tanh or erf)")


class SignSTE(torch.autograd.Function):
    """h = sign(a − z) forward (z = 0 when None); backward ∂ℓ/∂a = ∂ℓ/∂h · κ(a), evaluated at the
    pre-noise argument a (§4.7)."""

    @staticmethod
    def forward(ctx, a: Tensor, z: Tensor | None, proxy: str, scale: float) -> Tensor:
        ctx.save_for_backward(a)
        ctx.proxy, ctx.scale = proxy, scale
        return sign_pm(a if z is None else a - z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (a,) = ctx.saved_tensors
        return grad * proxy_derivative(a, ctx.proxy, ctx.scale), None, None, None


class WeightSTE(torch.autograd.Function):
    """W = sign(state − z_w) forward (z_w = 0 when None); backward passes ∂ℓ/∂W to the state
    unchanged (§1.3): the trainer decides what the binary-weight gradient does."""

    @staticmethod
    def forward(ctx, state: Tensor, z: Tensor | None) -> Tensor:
        return sign_pm(state if z is None else state - z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


# ----------------------------------------------------------------------------------------
# Network

def mlp_layers(sizes: list[int]) -> list[LayerSpec]:
    """The dense layers [n_0] -> [n_1] -> ... -> [n_L] as LayerSpecs."""
    return [LayerSpec("dense", (n_out, n_in), 1, 0, (n_in,), (n_out,), False)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def message_passing_masks(weight_shapes: list[tuple[int, ...]], density: float,
                          seed: int) -> list[Tensor]:
    """The fixed 0/1 masks (float64) that the message-passing layers of a network with these
    weight shapes draw for ``density`` and ``seed`` (``bpkernels.arch.mlp`` / ``build_arch``):
    one generator seeded with ``seed``; per layer, in order, the initial fields N(0, 1) and
    then mask = 1{U[0, 1) < density}."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for shape in weight_shapes:
        torch.randn(shape, generator=gen, dtype=torch.float64)  # the layer's initial fields
        masks.append((torch.rand(shape, generator=gen, dtype=torch.float64) < density).double())
    return masks


def fans(weight_shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan-in, fan-out) of a dense [N, D] or conv [K, C, kh, kw] weight."""
    receptive = math.prod(weight_shape[2:])
    return weight_shape[1] * receptive, weight_shape[0] * receptive


class BinaryNet(nn.Module):
    r"""Bias-free network of binary weights, dense or convolutional layers:
    a^ℓ = W^ℓ ⋆ h^{ℓ−1} (matrix product, or a 2-D convolution with the layer's stride and zero
    padding), â^ℓ = BN(a^ℓ) (BatchNorm1d, or BatchNorm2d over channels), h^ℓ = φ(â^ℓ) for ℓ < L,
    logits z = â^L (§1.1). ``fields`` holds one real tensor per binary weight tensor ([n_ℓ, n_{ℓ−1}]
    or [K, C, kh, kw]: latent w, field λ or η, as the trainer interprets it); the forward pass
    takes the binary (or relaxed) weights explicitly.

    Args:
        layers: the weight layers (``bpkernels.conv.parse_arch``, or ``mlp_layers(sizes)``).
        activation: "sign" (straight-through with ``proxy``) or "relu".
        proxy, proxy_scale: κ of the sign activations and the scale s of their noise.
        batch_norm: BN after every layer; without it the pre-activations are scaled by
            1/√fan-in (the DeepMP paper's BinaryNet baseline).
        bn_affine, bn_eps, bn_momentum: BatchNorm settings.
        dropout_in, dropout_hidden: dropout on the input and after each hidden activation.
        masks: fixed 0/1 masks of the weights (one per layer, each of its weight's shape; None:
            dense): every forward pass uses W·mask, so masked weights neither act nor learn.
    """

    def __init__(self, layers: list[LayerSpec], activation: str = "sign", proxy: str = "hardtanh",
                 proxy_scale: float = 1.0, batch_norm: bool = True, bn_affine: bool = True,
                 bn_eps: float = 1e-4, bn_momentum: float = 0.1, dropout_in: float = 0.0,
                 dropout_hidden: float = 0.0, masks: list[Tensor] | None = None, device=None,
                 dtype=None):
        super().__init__()
        if activation not in ("sign", "relu"):
            raise ValueError(f"activation must be 'sign' or 'relu', got {activation!r}")
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")
        self.layers = list(layers)
        self.activation, self.proxy, self.proxy_scale = activation, proxy, proxy_scale
        self.dropout_in, self.dropout_hidden = dropout_in, dropout_hidden
        factory = dict(device=device, dtype=dtype)
        self.fields = nn.ParameterList(
            [nn.Parameter(torch.zeros(layer.weight_shape, **factory)) for layer in self.layers])
        norm = {"dense": nn.BatchNorm1d, "conv": nn.BatchNorm2d}
        self.norms = nn.ModuleList(
            [norm[layer.kind](layer.weight_shape[0], eps=bn_eps, momentum=bn_momentum,
                              affine=bn_affine, **factory)
             for layer in self.layers] if batch_norm else [])
        if masks is not None:
            if len(masks) != len(self.layers) or any(
                    tuple(m.shape) != layer.weight_shape for m, layer in zip(masks, self.layers)):
                raise ValueError("masks needs one mask of each layer's weight shape "
                                 f"{[layer.weight_shape for layer in self.layers]}")
            for i, mask in enumerate(masks):
                self.register_buffer(f"mask_{i}", mask.to(**factory))
        self.has_masks = masks is not None
        # Source of activation noise and dropout masks; set by the trainer.
        self.generator: torch.Generator | None = None

    def real_parameters(self) -> list[nn.Parameter]:
        """Parameters that are not binary-weight state (BN γ, β)."""
        return list(self.norms.parameters())

    def _dropout(self, h: Tensor, p: float) -> Tensor:
        keep = torch.rand(h.shape, generator=self.generator, device=h.device, dtype=h.dtype) >= p
        return h * keep.to(h.dtype) / (1 - p)

    def forward(self, x: Tensor, weights: list[Tensor], act_noise: bool = False,
                dropout: bool = False) -> Tensor:
        """x [B, n_0] (flat, as the datasets hold images, or [B, C, H, W]), weights[ℓ] of
        ``fields[ℓ]``'s shape → logits [B, n_L].

        act_noise: sample h = sign(â − z) with the proxy's noise (stochastic binary network).
        dropout: apply the dropout masks (training passes only).
        """
        h = x
        if dropout and self.dropout_in > 0:
            h = self._dropout(h, self.dropout_in)
        last = len(weights) - 1
        for i, (layer, w) in enumerate(zip(self.layers, weights)):
            if self.has_masks:
                w = w * getattr(self, f"mask_{i}")
            if layer.kind == "conv":
                a = F.conv2d(h.view(h.shape[0], *layer.in_shape), w, stride=layer.stride,
                             padding=layer.padding)
            else:
                a = F.linear(h.flatten(1), w)
            a = self.norms[i](a) if len(self.norms) else a / math.sqrt(fans(w.shape)[0])
            if i == last:
                return a
            if self.activation == "relu":
                h = torch.relu(a)
            else:
                z = (activation_noise(a.shape, self.proxy, self.proxy_scale, self.generator,
                                      a.device, a.dtype) if act_noise else None)
                h = SignSTE.apply(a, z, self.proxy, self.proxy_scale)
            if dropout and self.dropout_hidden > 0:
                h = self._dropout(h, self.dropout_hidden)
        raise ValueError("weights is empty")


def loss_fn(z: Tensor, y: Tensor, binary: bool, kind: str = "ce") -> Tensor:
    """Mean mini-batch loss of logits z [B, K] (K = 1 for ±1 labels y [B]; else class indices).

    ce: cross-entropy (softplus(−y z) for one output unit).
    sqhinge: squared hinge mean_{n,k} max(0, 1 − t_nk z_nk)², t = ±1 one-hot (BinaryNet).
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if binary:
        margin = y.to(z.dtype) * z[:, 0]
        return F.softplus(-margin).mean() if kind == "ce" else torch.relu(1 - margin).pow(2).mean()
    if kind == "ce":
        return F.cross_entropy(z, y)
    t = 2 * F.one_hot(y, z.shape[1]).to(z.dtype) - 1
    return torch.relu(1 - t * z).pow(2).mean()


def probabilities(z: Tensor, binary: bool) -> Tensor:
    """Logits [P, K] → class probabilities [P, K] (P(y = +1) [P, 1] for one output unit)."""
    return torch.sigmoid(z) if binary else torch.softmax(z, dim=1)


def error_rate(scores: Tensor, y: Tensor, binary: bool, threshold: float = 0.0) -> float:
    """Fraction misclassified from scores [P, K]: argmax, or +1 iff scores[:, 0] ≥ threshold
    (0 for logits, ½ for probabilities) for ±1 labels."""
    if binary:
        pred = sign_pm(scores[:, 0] - threshold)
        return float((pred != y.to(pred.dtype)).double().mean())
    return float((scores.argmax(dim=1) != y).double().mean())


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
