"""BPLinear / BPSequential: the mini-batch step of docs/algorithms.md §3 through model.bp_step, BP with τ_max > 1
against the PyTorch twin, module behaviour (state_dict, dtype, device), predictions, errors."""

import math

import pytest
import torch
from torch import nn

import bpkernels as bpk
from bpkernels import BPLinear, BPSequential, mlp, ops

from helpers import use_twin_ops

F64 = torch.float64

# docs/algorithms.md §11.5: 3 → 2 → 1, B = 2, ρ = (1, 0.9), ψ = 0.8, given initial fields.
X_115 = torch.tensor([[0.5, -1.0], [1.5, 0.2], [-0.3, 0.8]], dtype=F64).T
Y_115 = torch.tensor([1.0, -1.0], dtype=F64)
H1_115 = [[0.4, -1.0, 0.7], [-0.3, 0.2, 1.5]]
H2_115 = [[0.9, -0.4]]
EXPECTED_115 = {
    "bpi": dict(
        h2=[[0.4130840399, -0.801500189]], m2=[[0.6512559287, -0.4369340945]],
        h1=[[0.7498080742, -0.6136508532, 0.468365349], [-0.4873721652, 0.0122454018, 1.6640646403]],
        m1=[[0.4309660574, -0.7186137091, 0.570869742], [-0.3234757431, 0.1603492141, 0.9102711246]]),
    "mf": dict(
        m2=[[0.6275654053, -0.4301776613]],
        m1=[[0.4368277865, -0.7079408526, 0.5617467957], [-0.316923902, 0.1570524248, 0.9085405672]]),
    "amp": dict(
        m2=[[0.6524641177, -0.436699975]],
        m1=[[0.4322434541, -0.6887596045, 0.5691830046], [-0.3233553736, 0.1597156103, 0.9103355789]]),
}


def set_fields(layer: BPLinear, field) -> None:
    layer.set_marginals(torch.as_tensor(field, dtype=layer.field.dtype))


def spec_net(algo: str) -> BPSequential:
    l1 = BPLinear(3, 2, algo=algo, rho=1.0, psi=0.8, dtype=F64)
    l2 = BPLinear(2, 1, algo=algo, output="sign", rho=0.9, psi=0.8, dtype=F64)
    set_fields(l1, H1_115)
    set_fields(l2, H2_115)
    return BPSequential(l1, l2)


@pytest.mark.parametrize("algo", ["bpi", "mf", "amp", "bp"])
def test_spec_11_5_step_through_bp_step(algo):
    net = spec_net(algo)
    net.bp_step(X_115, Y_115)
    l1, l2 = net.bp_layers
    expected = EXPECTED_115["bpi" if algo == "bp" else algo]
    for key, tensor in (("h1", l1.field), ("m1", l1.mag), ("h2", l2.field), ("m2", l2.mag)):
        if key in expected:
            torch.testing.assert_close(tensor, torch.tensor(expected[key], dtype=F64), rtol=1e-9, atol=1e-10)


def test_spec_11_5_bayesian_forward_and_pointwise():
    net = spec_net("bpi")
    x_hat, delta = X_115, None
    for layer in net.bp_layers:
        x_hat, delta = layer.bayes(x_hat, delta)
    torch.testing.assert_close(x_hat[:, 0], torch.tensor([-0.2803784759, -0.1640556698], dtype=F64),
                               rtol=1e-9, atol=1e-10)
    assert net.predict(X_115, mode="bayes").tolist() == [-1.0, -1.0]
    assert net(X_115).tolist() == [-1.0, -1.0]


def test_bp_at_tau_1_is_bpi_bit_for_bit():
    torch.manual_seed(0)
    x = torch.randn(16, 20, dtype=F64)
    y = torch.randint(0, 4, (16,))
    nets = [mlp([20, 9, 7, 4], algo=a, seed=3, dtype=F64) for a in ("bp", "bpi")]
    for net in nets:
        net.bp_step(x, y, tau_max=1)
    for a, b in zip(*(n.state_dict().values() for n in nets)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("algo,output", [("bp", "argmax"), ("bp", "sign"), ("amp", "argmax"),
                                         ("amp", "sign"), ("mf", "argmax"), ("bpi", "sign")])
@pytest.mark.parametrize("tau_max", [1, 3])
def test_inner_iterations_match_twin(monkeypatch, algo, output, tau_max):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(11, 13, generator=gen, dtype=F64)
    if output == "argmax":
        y = torch.randint(0, 3, (11,), generator=gen)
        sizes = [13, 7, 5, 3]
    else:
        y = torch.randint(0, 2, (11,), generator=gen).double() * 2 - 1
        sizes = [13, 7, 5, 1]
    ext = mlp(sizes, algo=algo, output=output, seed=1, dtype=F64)
    twin = mlp(sizes, algo=algo, output=output, seed=1, dtype=F64)
    for _ in range(2):
        ext.bp_step(x, y, tau_max=tau_max)
    use_twin_ops(monkeypatch)
    for _ in range(2):
        twin.bp_step(x, y, tau_max=tau_max)
    for (name, a), b in zip(ext.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_per_layer_algorithms():
    """algo given per layer: each layer runs its own variant. An argmax output layer has its
    own update whatever its algo, so [bpi, amp] on 20-7-3 is the all-BPI network bit for bit
    and differs from all-AMP; names, configs and refusals."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(16, 20, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (16,), generator=gen)
    mixed, bpi, amp = (mlp([20, 7, 3], algo=a, seed=1, dtype=F64)
                       for a in (["bpi", "amp"], "bpi", "amp"))
    for net in (mixed, bpi, amp):
        net.bp_step(x, y)
    assert [layer.algo for layer in mixed.bp_layers] == ["bpi", "amp"]
    assert (mixed.algo, bpi.algo) == ("bpi+amp", "bpi")
    for a, b in zip(mixed.state_dict().values(), bpi.state_dict().values()):
        assert torch.equal(a, b)
    assert not torch.allclose(mixed.bp_layers[0].field, amp.bp_layers[0].field)
    again = BPSequential.from_config(mixed.config(), dtype=F64)
    assert again.algo == "bpi+amp"
    net = bpk.build_arch("conv4k3s2p1-dense5-dense3", algo=("mf", "bpi", "amp"), num_classes=3,
                         input_shape=(1, 6, 6))
    assert [layer.algo for layer in net.bp_layers] == ["mf", "bpi", "amp"]
    with pytest.raises(ValueError, match=r"algo: give one value or 3 values \(one per layer\), got 2"):
        bpk.build_arch("conv4k3s2p1-dense5-dense3", algo=["bpi", "amp"], num_classes=3,
                       input_shape=(1, 6, 6))
    with pytest.raises(ValueError, match="algo must be one of"):
        mlp([4, 3, 2], algo=["bpi", "bpx"])


def test_bp_inner_iterations_differ_from_bpi():
    """BP only differs from BPI for τ_max > 1 (docs/algorithms.md §4.3): a guard that the cavity path runs."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, 12, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (9,), generator=gen)
    bp, bpi = (mlp([12, 6, 3], algo=a, seed=0, dtype=F64) for a in ("bp", "bpi"))
    bp.bp_step(x, y, tau_max=3)
    bpi.bp_step(x, y, tau_max=3)
    assert not torch.allclose(bp.bp_layers[0].field, bpi.bp_layers[0].field)


def test_module_behaviour_state_dict_dtype_device():
    net = BPSequential(nn.Flatten(), BPLinear(12, 5, density=0.5), BPLinear(5, 3, output="argmax"))
    keys = set(net.state_dict())
    assert {"layers.1.field", "layers.1.mag", "layers.1.mask", "layers.2.field"} <= keys
    assert net.bp_layers[0].field.dtype == torch.float32
    masked = net.bp_layers[0]
    assert torch.all(masked.mag[masked.mask == 0] == 0) and torch.all(ops.bp_weight_var(masked.mag, masked.mask)[masked.mask == 0] == 0)
    clone = BPSequential.from_config(net.config())
    clone.load_state_dict(net.state_dict())
    x = torch.randn(7, 3, 4)
    assert torch.equal(clone(x), net(x))
    net.double()
    assert net.bp_layers[1].mag.dtype == F64
    net.to("cpu")
    y = torch.randint(0, 3, (7,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(x), net.predict(x, mode="bayes")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "prediction changed the model"
    net.bp_step(x, y)
    assert not torch.equal(before["layers.1.field"], net.state_dict()["layers.1.field"])


def test_predict_any_batch_size_in_chunks():
    net = mlp([10, 8, 4], seed=0)
    x = torch.randn(1000, 10)
    full = net.predict(x, chunk=1000)
    assert torch.equal(full, net.predict(x, chunk=37))
    assert net.predict(x[:1]).shape == (1,)
    assert torch.equal(net.predict(x, mode="bayes", chunk=7), net.predict(x, mode="bayes"))


@pytest.mark.parametrize("output, sizes", [("argmax", [10, 8, 4]), ("sign", [10, 8, 1])])
def test_scores_and_ensemble_predict(output, sizes):
    """predict decides on scores; an ensemble decides on the mean of its members' scores: the
    Bayesian output means x̂ (in [−1, 1]) or the point-wise preactivations."""
    x = torch.randn(300, 10, dtype=F64)
    nets = [mlp(sizes, output=output, seed=s, dtype=F64) for s in range(3)]
    for net in nets:
        net.bp_step(x[:64], torch.randint(0, 4, (64,)) if output == "argmax"
                    else torch.sign(torch.randn(64, dtype=F64)))
    for mode in ("pointwise", "bayes"):
        scores = [net.scores(x, mode, chunk=37) for net in nets]
        assert scores[0].shape == (300, sizes[-1])
        for net, z in zip(nets, scores):
            assert torch.equal(net.predict(x, mode), net.decide(z))
        if mode == "bayes":
            assert all((z.abs() <= 1).all() for z in scores)
        mean = (scores[0] + scores[1] + scores[2]) / 3
        expected = mean.argmax(1) if output == "argmax" else torch.where(mean[:, 0] >= 0, 1.0, -1.0).double()
        got = bpk.ensemble_predict(nets, x, mode)
        assert torch.equal(got, expected) and got.dtype == nets[0].predict(x, mode).dtype
        assert torch.equal(bpk.ensemble_predict(nets[:1], x, mode), nets[0].predict(x, mode))
        # members disagree somewhere, so the ensemble is not one of them
        assert any(not torch.equal(got, net.predict(x, mode)) for net in nets)
        y = nets[0].predict(x, "pointwise")  # labels of the networks' own kind
        error, members = bpk.ensemble_errors(nets, x, y, mode)
        assert error == bpk.ensemble_error(nets, x, y, mode) == nets[0].error_of(got, y)
        assert members == [net.error(x, y, mode) for net in nets]
    mismatched = [nets[0], mlp([10, 8, 3], seed=0, dtype=F64)]
    for ensemble in (bpk.ensemble_predict, bpk.ensemble_error, bpk.ensemble_errors):
        args = (x,) if ensemble is bpk.ensemble_predict else (x, nets[0].predict(x))
        with pytest.raises(ValueError, match="at least one model"):
            ensemble([], *args)
        with pytest.raises(ValueError, match="same outputs"):
            ensemble(mismatched, *args)


def test_masked_weights_stay_zero_through_training():
    net = mlp([20, 10, 1], output="sign", density=0.3, seed=0, dtype=F64)
    x = torch.randn(32, 20, dtype=F64)
    y = torch.sign(torch.randn(32, dtype=F64))
    for _ in range(3):
        net.bp_step(x, y)
    for layer in net.bp_layers:
        assert torch.all(layer.mag[layer.mask == 0] == 0)


def test_full_batch_reinforcement_schedule_changes_r():
    net = mlp([10, 1], output="sign", r=0.2, seed=0, dtype=F64)
    x, y = torch.randn(20, 10, dtype=F64), torch.sign(torch.randn(20, dtype=F64))
    net.bp_step(x, y, tau_max=12, pasp=False, r_step=0.1)
    assert math.isclose(net.bp_layers[0].r, 1 - 0.8 * 0.9 ** 2)
    assert net.bp_layers[0].rho == 0.9, "full-batch mode must restore rho after the step"


@pytest.mark.parametrize("bad,match", [
    (dict(x=torch.randn(4, 11)), r"input must have shape \[B, 10\]"),
    (dict(x=torch.randn(0, 10)), "batch is empty"),
    (dict(x=torch.full((4, 10), float("nan"))), "NaN or infinite"),
    (dict(y=torch.tensor([0, 1, 2, 3])), r"class labels must lie in \[0, 3\)"),
    (dict(y=torch.tensor([0.0, 1.0, 2.0, 1.0])), "integer class labels"),
    (dict(y=torch.tensor([0, 1])), r"labels must have shape \[4\]"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    net = mlp([10, 6, 3], seed=0)
    args = dict(x=torch.randn(4, 10), y=torch.tensor([0, 1, 2, 1]))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        net.bp_step(args["x"], args["y"])


def test_sign_output_needs_pm1_labels_and_layer_validation():
    net = mlp([5, 3, 1], output="sign", seed=0)
    with pytest.raises(ValueError, match="labels ±1"):
        net.bp_step(torch.randn(3, 5), torch.tensor([1.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="algo must be one of"):
        BPLinear(3, 2, algo="sgd")
    with pytest.raises(ValueError, match="do not chain"):
        BPSequential(BPLinear(3, 2), BPLinear(4, 2, output="argmax"))
    with pytest.raises(ValueError, match="must have output="):
        BPSequential(BPLinear(3, 2))
    with pytest.raises(ValueError, match="tau_max"):
        net.bp_step(torch.randn(3, 5), torch.tensor([1.0, 1.0, -1.0]), tau_max=0)


def test_version_and_public_api():
    assert bpk.__version__
    assert callable(bpk.BPLinear) and callable(bpk.fit)


# ---- the model-layer API: marginals, priors, the reduction hook, forward, registries --------

def test_set_marginals_sets_a_consistent_state():
    layer = BPLinear(4, 3, density=0.5, generator=torch.Generator().manual_seed(0), dtype=F64)
    field = torch.linspace(-2, 2, 12, dtype=F64).view(3, 4)
    layer.set_marginals(field)
    assert torch.equal(layer.field, field)
    assert torch.equal(layer.mag, torch.tanh(field) * layer.mask), "masked weights keep m = 0"
    mag = torch.full((3, 4), 0.25, dtype=F64)
    layer.set_marginals(field, mag)
    assert torch.equal(layer.mag, mag * layer.mask)
    sigma = ops.bp_weight_var(layer.mag, layer.mask)
    assert torch.equal(sigma[layer.mask == 0], torch.zeros_like(sigma[layer.mask == 0]))
    with pytest.raises(ValueError, match=r"field must have shape \[3, 4\]"):
        layer.set_marginals(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"mag must be finite and lie in \[-1, 1\]"):
        layer.set_marginals(field, torch.full((3, 4), 2.0))
    assert "sigma" not in layer.state_dict(), "σ is derived, never stored"


def test_legacy_checkpoint_with_sigma_loads():
    net = mlp([6, 4, 2], seed=0)
    state = net.state_dict()
    state["layers.0.sigma"] = 1 - state["layers.0.mag"].square()
    clone = mlp([6, 4, 2], seed=1)
    clone.load_state_dict(state)
    assert torch.equal(clone.bp_layers[0].mag, net.bp_layers[0].mag)


@pytest.mark.parametrize("tau_max", [1, 2])
def test_prior_kinds(tau_max):
    """θ = ρH (PasP, the default), a fixed field F (θ = F), or none (θ = 0): PasP equals the
    fixed prior F = ρ·H_start, and no prior equals full-batch mode (pasp=False)."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 5, generator=gen, dtype=F64), torch.randint(0, 3, (8,), generator=gen)
    pasp, fixed, none, full_batch = (mlp([5, 4, 3], algo="mf", seed=2, dtype=F64) for _ in range(4))
    for layer in fixed.bp_layers:
        layer.set_prior(layer.rho * layer.field)
    for layer in none.bp_layers:
        layer.set_prior(None)
    for net in (pasp, fixed, none):
        net.bp_step(x, y, tau_max=tau_max)
    full_batch.bp_step(x, y, tau_max=tau_max, pasp=False)
    for a, b, c, d in zip(pasp.bp_layers, fixed.bp_layers, none.bp_layers, full_batch.bp_layers):
        torch.testing.assert_close(a.field, b.field, rtol=1e-14, atol=1e-14)
        assert torch.equal(c.field, d.field) and torch.equal(c.mag, d.mag)
        assert not torch.allclose(a.field, c.field)


def test_fixed_prior_is_checkpointed_and_validated():
    net = mlp([5, 4, 3], seed=0, dtype=F64)
    prior = torch.randn(4, 5, dtype=F64)
    net.bp_layers[0].set_prior(prior)
    assert net.config()[0]["prior"] == "field"
    clone = BPSequential.from_config(net.config(), dtype=F64)
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone.bp_layers[0].prior_field, prior)
    with pytest.raises(ValueError, match=r"prior field must have shape \[4, 5\]"):
        net.bp_layers[0].set_prior(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="prior must be"):
        net.bp_layers[0].set_prior("ewc")


def test_reduction_hook_sees_every_field_message_before_the_update():
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(10, 6, generator=gen, dtype=F64), torch.randint(0, 3, (10,), generator=gen)
    plain, hooked, zeroed = (mlp([6, 5, 3], algo=a, seed=1, dtype=F64) for a in ("amp",) * 3)
    seen = []

    def record(h_ins):
        seen.append([tuple(h.shape) for h in h_ins])

    hooked.h_in_reduction = record
    zeroed.h_in_reduction = lambda h_ins: [h.zero_() for h in h_ins]
    for net in (plain, hooked, zeroed):
        net.bp_step(x, y, tau_max=2)
    assert seen == [[(5, 6), (3, 5)]] * 2, "one call per inner iteration, bottom to top"
    for a, b in zip(plain.state_dict().values(), hooked.state_dict().values()):
        assert torch.equal(a, b), "an identity hook changes nothing"
    # H_in = 0 leaves only the prior: H ← ρ·H_start in the hidden layer; the argmax layer
    # damps its field, H ← ψH + (1 − ψ)ρ·H_start, twice.
    (h_start, o_start) = (layer.field for layer in mlp([6, 5, 3], algo="amp", seed=1, dtype=F64).bp_layers)
    hidden, out = zeroed.bp_layers
    torch.testing.assert_close(hidden.field, hidden.rho * h_start, rtol=1e-15, atol=0)
    once = out.psi * o_start + (1 - out.psi) * out.rho * o_start
    torch.testing.assert_close(out.field, out.psi * once + (1 - out.psi) * out.rho * o_start,
                               rtol=1e-14, atol=1e-15)


def test_layers_are_drop_in_modules():
    net = mlp([12, 7, 5, 3], seed=0)
    x = torch.randn(9, 12)
    h = x
    for layer in net.bp_layers[:-1]:
        h = layer(h)
        assert set(h.unique().tolist()) <= {-1.0, 1.0}, "hidden layers output signs"
    logits = net.bp_layers[-1](h)
    assert logits.shape == (9, 3)
    assert torch.equal(logits.argmax(1), net(x))
    assert torch.equal(nn.Sequential(*net.layers)(x).argmax(1), net(x))


def test_a_new_algorithm_is_one_class_and_one_registration():
    from bpkernels.algorithms import ALGORITHMS, MF, register_algorithm

    @register_algorithm
    class HalfMF(MF):
        """MF with the field message halved: a toy variant."""
        name = "half-mf"

        def backward(self, st, b_top, w, hard, compute_b):
            b, h_in = super().backward(st, b_top, w, hard, compute_b)
            return b, 0.5 * h_in

    try:
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 6, generator=gen, dtype=F64), torch.sign(torch.randn(8, generator=gen, dtype=F64))
        toy = mlp([6, 4, 1], algo="half-mf", output="sign", seed=0, dtype=F64)
        zero = mlp([6, 4, 1], algo="mf", output="sign", seed=0, dtype=F64)
        toy.bp_step(x, y)
        zero.h_in_reduction = lambda h_ins: [h.mul_(0.5) for h in h_ins]
        zero.bp_step(x, y)
        for a, b in zip(toy.state_dict().values(), zero.state_dict().values()):
            assert torch.equal(a, b)
    finally:
        del ALGORITHMS["half-mf"]
