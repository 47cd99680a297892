r"""Trainer B — BayesBiNN (Meng, Bachmann, Khan, ICML 2020; docs/baselines.md §3).

Mean-field Bernoulli posterior q(W) = Π_i q_i(W_i), q_i ∝ exp(λ_i W_i): P(W_i = +1) = σ(2λ_i),
μ_i = tanh λ_i. The Bayesian learning rule moves the natural parameters λ by

    λ ← (1 − α r) λ + α r λ_0 − α N_eff ĝ,        ĝ ≈ ∇_μ E_q[ℓ̄(W)]

(with optional momentum), where ĝ comes from S Monte-Carlo forward/backward passes with
sampled weights. ``BayesBiNN`` is a torch.optim.Optimizer over several parameter groups:
binary groups (``binary=True``, the default) hold λ and follow the rule above; real groups
(``binary=False``: BN γ, β, ...) get Adam from the same forward/backward passes.

Estimators of ĝ (§3.4): ``"st"`` (default, τ → 0 limit: exact binary samples, factor 1),
``"gumbel"`` (the paper's relaxed estimator, scale factor computed in the log domain),
``"published"`` (float32 emulation of the released code, reproduces its Bop-like dynamics,
§3.5), ``"mean"`` (forward with W = tanh λ).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from .binarynet import logistic_noise, loss_fn, sign_pm
from .common import COMMON_DEFAULTS, MC_DEFAULTS, BaselineTrainer, schedule_factor

ESTIMATORS = ("st", "gumbel", "published", "mean")


def log_gumbel_scale(lam: Tensor, u: Tensor, tau: float) -> Tensor:
    r"""ln 𝔰 for 𝔰 = sech²(u) / (τ sech²(λ)), elementwise, without cancellation (§3.4):

        ln 𝔰 = 2(|λ| − |u|) + 2 log1p(e^{−2|λ|}) − 2 log1p(e^{−2|u|}) − ln τ.

    u = ±∞ gives −∞ (𝔰 = 0), never NaN.
    """
    a, b = lam.abs(), u.abs()
    return (2 * (a - b) + 2 * torch.log1p(torch.exp(-2 * a))
            - 2 * torch.log1p(torch.exp(-2 * b)) - math.log(tau))


class BayesBiNN(torch.optim.Optimizer):
    r"""Bayesian learning rule for ±1 weights with a mean-field Bernoulli posterior.

    A binary parameter p holds the natural parameter λ (same shape as the weight matrix it
    stands for); the model never uses p directly. ``step(closure)`` draws S weight samples
    W^(s), calls ``closure(weights)`` with ``weights[p] = W^(s)`` (a leaf tensor the closure
    uses in place of the weight of p) to get the mean mini-batch loss, back-propagates
    ℓ̄/S, sets ``p.grad`` = ĝ = (1/S) Σ_s 𝔰^(s) ⊙ ∂ℓ̄/∂W^(s) (𝔰 = 1 except for gumbel/published),
    updates λ and steps Adam on the real groups (whose gradients it zeroes first).

    Args:
        params: parameters or parameter groups; group key ``binary`` (default True) selects
            the rule. Binary group options: lr (α), n_eff (N_eff = N · trainset_scale),
            kl_weight (r), prior (λ_0, float or a tensor of the parameter's shape), estimator,
            tau (τ), momentum (β), s_max (clamp of the gumbel factor; events are counted in
            ``clamp_events``). Real group options: lr (default ``real_lr``), betas, eps.
        samples: S, Monte-Carlo samples per step (one pass when every binary group uses
            "mean").
        generator: torch.Generator of the weight samples (on the parameters' device).
    """

    def __init__(self, params, n_eff: float, lr: float = 0.1, kl_weight: float = 1e-3,
                 prior: float | Tensor = 0.0, estimator: str = "st", tau: float = 0.1,
                 momentum: float = 0.0, s_max: float = 1e30, samples: int = 1,
                 real_lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, generator: torch.Generator | None = None):
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.samples, self.generator, self.real_lr = samples, generator, real_lr
        # Number of gumbel factors clamped at s_max since the last reset (a tensor once counted).
        self.clamp_events: Tensor | int = 0
        defaults = dict(lr=lr, binary=True, n_eff=n_eff, kl_weight=kl_weight, prior=prior,
                        estimator=estimator, tau=tau, momentum=momentum, s_max=s_max,
                        betas=betas, eps=eps)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        if not param_group.get("binary", True):
            param_group.setdefault("lr", self.real_lr)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["binary"] and group["estimator"] not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {group['estimator']!r}")
        if group["binary"] and not 0 <= group["momentum"] < 1:
            raise ValueError(f"momentum must be in [0, 1), got {group['momentum']}")

    def _draw(self, lam: Tensor, group: dict) -> tuple[Tensor, Tensor | None]:
        """One weight sample for the field lam and its per-weight scale factor (None: 1)."""
        est = group["estimator"]
        if est == "mean":
            # W = μ = tanh λ
            return torch.tanh(lam).requires_grad_(), None
        # δ ~ Logistic(0, ½): sign(λ + δ) is an exact sample of q, P(+1) = σ(2λ)
        delta = logistic_noise(lam.shape, 0.5, self.generator, lam.device, lam.dtype)
        if est == "st":
            return sign_pm(lam + delta).requires_grad_(), None
        tau = group["tau"]
        # u = (λ + δ)/τ, relaxed weights w_r = tanh u
        u = (lam + delta) / tau
        w = torch.tanh(u)
        if est == "gumbel":
            # 𝔰 = sech²u / (τ sech²λ), from its logarithm, clamped at s_max
            log_s = log_gumbel_scale(lam, u, tau)
            limit = math.log(group["s_max"])
            self.clamp_events = self.clamp_events + (log_s > limit).sum()
            return w.requires_grad_(), torch.exp(log_s.clamp(max=limit))
        # published: 𝔰 = (1 − w_r² + 10⁻¹⁰)/(τ (1 − μ² + 10⁻¹⁰)), μ = tanh of the field before
        # the previous update (the released code's lag), in the parameter's dtype
        state = self.state[lam]
        if "mu" not in state:
            state["mu"] = torch.tanh(lam)
        mu = state["mu"]
        return w.requires_grad_(), (1 - w * w + 1e-10) / (tau * (1 - mu * mu + 1e-10))

    @torch.no_grad()
    def step(self, closure: Callable[[dict[Tensor, Tensor]], Tensor]) -> Tensor:
        """One step; closure(weights) returns the mean mini-batch loss (no backward). Returns
        the loss averaged over the samples (detached)."""
        binary = [(g, p) for g in self.param_groups if g["binary"] for p in g["params"]]
        real_groups = [g for g in self.param_groups if not g["binary"]]
        for g in real_groups:
            for p in g["params"]:
                p.grad = None
        ghat: dict[Tensor, Tensor] = {}
        n_samples = 1 if all(g["estimator"] == "mean" for g, _ in binary) else self.samples
        total = 0.0
        for _ in range(n_samples):
            drawn = {p: self._draw(p, g) for g, p in binary}
            with torch.enable_grad():
                loss = closure({p: w for p, (w, _) in drawn.items()})
                (loss / n_samples).backward()
            for p, (w, factor) in drawn.items():
                if w.grad is None:
                    raise RuntimeError("the closure did not use the weights of a binary parameter")
                # ĝ = (1/S) Σ_s 𝔰^(s) ⊙ ∂ℓ̄/∂W^(s)   (w.grad already carries 1/S)
                term = w.grad if factor is None else factor * w.grad
                ghat[p] = term if p not in ghat else ghat[p] + term
            total = total + loss.detach()
        for g, p in binary:
            p.grad = ghat[p]
            self._update_field(p, g)
        for g in real_groups:
            self._adam(g)
        return total / n_samples

    def _update_field(self, lam: Tensor, group: dict) -> None:
        state = self.state[lam]
        state["step"] = state.get("step", 0) + 1
        beta, alpha = group["momentum"], group["lr"]
        # λ_0: the group's prior, or this parameter's own (a previous task's posterior)
        n_eff, r, prior = group["n_eff"], group["kl_weight"], state.get("prior", group["prior"])
        mu_before = torch.tanh(lam) if group["estimator"] == "published" else None
        if beta > 0:
            # m ← β m + (1 − β)(N_eff ĝ + r (λ − λ_0)),  λ ← λ − α m/(1 − β^t)
            m = state.setdefault("momentum", torch.zeros_like(lam))
            m.mul_(beta).add_(n_eff * lam.grad + r * (lam - prior), alpha=1 - beta)
            lam.sub_(m, alpha=alpha / (1 - beta ** state["step"]))
        else:
            # λ ← (1 − α r) λ + α r λ_0 − α N_eff ĝ
            lam.mul_(1 - alpha * r).add_(lam.grad, alpha=-alpha * n_eff)
            if isinstance(prior, Tensor) or prior != 0:
                lam.add_(alpha * r * prior)
        if mu_before is not None:
            state["mu"] = mu_before

    def _adam(self, group: dict) -> None:
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
            # m ← β1 m + (1−β1) g,  v ← β2 v + (1−β2) g²,  p ← p − lr m̂/(√v̂ + ε)
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
            p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))


class BayesBiNNTrainer(BaselineTrainer):
    """BayesBiNN. Options (``DEFAULTS``, library defaults of §3.8 for MNIST-like MLPs):

    lr, lr_end, schedule: α, cosine-annealed to lr_end over the run.
    kl_weight (r), prior (λ_0), trainset_scale (N_eff = N · trainset_scale), estimator, tau,
    samples (S), momentum (β), s_max: as in :class:`BayesBiNN`.
    lambda_init, lambda_std: λ = ±lambda_init (random sign) + √lambda_std · N(0, 1).
    real_lr, real_lr_end, real_schedule, betas, eps: Adam on BN γ, β.
    Sign activations use the hard-tanh straight-through (deterministic); ``activation="relu"``
    is the paper's setting. Predictions: mode W = sign λ with re-estimated BN (point-wise) and
    MC with ``mc_samples`` sampled networks (Bayesian).
    Preset ``bayesbinn-mnist-published``: the released MNIST script's optimiser and network
    settings (ReLU, dropout 0.2, BN without affine, momentum 0.15, α = 1e-4 cosine → 1e-16,
    τ = 1e-10, λ_init = 10, r = 1, ``published`` estimator, logit averaging).
    """

    method = "bayesbinn"
    DEFAULTS = {**COMMON_DEFAULTS, **MC_DEFAULTS, "lr": 0.1, "lr_end": 0.0, "schedule": "cosine",
                "kl_weight": 1e-3, "prior": 0.0, "trainset_scale": 1.0, "estimator": "st",
                "tau": 0.1, "samples": 1, "momentum": 0.0, "s_max": 1e30, "lambda_init": 0.0,
                "lambda_std": 0.0, "real_lr": 1e-3, "real_lr_end": 1e-5,
                "real_schedule": "geometric", "betas": (0.9, 0.999), "eps": 1e-8}
    PRESETS = {"bayesbinn-mnist-published": dict(
        activation="relu", dropout_in=0.2, dropout_hidden=0.2, bn_affine=False, bn_momentum=0.15,
        lr=1e-4, lr_end=1e-16, schedule="cosine", tau=1e-10, lambda_init=10.0, kl_weight=1.0,
        estimator="published", mc_average="logits")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._initialise()
        o = self.opt
        groups = [{"params": list(self.model.fields), "binary": True}]
        real = self.model.real_parameters()
        if real:
            groups.append({"params": real, "binary": False})
        self.optimizer = BayesBiNN(
            groups, n_eff=self.n_train * o["trainset_scale"], lr=o["lr"],
            kl_weight=o["kl_weight"], prior=o["prior"], estimator=o["estimator"], tau=o["tau"],
            momentum=o["momentum"], s_max=o["s_max"], samples=o["samples"], real_lr=o["real_lr"],
            betas=o["betas"], eps=o["eps"], generator=self.generator)
        factors = [lambda t: self._factor(t), lambda t: schedule_factor(
            o["real_schedule"], t, self.total_steps, o["real_lr"], o["real_lr_end"])]
        self.scheduler = LambdaLR(self.optimizer, factors[:len(groups)])

    def _factor(self, step: int) -> float:
        o = self.opt
        return schedule_factor(o["schedule"], step, self.total_steps, o["lr"], o["lr_end"])

    def init_fields(self, gen: torch.Generator) -> list[Tensor]:
        # λ = ±λ_init (random sign) + √λ_std · N(0, 1)
        o = self.opt
        out = []
        for f in self.model.fields:
            signs = torch.randint(0, 2, f.shape, generator=gen, dtype=torch.float64) * 2 - 1
            out.append(o["lambda_init"] * signs
                       + math.sqrt(o["lambda_std"]) * torch.randn(f.shape, generator=gen,
                                                                   dtype=torch.float64))
        return out

    @property
    def training_is_stochastic(self) -> bool:
        return True

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        self.model.train()
        fields = list(self.model.fields)

        def closure(weights: dict[Tensor, Tensor]) -> Tensor:
            z = self.network(x, [weights[f] for f in fields], dropout=True)
            return loss_fn(z, y, self.binary, self.opt["loss"])

        loss = self.optimizer.step(closure)
        self.scheduler.step()
        return loss

    def sample_weights(self, gen: torch.Generator) -> list[Tensor]:
        # W = sign(λ + δ), δ ~ Logistic(0, ½)
        return [sign_pm(f.detach() + logistic_noise(f.shape, 0.5, gen, f.device, f.dtype))
                for f in self.model.fields]

    def begin_task(self, task: int) -> None:
        """BayesBiNN's continual recipe: from the second task on, the posterior natural
        parameters λ of the previous task become the prior λ_0, and the learning-rate schedule
        starts again."""
        if task > 0:
            for group in self.optimizer.param_groups:
                if group["binary"]:
                    for lam in group["params"]:
                        self.optimizer.state[lam]["prior"] = lam.detach().clone()
        sched = self.scheduler
        sched.last_epoch = 0
        for group, factor in zip(sched.optimizer.param_groups, sched.lr_lambdas):
            group["lr"] = group["initial_lr"] * factor(0)

    def lr(self) -> float:
        return self.opt["lr"] * self._factor(self.scheduler.last_epoch)

    def extra_metrics(self) -> dict:
        clamps = int(self.optimizer.clamp_events)
        self.optimizer.clamp_events = 0
        return {**self.field_summary(), "clamp_events": clamps}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
