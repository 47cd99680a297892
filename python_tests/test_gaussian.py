"""Continuous (Gaussian) weights, continuous-weight BPI (docs/algorithms.md §4.7): the ops
against their twins at the sizes of a real layer, the seams with the binary family (the same
cavity b and H_in as BPI, the same moments as binary weights of equal variance), the layer's
initialisation and update, learning, checkpoints, mixed networks, continual learning with the
Gaussian PasP prior, the CLI and the float-weight STE baseline. The generic op contract
(opcheck, float64/float32 twin checks on every shape, non-contiguous inputs, bad arguments)
runs for these ops in test_ops.py through the registry."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import F32, F64, TOL, assert_close, use_twin_ops

from bpkernels import (BPLinear, BPSequential, GaussianBPLinear, cli, continual, data, gaussian, mlp,
                       ops, reference, testing)
from bpkernels.train import MessagePassingTrainer, fit, load_model


def _check(op, args, dtype=F64):
    """The kernel against the twin on the same (dtype-rounded) inputs, float64 tolerance."""
    args = [testing.cast(a, dtype, "cpu") for a in args]
    clone = lambda: [a.clone() if isinstance(a, torch.Tensor) else a for a in args]  # noqa: E731
    got = getattr(ops, op)(*clone())
    want = getattr(reference, op)(*[testing.cast(a, F64, "cpu") for a in clone()])
    for i, (g, w) in enumerate(zip(got, want)):
        scale = w.abs().max().item() if w.numel() else 0.0
        assert_close(g.double(), w, rtol=TOL[F64]["rtol"], atol=TOL[F64]["atol"] + 1e-14 * scale,
                     name=f"{op} output {i}")


# ---- ops --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("first", [False, True])
def test_cbpi_backward_matches_twin_at_layer_size(hard, first):
    """The fused kernel's tiling, threading and ISA paths at a real layer (B, N, K) = (128, 301, 37)."""
    _check("gauss_linear_bwd_cbpi", testing.build_args("gauss_linear_bwd_cbpi", (128, 301, 37), seed=7,
                                                      hard=hard, first=first))


def test_cbpi_backward_is_bpi_plus_precision_message():
    """b and H_in are BPI's bit for bit; Ω_in of a hidden layer (x̂² + Δ = 1) is Σ_a Γ − Σ_a Δ g²."""
    b_top, omega, var, x_hat, delta, mag, hard, compute_b = testing.build_args(
        "gauss_linear_bwd_cbpi", (19, 23, 7), seed=3)
    b, h_in, omega_in = ops.gauss_linear_bwd_cbpi(b_top, omega, var, x_hat, delta, mag, hard, compute_b)
    b_bpi, h_bpi = ops.bp_linear_bwd_bpi(b_top, omega, var, x_hat, mag, hard, compute_b)
    assert torch.equal(b, b_bpi) and torch.equal(h_in, h_bpi)
    g, gamma = ops.bp_output(b_top, omega, var, hard)
    expected = gamma.sum(0)[:, None] - g.square().T @ delta
    assert_close(omega_in, expected, rtol=1e-12, atol=1e-12, name="Ω_in")


def test_gaussian_forward_equals_binary_forward_at_equal_variance():
    """Binary weights are the special case σ = 1 − m²: gauss_linear_fwd with Ω = 1/(1 − m²)
    gives bp_linear_fwd's moments."""
    x_hat, delta, mag, _ = testing.build_args("bp_linear_fwd", (9, 31, 5), seed=1)
    got = ops.gauss_linear_fwd(x_hat, delta, mag, 1.0 / ((1 - mag) * (1 + mag)))
    want = ops.bp_linear_fwd(x_hat, delta, mag, None)
    for g, w, name in zip(got, want, ("ω", "V", "u")):
        assert_close(g, w, rtol=1e-12, atol=1e-12, name=name)


def test_float32_cbpi_backward_within_budget_at_layer_size():
    from test_ops import check_against_twin

    for hard in (False, True):
        check_against_twin("gauss_linear_bwd_cbpi", testing.build_args(
            "gauss_linear_bwd_cbpi", (128, 301, 37), seed=8, hard=hard), F32, "cpu")


def test_field_update_clamps_precision_and_damps_the_mean():
    K, N = 4, 6
    H, P, m = torch.randn(K, N, dtype=F64), torch.full((K, N), 2.0, dtype=F64), torch.zeros(K, N, dtype=F64)
    h_in = torch.randn(K, N, dtype=F64)
    omega_in = torch.full((K, N), -10.0, dtype=F64)  # Ω_in + ρΩ < 0 -> clamped
    omega_in[0] = 3.0
    H0 = H.clone()
    delta = ops.gauss_field_update_(H, P, m, h_in, omega_in, None, None, 1.0, 0.0, 0.25)
    assert torch.equal(P[1:], torch.full_like(P[1:], gaussian.MIN_PRECISION))
    assert_close(P[0], torch.full_like(P[0], 5.0), rtol=0, atol=0, name="Ω")
    assert_close(H, h_in + H0, rtol=1e-15, atol=1e-15, name="H")
    assert_close(m, 0.75 * H / P, rtol=1e-15, atol=0, name="m = ψ·0 + (1 − ψ)H/Ω")
    assert_close(delta, m.abs().mean(), rtol=1e-14, atol=0, name="δ")


def test_nan_messages_propagate_through_the_clamp():
    H, P, m = (torch.ones(2, 2, dtype=F64) for _ in range(3))
    omega_in = torch.full((2, 2), math.nan, dtype=F64)
    ops.gauss_field_update_(H, P, m, torch.zeros_like(H), omega_in, None, None, 1.0, 0.0, 0.5)
    assert torch.isnan(P).all(), "a NaN precision message must not be hidden by the clamp"


def test_ops_reject_bad_inputs():
    args = testing.build_args("gauss_linear_fwd", (3, 5, 4))
    with pytest.raises(RuntimeError, match=r"gauss_linear_fwd: precision must have shape"):
        ops.gauss_linear_fwd(args[0], args[1], args[2], args[3][:, :2])
    H, P, m, h_in, w_in, hp, pp, *_ = testing.build_args("gauss_field_update_", (3, 5, 4))
    with pytest.raises(RuntimeError, match="given together"):
        ops.gauss_field_update_(H, P, m, h_in, w_in, hp, None)
    with pytest.raises(RuntimeError, match="updated in place and must be contiguous"):
        ops.gauss_field_update_(H, P.t().contiguous().t(), m, h_in, w_in)


# ---- layer ------------------------------------------------------------------------------------


def test_initialisation_follows_the_spec():
    """Ω = N/ϵ², H = (√N/ϵ)·N(0, 1): m = H/Ω ~ N(0, ϵ²/N), σ = ϵ²/N."""
    N, K, eps = 400, 300, 0.5
    layer = GaussianBPLinear(N, K, init_std=eps, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(layer.precision, torch.full((K, N), N / eps**2, dtype=F64))
    assert_close(layer.mag, layer.field / layer.precision, rtol=1e-15, atol=0, name="m = H/Ω")
    assert abs(layer.mag.std().item() / (eps / math.sqrt(N)) - 1) < 0.01
    assert_close(layer.variance, torch.full((K, N), eps**2 / N, dtype=F64), rtol=1e-15, atol=0, name="σ")
    assert abs(layer.mag.mean().item()) < 3 * eps / math.sqrt(N * N * K)


def test_layer_step_matches_the_twin_network(monkeypatch):
    """Two PasP steps (τ_max = 1 and 2) of a mixed network on the kernels and on the twin."""
    x = torch.randn(16, 12, dtype=F64)
    y = torch.where(torch.randn(16) > 0, 1.0, -1.0).to(F64)
    nets = [mlp([12, 7, 5, 1], output="sign", weights=["gaussian", "binary", "gaussian"], seed=3,
                dtype=F64) for _ in range(2)]
    for tau in (1, 2):
        nets[0].bp_step(x, y, tau_max=tau)
    with monkeypatch.context() as patch:
        use_twin_ops(patch)
        patch.setattr(gaussian, "ops", reference)
        from bpkernels import algorithms
        assert algorithms.ops is reference
        for tau in (1, 2):
            nets[1].bp_step(x, y, tau_max=tau)
    for (name, a), (_, b) in zip(nets[0].state_dict().items(), nets[1].state_dict().items()):
        assert_close(a, b, rtol=1e-10, atol=1e-12, name=name)


def test_teacher_student_learns_pointwise_and_bayes():
    ds = data.teacher_student(3000, 1000, (60, 9, 1), seed=0)
    model = mlp([60, 31, 1], output="sign", weights="gaussian", seed=1)
    errors = [model.error(ds.test_x, ds.test_y)]
    fit(model, ds, epochs=6, batch_size=64, progress=False)
    point, bayes = model.error(ds.test_x, ds.test_y), model.error(ds.test_x, ds.test_y, mode="bayes")
    # (binary BPI, same net and data: 25.4 % / 23.4 %)
    assert errors[0] > 0.4 and point < 0.3 and bayes < 0.3, (errors[0], point, bayes)
    assert model.error(ds.train_x, ds.train_y) < 0.2
    assert model.bp_layers[0].precision.median() > 60, "the precisions grow with the data (Ω₀ = N/ϵ² = 60)"


def test_pointwise_prediction_uses_the_means():
    layer = GaussianBPLinear(5, 3, dtype=F64)
    hidden = GaussianBPLinear(5, 3, output=None, dtype=F64)
    x = torch.randn(4, 5, dtype=F64)
    assert torch.equal(hidden(x), torch.sign(x @ hidden.mag.T + 1e-10))
    assert torch.equal(layer.preactivation(x), x @ layer.mag.T)


def test_checkpoint_round_trip(tmp_path):
    ds = data.teacher_student(600, 200, (20, 5, 1), seed=0)
    model = mlp([20, 9, 1], output="sign", weights=["gaussian", "gaussian"], seed=2)
    fit(model, ds, epochs=2, batch_size=50, progress=False, run_dir=str(tmp_path / "run"))
    again, _ = load_model(str(tmp_path / "run" / "checkpoint.pt"))
    assert [type(layer) for layer in again.bp_layers] == [GaussianBPLinear] * 2
    assert again.config() == model.config()
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    for mode in ("pointwise", "bayes"):
        assert torch.equal(again.predict(ds.test_x, mode), model.predict(ds.test_x, mode))
    fresh = BPSequential.from_config(model.config())
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.bp_layers[0].precision, model.bp_layers[0].precision)


def test_damaged_checkpoints_are_refused():
    model = mlp([6, 4, 1], output="sign", weights="gaussian")
    state = {key: value.clone() for key, value in model.state_dict().items()}
    bad = {**state, "layers.0.precision": torch.zeros_like(state["layers.0.precision"])}
    with pytest.raises(ValueError, match="precisions must be >= 1e-06"):
        model.load_state_dict(bad)
    bad = {**state, "layers.1.field": torch.full_like(state["layers.1.field"], math.nan)}
    with pytest.raises(ValueError, match="field holds NaN"):
        mlp([6, 4, 1], output="sign", weights="gaussian").load_state_dict(bad)


# ---- mixed networks and bad configurations ----------------------------------------------------


@pytest.mark.parametrize("weights,output,classes", [
    (["gaussian", "binary"], "sign", 1),               # Gaussian hidden, binary sign output
    (["binary", "gaussian"], "sign", 1),               # binary hidden, Gaussian sign output
    (["gaussian", "gaussian", "binary"], "argmax", 3),  # Gaussian hidden, binary argmax output
    (["binary", "gaussian", "binary"], "argmax", 3),   # a Gaussian layer between binary ones
])
def test_mixed_networks_learn(weights, output, classes):
    sizes = (40, 9, 1) if classes == 1 else (40, 9, 9, 3)
    ds = data.teacher_student(2500, 800, sizes, seed=0)
    model = mlp([40, *[25] * (len(weights) - 1), classes], output=output, weights=weights, seed=1,
                algo="amp")
    before = model.error(ds.test_x, ds.test_y)
    fit(model, ds, epochs=5, batch_size=64, progress=False)
    after = model.error(ds.test_x, ds.test_y)
    bayes = model.error(ds.test_x, ds.test_y, mode="bayes")
    chance = 0.5 if classes == 1 else 2 / 3
    assert after < min(before, chance) - 0.15 and bayes < chance - 0.15, (before, after, bayes)
    families = [type(layer) for layer in model.bp_layers]
    assert families == [GaussianBPLinear if w == "gaussian" else BPLinear for w in weights]


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="cannot be an argmax output layer"):
        GaussianBPLinear(5, 3, output="argmax")
    with pytest.raises(ValueError, match="updates binary weights"):
        GaussianBPLinear(5, 3, algo="bpi")
    with pytest.raises(ValueError, match="updates gaussian weights"):
        BPLinear(5, 3, algo="cbpi")
    with pytest.raises(ValueError, match="init_std must be > 0"):
        GaussianBPLinear(5, 3, init_std=0.0)
    with pytest.raises(ValueError, match="no weight mask"):
        mlp([5, 3, 1], output="sign", weights="gaussian", density=0.5)
    with pytest.raises(ValueError, match="weights must be"):
        mlp([5, 3, 1], output="sign", weights=["gaussian"])
    layer = GaussianBPLinear(5, 3)
    with pytest.raises(ValueError, match="precision must be >= 1e-06"):
        layer.set_marginals(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="pair of tensors"):
        layer.set_prior((torch.zeros(3, 5),))
    with pytest.raises(ValueError, match="must have shape"):
        layer.set_prior((torch.zeros(3, 5), torch.ones(3, 4)))


# ---- priors and continual learning ------------------------------------------------------------


def test_fixed_prior_equals_pasp_with_rho_one():
    """With ρ = 1 the PasP prior of a mini-batch is the current (H, Ω): setting it as a fixed
    prior pair gives the same step bit for bit."""
    x = torch.randn(32, 10, dtype=F64)
    y = torch.where(torch.randn(32) > 0, 1.0, -1.0).to(F64)
    a = mlp([10, 6, 1], output="sign", weights="gaussian", rho=1.0, seed=4, dtype=F64)
    b = copy.deepcopy(a)
    for layer in b.bp_layers:
        layer.set_prior((layer.field.clone(), layer.precision.clone()))
    a.bp_step(x, y)
    b.bp_step(x, y)
    for la, lb in zip(a.bp_layers, b.bp_layers):
        assert torch.equal(la.field, lb.field) and torch.equal(la.precision, lb.precision)
        assert torch.equal(la.mag, lb.mag)


def test_no_prior_drops_the_prior():
    layer = GaussianBPLinear(4, 2, output=None, dtype=F64)
    layer.set_prior(None)
    st = layer.mp_begin(1)
    assert st.rho == 0.0 and st.field_prior is None


def test_continual_prior_is_the_previous_posterior():
    """train_continual with a MessagePassingTrainer: at the task boundary nothing is reset, and
    the first step of task 2 is the step with the fixed prior (H, Ω) = the posterior of task 1
    (ρ = 1, the continual setting)."""
    base = data.teacher_student(256, 64, (20, 9, 1), seed=0)
    tasks = continual.permuted_tasks(base, 2, seed=1)
    model = mlp([20, 9, 1], output="sign", weights="gaussian", rho=1.0, seed=0)

    class Spy(MessagePassingTrainer):
        boundary = None
        checked = False

        def begin_task(self, task):
            super().begin_task(task)
            if task == 1:
                self.boundary = copy.deepcopy(self.model)

        def step(self, x, y):
            if self.boundary is not None and not self.checked:
                for now, then in zip(self.model.bp_layers, self.boundary.bp_layers):
                    assert torch.equal(now.field, then.field) and torch.equal(now.precision, then.precision)
                    then.set_prior((then.field.clone(), then.precision.clone()))
                out = super().step(x, y)
                self.boundary.bp_step(x, y, checked=True)
                for now, then in zip(self.model.bp_layers, self.boundary.bp_layers):
                    assert torch.equal(now.field, then.field) and torch.equal(now.precision, then.precision)
                self.checked = True
                return out
            return super().step(x, y)

    trainer = Spy(model, eval_bayes=False)
    rows = continual.train_continual(trainer, tasks, epochs_per_task=1, batch_size=32, progress=False)
    assert trainer.checked and len(rows) == 2
    assert all(0.0 <= a <= 1.0 for a in rows[-1]["task_accuracy"])


# ---- CLI and the float-weight baseline --------------------------------------------------------


def test_cli_weights_gaussian(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--dataset", "teacher", "--task", "10class", "--hidden", "7",
                              "--epochs", "1", "--subset", "300", "--test-subset", "100",
                              "--weights", "gaussian", "--no-progress", "--run-dir", str(tmp_path / "r")])
    assert args.func(args) == 0
    model, _ = load_model(str(tmp_path / "r" / "checkpoint.pt"))
    assert [type(layer) for layer in model.bp_layers] == [GaussianBPLinear, BPLinear]
    assert model.bp_layers[-1].output == "argmax"
    import json

    config = json.load(open(tmp_path / "r" / "config.json"))
    assert config["weights"] == "gaussian" and config["algo"] == "cbpi"
    args = parser.parse_args(["train", "--dataset", "teacher", "--task", "evenodd", "--hidden", "5",
                              "--epochs", "1", "--subset", "200", "--test-subset", "50",
                              "--no-progress", "--run-dir", str(tmp_path / "b")])
    assert args.func(args) == 0
    # a binary run records no "weights" key: runs started before the option still resume
    assert "weights" not in json.load(open(tmp_path / "b" / "config.json"))


def test_cli_continual_cbpi_builds_gaussian_layers():
    ds = data.teacher_student(100, 50, (20, 5, 3), seed=0)
    args = cli.build_parser().parse_args(["continual", "--hidden", "7", "--dtype", "float64"])
    trainer = cli.continual_trainer("cbpi", args, ds, 100, "cpu")
    assert [type(layer) for layer in trainer.model.bp_layers] == [GaussianBPLinear, BPLinear]
    assert all(layer.rho == 1.0 for layer in trainer.model.bp_layers)


def test_binary_conv_below_a_gaussian_dense_layer():
    """A mixed network with a binary convolution: the Gaussian dense layer above it receives
    the convolution's up-fields like any layer."""
    from torch import nn

    from bpkernels import BPConv2d

    x = torch.randn(32, 1, 6, 6, dtype=F64)
    y = torch.where(x.mean(dim=(1, 2, 3)) > 0, 1.0, -1.0).to(F64)
    net = BPSequential(BPConv2d(1, 3, 3, input_size=(6, 6), dtype=F64), nn.Flatten(),
                       GaussianBPLinear(48, 1, output="sign", dtype=F64))
    before = net.bp_layers[1].precision.clone()
    for _ in range(3):
        net.bp_step(x, y)
    assert not torch.equal(net.bp_layers[1].precision, before)
    for mode in ("pointwise", "bayes"):
        assert set(net.predict(x, mode).tolist()) <= {-1.0, 1.0}


def test_ste_float_weights():
    from bpkernels.baselines import train_baseline

    ds = data.teacher_student(2000, 500, (30, 7, 1), seed=0)
    rows = train_baseline("ste", ds, hidden=[21], epochs=4, batch_size=64, progress=False,
                          binary_weights=False, lr=1e-2, lr_end=1e-3)
    assert rows[-1]["test_error"] < 0.25  # (binary weights, same settings: 17.8 %)
    from bpkernels.baselines import make_trainer

    trainer = make_trainer("ste", ds, [21], total_steps=10, binary_weights=False)
    weights = trainer.eval_weights()
    assert any(((w != 1) & (w != -1)).any() for w in weights), "the evaluation weights are the floats"
