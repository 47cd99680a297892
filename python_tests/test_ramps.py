"""Per-epoch ramps of ρ and ψ (bpkernels.train.Ramp): the values, the training they drive
(against a hand-written loop), exact resumption and the refusals."""

import pytest
import torch

from bpkernels import Ramp, cli, data, mlp
from bpkernels.runlog import load_checkpoint
from bpkernels.train import MessagePassingTrainer, epoch_permutation, fit


def test_ramp_values_are_linear_then_held():
    ramp = Ramp("psi", 0.8, 0.95, 4)
    assert [ramp.value(e) for e in (1, 2, 3, 4, 5, 50)] == pytest.approx(
        [0.8, 0.85, 0.9, 0.95, 0.95, 0.95], abs=1e-15)
    assert Ramp("rho", 1.0, 0.9, 1, "output").value(1) == 0.9
    assert Ramp.parse("rho:1.0:1.0002:10:hidden") == Ramp("rho", 1.0, 1.0002, 10, "hidden")
    assert Ramp.parse("psi:0.8:0.9:5") == Ramp("psi", 0.8, 0.9, 5, "all")


@pytest.mark.parametrize("text, message", [
    ("psi:0.8:0.9", "param:start:end:epochs"),
    ("psi:a:0.9:3", "numbers"),
    ("psi:0.8:1.5:3", "end must be finite and lie in"),
    ("rho:-1:1:3", "start must be finite and lie in"),
    ("rho:1:inf:3", "end must be finite"),
    ("psi:nan:0.9:3", "start must be finite"),
    ("tau:1:2:3", "one of"),
    ("psi:0.8:0.9:0", "epochs must be"),
    ("psi:0.8:0.9:3:middle", "layers must be one of"),
])
def test_bad_ramps_are_refused_by_name(text, message):
    with pytest.raises(ValueError, match=message):
        Ramp.parse(text)


def test_fit_with_ramps_equals_a_hand_written_loop():
    """fit sets ψ of every layer and ρ of the output layer before each epoch's first batch."""
    ds = data.teacher_student(256, 64, (20, 9, 3), seed=1)
    ramps = (Ramp("psi", 0.5, 0.9, 3), Ramp("rho", 1.0, 0.8, 2, "output"))
    trained = mlp([20, 9, 3], algo="amp", seed=2)
    rows = fit(trained, ds, epochs=4, batch_size=32, seed=3, progress=False, ramps=ramps)

    by_hand = mlp([20, 9, 3], algo="amp", seed=2)
    psis, rhos = [0.5, 0.7, 0.9, 0.9], [1.0, 0.8, 0.8, 0.8]
    for epoch, psi, rho in zip(range(1, 5), psis, rhos):
        for layer in by_hand.bp_layers:
            layer.psi = psi
        by_hand.bp_layers[-1].rho = rho
        order = epoch_permutation(256, 3, epoch)
        for j in range(256 // 32):
            idx = order[j * 32:(j + 1) * 32]
            by_hand.bp_step(ds.train_x[idx], ds.train_y[idx], tau_max=1)
    for a, b in zip(trained.state_dict().values(), by_hand.state_dict().values()):
        assert torch.equal(a, b)
    assert [layer.psi for layer in trained.bp_layers] == pytest.approx([0.9, 0.9])
    assert trained.bp_layers[0].rho == 1.0001 and trained.bp_layers[-1].rho == 0.8
    assert rows[-1]["epoch"] == 4


def test_resume_with_ramps_is_bit_identical_and_checks_them(tmp_path):
    ds = data.teacher_student(200, 50, (16, 7, 3), seed=0)
    ramps = [Ramp("psi", 0.6, 0.95, 4, "hidden"), Ramp("rho", 1.0, 1.0002, 4, "hidden")]
    straight = mlp([16, 7, 3], algo="bpi", seed=0)
    fit(straight, ds, epochs=5, batch_size=25, seed=4, run_dir=str(tmp_path / "a"),
        progress=False, ramps=ramps)
    first = mlp([16, 7, 3], algo="bpi", seed=0)
    fit(first, ds, epochs=2, batch_size=25, seed=4, run_dir=str(tmp_path / "b"),
        progress=False, ramps=ramps)
    resumed = mlp([16, 7, 3], algo="bpi", seed=0)
    fit(resumed, ds, epochs=5, batch_size=25, seed=4, run_dir=str(tmp_path / "b"),
        resume=True, progress=False, ramps=ramps)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="ramps"):
        fit(mlp([16, 7, 3], algo="bpi", seed=0), ds, epochs=6, batch_size=25, seed=4,
            run_dir=str(tmp_path / "b"), resume=True, progress=False, ramps=ramps[:1])


def test_conflicting_ramps_are_refused():
    model = mlp([8, 5, 3], algo="amp")
    with pytest.raises(ValueError, match="two ramps set psi of layer 1"):
        MessagePassingTrainer(model, ramps=[Ramp("psi", 0.8, 0.9, 3),
                                            Ramp("psi", 0.8, 0.9, 3, "output")])
    with pytest.raises(ValueError, match="anchor_rho and a ramp of rho"):
        MessagePassingTrainer(model, anchor="all", anchor_rho=0.9,
                              ramps=[Ramp("rho", 1.0, 1.0, 3)])
    with pytest.raises(ValueError, match="needs a network with hidden layers"):
        MessagePassingTrainer(mlp([8, 3], algo="amp"), ramps=[Ramp("psi", 0.8, 0.9, 3, "hidden")])
    with pytest.raises(TypeError, match="Ramp"):
        MessagePassingTrainer(model, ramps=["psi:0.8:0.9:3"])
    with pytest.raises(ValueError, match="give them to your trainer"):
        fit(MessagePassingTrainer(model), data.teacher_student(20, 5, (8, 5, 3), seed=0),
            epochs=1, batch_size=4, progress=False, ramps=[Ramp("psi", 0.8, 0.9, 3)])


def test_cli_ramp_is_recorded_and_validated(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--dataset", "teacher", "--algo", "amp", "--hidden", "6",
                     "--epochs", "2", "--batch-size", "20", "--no-progress", "--subset", "200",
                     "--test-subset", "50",
                     "--ramp", "psi:0.5:0.9:2", "--run-dir", str(run_dir)]) == 0
    state = load_checkpoint(str(run_dir / "checkpoint.pt"))
    assert state["config"]["ramps"] == [dict(param="psi", start=0.5, end=0.9, epochs=2,
                                             layers="all")]
    assert [spec.get("psi") for spec in state["trainer"]["model_config"]
            if spec["type"] != "flatten"] == [0.9, 0.9]
    with pytest.raises(SystemExit):
        cli.main(["train", "--ramp", "psi:0.5:2:2"])
    assert "end must be finite and lie in" in capsys.readouterr().err
