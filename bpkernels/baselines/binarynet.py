r"""The network the gradient baselines train, and its building blocks (docs/baselines.md §1).

* Sign and straight-through primitives: ``sign_pm`` (sign(0) = +1, Decision 1), ``SignSTE``
  (forward sign(a − z), backward × κ(a)) and ``WeightSTE`` (forward sign(state − z), backward
  identity), both autograd Functions acting on the state tensor (§1.3).
* ``BinaryNet``: bias-free dense or convolutional layers of binary weights, batch norm after
  every layer (output included), sign (or ReLU) activations; the binary weights are *passed in*
  by the trainer, so one module serves the latent weights of A, the fields λ of B and η of C.
* The layers' shapes (``mlp_layers``, ``fans``), the fixed masks that message passing draws for
  the same seed (``message_passing_masks``), the losses and the error rates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..arch import LayerSpec

PROXIES = ("hardtanh", "tanh", "erf", "identity")
LOSSES = ("ce", "sqhinge")


# ----------------------------------------------------------------------------------------
# Sign and straight-through primitives (§1.3)

def sign_pm(x: Tensor) -> Tensor:
    """sign with sign(0) = +1, in x's dtype (torch.sign(0) = 0 is never used)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def proxy_derivative(a: Tensor, proxy: str, scale: float) -> Tensor:
    """κ(a) = d/da E_z[sign(a − z)] for the noise of ``proxy`` with scale s (§1.3 table)."""
    if proxy == "hardtanh":
        # z ~ U[−s, s]: κ = 1{|a| ≤ s}/s
        return (a.abs() <= scale).to(a.dtype) / scale
    if proxy == "tanh":
        # z ~ Logistic(0, s): κ = sech²(a/2s)/(2s), with sech²x = 4e^{−2|x|}/(1 + e^{−2|x|})²
        e = torch.exp(-a.abs() / scale)
        return 2 * e / (scale * (1 + e) ** 2)
    if proxy == "erf":
        # z ~ N(0, s²): κ = (2/s) φ(a/s)
        return (2 / (scale * math.sqrt(2 * math.pi))) * torch.exp(-0.5 * (a / scale) ** 2)
    if proxy == "identity":
        return torch.ones_like(a)
    raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")


def logistic_noise(shape: torch.Size, scale: float, generator: torch.Generator | None,
                   device, dtype) -> Tensor:
    """z ~ Logistic(0, s): z = s ln(u/(1 − u)), u ~ U[0, 1); u = 0 gives z = −∞ (no NaN)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return torch.logit(u).mul_(scale)


def activation_noise(shape: torch.Size, proxy: str, scale: float,
                     generator: torch.Generator | None, device, dtype) -> Tensor:
    """A sample of the activation noise whose mean sign is the proxy (§1.3, §4.1)."""
    if proxy == "hardtanh":
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return scale * (2 * u - 1)
    if proxy == "tanh":
        return logistic_noise(shape, scale, generator, device, dtype)
    if proxy == "erf":
        return scale * torch.randn(shape, generator=generator, device=device, dtype=dtype)
    raise ValueError(f"the {proxy!r} proxy has no noise distribution (stochastic activations "
                     "need hardtanh, tanh or erf)")


class SignSTE(torch.autograd.Function):
    """h = sign(a − z) forward (z = 0 when None); backward ∂ℓ/∂a = ∂ℓ/∂h · κ(a), evaluated at the
    pre-noise argument a (§4.7)."""

    @staticmethod
    def forward(ctx, a: Tensor, z: Tensor | None, proxy: str, scale: float) -> Tensor:
        ctx.save_for_backward(a)
        ctx.proxy, ctx.scale = proxy, scale
        return sign_pm(a if z is None else a - z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (a,) = ctx.saved_tensors
        return grad * proxy_derivative(a, ctx.proxy, ctx.scale), None, None, None


class WeightSTE(torch.autograd.Function):
    """W = sign(state − z_w) forward (z_w = 0 when None); backward passes ∂ℓ/∂W to the state
    unchanged (§1.3): the trainer decides what the binary-weight gradient does."""

    @staticmethod
    def forward(ctx, state: Tensor, z: Tensor | None) -> Tensor:
        return sign_pm(state if z is None else state - z)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


# ----------------------------------------------------------------------------------------
# Network

def mlp_layers(sizes: list[int]) -> list[LayerSpec]:
    """The dense layers [n_0] -> [n_1] -> ... -> [n_L] as LayerSpecs."""
    return [LayerSpec("dense", (n_out, n_in), 1, 0, (n_in,), (n_out,), False)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def message_passing_masks(weight_shapes: list[tuple[int, ...]], density: float,
                          seed: int) -> list[Tensor]:
    """The fixed 0/1 masks (float64) that the message-passing layers of a network with these
    weight shapes draw for ``density`` and ``seed`` (``bpkernels.arch.mlp`` / ``build_arch``):
    one generator seeded with ``seed``; per layer, in order, the initial fields N(0, 1) and
    then mask = 1{U[0, 1) < density}."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for shape in weight_shapes:
        torch.randn(shape, generator=gen, dtype=torch.float64)  # the layer's initial fields
        masks.append((torch.rand(shape, generator=gen, dtype=torch.float64) < density).double())
    return masks


def fans(weight_shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan-in, fan-out) of a dense [N, D] or conv [K, C, kh, kw] weight."""
    receptive = math.prod(weight_shape[2:])
    return weight_shape[1] * receptive, weight_shape[0] * receptive


class BinaryNet(nn.Module):
    r"""Bias-free network of binary weights, dense or convolutional layers:
    a^ℓ = W^ℓ ⋆ h^{ℓ−1} (matrix product, or a 2-D convolution with the layer's stride and zero
    padding, then max-pooled where the layer has ``pool`` > 1), â^ℓ = BN(a^ℓ) (BatchNorm1d, or
    BatchNorm2d over channels), h^ℓ = φ(â^ℓ) for ℓ < L,
    logits z = â^L (§1.1). ``fields`` holds one real tensor per binary weight tensor ([n_ℓ, n_{ℓ−1}]
    or [K, C, kh, kw]: latent w, field λ or η, as the trainer interprets it); the forward pass
    takes the binary (or relaxed) weights explicitly.

    Args:
        layers: the weight layers (``bpkernels.conv.parse_arch``, or ``mlp_layers(sizes)``).
        activation: "sign" (straight-through with ``proxy``) or "relu".
        proxy, proxy_scale: κ of the sign activations and the scale s of their noise.
        batch_norm: BN after every layer; without it the pre-activations are scaled by
            1/√fan-in (the DeepMP paper's BinaryNet baseline).
        bn_affine, bn_eps, bn_momentum: BatchNorm settings.
        dropout_in, dropout_hidden: dropout on the input and after each hidden activation.
        masks: fixed 0/1 masks of the weights (one per layer, each of its weight's shape; None:
            dense): every forward pass uses W·mask, so masked weights neither act nor learn.
    """

    def __init__(self, layers: list[LayerSpec], activation: str = "sign", proxy: str = "hardtanh",
                 proxy_scale: float = 1.0, batch_norm: bool = True, bn_affine: bool = True,
                 bn_eps: float = 1e-4, bn_momentum: float = 0.1, dropout_in: float = 0.0,
                 dropout_hidden: float = 0.0, masks: list[Tensor] | None = None, device=None,
                 dtype=None):
        super().__init__()
        if activation not in ("sign", "relu"):
            raise ValueError(f"activation must be 'sign' or 'relu', got {activation!r}")
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")
        self.layers = list(layers)
        self.activation, self.proxy, self.proxy_scale = activation, proxy, proxy_scale
        self.dropout_in, self.dropout_hidden = dropout_in, dropout_hidden
        factory = dict(device=device, dtype=dtype)
        self.fields = nn.ParameterList(
            [nn.Parameter(torch.zeros(layer.weight_shape, **factory)) for layer in self.layers])
        norm = {"dense": nn.BatchNorm1d, "conv": nn.BatchNorm2d}
        self.norms = nn.ModuleList(
            [norm[layer.kind](layer.weight_shape[0], eps=bn_eps, momentum=bn_momentum,
                              affine=bn_affine, **factory)
             for layer in self.layers] if batch_norm else [])
        if masks is not None:
            if len(masks) != len(self.layers) or any(
                    tuple(m.shape) != layer.weight_shape for m, layer in zip(masks, self.layers)):
                raise ValueError("masks needs one mask of each layer's weight shape "
                                 f"{[layer.weight_shape for layer in self.layers]}")
            for i, mask in enumerate(masks):
                self.register_buffer(f"mask_{i}", mask.to(**factory))
        self.has_masks = masks is not None
        # Source of activation noise and dropout masks; set by the trainer.
        self.generator: torch.Generator | None = None

    def real_parameters(self) -> list[nn.Parameter]:
        """Parameters that are not binary-weight state (BN γ, β)."""
        return list(self.norms.parameters())

    def _dropout(self, h: Tensor, p: float) -> Tensor:
        keep = torch.rand(h.shape, generator=self.generator, device=h.device, dtype=h.dtype) >= p
        return h * keep.to(h.dtype) / (1 - p)

    def forward(self, x: Tensor, weights: list[Tensor], act_noise: bool = False,
                dropout: bool = False) -> Tensor:
        """x [B, n_0] (flat, as the datasets hold images, or [B, C, H, W]), weights[ℓ] of
        ``fields[ℓ]``'s shape → logits [B, n_L].

        act_noise: sample h = sign(â − z) with the proxy's noise (stochastic binary network).
        dropout: apply the dropout masks (training passes only).
        """
        h = x
        if dropout and self.dropout_in > 0:
            h = self._dropout(h, self.dropout_in)
        last = len(weights) - 1
        for i, (layer, w) in enumerate(zip(self.layers, weights)):
            if self.has_masks:
                w = w * getattr(self, f"mask_{i}")
            if layer.kind == "conv":
                a = F.conv2d(h.view(h.shape[0], *layer.in_shape), w, stride=layer.stride,
                             padding=layer.padding)
                if layer.pool > 1:  # on the preactivations: max commutes with sign
                    a = F.max_pool2d(a, layer.pool)
            else:
                a = F.linear(h.flatten(1), w)
            a = self.norms[i](a) if len(self.norms) else a / math.sqrt(fans(w.shape)[0])
            if i == last:
                return a
            if self.activation == "relu":
                h = torch.relu(a)
            else:
                z = (activation_noise(a.shape, self.proxy, self.proxy_scale, self.generator,
                                      a.device, a.dtype) if act_noise else None)
                h = SignSTE.apply(a, z, self.proxy, self.proxy_scale)
            if dropout and self.dropout_hidden > 0:
                h = self._dropout(h, self.dropout_hidden)
        raise ValueError("weights is empty")


def loss_fn(z: Tensor, y: Tensor, binary: bool, kind: str = "ce") -> Tensor:
    """Mean mini-batch loss of logits z [B, K] (K = 1 for ±1 labels y [B]; else class indices).

    ce: cross-entropy (softplus(−y z) for one output unit).
    sqhinge: squared hinge mean_{n,k} max(0, 1 − t_nk z_nk)², t = ±1 one-hot (BinaryNet).
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if binary:
        margin = y.to(z.dtype) * z[:, 0]
        return F.softplus(-margin).mean() if kind == "ce" else torch.relu(1 - margin).pow(2).mean()
    if kind == "ce":
        return F.cross_entropy(z, y)
    t = 2 * F.one_hot(y, z.shape[1]).to(z.dtype) - 1
    return torch.relu(1 - t * z).pow(2).mean()


def probabilities(z: Tensor, binary: bool) -> Tensor:
    """Logits [P, K] → class probabilities [P, K] (P(y = +1) [P, 1] for one output unit)."""
    return torch.sigmoid(z) if binary else torch.softmax(z, dim=1)


def error_rate(scores: Tensor, y: Tensor, binary: bool, threshold: float = 0.0) -> float:
    """Fraction misclassified from scores [P, K]: argmax, or +1 iff scores[:, 0] ≥ threshold
    (0 for logits, ½ for probabilities) for ±1 labels."""
    if binary:
        pred = sign_pm(scores[:, 0] - threshold)
        return float((pred != y.to(pred.dtype)).double().mean())
    return float((scores.argmax(dim=1) != y).double().mean())
