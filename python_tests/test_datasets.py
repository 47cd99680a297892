"""MNIST and CIFAR-10 from their standard files: small files the tests write in every format
(IDX gzipped and plain; CIFAR-10 python pickles and binary batches), loading, normalisation,
tasks, subsets, error messages, the safe unpickler, torchvision's path, and a conv net trained
end to end on a tiny CIFAR-10 through the command line."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest
import torch

from bpkernels import cli, data


def write_idx(path: str, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if compress else open
    with opener(path + (".gz" if compress else ""), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_mnist(root: str, n_train=40, n_test=20, compress=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": np.arange(n_train) % 10,
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": (np.arange(n_test) * 3) % 10}
    os.makedirs(root, exist_ok=True)
    for key, stem in data.FASHION_MNIST_FILES.items():
        write_idx(os.path.join(root, stem), arrays[key], compress)
    return arrays


def make_cifar(root: str, per_batch=6, n_test=8, fmt="pickle", seed=0, protocol=2) -> dict:
    """Five training batches and a test batch: images uint8 [P, 3072] channel-major."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    batches = {}
    for i, name in enumerate((*data.CIFAR10_TRAIN_BATCHES, "test_batch")):
        n = n_test if name == "test_batch" else per_batch
        x = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        y = (np.arange(n) + i) % 10
        batches[name] = (x, y)
        if fmt == "pickle":
            with open(os.path.join(root, name), "wb") as f:
                pickle.dump({b"batch_label": name.encode(), b"labels": [int(v) for v in y],
                             b"data": x, b"filenames": [b"f.png"] * n}, f, protocol=protocol)
        else:
            records = np.concatenate([y[:, None].astype(np.uint8), x], axis=1)
            records.tofile(os.path.join(root, name + ".bin"))
    return batches


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_reads_idx_files_normalises_and_flattens(tmp_path, compress):
    arrays = make_mnist(str(tmp_path), compress=compress)
    ds = data.load_mnist(str(tmp_path), dtype=torch.float64)
    raw = arrays["train_x"].reshape(40, -1).astype(np.float64)
    mean, std = raw.mean(), raw.std(ddof=1)
    assert ds.name == "mnist-10class" and ds.num_classes == 10
    assert ds.train_x.shape == (40, 784) and ds.test_x.shape == (20, 784)
    np.testing.assert_allclose(ds.train_x.numpy(), (raw - mean) / (std + 1e-5), rtol=1e-12)
    test_raw = arrays["test_x"].reshape(20, -1)
    np.testing.assert_allclose(ds.test_x.numpy(), (test_raw - mean) / (std + 1e-5), rtol=1e-12)
    assert torch.equal(ds.train_y, torch.from_numpy(arrays["train_y"]))


def test_mnist_in_torchvision_layout_and_the_dispatcher(tmp_path):
    make_mnist(str(tmp_path / "MNIST" / "raw"))
    ds = data.load_dataset("mnist", str(tmp_path), task="evenodd")
    assert ds.binary and ds.train_y.dtype == torch.float32
    assert set(ds.train_y.tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.load_dataset("svhn", str(tmp_path))


@pytest.mark.parametrize("fmt", ["pickle", "binary"])
def test_cifar10_reads_both_formats_channel_major(tmp_path, fmt):
    batches = make_cifar(str(tmp_path), fmt=fmt)
    ds = data.load_cifar10(str(tmp_path), dtype=torch.float64)
    train_raw = np.concatenate([batches[n][0] for n in data.CIFAR10_TRAIN_BATCHES]).astype(np.float64)
    mean, std = train_raw.mean(), train_raw.std(ddof=1)
    assert ds.name == "cifar10-10class" and ds.train_x.shape == (30, 3072)
    assert ds.test_x.shape == (8, 3072)
    np.testing.assert_allclose(ds.train_x.numpy(), (train_raw - mean) / (std + 1e-5), rtol=1e-12)
    expected_y = np.concatenate([batches[n][1] for n in data.CIFAR10_TRAIN_BATCHES])
    assert ds.train_y.tolist() == expected_y.tolist()
    assert ds.test_y.tolist() == batches["test_batch"][1].tolist()
    # channel-major: the first 1024 features of a sample are its red plane, row-major
    first = torch.from_numpy(batches["data_batch_1"][0][0].astype(np.float64))
    assert torch.allclose(ds.train_x[0].view(3, 32, 32)[0, 0], (first[:32] - mean) / (std + 1e-5))


def test_cifar10_formats_give_the_same_dataset_and_subfolders_are_found(tmp_path):
    make_cifar(str(tmp_path / "py" / "cifar-10-batches-py"), fmt="pickle", seed=3)
    make_cifar(str(tmp_path / "bin" / "cifar-10-batches-bin"), fmt="binary", seed=3)
    a = data.load_cifar10(str(tmp_path / "py"), task="evenodd", subset=11, test_subset=5, seed=4)
    b = data.load_cifar10(str(tmp_path / "bin"), task="evenodd", subset=11, test_subset=5, seed=4)
    assert a.num_classes == 2 and a.train_x.shape == (11, 3072) and a.test_x.shape == (5, 3072)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_subsets_are_seeded_and_taken_after_normalisation(tmp_path):
    make_mnist(str(tmp_path))
    full = data.load_mnist(str(tmp_path), dtype=torch.float64)
    a = data.load_mnist(str(tmp_path), subset=7, test_subset=3, seed=1, dtype=torch.float64)
    b = data.load_mnist(str(tmp_path), subset=7, test_subset=3, seed=1, dtype=torch.float64)
    c = data.load_mnist(str(tmp_path), subset=7, test_subset=3, seed=2, dtype=torch.float64)
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    for row, label in zip(a.train_x, a.train_y):  # every kept row is a row of the full set
        match = (full.train_x == row).all(dim=1).nonzero()
        assert len(match) == 1 and full.train_y[match[0, 0]] == label
    with pytest.raises(ValueError, match="subset must be a positive"):
        data.load_cifar10(str(tmp_path), subset=0)
    with pytest.raises(ValueError, match="task must be one of"):
        data.load_mnist(str(tmp_path), task="3class")


def test_missing_datasets_say_what_to_pass(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="no Debian package.*--data-dir"):
        data.load_mnist(str(tmp_path))
    with pytest.raises(data.DatasetNotFoundError, match="no folder given"):
        data.load_mnist(None)
    with pytest.raises(data.DatasetNotFoundError, match="data_batch_1 … data_batch_5 and test_batch"):
        data.load_cifar10(str(tmp_path))
    make_cifar(str(tmp_path))
    os.remove(tmp_path / "data_batch_4")
    with pytest.raises(data.DatasetNotFoundError):
        data.load_cifar10(str(tmp_path))
    with pytest.raises(SystemExit, match="CIFAR-10 not found"):
        cli.main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none")])


def test_damaged_cifar_files_are_named(tmp_path):
    make_cifar(str(tmp_path / "bin"), fmt="binary")
    path = tmp_path / "bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="test_batch.bin is truncated"):
        data.load_cifar10(str(tmp_path / "bin"))
    make_cifar(str(tmp_path / "py"))
    with open(tmp_path / "py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"data_batch_2: expected uint8 data \[P, 3072\]"):
        data.load_cifar10(str(tmp_path / "py"))
    with open(tmp_path / "py" / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, f)
    with pytest.raises(ValueError, match="labels outside 0..9"):
        data.load_cifar10(str(tmp_path / "py"))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_the_unpickler_refuses_anything_but_arrays(tmp_path):
    make_cifar(str(tmp_path))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load .*system"):
        data.load_cifar10(str(tmp_path))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickles_of_old_and_new_numpy_module_names_load(tmp_path, protocol):
    """CIFAR-10's own pickles name numpy.core (written before numpy 2)."""
    batches = make_cifar(str(tmp_path), protocol=protocol)
    path = tmp_path / "data_batch_3"
    raw = path.read_bytes()
    if protocol == 2:  # text module names: rewrite them the way an old numpy wrote them
        raw = raw.replace(b"numpy._core", b"numpy.core")
        assert b"numpy.core.multiarray" in raw
    path.write_bytes(raw)
    x, y = data.read_cifar10_pickle(str(path))
    assert np.array_equal(x, batches["data_batch_3"][0]) and y.tolist() == batches["data_batch_3"][1].tolist()


def test_torchvision_is_used_where_it_imports_and_our_reader_finds_nothing(tmp_path, monkeypatch):
    """A stand-in torchvision (the real one is not installed here) holding CIFAR-10 as
    torchvision does: images [P, 32, 32, 3] and a list of targets."""
    rng = np.random.default_rng(0)
    images = {True: rng.integers(0, 256, (6, 32, 32, 3)).astype(np.uint8),
              False: rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)}

    class CIFAR10:
        def __init__(self, root, train, download):
            assert root == str(tmp_path) and download is False
            self.data, self.targets = images[train], list(range(len(images[train])))

    class MNIST:
        def __init__(self, root, train, download):
            raise RuntimeError("Dataset not found.")

    tv = types.ModuleType("torchvision")
    tv.datasets = types.SimpleNamespace(CIFAR10=CIFAR10, MNIST=MNIST)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    ds = data.load_cifar10(str(tmp_path), dtype=torch.float64)
    assert ds.train_x.shape == (6, 3072) and ds.test_y.tolist() == [0, 1, 2, 3]
    raw = images[True].transpose(0, 3, 1, 2).reshape(6, -1).astype(np.float64)
    np.testing.assert_allclose(ds.train_x.numpy(), (raw - raw.mean()) / (raw.std(ddof=1) + 1e-5))
    with pytest.raises(data.DatasetNotFoundError, match="MNIST not found"):
        data.load_mnist(str(tmp_path))


def test_cli_input_shape_follows_the_dataset():
    parser = cli.build_parser()
    for name, shape in (("cifar10", (3, 32, 32)), ("mnist", (1, 28, 28)), ("fashion-mnist", (1, 28, 28))):
        assert cli.input_shape(parser.parse_args(["train", "--dataset", name])) == shape


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bp", "ste"])
def test_train_a_conv_net_on_a_tiny_cifar10_end_to_end(tmp_path, capsys, method):
    make_cifar(str(tmp_path / "cifar"), per_batch=8, n_test=10, fmt="binary")
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"),
                     "--arch", "conv8k3s2p1-dense10", "--epochs", "1", "--batch-size", "8",
                     "--method", method, "--run-dir", str(run), "--no-progress", "--threads", "1"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["epoch"] == 1 and 0 <= last["test_error"] <= 1
    config = json.loads((run / "config.json").read_text())
    assert config["dataset_name" if method == "bp" else "dataset"] == "cifar10-10class"
    assert (run / "checkpoint.pt").exists()


def python2_batch(x: np.ndarray, labels: list[int]) -> bytes:
    """A CIFAR-10 batch pickled the way Python 2 and numpy 1 wrote the published files:
    protocol 2, byte strings (SHORT_BINSTRING/BINSTRING), numpy.core.multiarray._reconstruct."""
    def short(b):
        return b"U" + bytes([len(b)]) + b

    out = b"\x80\x02}(" + short(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short(b"b") + b"\x87R"
    out += b"(K\x01K" + bytes([x.shape[0]]) + b"M" + struct.pack("<H", x.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + short(b"|") + b"NNNJ" + struct.pack("<i", -1) + b"J" + struct.pack("<i", -1)
    out += b"K\x00tb\x89T" + struct.pack("<i", x.nbytes) + x.tobytes() + b"tb"
    out += short(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


def test_a_python2_pickle_as_cifar10_ships_it_loads(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (3, 3072)).astype(np.uint8)
    path = tmp_path / "data_batch_1"
    path.write_bytes(python2_batch(x, [7, 0, 9]))
    got_x, got_y = data.read_cifar10_pickle(str(path))
    assert np.array_equal(got_x, x) and got_y.tolist() == [7, 0, 9]
