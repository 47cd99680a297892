"""The bad-input matrix: every row is an input a realistic user gives by mistake and the
clear error it must get (no silent corruption, no error that names the wrong thing).
``benchmarks/robustness.py`` prints the same rows as a table."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import torch

from bpkernels import BPConv2d, BPLinear, BPSequential, cli, data, fit, mlp
from bpkernels.runlog import CheckpointError, load_checkpoint, save_checkpoint
from bpkernels.train import MessagePassingTrainer, load_model


def tiny_data(n=40):
    return data.teacher_student(n, 20, (8, 3), seed=0)


def net():
    return mlp([8, 5, 3], seed=0)


def big_x(dtype=torch.float32):
    x = torch.randn(6, 8, dtype=dtype)
    x[2, 3] = 1e19 if dtype == torch.float32 else 1e154
    return x


# (id, action, exception, message regex)
MATRIX = [
    ("huge finite float32 input", lambda: net().bp_step(big_x(), torch.zeros(6, dtype=torch.long)),
     ValueError, "preactivation variances overflow"),
    ("huge finite float64 input", lambda: mlp([8, 5, 3], dtype=torch.float64).bp_step(
        big_x(torch.float64), torch.zeros(6, dtype=torch.long)), ValueError, "overflow"),
    ("float64 data beyond float32", lambda: net().predict(torch.full((2, 8), 1e300, dtype=torch.float64)),
     ValueError, "beyond the range of torch.float32"),
    ("psi above 1", lambda: BPLinear(4, 2, psi=1.5), ValueError, r"psi must be a finite number in \[0, 1\]"),
    ("psi NaN", lambda: BPLinear(4, 2, psi=float("nan")), ValueError, "psi must be a finite number"),
    ("rho infinite", lambda: BPLinear(4, 2, rho=float("inf")), ValueError, "rho must be a finite number"),
    ("r equal to 1", lambda: BPLinear(4, 2, r=1.0), ValueError, r"r must be a finite number in \[0, 1\)"),
    ("init_std infinite", lambda: BPLinear(4, 2, init_std=float("inf")), ValueError, "init_std must be"),
    ("rho a string", lambda: BPLinear(4, 2, rho="high"), TypeError, "rho must be a number"),
    ("zero output units", lambda: BPLinear(784, 0), ValueError, "out_features must be a positive int"),
    ("zero conv channels", lambda: BPConv2d(1, 0, 3), ValueError, "channels must be positive"),
    ("labels as a list", lambda: net().bp_step(torch.randn(3, 8), [0, 1, 2]), TypeError,
     "labels must be a tensor, got list"),
    ("inputs as a list", lambda: net().predict([[0.0] * 8]), TypeError, "inputs must be a tensor"),
    ("[B, 1] labels in error()", lambda: net().error(torch.randn(4, 8), torch.zeros(4, 1, dtype=torch.long)),
     ValueError, r"labels must have shape \[4\]"),
    ("float labels in error()", lambda: net().error(torch.randn(4, 8), torch.tensor([0.0, 1.5, 2.0, 1.0])),
     ValueError, "integer class labels"),
    ("predict chunk 0", lambda: net().predict(torch.randn(4, 8), chunk=0), ValueError,
     "chunk must be a positive int"),
    ("infinite field", lambda: BPLinear(3, 2).set_marginals(torch.full((2, 3), float("inf"))),
     ValueError, "field must be finite"),
    ("mask dropped by load_state_dict(strict=False)", lambda: mlp([8, 5, 3], density=0.5).load_state_dict(
        {k: v for k, v in mlp([8, 5, 3], density=0.5).state_dict().items() if "mask" not in k}, strict=False),
     ValueError, "is masked"),
    ("mask added to a dense layer", lambda: net().load_state_dict(
        mlp([8, 5, 3], density=0.5).state_dict(), strict=False), ValueError, "has mask but the layer has none"),
    ("magnetisations above 1 in a state", lambda: net().load_state_dict(
        {k: (v * 3 if k.endswith("mag") else v) for k, v in net().state_dict().items()}),
     ValueError, r"magnetisations must be finite and lie in \[-1, 1\]"),
    ("subset 0", lambda: data.load_fashion_mnist(subset=0), ValueError, "subset must be a positive number"),
    ("subset negative", lambda: data.load_fashion_mnist(subset=-5), ValueError, "subset must be a positive"),
    ("test subset 0", lambda: data.load_fashion_mnist(test_subset=0), ValueError, "test_subset must be"),
    ("tau_max 0 in fit", lambda: fit(net(), tiny_data(), epochs=1, tau_max=0, progress=False),
     ValueError, "tau_max must be >= 1"),
]


@pytest.mark.parametrize("action,error,match", [row[1:] for row in MATRIX], ids=[row[0] for row in MATRIX])
def test_bad_input_matrix(action, error, match):
    with pytest.raises(error, match=match):
        action()


def test_conv_input_in_channels_last_works():
    layer_net = BPSequential(BPConv2d(2, 3, 3, padding=1, input_size=5, dtype=torch.float64),
                             torch.nn.Flatten(), BPLinear(75, 2, output="argmax", dtype=torch.float64))
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    ref = BPSequential.from_config(layer_net.config(), dtype=torch.float64)
    ref.load_state_dict(layer_net.state_dict())
    layer_net.bp_step(x.to(memory_format=torch.channels_last), y)
    ref.bp_step(x, y)
    for a, b in zip(layer_net.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["empty", "truncated", "flipped", "not ours"])
def test_damaged_checkpoints_name_the_file(tmp_path, kind):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint({"epoch": 1, "x": torch.arange(100.0)}, path)
    blob = open(path, "rb").read()
    if kind == "empty":
        blob = b""
    elif kind == "truncated":
        blob = blob[:len(blob) // 2]
    elif kind == "flipped":
        blob = blob[:-40] + bytes([blob[-40] ^ 1]) + blob[-39:]
    else:
        buffer = __import__("io").BytesIO()
        torch.save({"epoch": 1}, buffer)
        blob = buffer.getvalue()
    open(path, "wb").write(blob)
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        load_model(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(str(tmp_path / "missing.pt"))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/bpkernels-exploit-ran",))


def test_a_checkpoint_cannot_run_code(tmp_path):
    """A crafted payload with a valid checksum: refused, nothing runs."""
    import hashlib
    import io

    from bpkernels.runlog import CHECKPOINT_MAGIC

    marker = "/tmp/bpkernels-exploit-ran"
    if os.path.exists(marker):
        os.unlink(marker)
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "payload": _Exploit()}, buffer)
    payload = buffer.getvalue()
    path = tmp_path / "evil.pt"
    path.write_bytes(CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.raises(CheckpointError, match="not tensors or plain data"):
        load_checkpoint(str(path))
    assert not os.path.exists(marker)


def test_resume_refuses_another_configuration_and_allows_more_epochs(tmp_path):
    ds = tiny_data()
    run = str(tmp_path / "run")
    fit(net(), ds, epochs=1, batch_size=8, run_dir=run, progress=False, seed=1)
    with pytest.raises(ValueError, match=r"seed: 1 in the checkpoint, 2 now"):
        fit(net(), ds, epochs=2, batch_size=8, run_dir=run, progress=False, seed=2, resume=True)
    with pytest.raises(ValueError, match="batch_size"):
        fit(net(), ds, epochs=2, batch_size=4, run_dir=run, progress=False, seed=1, resume=True)
    config = json.loads(open(os.path.join(run, "config.json")).read())
    assert config["seed"] == 1, "a refused resume must not overwrite config.json"
    rows = fit(net(), ds, epochs=2, batch_size=8, run_dir=run, progress=False, seed=1, resume=True)
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_run_folder_is_not_reused_silently(tmp_path):
    ds = tiny_data()
    run = tmp_path / "run"
    fit(net(), ds, epochs=1, batch_size=8, run_dir=str(run), progress=False)
    (run / ".tmp-stale.pt").write_bytes(b"half a checkpoint")
    with pytest.raises(FileExistsError, match="holds a run already"):
        fit(net(), ds, epochs=1, batch_size=8, run_dir=str(run), progress=False)
    fit(net(), ds, epochs=1, batch_size=8, run_dir=str(run), progress=False, overwrite=True)
    assert not (run / ".tmp-stale.pt").exists()


def test_divergence_stops_before_writing(tmp_path):
    """A model whose fields become non-finite: fit raises, metrics.jsonl holds no NaN and the
    last checkpoint is the last good epoch's."""
    ds = tiny_data()
    model = net()
    trainer = MessagePassingTrainer(model)
    step, calls = trainer.step, [0]

    def step_then_diverge(x, y):  # 5 steps per epoch; the 7th breaks a field
        calls[0] += 1
        if calls[0] == 7:
            model.bp_layers[0].field[0, 0] = float("nan")
        return step(x, y)

    trainer.step = step_then_diverge
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="diverged in epoch 2: non-finite"):
        fit(trainer, ds, epochs=3, batch_size=8, run_dir=str(run), progress=False)
    assert load_checkpoint(str(run / "checkpoint.pt"))["epoch"] == 1
    assert "NaN" not in (run / "metrics.jsonl").read_text()


def write_idx(path, array):
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.mark.parametrize("damage", ["cut gzip", "cut data", "lengths differ"])
def test_damaged_dataset_files(tmp_path, damage):
    import numpy as np

    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
             "train-labels-idx1-ubyte.gz": np.arange(20) % 10,
             "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28)),
             "t10k-labels-idx1-ubyte.gz": np.arange(10 if damage != "lengths differ" else 9) % 10}
    for name, array in files.items():
        write_idx(tmp_path / name, array)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    if damage == "cut gzip":
        target.write_bytes(target.read_bytes()[:200])
    elif damage == "cut data":
        raw = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(raw[:-100]))
    match = {"cut gzip": "truncated or corrupt", "cut data": "is truncated",
             "lengths differ": "holds 10 images but"}[damage]
    with pytest.raises(ValueError, match=match):
        data.load_fashion_mnist(str(tmp_path))


def test_cli_rejects_bad_subsets(capsys):
    for value in ("0", "-5"):
        with pytest.raises(SystemExit):
            cli.main(["train", "--dataset", "teacher", "--subset", value])
        assert "expected a positive integer" in capsys.readouterr().err
