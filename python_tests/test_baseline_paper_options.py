"""Options of the gradient baselines that the paper's experiments need: fixed weight masks (the
ones message passing draws), plain SGD with Xavier initialisation, and the DeepMP paper's
BinaryNet preset."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bpkernels import cli, data, mlp
from bpkernels.baselines import make_trainer, method_options, train_baseline
from bpkernels.baselines.binarynet import message_passing_masks


def small_data(task_classes=3):
    return data.teacher_student(256, 128, (30, 11, task_classes), seed=0)


@pytest.mark.parametrize("density", [0.3, 1.0])
def test_masks_are_those_of_the_message_passing_network(density):
    sizes = [30, 11, 7, 3]
    model = mlp(sizes, density=density, seed=5)
    masks = message_passing_masks([(n, d) for d, n in zip(sizes[:-1], sizes[1:])], density, 5)
    for layer, mask in zip(model.bp_layers, masks):
        assert torch.equal(layer.mask.double(), mask)
    with pytest.raises(ValueError, match="density must be in"):
        message_passing_masks([(2, 2)], 0.0, 0)


@pytest.mark.parametrize("method", ["ste", "st", "bayesbinn"])
def test_masked_weights_neither_act_nor_learn(method):
    ds = small_data()
    trainer = make_trainer(method, ds, [11], total_steps=10, seed=2, density=0.4)
    net = trainer.model
    masks = [net.mask_0, net.mask_1]
    assert all(torch.equal(m, mm.to(m)) for m, mm in
               zip(masks, message_passing_masks([(11, 30), (3, 11)], 0.4, 2)))
    x = ds.train_x[:32]
    # the output does not depend on masked weights
    weights = [torch.randn(f.shape) for f in net.fields]
    changed = [w + 5 * (1 - m) * torch.randn(w.shape) for w, m in zip(weights, masks)]
    net.eval()
    assert torch.equal(net(x, weights), net(x, changed))
    before = [f.detach().clone() for f in net.fields]
    for i in range(3):
        trainer.step(ds.train_x[32 * i:32 * (i + 1)], ds.train_y[32 * i:32 * (i + 1)])
    for f, b, m in zip(net.fields, before, masks):
        moved = (f.detach() != b)
        assert not moved[m == 0].any(), "a masked weight moved"
        assert moved[m == 1].any()
    with pytest.raises(ValueError, match="masks needs one mask"):
        type(net)(net.layers, masks=[torch.ones(3, 3)])


def test_masks_survive_a_resumed_run(tmp_path):
    ds = small_data()
    full = train_baseline("ste", ds, [11], epochs=2, batch_size=64, seed=1, progress=False,
                          density=0.5)
    train_baseline("ste", ds, [11], epochs=1, batch_size=64, seed=1, progress=False,
                   density=0.5, run_dir=str(tmp_path))
    resumed = train_baseline("ste", ds, [11], epochs=2, batch_size=64, seed=1, progress=False,
                             density=0.5, run_dir=str(tmp_path), resume=True)
    assert [r["test_error"] for r in resumed] == [r["test_error"] for r in full]


def test_sgd_and_xavier_initialisation():
    ds = small_data()
    trainer = make_trainer("ste", ds, [11], total_steps=10, seed=0, optimizer="sgd",
                           init="glorot", lr=0.5, schedule="constant", glorot=False)
    assert isinstance(trainer.optimizers[0], torch.optim.SGD)
    for f in trainer.model.fields:
        bound = math.sqrt(6 / sum(f.shape))
        assert f.abs().max() <= bound and f.abs().max() > 0.8 * bound
    # one plain SGD step: w ← clip(w − η g, −1, 1)
    f = trainer.model.fields[0]
    x, y = ds.train_x[:64], ds.train_y[:64]
    w0 = f.detach().clone()
    trainer.model.train()
    loss = trainer.objective(trainer.model(x, trainer.train_weights()), y)
    grad = torch.autograd.grad(loss, f)[0]
    trainer.step(x, y)
    assert torch.allclose(f.detach(), (w0 - 0.5 * grad).clamp(-1, 1), atol=1e-6)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_trainer("ste", ds, [11], total_steps=10, optimizer="rmsprop")
    with pytest.raises(ValueError, match="init must be a positive number or 'glorot'"):
        make_trainer("ste", ds, [11], total_steps=10, init="xavier")


def test_binarynet_deepmp_preset_learns_without_batch_norm():
    opts = method_options("ste", "binarynet-deepmp")
    assert opts["batch_norm"] is False and opts["optimizer"] == "sgd" and opts["lr"] == 10.0
    assert opts["schedule"] == "constant" and opts["clip"] == 1.0 and opts["init"] == "glorot"
    ds = data.teacher_student(1024, 512, (40, 21, 1), seed=3)
    rows = train_baseline("ste", ds, [21], epochs=4, batch_size=32, seed=0, progress=False,
                          preset="binarynet-deepmp")
    trainer = make_trainer("ste", ds, [21], total_steps=1, preset="binarynet-deepmp")
    assert len(trainer.model.norms) == 0 and trainer.model.real_parameters() == []
    assert rows[-1]["train_error"] < 0.25 and rows[-1]["test_error"] < 0.3


def test_cli_density_masks_the_gradient_baselines_too(tmp_path):
    run = tmp_path / "ste"
    assert cli.main(["train", "--method", "ste", "--dataset", "teacher", "--subset", "256",
                     "--test-subset", "64", "--hidden", "11", "--density", "0.5", "--epochs", "1",
                     "--batch-size", "64", "--run-dir", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["options"]["density"] == 0.5
