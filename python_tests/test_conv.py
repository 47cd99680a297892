"""BPConv2d: the im2col layer against the explicit factor-graph twin (python_tests/conv_twin.py),
the 1×1 convolution as a dense layer, whole conv nets through bp_step against their twins,
modules (state_dict, from_config, dtype), shape errors, build_arch, CUDA and a short training run."""

import io

import pytest
import torch
from torch import nn

from bpkernels import BPConv2d, BPLinear, BPSequential, build_arch, data
from bpkernels.train import fit, load_model

from conv_twin import TwinBPConv2d
from helpers import assert_close, fashion_mnist_or_skip, tol, use_twin_ops

F64 = torch.float64

# (C, H, W, K, kernel, stride, padding, density): odd and even sizes, strides 1 and 2, padding
# 0 and 1, a rectangular kernel, pixels no patch covers (6×6, k3 s2 p0), 1×1 kernels, a mask.
CONFIGS = [
    (1, 7, 7, 3, 3, 1, 0, None),
    (2, 7, 6, 4, 3, 2, 1, None),
    (3, 5, 9, 2, (2, 3), (1, 2), (0, 1), None),
    (2, 6, 6, 3, 3, 2, 0, 0.6),
    (4, 3, 4, 2, 1, 1, 0, None),
    (2, 5, 5, 3, 3, 1, 1, None),
]


def make_pair(cfg, algo, seed=0):
    c, h, w, k, ks, s, p, density = cfg
    kw = dict(stride=s, padding=p, algo=algo, density=density, dtype=F64, input_size=(h, w))
    ext = BPConv2d(c, k, ks, generator=torch.Generator().manual_seed(seed), **kw)
    twin = TwinBPConv2d(c, k, ks, generator=torch.Generator().manual_seed(seed), **kw)
    return ext, twin


@pytest.mark.parametrize("first", [True, False], ids=["first", "hidden"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c[:3])) + f"-k{c[4]}s{c[5]}p{c[6]}")
@pytest.mark.parametrize("algo", ["bpi", "amp", "mf"])
def test_layer_matches_explicit_factor_graph(algo, cfg, first):
    """Two inner iterations (τ_max = 2: the layer's own b, AMP memory, θ = ρH_prior) of one
    layer with random inputs and random downward fields from above, float64."""
    gen = torch.Generator().manual_seed(1)
    c, h, w = cfg[:3]
    ext, twin = make_pair(cfg, algo)
    x_in = 1.5 * torch.randn(3, c, h, w, generator=gen, dtype=F64)
    out_shape = ext.output_shape((c, h, w))
    b_top = torch.randn(3, *out_shape, generator=gen, dtype=F64)
    states = {layer: layer.mp_begin(tau_max=2) for layer in (ext, twin)}
    for it in range(2):
        results = []
        for layer in (ext, twin):
            st = states[layer]
            u = layer.mp_forward(st, x_in, first)
            b, h_in = layer.mp_backward(st, b_top + it)
            results.append((u, b, layer.mp_update(st, h_in)))
            st.b = b
        (u1, b1, d1), (u2, b2, d2) = results
        assert_close(u1, u2, **tol(F64), name=f"u, iteration {it}")
        assert (b1 is None) == (b2 is None) == first
        if not first:
            assert_close(b1, b2, **tol(F64), name=f"b, iteration {it}")
        assert_close(d1, d2, **tol(F64), name="delta")
        for name in ("field", "mag"):
            assert_close(getattr(ext, name), getattr(twin, name), **tol(F64), name=f"{name}, iteration {it}")


@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=str)
def test_predictions_match_twin_and_training_forward(cfg):
    c, h, w = cfg[:3]
    gen = torch.Generator().manual_seed(2)
    ext, twin = make_pair(cfg, "bpi", seed=3)
    x = torch.randn(4, c, h, w, generator=gen, dtype=F64)
    assert_close(ext.preactivation(x), twin.preactivation(x), **tol(F64), name="pointwise")
    assert torch.equal(ext(x), torch.sign(ext.preactivation(x) + 1e-10)), "forward: sign activations"
    x_hat = torch.tanh(x)
    for delta in (None, 1 - x_hat.square()):
        for a, b in zip(ext.bayes(x_hat, delta), twin.bayes(x_hat, delta)):
            assert_close(a, b, **tol(F64), name="bayes")
    # docs/algorithms.md §11.6: the training forward at τ = 1 is the Bayesian forward, tanh(u) = erf(ω/√2V).
    u = ext.mp_forward(ext.mp_begin(1), x, first=True)
    assert_close(torch.tanh(u), ext.bayes(x, None)[0], rtol=1e-9, atol=1e-12, name="tanh u")


def test_bp_is_bpi_and_rejects_inner_iterations():
    cfg = CONFIGS[1]
    layers = [make_pair(cfg, algo)[0] for algo in ("bp", "bpi")]
    x = torch.randn(3, *cfg[:3], dtype=F64)
    b_top = torch.randn(3, *layers[0].output_shape(cfg[:3]), dtype=F64)
    for layer in layers:
        st = layer.mp_begin(1)
        layer.mp_forward(st, x, first=False)
        layer.mp_update(st, layer.mp_backward(st, b_top)[1])
    assert torch.equal(layers[0].field, layers[1].field) and torch.equal(layers[0].mag, layers[1].mag)
    with pytest.raises(NotImplementedError, match="only at tau_max=1"):
        layers[0].mp_begin(2)


@pytest.mark.parametrize("algo", ["bpi", "amp", "mf"])
@pytest.mark.parametrize("tau_max", [1, 2])
def test_1x1_conv_on_1x1_image_is_bplinear(algo, tau_max):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9, 6, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (9,), generator=gen)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    conv = BPSequential(BPConv2d(6, 5, 1, algo=algo, density=0.8, generator=g1, dtype=F64, input_size=1),
                        nn.Flatten(), BPLinear(5, 3, algo=algo, output="argmax", generator=g1, dtype=F64))
    dense = BPSequential(BPLinear(6, 5, algo=algo, density=0.8, generator=g2, dtype=F64),
                         BPLinear(5, 3, algo=algo, output="argmax", generator=g2, dtype=F64))
    # BPI runs the same operators on the same rows: bit for bit. MF and AMP run ATen convolutions
    # (other summation order): equal to rounding.
    close = dict(rtol=0, atol=0) if algo == "bpi" else dict(rtol=1e-12, atol=1e-12)
    for _ in range(2):
        torch.testing.assert_close(conv.bp_step(x, y, tau_max=tau_max), dense.bp_step(x, y, tau_max=tau_max),
                                   **close)
    for (name, a), b in zip(conv.state_dict().items(), dense.state_dict().values()):
        torch.testing.assert_close(a.reshape(b.shape), b, **close, msg=name)
    assert torch.equal(conv(x), dense(x))
    assert torch.equal(conv.predict(x, mode="bayes"), dense.predict(x, mode="bayes"))


def conv_net(conv_cls, algo, seed=0):
    """conv → conv → flatten → argmax dense; ``algo`` names the variant of every layer, or of
    each conv layer joined by "+" (a mixed network, e.g. "bpi+amp")."""
    gen = torch.Generator().manual_seed(seed)
    algos = algo.split("+") if "+" in algo else [algo, algo]
    kw = dict(generator=gen, dtype=F64)
    return BPSequential(conv_cls(2, 4, 3, stride=1, padding=1, input_size=(7, 7), algo=algos[0], **kw),
                        conv_cls(4, 5, 3, stride=2, padding=0, algo=algos[1], **kw),
                        nn.Flatten(),
                        BPLinear(45, 3, output="argmax", algo=algos[1], **kw))


@pytest.mark.parametrize("twin", ["explicit-graph", "twin-ops"])
@pytest.mark.parametrize("algo,tau_max", [("bpi", 1), ("bpi", 2), ("amp", 1), ("amp", 3), ("mf", 2), ("bp", 1),
                                          ("bpi+amp", 1), ("bpi+amp", 2), ("amp+mf", 2)])
def test_conv_net_bp_step_matches_twin(monkeypatch, twin, algo, tau_max):
    """conv → conv → flatten → argmax dense, two bp_steps: the extension network against the
    same network run on the twin ops (helpers.use_twin_ops),
    its conv layers either BPConv2d (im2col on the twin ops) or TwinBPConv2d (explicit graph).
    A mixed network ("bpi+amp") runs each layer's own variant."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 98, generator=gen, dtype=F64)  # flat inputs, reshaped to [5, 2, 7, 7]
    y = torch.randint(0, 3, (5,), generator=gen)
    ext = conv_net(BPConv2d, algo)
    ref = conv_net(TwinBPConv2d if twin == "explicit-graph" else BPConv2d, algo)
    ext_deltas = [ext.bp_step(x, y, tau_max=tau_max) for _ in range(2)]
    use_twin_ops(monkeypatch)
    ref_deltas = [ref.bp_step(x, y, tau_max=tau_max) for _ in range(2)]
    torch.testing.assert_close(ext_deltas, ref_deltas, rtol=1e-10, atol=1e-12)
    for (name, a), b in zip(ext.state_dict().items(), ref.state_dict().values()):
        assert_close(a, b, **tol(F64), name=name)
    for mode in ("pointwise", "bayes"):
        assert torch.equal(ext.predict(x, mode=mode), ref.predict(x, mode=mode))


def test_state_dict_config_checkpoint_dtype(tmp_path):
    ds = data.teacher_student(64, 32, (49, 3), seed=0)
    net = build_arch("conv4k3s2p1-conv6k3s1p1-flatten-dense3", algo="amp", num_classes=3,
                     input_shape=(1, 7, 7), density=0.7)
    assert {"layers.0.field", "layers.0.mag", "layers.0.mask", "layers.3.field"} <= set(net.state_dict())
    assert net.bp_layers[0].field.shape == (4, 1, 3, 3)
    fit(net, ds, epochs=2, batch_size=16, run_dir=str(tmp_path / "run"), progress=False)
    loaded, state = load_model(str(tmp_path / "run" / "checkpoint.pt"))
    assert state["epoch"] == 2
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(loaded(ds.test_x), net(ds.test_x))
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    clone = BPSequential.from_config(net.config())
    clone.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert torch.equal(clone.predict(ds.test_x, mode="bayes"), net.predict(ds.test_x, mode="bayes"))
    images = ds.test_x.view(-1, 1, 7, 7)
    assert torch.equal(net(images), net(ds.test_x)), "images and flat inputs must agree"
    net.double().to("cpu")
    assert net.bp_layers[1].mag.dtype == F64 and net.bp_layers[0].mask.dtype == F64
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(images), net.predict(images, mode="bayes")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "prediction changed the model"
    net.bp_step(images, ds.test_y)
    mask = net.bp_layers[0].mask
    assert torch.all(net.bp_layers[0].mag[mask == 0] == 0)


def test_build_arch_grammar():
    net = build_arch("conv32k3s2p1-conv64k3s2p1-flatten-dense10", algo="mf")
    convs = net.bp_layers[:2]
    assert [layer.output_shape(layer.input_shape) for layer in convs] == [(32, 14, 14), (64, 7, 7)]
    assert net.bp_layers[-1].in_features == 3136 and net.bp_layers[-1].output == "argmax"
    assert all(layer.algo == "mf" for layer in net.bp_layers)
    implicit = build_arch("conv8k5s2-dense64-dense1", num_classes=2, rho=[1.0, 1.0, 0.9], psi=0.5)
    kinds = [type(layer).__name__ for layer in implicit.layers]
    assert kinds == ["BPConv2d", "Flatten", "BPLinear", "BPLinear"]
    assert implicit.bp_layers[0].output_shape((1, 28, 28)) == (8, 12, 12)
    assert [layer.rho for layer in implicit.bp_layers] == [1.0, 1.0, 0.9]
    assert implicit.bp_layers[-1].output == "sign" and implicit.bp_layers[1].psi == 0.5
    dense = build_arch("dense20-dense10")
    assert isinstance(dense.layers[0], nn.Flatten) and dense.bp_layers[0].in_features == 784
    assert dense(torch.randn(3, 1, 28, 28)).shape == (3,)
    for spec, match in [("conv8k3-pool2-dense10", "cannot parse"), ("conv8k3", "must end with"),
                        ("conv8k3-dense5", "dense10"), ("dense5-conv8k3-dense10", "needs images")]:
        with pytest.raises(ValueError, match=match):
            build_arch(spec)


@pytest.mark.parametrize("build,x,error,match", [
    (lambda: BPSequential(BPConv2d(1, 4, 3, input_size=8), nn.Flatten(), BPLinear(100, 3, output="argmax")),
     None, ValueError, "do not chain: 144 -> 100"),
    (lambda: BPSequential(BPConv2d(1, 4, 3), BPConv2d(3, 4, 3), nn.Flatten(), BPLinear(4, 3, output="argmax")),
     None, ValueError, "do not chain: 4 channels"),
    (lambda: BPSequential(BPConv2d(1, 4, 3, input_size=5), BPLinear(36, 3, output="argmax")),
     None, ValueError, "put an nn.Flatten"),
    (lambda: BPSequential(BPConv2d(1, 4, 3, input_size=5), nn.Flatten()), None, ValueError, "must have output="),
    (lambda: BPConv2d(1, 4, 5, input_size=(3, 3)), None, ValueError, "smaller than the kernel"),
    (lambda: BPConv2d(1, 4, 0), None, ValueError, "kernel_size must be"),
    (lambda: BPConv2d(1, 4, 3, stride=(1, 0)), None, ValueError, "stride must be"),
    (lambda: BPConv2d(1, 4, 3, algo="sgd"), None, ValueError, "algo must be one of"),
    (lambda: BPConv2d(0, 4, 3), None, ValueError, "channels must be positive"),
    (lambda: BPSequential(BPConv2d(1, 4, 3), nn.Flatten(), BPLinear(100, 3, output="argmax")),
     torch.randn(2, 1, 8, 8), ValueError, "do not chain: 144 -> 100"),
    (lambda: BPSequential(BPConv2d(1, 4, 3), nn.Flatten(), BPLinear(36, 3, output="argmax")),
     torch.randn(2, 25), ValueError, r"input must have shape \[B, 1, \*, \*\]"),
    (lambda: BPSequential(BPConv2d(1, 4, 3, input_size=5), nn.Flatten(), BPLinear(36, 3, output="argmax")),
     torch.randn(2, 1, 6, 6), ValueError, r"input must have shape \[B, 1, 5, 5\] or \[B, 25\]"),
    (lambda: BPSequential(BPConv2d(1, 4, 3), nn.Flatten(), BPLinear(36, 3, output="argmax")),
     torch.randn(2, 1, 2, 2), ValueError, "smaller than the kernel"),
])
def test_bad_shapes_raise_clear_errors(build, x, error, match):
    with pytest.raises(error, match=match):
        net = build()
        net.bp_step(x, torch.zeros(x.shape[0], dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo", ["bpi", "amp", "mf"])
def test_cuda_matches_cpu(algo):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(16, 98, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (16,), generator=gen)
    cpu, gpu = conv_net(BPConv2d, algo), conv_net(BPConv2d, algo).to("cuda")
    for _ in range(2):
        cpu.bp_step(x, y, tau_max=2)
        gpu.bp_step(x.cuda(), y.cuda(), tau_max=2)
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11, name=name)
    for mode in ("pointwise", "bayes"):
        assert torch.equal(gpu.predict(x, mode=mode).cpu(), cpu.predict(x, mode=mode))


@pytest.mark.parametrize("algo", ["bpi", "amp", "mf"])
def test_conv_net_learns_fashion_mnist_subset(algo):
    """A tiny conv net (1×28×28 -> 8×14×14 -> 10), one epoch over 1000 Fashion-MNIST images in
    batches of 50: chance is 90 % test error; it must get below 50 % (it gets 30–40 %)."""
    ds = fashion_mnist_or_skip(subset=1000, test_subset=500, seed=0)
    net = build_arch("conv8k5s2p2-dense10", algo=algo, rho=[1.0001, 0.99], seed=0)
    rows = fit(net, ds, epochs=1, batch_size=50, progress=False, eval_bayes=False)
    assert rows[-1]["test_error"] < 0.50, rows[-1]
