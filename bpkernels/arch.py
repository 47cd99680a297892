"""Network architectures: the architecture-string grammar (``parse_arch``, shared with the
gradient baselines), ``build_arch`` for message-passing networks from such strings, and
``mlp`` for the usual dense networks."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from .conv import BPConv2d
from .gaussian import GaussianBPLinear
from .layers import PSI_DEFAULT, BPLinear
from .pool import BPMaxPool2d
from .sequential import BPSequential

_TOKEN = re.compile(r"conv(?P<k>\d+)k(?P<ks>\d+)(?:s(?P<s>\d+))?(?:p(?P<p>\d+))?"
                    r"|maxpool(?P<pool>\d+)|flatten|dense(?P<n>\d+)")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One weight layer of an architecture string: ``kind`` "conv" (weights [K, C, k, k]) or
    "dense" (weights [N, D]), with the per-sample shapes it maps, ``in_shape`` -> ``out_shape``
    ((C, H, W) or (D,); after the pooling, if any). ``flatten_before``: the layer takes the
    flattened output of the one below. ``pool``: the side of the non-overlapping max-pooling
    window applied to a conv layer's outputs (1: none)."""

    kind: str
    weight_shape: tuple[int, ...]
    stride: int
    padding: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    flatten_before: bool
    pool: int = 1


def parse_arch(spec: str, num_classes: int = 10,
               input_shape: Sequence[int] = (1, 28, 28)) -> list[LayerSpec]:
    """The weight layers of an architecture string (grammar: :func:`build_arch`), shapes
    checked. One parser for the message-passing nets and the gradient baselines."""
    tokens = spec.strip().lower().split("-")
    matches = [_TOKEN.fullmatch(t) for t in tokens]
    if not tokens or None in matches:
        bad = [t for t, m in zip(tokens, matches) if m is None]
        raise ValueError(f"bad architecture spec {spec!r}: cannot parse {bad}; expected tokens "
                         "conv<K>k<k>[s<s>][p<p>], maxpool<k>, flatten, dense<N> joined by '-'")
    if not tokens[-1].startswith("dense"):
        raise ValueError(f"architecture {spec!r} must end with the output layer dense<N>")
    n_out = 1 if num_classes == 2 else num_classes
    if int(matches[-1]["n"]) != n_out:
        raise ValueError(f"architecture {spec!r} must end with dense{n_out} for {num_classes} classes")
    shape, flatten, layers = tuple(input_shape), False, []
    for token, match in zip(tokens, matches):
        if token.startswith("maxpool"):
            k = int(match["pool"])
            if not layers or layers[-1].kind != "conv" or layers[-1].pool != 1:
                raise ValueError(f"architecture {spec!r}: {token} must follow a conv layer "
                                 "(one pooling per conv layer)")
            if k < 2:
                raise ValueError(f"architecture {spec!r}: {token} needs a window of 2 or more")
            if min(shape[1:]) < k:
                raise ValueError(f"architecture {spec!r}: {token} does not fit a "
                                 f"{shape[1]}×{shape[2]} image")
            shape = (shape[0], shape[1] // k, shape[2] // k)
            layers[-1] = dataclasses.replace(layers[-1], out_shape=shape, pool=k)
            continue
        if token == "flatten" or (token.startswith("dense") and len(shape) > 1):
            shape, flatten = (math.prod(shape),), True
            if token == "flatten":
                continue
        if token.startswith("conv"):
            if len(shape) != 3:
                raise ValueError(f"architecture {spec!r}: {token} needs images, got flat inputs")
            k, ks = int(match["k"]), int(match["ks"])
            s, p = int(match["s"] or 1), int(match["p"] or 0)
            out = tuple((n + 2 * p - ks) // s + 1 for n in shape[1:])
            if min(out) < 1:
                raise ValueError(f"architecture {spec!r}: {token} does not fit a "
                                 f"{shape[1]}×{shape[2]} image")
            layers.append(LayerSpec("conv", (k, shape[0], ks, ks), s, p, shape, (k, *out), flatten))
        else:
            n = int(match["n"])
            layers.append(LayerSpec("dense", (n, shape[0]), 1, 0, shape, (n,), flatten))
        shape, flatten = layers[-1].out_shape, False
    return layers


def build_arch(spec: str, algo: str | Sequence[str] = "bpi", num_classes: int = 10,
               input_shape: Sequence[int] = (1, 28, 28), rho: Sequence[float] | float | None = None,
               psi: Sequence[float] | float = PSI_DEFAULT, r: float = 0.0, init_std: float = 1.0,
               density: float | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
               device=None) -> BPSequential:
    """A BPSequential from an architecture string, layers separated by "-":

    * ``conv<K>k<k>[s<s>][p<p>]``: BPConv2d with K out channels, a k×k kernel, stride s
      (default 1) and zero padding p (default 0), e.g. ``conv32k3s2p1``;
    * ``maxpool<k>``: BPMaxPool2d, k×k max pooling of the ±1 outputs of the conv layer before
      it (stride k, no padding), e.g. ``conv32k5p2-maxpool2``;
    * ``flatten``: nn.Flatten (optional: inserted before the first dense layer after a conv);
    * ``dense<N>``: BPLinear with N units. The last layer must be dense, the output layer:
      ``dense<num_classes>`` (argmax), or ``dense1`` for num_classes = 2 (one sign unit).

    Example: ``"conv32k3s2p1-conv64k3s2p1-flatten-dense10"`` on Fashion-MNIST: 1×28×28 ->
    32×14×14 -> 64×7×7 -> 3136 -> 10. A dense-first network gets a leading nn.Flatten.

    Args:
        spec: the string above.
        algo: message-passing variant of every layer, or one per message-passing layer (e.g.
            ``["bpi", "amp", "amp", "amp"]``: exact cavities on a first conv layer of small
            fan-in, where the Gaussian expansion of AMP is poor, AMP above it).
        num_classes: classes of the task (2: sign output with labels ±1).
        input_shape: per-sample input (C, H, W); flat [B, C·H·W] inputs are accepted too.
        rho, psi: one value for every layer or one per message-passing layer (rho None: 1.0001
            hidden, 0.9 output).  r, init_std, density: as BPLinear, for every layer.
        seed: seed of the initial fields and masks.
    """
    specs = parse_arch(spec, num_classes, input_shape)
    output = "sign" if num_classes == 2 else "argmax"
    n_bp = len(specs)

    rhos, psis = per_layer(rho, "rho", n_bp), per_layer(psi, "psi", n_bp)
    algos = per_layer(algo, "algo", n_bp)
    gen = torch.Generator().manual_seed(seed)
    common = dict(r=r, init_std=init_std, density=density, generator=gen, dtype=dtype,
                  device=device)
    layers: list[nn.Module] = []
    for i, layer_spec in enumerate(specs):
        if layer_spec.flatten_before:
            layers.append(nn.Flatten())
        hyper = dict(algo=algos[i], rho=rhos[i], psi=psis[i], **common)
        if layer_spec.kind == "conv":
            k, c, ks, _ = layer_spec.weight_shape
            layers.append(BPConv2d(c, k, ks, stride=layer_spec.stride, padding=layer_spec.padding,
                                   input_size=layer_spec.in_shape[1:], **hyper))
            if layer_spec.pool > 1:
                layers.append(BPMaxPool2d(layer_spec.pool))
        else:
            n, d = layer_spec.weight_shape
            layers.append(BPLinear(d, n, output=output if i == n_bp - 1 else None, **hyper))
    return BPSequential(*layers)


def per_layer(value, name: str, n_layers: int) -> list:
    """A hyper-parameter given as one value (or None) for every layer, or as one per layer."""
    if value is None or isinstance(value, (int, float, str)):
        return [value] * n_layers
    if len(value) != n_layers:
        raise ValueError(f"{name}: give one value or {n_layers} values (one per layer), "
                         f"got {len(value)}")
    return list(value)


def mlp(sizes: list[int], algo: str | Sequence[str] = "bpi", output: str = "argmax",
        flatten: bool = False,
        rho: list[float] | float | None = None, psi: list[float] | float = PSI_DEFAULT,
        r: float = 0.0, init_std: float = 1.0, density: float | None = None, seed: int = 0,
        dtype: torch.dtype = torch.float32, device=None,
        weights: Sequence[str] | str = "binary") -> BPSequential:
    """A BPSequential MLP with layer sizes [N0, N1, ..., K] and paper defaults.

    algo / rho / psi: one value for every layer or one per layer (rho None: 1.0001 hidden, 0.9
    output).
    weights: "binary" (BPLinear, algorithm ``algo``) or "gaussian" (GaussianBPLinear, algorithm
    "cbpi", no density), for every layer or one per layer (mixed networks; a Gaussian layer
    cannot be an argmax output, see :mod:`bpkernels.gaussian`).
    """
    n_layers = len(sizes) - 1
    if n_layers < 1:
        raise ValueError("sizes needs at least an input and an output size")

    rhos, psis = per_layer(rho, "rho", n_layers), per_layer(psi, "psi", n_layers)
    algos = per_layer(algo, "algo", n_layers)
    families = [weights] * n_layers if isinstance(weights, str) else list(weights)
    if len(families) != n_layers or not set(families) <= {"binary", "gaussian"}:
        raise ValueError(f"weights must be 'binary', 'gaussian' or one of them per layer "
                         f"({n_layers}), got {weights!r}")
    if density is not None and "gaussian" in families:
        raise ValueError("Gaussian layers have no weight mask: density must be None")
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == n_layers - 1
        hyper = dict(output=output if last else None, rho=rhos[i], psi=psis[i], r=r,
                     init_std=init_std, generator=gen, dtype=dtype, device=device)
        if families[i] == "gaussian":
            layers.append(GaussianBPLinear(n_in, n_out, **hyper))
        else:
            layers.append(BPLinear(n_in, n_out, algo=algos[i], density=density, **hyper))
    return BPSequential(*layers)
