"""BPMaxPool2d, the max-pooling channel: its messages against an enumeration of the factor
𝟙[y = max_j x_j], extreme fields in float32 and float64, the 1×1 window as the identity in a
whole network, one bp_step against the sweep written by hand, predictions, the architecture
grammar, checkpoints, the gradient baselines on a pooled architecture, and learning."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bpkernels import BPConv2d, BPLinear, BPMaxPool2d, BPSequential, build_arch, data, parse_arch
from bpkernels.baselines import train_baseline
from bpkernels.baselines.binarynet import BinaryNet
from bpkernels.train import fit, load_model

from helpers import fashion_mnist_or_skip

F64 = torch.float64


def enumerate_window(u: list[float], b: float) -> tuple[float, list[float]]:
    """The exact messages of one window by enumerating its 2^K input configurations: the
    up-field of y from inputs with fields u_j, and the downward field on each x_k given the
    field b on y and the other inputs' fields."""
    weights = {}
    for xs in itertools.product([-1, 1], repeat=len(u)):
        weights[xs] = math.exp(sum(uj * xj for uj, xj in zip(u, xs)))
    up = {y: sum(w for xs, w in weights.items() if max(xs) == y) for y in (-1, 1)}
    down = []
    for k in range(len(u)):
        by_xk = {-1: 0.0, 1: 0.0}
        for xs, w in weights.items():
            by_xk[xs[k]] += w * math.exp(-u[k] * xs[k] + b * max(xs))
        down.append(0.5 * math.log(by_xk[1] / by_xk[-1]))
    return 0.5 * math.log(up[1] / up[-1]), down


@pytest.mark.parametrize("k,scale", [(2, 1.0), (2, 4.0), (3, 2.0)])
def test_messages_match_enumeration(k, scale):
    gen = torch.Generator().manual_seed(k)
    # 2k + 1 rows and columns: the last ones fill no window and get no downward field
    u = scale * torch.randn(2, 2, 2 * k + 1, 2 * k + 1, generator=gen, dtype=F64)
    b = scale * torch.randn(2, 2, 2, 2, generator=gen, dtype=F64)
    pool = BPMaxPool2d(k)
    up, down = pool.up_field(u), pool.down_field(u, b)
    assert up.shape == b.shape and down.shape == u.shape
    for n, c, i, j in itertools.product(range(2), range(2), range(2), range(2)):
        window = u[n, c, i * k:(i + 1) * k, j * k:(j + 1) * k]
        ref_up, ref_down = enumerate_window(window.flatten().tolist(), b[n, c, i, j].item())
        assert up[n, c, i, j].item() == pytest.approx(ref_up, rel=1e-12, abs=1e-12)
        got = down[n, c, i * k:(i + 1) * k, j * k:(j + 1) * k].flatten().tolist()
        assert got == pytest.approx(ref_down, rel=1e-12, abs=1e-12)
    assert torch.all(down[..., 2 * k, :] == 0) and torch.all(down[..., :, 2 * k] == 0)


# (input field of every input, downward field on y) -> exact up-field and downward field on
# each input (4 inputs), from the closed forms evaluated by hand in float64:
# u_y = ½[log(1 − e^{−S}) + S], S = 4 softplus(2u); b_k = −½ log[(1 − e^{−R}) + e^{−R−2b}], R = 3 softplus(2u)
EXTREMES = [(-200.0, 100.0, -200.0 + 0.5 * math.log(4), 100.0),
            (-60.0, 100.0, -60.0 + 0.5 * math.log(4), 60.0 - 0.5 * math.log(3)),
            (-60.0, -100.0, -60.0 + 0.5 * math.log(4), -100.0),
            (20.0, -100.0, 80.0, -40.0),
            (200.0, 100.0, 800.0, 0.0)]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("u,b,up,down", EXTREMES)
def test_extreme_fields_stay_exact_and_finite(dtype, u, b, up, down):
    """Inputs surely −1 (softplus(2u) underflows in float32 at u = −60) or surely +1."""
    pool = BPMaxPool2d(2)
    uu = torch.full((1, 1, 2, 2), u, dtype=dtype)
    got_up = pool.up_field(uu)
    got_down = pool.down_field(uu, torch.full((1, 1, 1, 1), b, dtype=dtype))
    rtol = 1e-6 if dtype == torch.float32 else 1e-13
    assert got_up.item() == pytest.approx(up, rel=rtol, abs=rtol)
    assert torch.isfinite(got_down).all()
    assert got_down.flatten().tolist() == pytest.approx([down] * 4, rel=rtol, abs=1e-5)


def test_one_by_one_window_is_the_identity():
    u = torch.linspace(-100, 100, 2001, dtype=F64).view(1, 1, 1, -1)
    b = torch.linspace(50, -50, 2001, dtype=F64).view(1, 1, 1, -1)
    pool = BPMaxPool2d(1)
    torch.testing.assert_close(pool.up_field(u), u, rtol=0, atol=1e-13)
    torch.testing.assert_close(pool.down_field(u, b), b, rtol=0, atol=0)


def conv_pool_net(algo, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(algo=algo, generator=gen, dtype=F64)
    size = 6 // k
    return BPSequential(BPConv2d(2, 3, 3, padding=1, input_size=(6, 6), **kw), BPMaxPool2d(k),
                        BPConv2d(3, 4, 3, padding=1, **kw), nn.Flatten(),
                        BPLinear(4 * size * size, 3, output="argmax", **kw))


def conv_net(algo, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(algo=algo, generator=gen, dtype=F64)
    return BPSequential(BPConv2d(2, 3, 3, padding=1, input_size=(6, 6), **kw),
                        BPConv2d(3, 4, 3, padding=1, **kw), nn.Flatten(),
                        BPLinear(144, 3, output="argmax", **kw))


@pytest.mark.parametrize("algo,tau_max", [("bpi", 1), ("bpi", 2), ("amp", 2), ("mf", 1)])
def test_one_by_one_pool_changes_no_network(algo, tau_max):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, 6, 6, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (7,), generator=gen)
    pooled, plain = conv_pool_net(algo, 1), conv_net(algo)
    for _ in range(2):
        torch.testing.assert_close(pooled.bp_step(x, y, tau_max=tau_max),
                                   plain.bp_step(x, y, tau_max=tau_max), rtol=1e-13, atol=1e-14)
    for (name, a), b in zip(pooled.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    for mode in ("pointwise", "bayes"):
        torch.testing.assert_close(pooled.scores(x, mode), plain.scores(x, mode), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("algo,tau_max", [("bpi", 2), ("amp", 2), ("mf", 1)])
def test_bp_step_is_the_sweep_through_the_channel(algo, tau_max):
    """One bp_step of conv → pool → conv → flatten → dense against the same sweep written out:
    the channel gets the up-fields of its inputs going up, and maps the downward field of the
    layer above onto its inputs going down."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 2, 6, 6, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (5,), generator=gen)
    net, ref = conv_pool_net(algo, 2), conv_pool_net(algo, 2)
    delta = net.bp_step(x, y, tau_max=tau_max)

    conv1, pool, conv2, flatten, dense = ref.layers
    states = {layer: layer.mp_begin(tau_max) for layer in ref.bp_layers}
    for _ in range(tau_max):
        u1 = conv1.mp_forward(states[conv1], x, first=True)
        u2 = conv2.mp_forward(states[conv2], pool.up_field(u1), first=False)
        dense.mp_forward(states[dense], flatten(u2), first=False)
        b3, h3 = dense.mp_backward(states[dense], y)
        states[dense].b = b3
        b2, h2 = conv2.mp_backward(states[conv2], b3.reshape(u2.shape))
        states[conv2].b = b2
        b1, h1 = conv1.mp_backward(states[conv1], pool.down_field(u1, b2))
        states[conv1].b = b1
        deltas = [layer.mp_update(states[layer], h)
                  for layer, h in zip(ref.bp_layers, (h1, h2, h3))]
    assert torch.equal(delta, torch.stack(deltas).max())
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo", ["bpi", "amp", "mf"])
def test_cuda_matches_cpu(algo):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(16, 2, 6, 6, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (16,), generator=gen)
    cpu, gpu = conv_pool_net(algo, 2), conv_pool_net(algo, 2).to("cuda")
    for _ in range(2):
        cpu.bp_step(x, y, tau_max=2)
        gpu.bp_step(x.cuda(), y.cuda(), tau_max=2)
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-11, msg=name)
    for mode in ("pointwise", "bayes"):
        assert torch.equal(gpu.predict(x, mode=mode).cpu(), cpu.predict(x, mode=mode))


def test_predictions():
    """Point-wise: max of the ±1 activations. Bayesian: the exact mean of the max of independent
    ±1 inputs, checked by enumeration."""
    net = conv_pool_net("amp", 2)
    x = torch.randn(4, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    conv1, pool, conv2, flatten, dense = net.layers
    expected = dense(flatten(conv2(F.max_pool2d(conv1(x), 2))))
    assert torch.equal(net.scores(x, "pointwise"), expected)

    x_hat = torch.tensor([0.3, -0.9, 0.99, -1.0, 1.0, -0.2, -1.0, -1.0], dtype=F64)
    x_hat = x_hat.view(1, 2, 2, 2)  # two windows
    y_hat, var = BPMaxPool2d(2).bayes(x_hat, 1 - x_hat.square())
    for c in range(2):
        m = x_hat[0, c].flatten().tolist()
        probs = [(1 + mj) / 2 for mj in m]
        p_plus = 1 - math.prod(1 - p for p in probs)
        assert y_hat[0, c, 0, 0].item() == pytest.approx(2 * p_plus - 1, abs=1e-15)
    torch.testing.assert_close(var, 1 - y_hat.square())
    assert y_hat[0, 1, 0, 0] == 1.0  # one input surely +1


def test_grammar_config_and_checkpoint(tmp_path):
    specs = parse_arch("conv4k3p1-maxpool2-conv6k3p1-maxpool3-dense3", num_classes=3,
                       input_shape=(1, 13, 13))
    assert [(s.pool, s.out_shape) for s in specs] == [(2, (4, 6, 6)), (3, (6, 2, 2)), (1, (3,))]
    assert specs[1].in_shape == (4, 6, 6)
    net = build_arch("conv4k3p1-maxpool2-conv6k3p1-maxpool3-dense3", algo="amp", num_classes=3,
                     input_shape=(1, 13, 13))
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["BPConv2d", "BPMaxPool2d", "BPConv2d", "BPMaxPool2d", "Flatten", "BPLinear"]
    assert net.bp_layers[-1].in_features == 24
    clone = BPSequential.from_config(net.config())
    assert clone.config() == net.config()

    ds = data.teacher_student(48, 16, (169, 3), seed=0)
    fit(net, ds, epochs=1, batch_size=16, run_dir=str(tmp_path / "run"), progress=False)
    loaded, _ = load_model(str(tmp_path / "run" / "checkpoint.pt"))
    for mode in ("pointwise", "bayes"):
        assert torch.equal(loaded.predict(ds.test_x, mode), net.predict(ds.test_x, mode))


@pytest.mark.parametrize("spec,match", [
    ("dense8-maxpool2-dense10", "must follow a conv layer"),
    ("conv8k3-maxpool2-maxpool2-dense10", "one pooling per conv layer"),
    ("conv8k3-maxpool1-dense10", "window of 2 or more"),
    ("conv8k3s4-maxpool9-dense10", "does not fit a 7×7 image"),
])
def test_bad_architectures_raise_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_arch(spec)


def test_bad_modules_raise_clear_errors():
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
            BPMaxPool2d(bad)
    with pytest.raises(ValueError, match="cannot come before the first one"):
        BPSequential(BPMaxPool2d(2), BPConv2d(1, 2, 3), nn.Flatten(), BPLinear(8, 2, output="argmax"))
    with pytest.raises(ValueError, match="smaller than the 4×4 window"):
        BPSequential(BPConv2d(1, 2, 3, input_size=(5, 5)), BPMaxPool2d(4), nn.Flatten(),
                     BPLinear(8, 2, output="argmax"))
    with pytest.raises(ValueError, match="needs images"):
        BPMaxPool2d(2).output_shape((12,))


def test_gradient_baselines_pool_the_preactivations():
    """The baselines' network on a pooled architecture string: conv → max pool of the
    preactivations → (BN or 1/√fan-in) → sign; and STE trains it through the harness."""
    specs = parse_arch("conv4k3p1-maxpool2-dense3", num_classes=3, input_shape=(1, 6, 6))
    net = BinaryNet(specs, batch_norm=False).double()
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(f.shape, generator=gen, dtype=F64).sign() for f in net.fields]
    x = torch.randn(3, 36, generator=gen, dtype=F64)
    hidden = torch.sign(F.max_pool2d(F.conv2d(x.view(3, 1, 6, 6), weights[0], padding=1), 2) / 3.0)
    expected = F.linear(hidden.flatten(1), weights[1]) / 6.0
    torch.testing.assert_close(net(x, weights), expected, rtol=1e-15, atol=1e-15)

    ds = data.teacher_student(64, 32, (36, 3), seed=0)
    rows = train_baseline("ste", ds, None, epochs=1, batch_size=16, seed=0, progress=False,
                          arch="conv4k3p1-maxpool2-dense3", input_shape=(1, 6, 6))
    assert 0.0 <= rows[-1]["test_error"] <= 1.0


def test_pooled_conv_net_learns_fashion_mnist_subset():
    """conv8k5p2 → 2×2 max pool → dense10, one AMP epoch over 1000 images in batches of 50:
    chance is 90 % test error; it must get below 50 %."""
    ds = fashion_mnist_or_skip(subset=1000, test_subset=500, seed=0)
    net = build_arch("conv8k5p2-maxpool2-dense10", algo="amp", rho=[1.0001, 0.99], seed=0)
    rows = fit(net, ds, epochs=1, batch_size=50, progress=False, eval_bayes=True)
    assert rows[-1]["test_error"] < 0.50 and rows[-1]["test_error_bayes"] < 0.50, rows[-1]
