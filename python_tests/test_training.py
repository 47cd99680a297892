"""The trainer, the data loaders and the command line, end to end."""

import argparse
import gzip
import json
import os

import numpy as np
import pytest
import torch

from bpkernels.runlog import load_checkpoint
from torch.utils.data import DataLoader, TensorDataset

from bpkernels import cli, data, mlp
from bpkernels.train import MessagePassingTrainer, fit, load_model

from helpers import fashion_mnist_or_skip



# ---- data -------------------------------------------------------------------------------

def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_dir(tmp_path, n_train=20, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    write_idx(str(tmp_path / f"train-images-idx3-ubyte{ext}"), rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(str(tmp_path / f"train-labels-idx1-ubyte{ext}"), np.arange(n_train) % 10)
    write_idx(str(tmp_path / f"t10k-images-idx3-ubyte{ext}"), rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(str(tmp_path / f"t10k-labels-idx1-ubyte{ext}"), np.arange(n_test) % 10)
    return str(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_normalises_and_builds_tasks(tmp_path, gz):
    root = fake_fashion_dir(tmp_path, gz=gz)
    ds = data.load_fashion_mnist(root)
    assert ds.train_x.shape == (20, 784) and ds.test_x.shape == (10, 784)
    assert abs(float(ds.train_x.mean())) < 1e-5 and abs(float(ds.train_x.std()) - 1) < 1e-3
    assert ds.train_y.tolist() == [i % 10 for i in range(20)] and ds.num_classes == 10
    binary = data.load_fashion_mnist(root, task="evenodd", subset=8)
    assert binary.num_classes == 2 and binary.train_x.shape == (8, 784)
    assert set(binary.train_y.tolist()) <= {-1.0, 1.0}
    full = data.load_fashion_mnist(root, task="evenodd")
    assert full.train_y.tolist() == [1.0 if i % 2 else -1.0 for i in range(20)]


def test_missing_dataset_names_the_package(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(str(tmp_path))
    with pytest.raises(SystemExit, match="dataset-fashion-mnist"):
        cli.main(["train", "--data-dir", str(tmp_path), "--epochs", "1"])


def test_real_fashion_mnist_files():
    ds = fashion_mnist_or_skip()
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    assert ds.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10


# ---- training ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bpi", "amp", "mf"])
def test_reference_functional_fashion_mnist_evenodd(algo):
    """The reference implementation's own end-to-end test (docs/algorithms.md §11.8): 1000 Fashion-MNIST
    even/odd examples, 784-201-201-1, ρ = (1, 1, 0.9), ψ = 0.8, B = 128, 20 epochs ⇒ at most 30
    training errors."""
    ds = fashion_mnist_or_skip(task="evenodd", subset=1000, test_subset=1000)
    model = mlp([784, 201, 201, 1], algo=algo, output="sign", rho=[1.0, 1.0, 0.9], psi=0.8, seed=0)
    rows = fit(model, ds, epochs=20, batch_size=128, progress=False, eval_bayes=False)
    assert round(rows[-1]["train_error"] * 1000) <= 30


@pytest.mark.parametrize("algo", ["bpi", "amp", "mf"])
def test_teacher_student_perceptron(algo):
    """A binary perceptron student of a random binary perceptron teacher: N = 101 inputs,
    P = 2N = 202 Gaussian patterns, one batch of all patterns per epoch. For the Ising
    perceptron at α = P/N = 2 the teacher is the only weight vector consistent with the data
    (perfect generalisation sets in at α ≈ 1.245) and AMP-type message passing finds it (it
    does so above α ≈ 1.49; Györgyi 1990, Sompolinsky–Tishby–Seung 1990). So the student must
    fit the training set and recover the teacher: test error at most 2 % (a chance-level or a
    broken update sits near 50 %, a merely fitted one near 10 %)."""
    ds = data.teacher_student(202, 2000, (101, 1), seed=3)
    model = mlp([101, 1], algo=algo, output="sign", rho=1.0, psi=0.8, seed=0)
    rows = fit(model, ds, epochs=30, batch_size=202, progress=False, eval_bayes=False)
    assert rows[-1]["train_error"] == 0.0
    assert rows[-1]["test_error"] <= 0.02


def test_checkpoint_resume_is_bit_identical(tmp_path):
    ds = data.teacher_student(300, 100, (20, 7, 3), seed=0)
    straight = mlp([20, 7, 3], algo="bpi", seed=0)
    fit(straight, ds, epochs=4, batch_size=32, seed=5, run_dir=str(tmp_path / "a"), progress=False)

    interrupted = mlp([20, 7, 3], algo="bpi", seed=0)
    fit(interrupted, ds, epochs=2, batch_size=32, seed=5, run_dir=str(tmp_path / "b"), progress=False)
    resumed = mlp([20, 7, 3], algo="bpi", seed=0)
    rows = fit(resumed, ds, epochs=4, batch_size=32, seed=5, run_dir=str(tmp_path / "b"),
               resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    with open(tmp_path / "b" / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2, 3, 4]
    loaded, state = load_model(str(tmp_path / "b" / "checkpoint.pt"))
    assert state["epoch"] == 4
    assert torch.equal(loaded(ds.test_x), resumed(ds.test_x))
    assert not [p for p in os.listdir(tmp_path / "b") if p.startswith(".tmp")]


def test_fit_rejects_mismatched_data():
    ds = data.teacher_student(50, 10, (8, 3), seed=0)
    with pytest.raises(ValueError, match="output classes"):
        fit(mlp([8, 1], output="sign"), ds, epochs=1)
    with pytest.raises(ValueError, match="batch_size"):
        fit(mlp([8, 3]), ds, epochs=1, batch_size=51)


@pytest.mark.parametrize("form", ["dataset", "tensors", "torch-dataset", "dataloader"])
def test_fit_accepts_tensors_and_torch_datasets(form):
    """The same run from our Dataset, a pair of tensors, a map-style torch Dataset and a
    DataLoader of (x, y) pairs: identical metrics and fields."""
    ds = data.teacher_student(96, 40, (12, 5, 3), seed=2)
    train, test = (ds.train_x, ds.train_y), (ds.test_x, ds.test_y)
    if form == "torch-dataset":
        train, test = TensorDataset(*train), TensorDataset(*test)
    elif form == "dataloader":
        train, test = (DataLoader(TensorDataset(*t), batch_size=7) for t in (train, test))
    reference_model, model = mlp([12, 5, 3], seed=0), mlp([12, 5, 3], seed=0)
    expected = fit(reference_model, ds, epochs=2, batch_size=16, progress=False)
    if form == "dataset":
        rows = fit(model, ds, epochs=2, batch_size=16, progress=False)
    else:
        rows = fit(model, train, epochs=2, batch_size=16, progress=False, test_data=test)
    timing = ("seconds", "cpu_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows] == \
        [{k: v for k, v in r.items() if k not in timing} for r in expected]
    for a, b in zip(model.state_dict().values(), reference_model.state_dict().values()):
        assert torch.equal(a, b)
    rows = fit(mlp([12, 5, 3], seed=0), train, epochs=1, batch_size=16, progress=False)
    assert rows[0]["test_error"] is None and rows[0]["train_error"] is not None


def test_fit_validates_the_data_once_with_clear_errors():
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    bad_x = x.clone()
    bad_x[17, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit(mlp([6, 3]), (bad_x, y), epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="40 inputs but 39 labels"):
        fit(mlp([6, 3]), (x, y[:39]), epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="the model has 3 output classes, the data tensors has 4"):
        fit(mlp([6, 3]), (x, y), epochs=1, batch_size=8, progress=False,
            test_data=(x[:5], torch.tensor([0, 1, 2, 3, 0])))
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\)"):
        fit(mlp([6, 3]), data.Dataset(x, y, x[:5], torch.tensor([0, 1, 2, 3, 0]), 3, "bad"),
            epochs=1, batch_size=8, progress=False)
    with pytest.raises(TypeError, match="pair of tensors"):
        fit(mlp([6, 3]), x, epochs=1, progress=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo", ["bpi", "amp", "mf", "bp"])
def test_cuda_step_makes_no_host_synchronisation(algo):
    ds = data.teacher_student(64, 16, (20, 9, 3), seed=0).to("cuda")
    model = mlp([20, 9, 3], algo=algo, seed=0, device="cuda")
    trainer = MessagePassingTrainer(model, tau_max=2)
    ds = trainer.prepare(ds)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = [trainer.step(ds.train_x[i:i + 16], ds.train_y[i:i + 16]) for i in (0, 16, 32)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(trainer.epoch_metrics(stats)) == 1


def test_full_batch_mode_with_reinforcement():
    ds = data.teacher_student(60, 50, (31, 1), seed=1)
    model = mlp([31, 1], algo="bpi", output="sign", r=0.2, init_std=0.0, seed=0)
    rows = fit(model, ds, epochs=3, batch_size=None, tau_max=20, r_step=0.01, progress=False)
    assert rows[-1]["train_error"] == 0.0


# ---- command line -------------------------------------------------------------------------

def test_cli_train_eval_compare(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "teacher", "--task", "evenodd", "--subset", "300", "--test-subset", "100",
              "--hidden", "11", "--epochs", "2", "--no-progress"]
    assert cli.main(["train", *common, "--algo", "amp", "--run-dir", str(run)]) == 0
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "config.json", "errors.png", "metrics.jsonl"]
    capsys.readouterr()
    assert cli.main(["eval", str(run / "checkpoint.pt")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["epoch"] == 2 and 0 <= result["test_error_bayes"] <= 1
    out = tmp_path / "cmp"
    assert cli.main(["compare", *common, "--methods", "bpi,mf", "--out", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert table.count("| bpi |") == 2 and table.count("| mf |") == 2
    assert (out / "compare.png").exists() and (out / "compare.csv").exists()


def test_cli_eval_ensemble(tmp_path, capsys):
    """eval of several checkpoints: the ensemble's errors (the mean of the members' scores,
    bpkernels.ensemble_error) and each member's; checkpoints trained on other data are refused."""
    common = ["--dataset", "teacher", "--task", "evenodd", "--subset", "300", "--test-subset", "200",
              "--hidden", "9", "--epochs", "2", "--no-progress"]
    runs = {name: tmp_path / name for name in ("amp", "mf", "seed1")}
    for name, extra in (("amp", ["--algo", "amp"]), ("mf", ["--algo", "mf"]),
                        ("seed1", ["--algo", "amp", "--seed", "1"])):
        assert cli.main(["train", *common, *extra, "--run-dir", str(runs[name])]) == 0
    capsys.readouterr()
    checkpoints = [str(runs[name] / "checkpoint.pt") for name in ("amp", "mf")]
    assert cli.main(["eval", *checkpoints]) == 0
    result = json.loads(capsys.readouterr().out)
    models = [load_model(c)[0] for c in checkpoints]
    no_override = argparse.Namespace(dataset=None, task=None, data_dir=None)
    test = cli.load_data(cli._checkpoint_data(no_override, load_model(checkpoints[0])[1],
                                              torch.float32))
    for mode, suffix in (("pointwise", ""), ("bayes", "_bayes")):
        mean = sum(m.scores(test.test_x, mode) for m in models) / 2
        pred = torch.where(mean[:, 0] >= 0, 1.0, -1.0)
        assert result[f"test_error{suffix}"] == float((pred != test.test_y).double().mean())
        assert result[f"members_test_error{suffix}"] == [m.error(test.test_x, test.test_y, mode)
                                                        for m in models]
    assert result["members"] == 2 and result["epochs"] == [2, 2]
    assert result["members_test_error"][0] != result["members_test_error"][1]  # they differ
    assert 0 <= result["train_error"] <= 1 and 0 <= result["train_error_bayes"] <= 1
    ste = tmp_path / "ste"
    assert cli.main(["train", *common, "--method", "ste", "--run-dir", str(ste)]) == 0
    for command in (["eval", str(ste / "checkpoint.pt")],
                    ["export", str(ste / "checkpoint.pt"), str(tmp_path / "ste.bpk")]):
        with pytest.raises(SystemExit, match="ste/checkpoint.pt is not a bpkernels message-passing"):
            cli.main(command)
    with pytest.raises(SystemExit, match="holds no posterior average"):
        cli.main(["eval", *checkpoints, "--average"])
    with pytest.raises(SystemExit, match="seed1/checkpoint.pt was trained on other data"):
        cli.main(["eval", checkpoints[0], str(runs["seed1"] / "checkpoint.pt")])
    assert cli.main(["train", *common, "--algo", "amp", "--dtype", "float64",
                     "--run-dir", str(tmp_path / "f64")]) == 0
    with pytest.raises(SystemExit, match="must share a dtype, got torch.float32, torch.float64"):
        cli.main(["eval", checkpoints[0], str(tmp_path / "f64" / "checkpoint.pt")])


def test_cli_train_refuses_options_its_method_does_not_read(tmp_path, capsys):
    """A gradient baseline reads no message-passing option and message passing no --preset or
    --opt: train names the ignored options instead of running without them. Options both read
    (--density, --arch, ...) pass."""
    common = ["train", "--dataset", "teacher", "--subset", "64", "--test-subset", "32",
              "--hidden", "5", "--epochs", "1", "--batch-size", "16", "--no-progress",
              "--run-dir", str(tmp_path / "run"), "--overwrite"]
    with pytest.raises(SystemExit, match="--algo, --rho, --tau-max, --average-from: "
                                         "message-passing options, which --method ste"):
        cli.main([*common, "--method", "ste", "--algo", "amp", "--rho", "0.9", "--tau-max", "2",
                  "--average-from", "1"])
    for flag in (["--psi", "0.9"], ["--ramp", "psi:0.8:0.9:2"], ["--weights", "gaussian"],
                 ["--no-bayes"], ["--init-std", "0.5"]):
        with pytest.raises(SystemExit, match=f"^error: {flag[0]}: message-passing options"):
            cli.main([*common, "--method", "bayesbinn", *flag])
    with pytest.raises(SystemExit, match="--preset, --opt: options of the gradient baselines"):
        cli.main([*common, "--preset", "binarynet-deepmp", "--opt", "lr=0.1"])
    assert cli.main([*common, "--method", "ste", "--density", "0.5", "--opt", "lr=0.01"]) == 0
    assert cli.main([*common, "--algo", "amp", "--density", "0.5", "--psi", "0.9"]) == 0


def test_cli_compare_refuses_options_none_of_its_methods_reads(tmp_path):
    """compare reads the message-passing options when one of its methods is message passing
    and --preset/--opt when one is a gradient baseline; otherwise it names them."""
    common = ["compare", "--dataset", "teacher", "--subset", "64", "--test-subset", "32",
              "--hidden", "5", "--epochs", "1", "--batch-size", "16", "--no-progress",
              "--out", str(tmp_path / "cmp")]
    with pytest.raises(SystemExit, match="^error: --rho, --psi: message-passing options, which "
                                         "--methods ste,bayesbinn does not read"):
        cli.main([*common, "--methods", "ste,bayesbinn", "--rho", "0.9", "--psi", "0.7"])
    with pytest.raises(SystemExit, match="^error: --opt: options of the gradient baselines "
                                         "\\(ste, bayesbinn, st\\), which --methods bpi\\+amp does not"):
        cli.main([*common, "--methods", "bpi+amp", "--opt", "lr=0.1"])
    assert cli.main([*common, "--methods", "amp,ste", "--psi", "0.7", "--opt", "lr=0.01"]) == 0


@pytest.mark.parametrize("command", ["train", "compare", "continual"])
def test_cli_batch_size_larger_than_the_training_set_is_refused(tmp_path, command):
    """A mini-batch larger than the training set exits in one line naming both sizes (it was a
    traceback from fit); a negative one is refused by the parser."""
    base = [command, "--dataset", "teacher", "--subset", "64", "--test-subset", "32",
            "--hidden", "5", "--no-progress"]
    base += {"train": ["--epochs", "1", "--run-dir", str(tmp_path / "r")],
             "compare": ["--epochs", "1", "--methods", "amp,ste", "--out", str(tmp_path / "c")],
             "continual": ["--tasks", "2", "--epochs-per-task", "1", "--methods", "amp,ste",
                           "--out", str(tmp_path / "cl")]}[command]
    with pytest.raises(SystemExit, match="^error: --batch-size 65 is larger than the 64 "
                                         "training examples; give at most 64, or 0"):
        cli.main([*base, "--batch-size", "65"])
    with pytest.raises(SystemExit):
        cli.main([*base, "--batch-size", "-1"])


def test_cli_full_batch_trains_the_gradient_baselines_on_one_batch_too(tmp_path):
    """--batch-size 0 in compare means one batch of all the training examples for every method
    (a gradient baseline used 128 instead); continual refuses it by name (it divided by zero)."""
    common = ["--dataset", "teacher", "--subset", "64", "--test-subset", "32", "--hidden", "5",
              "--no-progress", "--batch-size", "0", "--methods", "amp,ste"]
    assert cli.main(["compare", *common, "--epochs", "1", "--out", str(tmp_path / "c")]) == 0
    for method in ("amp", "ste"):
        config = json.load(open(tmp_path / "c" / method / "config.json"))
        assert config["batch_size"] == 64
    with pytest.raises(SystemExit, match="--batch-size 0 is not supported by continual"):
        cli.main(["continual", *common, "--tasks", "2", "--epochs-per-task", "1",
                  "--out", str(tmp_path / "cl")])


def test_same_data_ignores_the_seed_only_where_it_draws_nothing():
    base = dict(dataset="fashion-mnist", task="10class", data_dir=None, subset=None,
                test_subset=None, dtype="float32")
    one = lambda **kw: argparse.Namespace(**{**base, "seed": 0, **kw})  # noqa: E731
    assert cli._same_data(one(), one(seed=1))
    assert not cli._same_data(one(subset=100), one(subset=100, seed=1))
    assert not cli._same_data(one(dataset="teacher"), one(dataset="teacher", seed=1))
    assert not cli._same_data(one(), one(task="evenodd"))


def test_cli_per_layer_algorithms(tmp_path, capsys):
    """--algo with one variant per layer: each layer runs its own, the run records them, resumes,
    and names its method after them; a wrong count is refused naming --algo."""
    run = tmp_path / "mixed"
    common = ["train", "--dataset", "teacher", "--subset", "64", "--test-subset", "32",
              "--arch", "conv4k3s2p1-dense5-dense10", "--batch-size", "16", "--no-progress",
              "--run-dir", str(run)]
    assert cli.main([*common, "--algo", "bpi", "amp", "mf", "--epochs", "1"]) == 0
    assert "training bpi+amp+mf on" in capsys.readouterr().out
    model, state = load_model(str(run / "checkpoint.pt"))
    assert [layer.algo for layer in model.bp_layers] == ["bpi", "amp", "mf"]
    assert state["config"]["algo"] == ["bpi", "amp", "mf"]
    assert cli.main([*common, "--algo", "bpi", "amp", "mf", "--epochs", "2", "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["method"]) for r in rows] == [(1, "bpi+amp+mf"), (2, "bpi+amp+mf")]
    with pytest.raises(SystemExit, match="--algo: give one value or 3 values"):
        cli.main([*common, "--algo", "bpi", "amp", "--epochs", "1", "--overwrite"])
    for bad in (["cbpi", "amp", "amp"], ["bpi", "amp", "amp", "--weights", "gaussian"]):
        with pytest.raises(SystemExit, match="takes one --algo for every layer"):
            cli.main([*common, "--algo", *bad, "--epochs", "1", "--overwrite"])


def test_cli_compare_per_layer_methods(tmp_path, capsys):
    """compare names a per-layer method as the run does ("bpi+amp"); it trains the same network
    as `train --algo bpi amp`. --algo belongs to train alone: compare and continual refuse it."""
    common = ["--dataset", "teacher", "--task", "evenodd", "--subset", "64", "--test-subset", "32",
              "--hidden", "7", "--epochs", "1", "--batch-size", "16", "--no-progress"]
    out, run = tmp_path / "cmp", tmp_path / "train"
    assert cli.main(["compare", *common, "--methods", "bpi+amp,amp", "--out", str(out)]) == 0
    assert cli.main(["train", *common, "--algo", "bpi", "amp", "--run-dir", str(run)]) == 0
    table = (out / "compare.md").read_text()
    assert table.count("| bpi+amp |") == 1 and table.count("| amp |") == 1
    model, _ = load_model(str(out / "bpi+amp" / "checkpoint.pt"))
    assert [layer.algo for layer in model.bp_layers] == ["bpi", "amp"]
    compared, trained = ([json.loads(line) for line in (folder / "metrics.jsonl").open()][-1]
                         for folder in (out / "bpi+amp", run))
    assert compared["test_error"] == trained["test_error"]
    with pytest.raises(SystemExit, match="unknown method 'bpi\\+ste'"):
        cli.main(["compare", *common, "--methods", "bpi+ste", "--out", str(out)])
    capsys.readouterr()
    for command in ("compare", "continual"):
        with pytest.raises(SystemExit):
            cli.main([command, *common, "--algo", "amp"])
        assert "unrecognized arguments: --algo amp" in capsys.readouterr().err


def test_cli_conv_architecture(tmp_path):
    run = tmp_path / "conv"
    assert cli.main(["train", "--dataset", "teacher", "--task", "evenodd", "--subset", "64",
                     "--test-subset", "32", "--arch", "conv4k3s2p1-flatten-dense1", "--algo", "mf",
                     "--epochs", "1", "--batch-size", "16", "--no-progress", "--run-dir", str(run)]) == 0
    model, state = load_model(str(run / "checkpoint.pt"))
    assert state["epoch"] == 1 and type(model.bp_layers[0]).__name__ == "BPConv2d"
    # compare: every method, gradient baselines included, trains the conv net of --arch
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--dataset", "teacher", "--task", "evenodd", "--subset", "64",
                     "--test-subset", "32", "--arch", "conv4k3s2p1-dense1", "--methods", "mf,ste",
                     "--epochs", "1", "--batch-size", "16", "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "ste" / "config.json").read_text())["arch"] == "conv4k3s2p1-dense1"
    ste = load_checkpoint(out / "ste" / "checkpoint.pt")["trainer"]["model"]
    assert ste["fields.0"].shape == (4, 1, 3, 3) and ste["fields.1"].shape == (1, 4 * 14 * 14)
