r"""Trainer A — STE BinaryNet (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio 2016; spec
docs/baselines.md §2).

Latent real weights w ∈ [−H, H] (H = 1, initialised U(−H, H)); the forward pass uses
W = sign(w), sign activations with the hard-tanh straight-through gradient, BN after every
layer (output included), no biases. The gradient with respect to the binary weight is handed
to the latent weight unchanged; Adam steps w with a per-layer Glorot-scaled learning rate and w
is clipped back to [−H, H] after every step (plain SGD instead of Adam with
``optimizer="sgd"``). BN parameters get Adam with the unscaled rate. Learning rates decay per
step from ``lr`` to ``lr_end`` over the run.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from .binarynet import WeightSTE, fans, loss_fn
from .common import COMMON_DEFAULTS, BaselineTrainer, glorot_factor, schedule_factor

OPTIMIZERS = ("adam", "sgd")


class STETrainer(BaselineTrainer):
    """STE BinaryNet. Options (``DEFAULTS``, library defaults of §2.5 for MNIST-like MLPs):

    lr, lr_end, schedule: learning rate η_0 → η_E over the run ("geometric" per step,
        "cosine" or "constant").
    glorot: scale the binary layers' learning rate by c_ℓ = (1.5/(n_in + n_out))^{−1/2}.
    init: latent weights U(−init, init), or "glorot": U(−a, a) with a = √(6/(n_in + n_out))
        per layer (Xavier).  clip: H, clip w to [−H, H] after each step (None: off).
    optimizer: "adam" (betas, eps) or "sgd" (plain SGD) on the latent weights.
    meta: metaplasticity m (0: off; see ``_metaplastic``).
    binary_weights: True (BinaryNet, W = sign(w)); False trains a float-weight network with
        sign activations (W = w in training and evaluation, same optimiser, clip and BN), the
        real-weight reference of the continuous-weight message passing (docs §4.7).
    Plus the network and evaluation options of ``COMMON_DEFAULTS``.
    Preset ``binarynet-mnist``: the paper's MNIST recipe (squared hinge, dropout 0.2/0.5,
    3e-3 → 3e-7); the paper's batch 100, [−1, 1] inputs and 4096-unit layers are harness
    settings.
    Preset ``binarynet-deepmp``: the BinaryNet baseline of the DeepMP paper (docs/algorithms.md
    §5.3): no BN, preactivations scaled by 1/√fan-in, cross-entropy, plain SGD at a constant
    learning rate 10, latent weights Xavier-initialised and clipped to [−1, 1].
    """

    method = "ste"
    DEFAULTS = {**COMMON_DEFAULTS, "lr": 3e-4, "lr_end": 3e-6, "schedule": "geometric",
                "glorot": True, "init": 1.0, "clip": 1.0, "betas": (0.9, 0.999), "eps": 1e-8,
                "meta": 0.0, "optimizer": "adam", "binary_weights": True}
    PRESETS = {"binarynet-mnist": dict(loss="sqhinge", dropout_in=0.2, dropout_hidden=0.5,
                                       lr=3e-3, lr_end=3e-7),
               # Laborieux et al. (2021), permuted-MNIST runs: metaplasticity m = 1.35, no clip
               "metaplastic": dict(meta=1.35, clip=None),
               "binarynet-deepmp": dict(batch_norm=False, loss="ce", optimizer="sgd", lr=10.0,
                                        schedule="constant", glorot=False, init="glorot",
                                        clip=1.0)}

    def __init__(self, *args, **kwargs):
        options = {**self.DEFAULTS, **kwargs}
        if options["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {options['optimizer']!r}")
        if options["init"] != "glorot" and not (isinstance(options["init"], (int, float))
                                                and options["init"] > 0):
            raise ValueError(f"init must be a positive number or 'glorot', got {options['init']!r}")
        super().__init__(*args, **kwargs)
        self._initialise()
        o = self.opt
        groups = [{"params": [f], "lr": o["lr"] * (glorot_factor(*fans(f.shape))
                                                   if o["glorot"] else 1.0)}
                  for f in self.model.fields]
        self.optimizers = [self._binary_optimizer(groups)]
        real = self.model.real_parameters()
        if real:
            self.optimizers.append(torch.optim.Adam(real, lr=o["lr"], betas=o["betas"],
                                                    eps=o["eps"], fused=True))
        self.schedulers = [LambdaLR(opt, lambda t: self._factor(t)) for opt in self.optimizers]

    def _factor(self, step: int) -> float:
        o = self.opt
        return schedule_factor(o["schedule"], step, self.total_steps, o["lr"], o["lr_end"])

    def _binary_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        if self.opt["optimizer"] == "sgd":
            # w ← w − c_ℓ η_t ∂ℓ/∂W
            return torch.optim.SGD(groups)
        return torch.optim.Adam(groups, betas=self.opt["betas"], eps=self.opt["eps"], fused=True)

    def init_fields(self, gen: torch.Generator) -> list[Tensor]:
        # w ~ U(−a, a): a = init, or a = √(6/(n_in + n_out)) (Xavier) for init = "glorot"
        init = self.opt["init"]
        return [(torch.rand(f.shape, generator=gen, dtype=torch.float64) * 2 - 1)
                * ((6 / sum(fans(f.shape))) ** 0.5 if init == "glorot" else init)
                for f in self.model.fields]

    def train_weights(self) -> list[Tensor]:
        """Weights of a training forward pass, W = sign(w) with identity backward (W = w
        when ``binary_weights`` is False)."""
        if not self.opt["binary_weights"]:
            return list(self.model.fields)
        return [WeightSTE.apply(f, None) for f in self.model.fields]

    def eval_weights(self) -> list[Tensor]:
        """The point-wise evaluation weights: ±1 (BinaryNet) or the float weights w."""
        if not self.opt["binary_weights"]:
            return [f.detach() for f in self.model.fields]
        return super().eval_weights()

    def objective(self, z: Tensor, y: Tensor) -> Tensor:
        """The minimised mini-batch objective given logits z [B, n_L] and labels y [B]."""
        return loss_fn(z, y, self.binary, self.opt["loss"])

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        self.model.train()
        z = self.network(x, self.train_weights(), act_noise=self.opt["stochastic_acts"],
                       dropout=True)
        loss = self.objective(z, y)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        before = [f.detach().clone() for f in self.model.fields] if self.opt["meta"] else None
        # Adam: m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g²,
        #       w ← clip(w − c_ℓ η_t m̂/(√v̂ + ε), −H, H);  SGD: w ← clip(w − c_ℓ η_t g, −H, H)
        for opt in self.optimizers:
            opt.step()
        if before is not None:
            self._metaplastic(before)
        if self.opt["clip"] is not None:
            with torch.no_grad():
                for f in self.model.fields:
                    f.clamp_(-self.opt["clip"], self.opt["clip"])
        for sched in self.schedulers:
            sched.step()
        return loss.detach()

    @torch.no_grad()
    def _metaplastic(self, before: list[Tensor]) -> None:
        """Metaplasticity (Laborieux et al. 2021): an update Δ that moves a hidden weight w_h
        toward zero (Δ·w_h < 0) is scaled by 1 − tanh²(m·w_h), so weights that grew large
        consolidate:  w_h ← w_h + Δ·f,  f = 1 − tanh²(m w_h) where Δ w_h < 0, else 1."""
        m = self.opt["meta"]
        for field, old in zip(self.model.fields, before):
            step = field - old
            shrink = step * old < 0
            field.copy_(old + torch.where(shrink, step * (1 - torch.tanh(m * old).square()), step))

    def begin_task(self, task: int) -> None:
        """A new task of a sequence: the learning-rate schedules start again (the optimiser
        state is kept: plain sequential fine-tuning)."""
        for sched in self.schedulers:
            sched.last_epoch = 0
            for group, factor in zip(sched.optimizer.param_groups, sched.lr_lambdas):
                group["lr"] = group["initial_lr"] * factor(0)

    def lr(self) -> float:
        return self.opt["lr"] * self._factor(self.schedulers[0].last_epoch)

    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "optimizers": [opt.state_dict() for opt in self.optimizers],
                "schedulers": [sched.state_dict() for sched in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        for sched, s in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(s)
