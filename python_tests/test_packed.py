"""Packed (XNOR-popcount) inference: the xnor_* operators against their twins on every CPU
instruction set, the packed network's integer preactivations and predictions against the float
model (random and trained MLPs and conv nets, masks, sign and argmax outputs), the file format
and its errors, and the export / predict commands."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bpkernels import cli, data
from bpkernels import packed_ops as ops
from bpkernels import packed_reference as ref
from bpkernels import BPConv2d, build_arch
from bpkernels import BPLinear, BPMaxPool2d, BPSequential, mlp
from bpkernels.packed import PackedFormatError, PackedNet, export, load_packed, read_packed
from bpkernels.train import fit, load_model

from helpers import fashion_mnist_or_skip

ISAS = {"avx512": ["avx512", "avx2", "portable"], "avx2": ["avx2", "portable"],
        "portable": ["portable"]}[ops.xnor_cpu_isa()]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("BPK_XNOR_ISA", request.param)
    assert ops.xnor_cpu_isa() == request.param
    return request.param


def random_words(rows, n, gen):
    return ref.pack_bits(torch.randint(0, 2, (rows, n), generator=gen))


# ---- operators against their twins ----------------------------------------------------------

@pytest.mark.parametrize("r,k,n", [(1, 1, 1), (3, 7, 64), (2, 9, 65), (5, 17, 501), (33, 8, 512),
                                   (4, 65, 1000), (1, 3, 4096)])
@pytest.mark.parametrize("planes", ["none", "valid", "nonzero", "both"])
def test_gemm_matches_twin(isa, r, k, n, planes):
    gen = torch.Generator().manual_seed(r * 1000 + k + n)
    x, w = random_words(r, n, gen), random_words(k, n, gen)
    positions = r // 2 if r % 2 == 0 else r  # P divides R
    valid = random_words(positions, n, gen) if planes in ("valid", "both") else None
    nonzero = random_words(k, n, gen) if planes in ("nonzero", "both") else None
    got = ops.xnor_gemm(x, w, valid, nonzero, n)
    assert got.dtype == torch.int32 and got.shape == (r, k)
    assert torch.equal(got, ref.xnor_gemm(x, w, valid, nonzero, n))


def test_gemm_equals_float_matmul_of_signs():
    gen = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 2, (40, 300), generator=gen) * 2 - 1
    ws = torch.randint(-1, 2, (30, 300), generator=gen)  # zeros: masked weights
    got = ops.xnor_gemm(ref.pack_bits(xs > 0), ref.pack_bits(ws > 0), None,
                        ref.pack_bits(ws != 0), 300)
    assert torch.equal(got, (xs.double() @ ws.double().T).to(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32])
@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 1, 1, 1), (1, 1), (1, 1), (0, 0)),
    ((3, 1, 1, 130), (1, 1), (1, 1), (0, 0)),
    ((2, 7, 7, 3), (3, 3), (1, 1), (0, 0)),
    ((2, 9, 8, 32), (3, 3), (2, 2), (1, 1)),
    ((1, 6, 5, 65), (2, 3), (1, 2), (0, 1)),
    ((2, 7, 7, 64), (7, 7), (1, 1), (0, 0)),
    ((1, 4, 4, 5), (5, 5), (2, 2), (2, 2)),
])
def test_im2col_matches_twin(isa, dtype, shape, kernel, stride, padding):
    gen = torch.Generator().manual_seed(sum(shape))
    z = torch.randint(-3, 4, shape, generator=gen).to(dtype)  # zeros: the tie rule
    for view in (z, z.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)):  # NHWC / NCHW
        bits, valid = ops.xnor_im2col(view, kernel, stride, padding)
        want_bits, want_valid = ref.xnor_im2col(view, kernel, stride, padding)
        assert torch.equal(bits, want_bits) and torch.equal(valid, want_valid)


def test_sign_rule_ties_and_tiny_values():
    z = torch.tensor([[0.0, -0.0, 1e-12, -1e-12, -1e-9, 1e-30, -3.0, 2.0]])
    for dtype in (torch.float32, torch.float64):
        bits = ops.pack_signs(z.to(dtype))
        want = (torch.sign(z.to(dtype) + 1e-10) > 0).long()
        assert torch.equal(ref.unpack_bits(bits, 8), want)
    ints = torch.tensor([[0, -1, 1, -2]], dtype=torch.int32)
    assert ref.unpack_bits(ops.pack_signs(ints), 4).tolist() == [[1, 0, 1, 0]]


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    x, w = random_words(5, 100, gen), random_words(3, 100, gen)
    torch.library.opcheck(torch.ops.bpkernels.xnor_gemm.default, (x, w, None, w, 100),
                          test_utils=("test_schema", "test_faketensor"))
    z = torch.randn(2, 5, 6, 3, generator=gen)
    torch.library.opcheck(torch.ops.bpkernels.xnor_im2col.default, (z, [3, 3], [2, 2], [1, 1]),
                          test_utils=("test_schema", "test_faketensor"))


def test_op_errors(monkeypatch):
    x = torch.zeros(4, 2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="x must be int64"):
        ops.xnor_gemm(x.int(), x, None, None, 100)
    with pytest.raises(RuntimeError, match="W = 2 words like x"):
        ops.xnor_gemm(x, torch.zeros(3, 3, dtype=torch.int64), None, None, 100)
    with pytest.raises(RuntimeError, match="does not fit W = 2"):
        ops.xnor_gemm(x, x, None, None, 200)
    with pytest.raises(RuntimeError, match="P dividing R"):
        ops.xnor_gemm(x, x, torch.zeros(3, 2, dtype=torch.int64), None, 100)
    with pytest.raises(RuntimeError, match="w_nonzero must have the shape of w"):
        ops.xnor_gemm(x, x, None, torch.zeros(3, 2, dtype=torch.int64), 100)
    with pytest.raises(RuntimeError, match="z must have shape"):
        ops.xnor_im2col(torch.zeros(2, 3), (1, 1), (1, 1), (0, 0))
    with pytest.raises(RuntimeError, match="float32, float64 or int32"):
        ops.xnor_im2col(torch.zeros(1, 2, 2, 1, dtype=torch.int64), (1, 1), (1, 1), (0, 0))
    with pytest.raises(RuntimeError, match="does not fit the padded"):
        ops.xnor_im2col(torch.zeros(1, 2, 2, 1), (3, 3), (1, 1), (0, 0))
    monkeypatch.setenv("BPK_XNOR_ISA", "sse9")
    with pytest.raises(RuntimeError, match="BPK_XNOR_ISA must be"):
        ops.xnor_gemm(x, x, None, None, 100)


# ---- packed networks against the float model ------------------------------------------------

def float_preactivations(model, x):
    """Every weight layer's point-wise preactivation from the model's layers and magnetisations
    (the semantics of BPSequential.predict): W = sign(m), x ← sign(z + 1e-10) between layers."""
    first = next(layer for layer in model.layers if not isinstance(layer, nn.Flatten))
    if isinstance(first, BPConv2d) and x.dim() == 2:
        x = x.view(x.shape[0], first.in_channels, *first.input_size)
    h, zs = x.to(first.mag.dtype).contiguous(), []
    for layer in model.layers:
        if isinstance(layer, nn.Flatten):
            h = layer(h)
            continue
        if isinstance(layer, BPMaxPool2d):  # the pooled preactivations, then their signs
            zs.append(F.max_pool2d(zs[-1], layer.kernel_size))
            h = torch.sign(zs[-1] + 1e-10)
            continue
        w = torch.sign(layer.mag)
        if isinstance(layer, BPConv2d):
            zs.append(F.conv2d(h, w, stride=layer.stride, padding=layer.padding))
        else:
            zs.append(h @ w.T)
        h = torch.sign(zs[-1] + 1e-10)
    return zs


def roundtrip(model, tmp_path, name="net.bpk"):
    path = tmp_path / name
    export(model, path)
    return load_packed(path)


def check_exact(model, x, packed):
    got = packed.preactivations(x)
    want = float_preactivations(model, x)
    assert len(got) == len(want)
    # the float layer (and its pooling): same operation, same rounding
    floats = 2 if len(packed.stages) > 1 and packed.stages[1]["kind"] == "maxpool2d" else 1
    assert all(torch.equal(g, w) for g, w in zip(got[:floats], want[:floats]))
    for g, w in zip(got[floats:], want[floats:]):
        assert g.dtype == torch.int32 and torch.equal(g.to(w.dtype), w)
    pred, want_pred = packed(x), model(x)
    assert pred.dtype == want_pred.dtype and torch.equal(pred, want_pred)


MLPS = [
    dict(sizes=[784, 101, 103, 10], output="argmax"),
    dict(sizes=[200, 65, 64, 1], output="sign"),
    dict(sizes=[130, 70, 1], output="sign", density=0.5),
    dict(sizes=[100, 129, 10], output="argmax", density=0.3, dtype=torch.float64),
    dict(sizes=[50, 10], output="argmax"),
    dict(sizes=[50, 1], output="sign", flatten=True),
]


@pytest.mark.parametrize("cfg", MLPS, ids=lambda c: "-".join(map(str, c["sizes"])))
def test_mlp_exact(cfg, tmp_path):
    model = mlp(seed=3, **cfg)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(257, cfg["sizes"][0], generator=gen, dtype=cfg.get("dtype", torch.float32))
    if cfg.get("flatten"):
        x = x.view(257, 2, 25)
    check_exact(model, x, roundtrip(model, tmp_path))


def test_zero_weights_without_mask(tmp_path):
    model = mlp([60, 70, 10], seed=0)
    model.layers[0].mag[:, :7] = 0.0  # m = 0 is a zero weight too: sign(0) = 0
    model.layers[1].mag[3] = 0.0
    check_exact(model, torch.randn(50, 60), roundtrip(model, tmp_path))


CONVS = [
    dict(spec="conv32k5s2p2-conv64k3s2p1-dense501-dense10"),
    dict(spec="conv8k3-conv16k3s2p1-dense10", density=0.6),
    dict(spec="conv5k3s1p1-conv70k2s2-conv3k3p1-dense1", num_classes=2, input_shape=(3, 9, 11)),
    dict(spec="conv4k3s2-dense7-dense10", dtype=torch.float64),
    dict(spec="conv6k3-dense10", input_shape=(2, 8, 8)),
    dict(spec="conv32k5p2-maxpool2-conv64k3p1-maxpool2-dense501-dense10"),
    dict(spec="conv5k3p1-maxpool3-conv7k2-dense1", num_classes=2, input_shape=(3, 11, 10), density=0.7),
]


@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: c["spec"])
def test_conv_exact(cfg, tmp_path):
    cfg = dict(cfg)
    spec, shape = cfg.pop("spec"), cfg.get("input_shape", (1, 28, 28))
    model = build_arch(spec, seed=5, **cfg)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(65, *shape, generator=gen, dtype=cfg.get("dtype", torch.float32))
    packed = roundtrip(model, tmp_path)
    check_exact(model, x, packed)
    assert torch.equal(packed(x.flatten(1)), model(x))  # flat images, as the model takes


def test_batch_of_one_and_chunks(tmp_path):
    model = build_arch("conv8k3s2p1-dense10", seed=1)
    packed = roundtrip(model, tmp_path)
    x = torch.randn(9, 1, 28, 28)
    assert torch.equal(packed(x[:1]), model(x[:1]))
    assert torch.equal(packed(x, chunk=4), model(x))


@pytest.mark.slow
def test_trained_nets_on_the_full_fashion_mnist_test_set(tmp_path):
    """Trained on a 2000-image subset, checked on all 10 000 test images."""
    ds = fashion_mnist_or_skip(subset=2000)
    assert ds.test_x.shape[0] == 10000
    nets = {"mlp": mlp([784, 501, 501, 10], seed=0),
            "conv": build_arch("conv16k5s2p2-conv32k3s2p1-dense101-dense10", seed=0)}
    for name, model in nets.items():
        fit(model, ds, epochs=1, batch_size=128, progress=False, eval_bayes=False)
        packed = roundtrip(model, tmp_path, f"{name}.bpk")
        pred = packed(ds.test_x)
        assert torch.equal(pred, model(ds.test_x)), name
        assert packed.error(ds.test_x, ds.test_y) == model.error(ds.test_x, ds.test_y) < 0.5
        check_exact(model, ds.test_x[:500], packed)


# ---- the file format ------------------------------------------------------------------------

def test_file_size_and_header(tmp_path):
    model = mlp([784, 501, 501, 10], seed=0)
    header = export(model, tmp_path / "m.bpk")
    size = os.path.getsize(tmp_path / "m.bpk")
    bits = sum(-(-n // 64) * 8 * k for n, k in [(784, 501), (501, 501), (501, 10)])
    assert bits < size < bits + 2048
    assert header["dtype"] == "float32" and [r["type"] for r in header["layers"]] == ["linear"] * 3
    assert header["layers"][0]["words_per_row"] == 13 and header["layers"][0]["nonzero"] is None


def corrupt(path, at, value=None):
    raw = bytearray(path.read_bytes())
    raw[at] = raw[at] ^ 0x01 if value is None else value
    path.write_bytes(bytes(raw))


def test_corrupted_files_are_detected(tmp_path):
    model = mlp([30, 20, 10], seed=0, density=0.5)
    path = tmp_path / "m.bpk"
    export(model, path)
    good = path.read_bytes()
    for at in (20, len(good) // 2, len(good) - 40, len(good) - 1):  # header, payload, digest
        path.write_bytes(good)
        corrupt(path, at)
        with pytest.raises(PackedFormatError, match="checksum mismatch"):
            load_packed(path)
    path.write_bytes(good[:-100])
    with pytest.raises(PackedFormatError, match="checksum mismatch"):
        load_packed(path)
    path.write_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(PackedFormatError, match="bad magic"):
        load_packed(path)
    path.write_bytes(b"")
    with pytest.raises(PackedFormatError, match="bad magic"):
        load_packed(path)


def test_input_errors(tmp_path):
    packed = roundtrip(build_arch("conv4k3-dense10", seed=0), tmp_path)
    with pytest.raises(ValueError, match=r"input must have shape \[B, 1, 28, 28\] or \[B, 784\]"):
        packed(torch.randn(3, 1, 27, 28))
    with pytest.raises(ValueError, match="the batch is empty"):
        packed(torch.randn(0, 784))
    x = torch.randn(2, 784)
    x[1, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        packed(x)
    huge = torch.full((2, 784), 3e38)  # finite, though its sum overflows
    assert packed(huge).shape == (2,)


def test_export_errors(tmp_path):
    model = BPSequential(BPConv2d(1, 4, 3), nn.Flatten(), BPLinear(4 * 26 * 26, 10, output="argmax"))
    with pytest.raises(ValueError, match="input_size"):
        export(model, tmp_path / "x.bpk")


def test_pool_records_are_checked(tmp_path):
    model = build_arch("conv4k3p1-maxpool2-dense10", seed=0)
    export(model, tmp_path / "net.bpk")
    header, payload = read_packed(tmp_path / "net.bpk")
    pool = header["layers"][1]
    assert pool == dict(type="maxpool2d", kernel_size=2, input_shape=[4, 28, 28])
    for bad, match in [(dict(kernel_size=29), "does not fit"), (dict(input_shape=[4, 14, 14]), "pools the images")]:
        layers = [dict(layer) for layer in header["layers"]]
        layers[1].update(bad)
        with pytest.raises(PackedFormatError, match=match):
            PackedNet(dict(header, layers=layers), payload)
    first = [header["layers"][1], *header["layers"]]
    with pytest.raises(PackedFormatError, match="pools the images"):
        PackedNet(dict(header, layers=first), payload)


# ---- command line -----------------------------------------------------------------------------

def test_cli_export_and_predict(tmp_path, capsys):
    ds = fashion_mnist_or_skip(subset=300, test_subset=200)
    model = mlp([784, 31, 10], seed=0)
    run = tmp_path / "run"
    fit(model, ds, epochs=1, batch_size=100, progress=False, eval_bayes=False, run_dir=str(run),
        config={"dataset": "fashion-mnist"})
    out = tmp_path / "net.bpk"
    assert cli.main(["export", str(run / "checkpoint.pt"), str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bytes"] == os.path.getsize(out) and info["bytes"] * 20 < info["state_dict_bytes"]
    assert cli.main(["predict", str(out), "--test-subset", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    test = data.load_fashion_mnist(test_subset=200)  # the draw predict makes (no train subset)
    assert result["test_error"] == pytest.approx(model.error(test.test_x, test.test_y))
    with pytest.raises(SystemExit, match="does not fit --task evenodd"):
        cli.main(["predict", str(out), "--task", "evenodd"])
    with pytest.raises(SystemExit, match="bad magic"):
        cli.main(["predict", str(run / "checkpoint.pt")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("planes", ["none", "valid", "nonzero", "both"])
def test_cuda_kernels_match_cpu(planes):
    gen = torch.Generator().manual_seed(7)
    x, w = random_words(66, 1000, gen), random_words(70, 1000, gen)
    valid = random_words(33, 1000, gen) if planes in ("valid", "both") else None
    nonzero = random_words(70, 1000, gen) if planes in ("nonzero", "both") else None
    cuda = [None if t is None else t.cuda() for t in (x, w, valid, nonzero)]
    assert torch.equal(ops.xnor_gemm(*cuda, 1000).cpu(), ops.xnor_gemm(x, w, valid, nonzero, 1000))
    for dtype in (torch.float32, torch.float64, torch.int32):
        z = torch.randint(-3, 4, (3, 9, 8, 70), generator=gen).to(dtype).permute(0, 2, 1, 3)
        got = ops.xnor_im2col(z.cuda(), (3, 2), (2, 1), (1, 1))
        want = ops.xnor_im2col(z, (3, 2), (2, 1), (1, 1))
        assert all(torch.equal(g.cpu(), e) for g, e in zip(got, want))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", ["conv8k3s2p1-conv16k3s2p1-dense32-dense10",
                                  "conv8k3p1-maxpool2-conv16k3p1-maxpool2-dense32-dense10"])
def test_cuda_packed_net(tmp_path, spec):
    model = build_arch(spec, seed=0, density=0.8)
    x = torch.randn(20, 1, 28, 28)
    path = tmp_path / "net.bpk"
    export(model, path)
    assert torch.equal(load_packed(path, device="cuda")(x.cuda()).cpu(), model(x))


def test_cli_predict_reads_the_other_datasets(tmp_path, capsys):
    """predict takes --dataset mnist|cifar10 --data-dir as train does; a network that does not
    fit the dataset's examples is refused naming both shapes."""
    from test_datasets import make_cifar, make_mnist

    mnist, cifar = tmp_path / "mnist", tmp_path / "cifar"
    make_mnist(str(mnist), n_train=60, n_test=30)
    make_cifar(str(cifar))
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(mnist), "--hidden", "9",
                     "--epochs", "1", "--batch-size", "20", "--no-progress",
                     "--run-dir", str(run)]) == 0
    out = tmp_path / "net.bpk"
    assert cli.main(["export", str(run / "checkpoint.pt"), str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--dataset", "mnist", "--data-dir", str(mnist)]) == 0
    result = json.loads(capsys.readouterr().out)
    model, _ = load_model(str(run / "checkpoint.pt"))
    test = data.load_mnist(str(mnist))
    assert result["test_samples"] == 30
    assert result["test_error"] == pytest.approx(model.error(test.test_x, test.test_y))
    with pytest.raises(SystemExit, match=r"does not fit cifar10.*\[B, 784\], got \[8, 3072\]"):
        cli.main(["predict", str(out), "--dataset", "cifar10", "--data-dir", str(cifar)])
