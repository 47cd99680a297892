"""Datasets as whole tensors: Fashion-MNIST, MNIST and CIFAR-10 from their standard files, and
a seeded teacher–student generator.

Fashion-MNIST is read from the four gzip IDX files that the Debian package
``dataset-fashion-mnist`` installs in ``/usr/share/datasets/fashion-mnist`` (or from any folder
holding the same files, gzipped or not); MNIST from the same four IDX files of its own, CIFAR-10
from its python pickles (``data_batch_1`` … ``data_batch_5``, ``test_batch``) or its binary
batches (``data_batch_1.bin`` …, ``test_batch.bin``), in a folder the user names. Images are
flattened (CIFAR-10 channel-major, 3072 = 3×32×32) and normalised with one global mean and std
over all training pixels, x ← (x − μ)/(std + 1e-5), the same statistics applied to the test set
(docs/algorithms.md §1.1). Tasks: ``"10class"`` (labels 0..9) or ``"evenodd"`` (label +1 for an
odd class index, −1 for even).
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
TASKS = ("10class", "evenodd")
# Per-sample input shape (C, H, W) of each image dataset (the flattened inputs are channel-major).
INPUT_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_RECORD = 1 + 3 * 32 * 32  # binary batches: one label byte, then the R, G, B planes


class DatasetNotFoundError(FileNotFoundError):
    """The data files are missing; the message says what to install or pass."""


@dataclass
class Dataset:
    """A classification dataset held as tensors: x [P, D] float, y [P] (int64 classes for a
    multi-class task, ±1 float for a binary one)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int  # 2 for ±1 labels
    name: str

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    def to(self, device=None, dtype=None) -> "Dataset":
        """Moves the data (and casts x, and ±1 labels, to dtype) in one go."""

        def cast(t: Tensor, is_x: bool) -> Tensor:
            floating = is_x or t.is_floating_point()
            return t.to(device=device, dtype=dtype if floating else None)

        return Dataset(cast(self.train_x, True), cast(self.train_y, False),
                       cast(self.test_x, True), cast(self.test_y, False),
                       self.num_classes, self.name)


def _tensors(source, what: str) -> tuple[Tensor, Tensor]:
    """(x [P, ...], y [P]) from a pair of tensors, a map-style torch Dataset or a DataLoader of
    (x, y) pairs (every item read once, in order)."""
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(
            isinstance(t, Tensor) for t in source):
        x, y = source
    elif not isinstance(source, Tensor) and (isinstance(source, torch.utils.data.DataLoader)
                                             or hasattr(source, "__getitem__")):
        batches = source if isinstance(source, torch.utils.data.DataLoader) else (
            source[i] for i in range(len(source)))
        xs, ys, batched = [], [], isinstance(source, torch.utils.data.DataLoader)
        for item in batches:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(f"the {what} data must yield (x, y) pairs, got {type(item).__name__}")
            x_i, y_i = (torch.as_tensor(t) for t in item)
            xs.append(x_i if batched else x_i.unsqueeze(0))
            ys.append(y_i.reshape(-1))
        if not xs:
            raise ValueError(f"the {what} data is empty")
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise TypeError(f"the {what} data must be a Dataset of bpkernels.data, a pair of tensors "
                        f"(x, y), a torch Dataset or a DataLoader, got {type(source).__name__}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"the {what} data has {x.shape[0]} inputs but {y.shape[0]} labels")
    return x, y


def as_dataset(train, test=None, name: str = "tensors") -> Dataset:
    """A :class:`Dataset` from a Dataset (returned as it is), or from training data ``train``
    and optional test data ``test``, each a pair of tensors (x [P, ...], y [P]), a map-style
    torch Dataset or a DataLoader of (x, y) pairs. Integer labels make a multi-class task
    (classes 0..max label); floating labels must be ±1 (a binary task). Inputs are flattened
    to [P, D]."""
    if isinstance(train, Dataset):
        if test is not None:
            raise ValueError("test data goes inside the Dataset")
        return train
    train_x, train_y = _tensors(train, "training")
    if test is None:
        test_x, test_y = train_x[:0], train_y[:0]
    else:
        test_x, test_y = _tensors(test, "test")
    floating = train_y.is_floating_point()
    num_classes = 2 if floating else int(max(train_y.max(), test_y.max() if test_y.numel() else 0)) + 1
    return Dataset(train_x.flatten(1), train_y, test_x.flatten(1), test_y, num_classes, name)


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (gzip or plain): big-endian magic 0x0000080D, D = byte 3, then D
    big-endian uint32 sizes, then uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError) as exc:  # a cut or damaged gzip stream
        raise ValueError(f"{path} is truncated or corrupt ({exc}); reinstall the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: its header promises {ndim} sizes")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, got {data.size}")
    return data.reshape(tuple(dims))


def _find_file(root: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


def find_fashion_mnist(root: str | None = None) -> dict[str, str]:
    """Paths of the four Fashion-MNIST files, looked up in ``root`` or the Debian location."""
    roots = [root] if root else list(FASHION_MNIST_DIRS)
    for r in roots:
        paths = {key: _find_file(r, stem) for key, stem in FASHION_MNIST_FILES.items()}
        if all(paths.values()):
            return paths
    where = root or FASHION_MNIST_DIRS[0]
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found in {where}. Install it with `sudo apt-get install "
        "dataset-fashion-mnist` (Debian/Ubuntu), or pass --data-dir / root= pointing to a folder "
        "with train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]."
    )


def load_fashion_mnist(root: str | None = None, task: str = "10class",
                       subset: int | None = None, test_subset: int | None = None,
                       seed: int = 0, dtype: torch.dtype = torch.float32) -> Dataset:
    """Loads Fashion-MNIST as tensors on the CPU.

    Args:
        root: folder of the IDX files; None looks in /usr/share/datasets/fashion-mnist.
        task: "10class" or "evenodd".
        subset / test_subset: keep this many training / test examples (a seeded random subset).
        seed: seed of the subset draw.
    """
    _check_request(task, subset, test_subset)
    arrays = _read_idx_set(find_fashion_mnist(root))
    return _finish(arrays, "fashion-mnist", task, subset, test_subset, seed, dtype)


def find_mnist(root: str | None) -> dict[str, str]:
    """Paths of MNIST's four IDX files (Fashion-MNIST's names, gzipped or not) in ``root`` or
    in torchvision's layout ``root/MNIST/raw``."""
    if root:
        for folder in (root, os.path.join(root, "MNIST", "raw")):
            paths = {key: _find_file(folder, stem) for key, stem in FASHION_MNIST_FILES.items()}
            if all(paths.values()):
                return paths
    raise DatasetNotFoundError(
        f"MNIST not found in {root or '(no folder given)'}. It has no Debian package: download "
        "it yourself and pass --data-dir / root= pointing to a folder with "
        "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] "
        "and t10k-labels-idx1-ubyte[.gz] (or torchvision's root holding MNIST/raw/).")


def load_mnist(root: str | None, task: str = "10class", subset: int | None = None,
               test_subset: int | None = None, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> Dataset:
    """Loads MNIST as tensors on the CPU, from its IDX files in ``root`` (see
    :func:`find_mnist`; where they are not found and torchvision imports, from what its
    ``MNIST(root)`` class reads). Arguments as :func:`load_fashion_mnist`."""
    _check_request(task, subset, test_subset)
    try:
        arrays = _read_idx_set(find_mnist(root))
    except DatasetNotFoundError:
        arrays = _torchvision_arrays("mnist", root)
        if arrays is None:
            raise
    return _finish(arrays, "mnist", task, subset, test_subset, seed, dtype)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: any other global (a class or function that
    a crafted file could use to run code) is refused."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
               ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol 2 writes bytes from Python 3

    def find_class(self, module: str, name: str):
        # Python 2 era pickles (CIFAR-10's) name numpy.core, numpy >= 2 numpy._core
        module = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds "
                                         "only numpy arrays and plain data")
        if module.startswith("numpy._core") and not hasattr(np, "_core"):  # numpy < 2
            module = "numpy.core" + module[len("numpy._core"):]
        return super().find_class(module, name)


def read_cifar10_pickle(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (images uint8 [P, 3072] channel-major, labels int64 [P]).

    The batches are Python 2 pickles (read with ``encoding="bytes"``). Unpickling can run code
    hidden in a crafted file, so this reader only loads files the user points at, and its
    unpickler accepts nothing but numpy arrays and plain containers."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch (no dictionary)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (keys {sorted(batch)})")
    x, y = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != CIFAR10_RECORD - 1 or len(x) != len(y):
        raise ValueError(f"{path}: expected uint8 data [P, 3072] and P labels, got data "
                         f"{x.dtype} {list(x.shape)} and {len(y)} labels")
    return x, y


def read_cifar10_binary(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch (records of one label byte and 3072 pixel bytes, R, G, B
    planes row-major): (images uint8 [P, 3072], labels int64 [P])."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR10_RECORD:
        raise ValueError(f"{path} is truncated or not a CIFAR-10 binary batch: {raw.size} bytes is "
                         f"not a positive multiple of the {CIFAR10_RECORD}-byte record")
    records = raw.reshape(-1, CIFAR10_RECORD)
    return records[:, 1:].copy(), records[:, 0].astype(np.int64)


def find_cifar10(root: str | None) -> tuple[str, dict[str, str]]:
    """("pickle" or "binary", paths of the five training batches and the test batch) in
    ``root``, ``root/cifar-10-batches-py`` or ``root/cifar-10-batches-bin``."""
    names = (*CIFAR10_TRAIN_BATCHES, "test_batch")
    if root:
        for folder in (root, os.path.join(root, "cifar-10-batches-py"),
                       os.path.join(root, "cifar-10-batches-bin")):
            for kind, suffix in (("pickle", ""), ("binary", ".bin")):
                paths = {n: os.path.join(folder, n + suffix) for n in names}
                if all(os.path.isfile(p) for p in paths.values()):
                    return kind, paths
    raise DatasetNotFoundError(
        f"CIFAR-10 not found in {root or '(no folder given)'}. It has no Debian package: download "
        "it yourself (the python or the binary version) and pass --data-dir / root= pointing to "
        "the folder holding data_batch_1 … data_batch_5 and test_batch (python pickles), or "
        "data_batch_1.bin … data_batch_5.bin and test_batch.bin, or to its parent folder.")


def load_cifar10(root: str | None, task: str = "10class", subset: int | None = None,
                 test_subset: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> Dataset:
    """Loads CIFAR-10 as tensors on the CPU: inputs [P, 3072], channel-major (3×32×32), from the
    batches in ``root`` (see :func:`find_cifar10`; where they are not found and torchvision
    imports, from what its ``CIFAR10(root)`` class reads). Arguments as
    :func:`load_fashion_mnist`."""
    _check_request(task, subset, test_subset)
    try:
        kind, paths = find_cifar10(root)
    except DatasetNotFoundError:
        arrays = _torchvision_arrays("cifar10", root)
        if arrays is None:
            raise
    else:
        read = read_cifar10_pickle if kind == "pickle" else read_cifar10_binary
        train = [read(paths[n]) for n in CIFAR10_TRAIN_BATCHES]
        test_x, test_y = read(paths["test_batch"])
        arrays = {"train_x": np.concatenate([x for x, _ in train]),
                  "train_y": np.concatenate([y for _, y in train]), "test_x": test_x, "test_y": test_y}
    return _finish(arrays, "cifar10", task, subset, test_subset, seed, dtype)


def _torchvision_arrays(name: str, root: str | None) -> dict[str, np.ndarray] | None:
    """The arrays of torchvision's ``MNIST`` / ``CIFAR10`` class (never downloading), for the
    layouts only it reads; None where torchvision does not import or finds nothing."""
    if not root:
        return None
    try:
        from torchvision import datasets as tv
    except ImportError:
        return None
    cls = {"mnist": tv.MNIST, "cifar10": tv.CIFAR10}[name]
    arrays = {}
    for part, train in (("train", True), ("test", False)):
        try:
            ds = cls(root, train=train, download=False)
        except RuntimeError:  # torchvision's "Dataset not found"
            return None
        x = np.asarray(ds.data, dtype=np.uint8)
        if name == "cifar10":  # torchvision holds [P, 32, 32, 3]; ours is channel-major
            x = x.transpose(0, 3, 1, 2)
        arrays[f"{part}_x"] = np.ascontiguousarray(x).reshape(len(x), -1)
        arrays[f"{part}_y"] = np.asarray(ds.targets, dtype=np.int64)
    return arrays


def load_dataset(name: str, root: str | None = None, task: str = "10class",
                 subset: int | None = None, test_subset: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> Dataset:
    """One of the image datasets of ``INPUT_SHAPES`` by name ("fashion-mnist", "mnist",
    "cifar10"); arguments as :func:`load_fashion_mnist`."""
    loaders = {"fashion-mnist": load_fashion_mnist, "mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"dataset must be one of {sorted(loaders)}, got {name!r}")
    return loaders[name](root, task, subset, test_subset, seed, dtype)


def _check_request(task: str, subset: int | None, test_subset: int | None) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    for name, value in (("subset", subset), ("test_subset", test_subset)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive number of examples (None: all), got {value!r}")


def _read_idx_set(paths: dict[str, str]) -> dict[str, np.ndarray]:
    """The four IDX arrays of a Fashion-MNIST-like dataset, images and labels counted alike."""
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for part in ("train", "test"):
        n_x, n_y = len(arrays[f"{part}_x"]), len(arrays[f"{part}_y"])
        if n_x != n_y:
            raise ValueError(f"{paths[part + '_x']} holds {n_x} images but {paths[part + '_y']} "
                             f"{n_y} labels")
    return arrays


def _finish(arrays: dict[str, np.ndarray], name: str, task: str, subset: int | None,
            test_subset: int | None, seed: int, dtype: torch.dtype) -> Dataset:
    """A Dataset from uint8 images [P, ...] and int labels [P]: flattened, normalised with the
    training pixels' global mean and std, seeded subsets, the task's labels."""
    for key in ("train_y", "test_y"):
        labels = arrays[key]
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"{name}: {key} holds labels outside 0..9 "
                             f"({int(labels.min())}..{int(labels.max())})")
    train_x = torch.from_numpy(arrays["train_x"].reshape(len(arrays["train_x"]), -1).astype(np.float64))
    test_x = torch.from_numpy(arrays["test_x"].reshape(len(arrays["test_x"]), -1).astype(np.float64))
    train_y = torch.from_numpy(arrays["train_y"].astype(np.int64))
    test_y = torch.from_numpy(arrays["test_y"].astype(np.int64))
    mean, std = train_x.mean(), train_x.std()
    train_x = (train_x - mean) / (std + 1e-5)
    test_x = (test_x - mean) / (std + 1e-5)
    gen = torch.Generator().manual_seed(seed)
    if subset is not None:
        keep = torch.randperm(len(train_x), generator=gen)[:subset]
        train_x, train_y = train_x[keep], train_y[keep]
    if test_subset is not None:
        keep = torch.randperm(len(test_x), generator=gen)[:test_subset]
        test_x, test_y = test_x[keep], test_y[keep]
    num_classes = 10
    if task == "evenodd":
        train_y = (2 * (train_y % 2) - 1).to(dtype)
        test_y = (2 * (test_y % 2) - 1).to(dtype)
        num_classes = 2
    return Dataset(train_x.to(dtype), train_y, test_x.to(dtype), test_y, num_classes,
                   f"{name}-{task}")


def teacher_student(n_train: int, n_test: int, sizes: tuple[int, ...], seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Dataset:
    """Data labelled by a random binary teacher network, so a student of the same architecture
    can fit it exactly.

    Inputs are i.i.d. standard normal [P, sizes[0]]; the teacher has i.i.d. ±1 weights for each
    layer sizes[l] → sizes[l+1], sign activations (ties to +1). With sizes[-1] == 1 the labels
    are ±1 (binary task); otherwise the label is the argmax of the last preactivation.
    """
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randint(0, 2, (k, n), generator=gen).double() * 2 - 1
               for n, k in zip(sizes[:-1], sizes[1:])]
    x = torch.randn(n_train + n_test, sizes[0], generator=gen, dtype=torch.float64)
    h = x
    for w in weights[:-1]:
        h = torch.sign(h @ w.T + 1e-10)
    z = h @ weights[-1].T
    if sizes[-1] == 1:
        y, num_classes = torch.sign(z[:, 0] + 1e-10).to(dtype), 2
    else:
        y, num_classes = z.argmax(dim=1), sizes[-1]
    return Dataset(x[:n_train].to(dtype), y[:n_train], x[n_train:].to(dtype), y[n_train:],
                   num_classes, f"teacher-{'-'.join(map(str, sizes))}")
