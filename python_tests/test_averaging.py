"""The posterior averaged over mini-batches (bpkernels.averaging, fit(average_from=…)): its
moments against a hand-written loop, for ±1 (dense, masked, conv) and Gaussian weights;
training left unchanged; the averaged network's errors; exact resumption; load, eval and
export; the refusals."""

import json

import pytest
import torch

from bpkernels import build_arch, cli, data, evaluate, fit, load_model, mlp
from bpkernels.averaging import PosteriorAverage
from bpkernels.baselines import make_trainer
from bpkernels.packed import load_packed
from bpkernels.runlog import CHECKPOINT, load_checkpoint
from bpkernels.train import epoch_permutation

F64 = torch.float64
P, BATCH, SEED = 200, 20, 3
TIMING = ("seconds", "cpu_seconds")

# name: (network builder, teacher sizes)
NETS = {
    "amp-dense": (lambda: mlp([16, 9, 3], algo="amp", seed=2, dtype=F64), (16, 9, 3)),
    "bpi-masked": (lambda: mlp([16, 9, 3], algo="bpi", density=0.6, seed=2, dtype=F64), (16, 9, 3)),
    "mf-conv": (lambda: build_arch("conv3k3s2p1-dense3", algo="mf", num_classes=3,
                                   input_shape=(1, 5, 5), seed=2, dtype=F64), (25, 3)),
    "gaussian-sign": (lambda: mlp([16, 9, 1], output="sign", weights="gaussian", seed=2,
                                  dtype=F64), (16, 9, 1)),
}


def hand_average(name: str, epochs: int, average_from: int):
    """Trains by bp_step in fit's order and averages, by hand, every layer's m, m² and σ
    (σ only for Gaussian weights) over the mini-batches of the epochs >= average_from."""
    build, sizes = NETS[name]
    ds, model = data.teacher_student(P, 60, sizes, seed=1), build()
    sums, count = None, 0
    for epoch in range(1, epochs + 1):
        order = epoch_permutation(P, SEED, epoch)
        for j in range(P // BATCH):
            idx = order[j * BATCH:(j + 1) * BATCH]
            model.bp_step(ds.train_x[idx], ds.train_y[idx])
            if epoch >= average_from:
                now = [(l.mag.clone(), l.mag * l.mag, getattr(l, "variance", None)) for l in model.bp_layers]
                sums = now if sums is None else [
                    tuple(None if a is None else a + b for a, b in zip(s, n)) for s, n in zip(sums, now)]
                count += 1
    return model, [tuple(None if t is None else t / count for t in s) for s in sums]


def train(name: str, run_dir, epochs: int, average_from: int | None, resume: bool = False):
    build, sizes = NETS[name]
    ds, model = data.teacher_student(P, 60, sizes, seed=1), build()
    rows = fit(model, ds, epochs=epochs, batch_size=BATCH, seed=SEED, progress=False,
               run_dir=str(run_dir), resume=resume, average_from=average_from)
    return model, rows, ds


@pytest.mark.parametrize("name", list(NETS))
def test_average_equals_the_hand_written_mean_and_changes_no_training(tmp_path, name):
    model, rows, ds = train(name, tmp_path / "avg", 4, average_from=3)
    by_hand, means = hand_average(name, 4, 3)
    plain, plain_rows, _ = train(name, tmp_path / "plain", 4, average_from=None)
    for a, b, c in zip(model.state_dict().values(), by_hand.state_dict().values(),
                       plain.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    for row, plain_row in zip(rows, plain_rows):
        assert {k: v for k, v in row.items() if not k.startswith("avg_") and k not in TIMING} == \
            {k: v for k, v in plain_row.items() if k not in TIMING}

    net, _ = load_model(str(tmp_path / "avg" / CHECKPOINT), average=True)
    for layer, (mean, mean_sq, variance) in zip(net.bp_layers, means):
        torch.testing.assert_close(layer.mag, mean, rtol=0, atol=1e-15)
        if variance is None:  # ±1 weights: H = atanh m̄, masked weights stay 0
            torch.testing.assert_close(torch.tanh(layer.field), mean, rtol=0, atol=1e-12)
            if layer.mask is not None:
                assert (layer.mag[layer.mask == 0] == 0).all()
        else:  # Gaussian: the mixture's variance, mean σ + mean m² − m̄²
            mixture = variance + mean_sq - mean * mean
            torch.testing.assert_close(layer.variance, mixture, rtol=1e-12, atol=0)
            torch.testing.assert_close(layer.field, mean / mixture, rtol=1e-12, atol=0)
            assert (layer.variance >= variance * (1 - 1e-12)).all()

    assert [row["avg_test_error"] is None for row in rows] == [True, True, False, False]
    expected = evaluate(net, ds)
    assert {k: rows[-1][f"avg_{k}"] for k in expected} == expected


def test_an_average_of_one_step_is_the_network_itself():
    ds = data.teacher_student(P, 60, (16, 9, 3), seed=1)
    model = mlp([16, 9, 3], algo="amp", seed=2)
    model.bp_step(ds.train_x[:BATCH], ds.train_y[:BATCH])
    average = PosteriorAverage(model)
    average.add()
    net = average.network()
    for mode in ("pointwise", "bayes"):
        assert torch.equal(net.scores(ds.test_x, mode), model.scores(ds.test_x, mode))
    assert net is not model and net.bp_layers[0].mag.data_ptr() != model.bp_layers[0].mag.data_ptr()


def test_resume_restores_the_average_bit_for_bit(tmp_path):
    _, straight_rows, _ = train("amp-dense", tmp_path / "a", 5, average_from=2)
    train("amp-dense", tmp_path / "b", 3, average_from=2)
    _, resumed_rows, _ = train("amp-dense", tmp_path / "b", 5, average_from=2, resume=True)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert strip(resumed_rows) == strip(straight_rows)
    a, b = (load_checkpoint(str(tmp_path / d / CHECKPOINT))["trainer"]["average"] for d in "ab")
    assert a["count"] == b["count"] == 4 * (P // BATCH)
    for x, y in zip(sum(a["sums"], []), sum(b["sums"], [])):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="average_from: 2 in the checkpoint, 3 now"):
        train("amp-dense", tmp_path / "b", 6, average_from=3, resume=True)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_bad_average_from_is_refused_by_name(bad):
    ds = data.teacher_student(P, 60, (16, 9, 3), seed=1)
    with pytest.raises(ValueError, match="average_from must be an epoch >= 1"):
        fit(mlp([16, 9, 3]), ds, epochs=1, batch_size=BATCH, progress=False, average_from=bad)


def test_misuse_is_refused_by_name(tmp_path):
    ds = data.teacher_student(P, 60, (16, 9, 3), seed=1)
    baseline = make_trainer("ste", ds, hidden=[9], total_steps=10)
    with pytest.raises(ValueError, match="a BPSequential only"):
        fit(baseline, ds, epochs=1, batch_size=BATCH, progress=False, average_from=1)
    with pytest.raises(ValueError, match="empty"):
        PosteriorAverage(mlp([16, 9, 3])).network()
    with pytest.raises(ValueError, match="does not match"):
        PosteriorAverage(mlp([16, 9, 3])).load_state_dict(
            PosteriorAverage(mlp([16, 8, 3])).state_dict())
    train("amp-dense", tmp_path / "plain", 1, average_from=None)
    train("amp-dense", tmp_path / "late", 1, average_from=2)  # the average has not begun
    for run in ("plain", "late"):
        with pytest.raises(ValueError, match="holds no posterior average"):
            load_model(str(tmp_path / run / CHECKPOINT), average=True)


def test_command_line_trains_evaluates_and_exports_the_average(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "teacher", "--subset", "300", "--test-subset", "100",
                     "--algo", "amp", "--hidden", "7", "--epochs", "2", "--average-from", "2",
                     "--no-progress", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert cli.main(["eval", str(run / CHECKPOINT), "--average"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_error"] == last["avg_test_error"]
    assert result["test_error_bayes"] == last["avg_test_error_bayes"]

    out = tmp_path / "avg.bpk"
    assert cli.main(["export", str(run / CHECKPOINT), str(out), "--average"]) == 0
    net, _ = load_model(str(run / CHECKPOINT), average=True)
    x = torch.randn(50, 784).sign()
    assert torch.equal(load_packed(out)(x), net(x))
    with pytest.raises(SystemExit, match="--average-from is not supported by continual"):
        cli.main(["continual", "--dataset", "teacher", "--average-from", "2"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["amp-dense", "gaussian-sign"])
def test_cuda_average_matches_cpu(name):
    """The float64 sums live on the model's device; CUDA and CPU runs average the same moments."""
    build, sizes = NETS[name]
    ds = data.teacher_student(P, 60, sizes, seed=1)
    cpu, gpu = build(), build().to("cuda")
    averages = [PosteriorAverage(cpu), PosteriorAverage(gpu)]
    for j in range(4):
        x, y = ds.train_x[j * BATCH:(j + 1) * BATCH], ds.train_y[j * BATCH:(j + 1) * BATCH]
        cpu.bp_step(x, y)
        gpu.bp_step(x.cuda(), y.cuda())
        for average in averages:
            average.add()
    assert all(t.device.type == "cuda" for t in sum(averages[1].sums, []))
    want, got = (average.network() for average in averages)
    for (key, a), b in zip(want.state_dict().items(), got.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11, msg=key)
    for mode in ("pointwise", "bayes"):
        assert torch.equal(got.predict(ds.test_x.cuda(), mode).cpu(), want.predict(ds.test_x, mode))
