r"""Trainer C — principled straight-through estimators for stochastic binary networks
(Shekhovtsov & Yanush, GCPR 2021; docs/baselines.md §4).

The network is a stochastic binary network: hidden units h = sign(â − z) with noise z of a
symmetric density p (scale s_a), weights W = sign(η − z_w) with weight noise F_w, so that
P(W = +1) = F_w(η). Gradients: at every sign activation the incoming gradient is multiplied by
κ(â) = 2p(â) = d/dâ E[h | â] (evaluated at the pre-noise â); the binary-weight gradient
∂ℓ̄/∂W is handed to η unchanged, which makes η the mirror-descent (dual) coordinate of the
weight means μ = 2F_w(η) − 1 (§4.3): logistic weight noise of scale ½ gives the entropic map,
η = atanh μ (the natural parameter, as B's λ); uniform noise on [−1, 1] the Euclidean map,
μ = clip(η, −1, 1). η is moved by Adam (default) or plain SGD (= mirror descent),
optionally with the variational KL pull of §4.3 and optionally clipped (Euclidean greedy
projection, which with deterministic forwards reproduces trainer A exactly).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .binarynet import WeightSTE, logistic_noise, sign_pm
from .common import MC_DEFAULTS
from .ste import STETrainer

WEIGHT_NOISES = ("logistic", "uniform", "none")


class STTrainer(STETrainer):
    """Principled ST. Options (``DEFAULTS``; library default sbn-logistic of §4.6):

    proxy, proxy_scale: activation noise family and scale s_a ("tanh" = logistic, "hardtanh"
        = uniform, "erf" = Gaussian); stochastic_acts: sample the activation noise in
        training (False: deterministic sign with the same κ).
    weight_noise: "logistic" (scale ½, P(+1) = σ(2η)), "uniform" (z_w ~ U[−1, 1]) or "none"
        (W = sign η).
    optimizer: "adam" or "sgd" on η (BN parameters always get Adam); lr, lr_end, schedule,
        glorot, init (η ~ U(−init, init)), clip (None: no clipping), betas, eps: as in A.
    kl_weight (r), prior (η_0): variational term, adds (r/N)(η − η_0) to the η-gradient
        (entropic map: logistic weight noise only).
    mc_samples, mc_average, mc_train_examples: MC predictions (sampled weights and
        activation noise, training BN statistics).
    Presets (§4.5): det-uniform (= trainer A), sbn-uniform, det-logistic, sbn-logistic
    (the defaults), vi (r = 1, the untempered variational objective).
    """

    method = "st"
    DEFAULTS = {**STETrainer.DEFAULTS, **MC_DEFAULTS, "proxy": "tanh", "proxy_scale": 0.5,
                "stochastic_acts": True, "weight_noise": "logistic",
                "lr": 3e-2, "lr_end": 3e-4, "glorot": False, "init": 2.0, "clip": None,
                "kl_weight": 0.0, "prior": 0.0}
    PRESETS = {
        "det-uniform": dict(proxy="hardtanh", proxy_scale=1.0, stochastic_acts=False,
                            weight_noise="none", clip=1.0, init=1.0, glorot=True, lr=3e-4,
                            lr_end=3e-6, mc_samples=0),
        "sbn-uniform": dict(proxy="hardtanh", proxy_scale=1.0, weight_noise="uniform", init=1.0,
                            lr=1e-3, lr_end=1e-5),
        "det-logistic": dict(stochastic_acts=False, weight_noise="none", mc_samples=0),
        "sbn-logistic": {},
        "vi": dict(kl_weight=1.0),
    }

    def __init__(self, *args, **kwargs):
        options = {**self.DEFAULTS, **kwargs}
        if options["weight_noise"] not in WEIGHT_NOISES:
            raise ValueError(f"weight_noise must be one of {WEIGHT_NOISES}, "
                             f"got {options['weight_noise']!r}")
        if options["kl_weight"] and options["weight_noise"] != "logistic":
            raise ValueError("kl_weight needs weight_noise='logistic' (the KL gradient "
                             "(r/N)(η − η_0) is that of the entropic map)")
        super().__init__(*args, **kwargs)

    def _weight_noise(self, field: Tensor, gen: torch.Generator) -> Tensor | None:
        kind = self.opt["weight_noise"]
        if kind == "logistic":
            return logistic_noise(field.shape, 0.5, gen, field.device, field.dtype)
        if kind == "uniform":
            return 2 * torch.rand(field.shape, generator=gen, device=field.device,
                                  dtype=field.dtype) - 1
        return None

    def train_weights(self) -> list[Tensor]:
        # W = sign(η − z_w), identity backward
        return [WeightSTE.apply(f, self._weight_noise(f, self.generator))
                for f in self.model.fields]

    def objective(self, z: Tensor, y: Tensor) -> Tensor:
        loss = super().objective(z, y)
        r = self.opt["kl_weight"]
        if not r:
            return loss
        # + (r/2N) Σ (η − η_0)²: its η-gradient (r/N)(η − η_0) is ∇_μ (r/N) KL(q_η ‖ q_η0)
        penalty = sum(((f - self.opt["prior"]) ** 2).sum() for f in self.model.fields)
        return loss + r / (2 * self.n_train) * penalty

    def sample_weights(self, gen: torch.Generator) -> list[Tensor]:
        out = []
        for f in self.model.fields:
            z = self._weight_noise(f, gen)
            out.append(sign_pm(f.detach() if z is None else f.detach() - z))
        return out

    @property
    def training_is_stochastic(self) -> bool:
        return super().training_is_stochastic or self.opt["weight_noise"] != "none"

    def extra_metrics(self) -> dict:
        return self.field_summary()
