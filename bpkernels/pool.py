r"""The max-pooling channel: ``BPMaxPool2d``, a weightless factor between two layers of ±1 units.

Each output unit y of a k×k window (non-overlapping: stride k, no padding, trailing rows and
columns that fill no window are dropped, as ``F.max_pool2d`` does) is the maximum of its k²
inputs x_j ∈ {−1, +1}: y = +1 unless every x_j = −1, an OR. The factor 𝟙[y = max_j x_j] has
no parameters and an exact message-passing update (docs/algorithms.md §9.1). With fields in the
units of the rest of the library (a field h on a ±1 variable means P(x) ∝ e^{h x}):

* up: the field of the layer below on x_j is its up-field u_j, so
  P(x_j = −1) = e^{−s_j} with s_j = softplus(2 u_j), and the up-field of y is
  :math:`u_y = \tfrac12\,[\log(1 - e^{-S}) + S]`, :math:`S = \sum_j s_j`;
* down: with the downward field b of the layer above on y and
  :math:`R_k = \sum_{j \ne k} s_j` (the other inputs all −1 with probability e^{−R_k}),
  :math:`b_k = -\tfrac12 \log\big[(1 - e^{-R_k}) + e^{-R_k - 2b}\big]`.

Both are evaluated in the log domain, from log s_j: log S and log R_k are log-sums (R_k from the
prefix and suffix log-sums of the window, with no cancellation against a dominant s_k), and
log(1 − e^{−x}) = log x + log(−expm1(−x)/x). So inputs that are surely −1 (s_j underflows,
log s_j does not) still give exact, finite fields. A 1×1 window passes fields through
unchanged (u_y = u, b_k = b).

Point-wise, the channel is ``F.max_pool2d`` of the ±1 activations (max commutes with sign, so
this equals pooling the preactivations). Bayesian (docs §6), inputs with means x̂_j give
:math:`\hat y = 1 - 2\prod_j \tfrac{1 - \hat x_j}{2}` and Δ_y = 1 − ŷ².
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Below it, log(1 − e^{−x}) − log x = −x/2 to float64 rounding (the next term, x²/24, is 4e-14).
_SMALL_X = 1e-6
# Below it, softplus(x) = e^x to float64 rounding (relative error e^x / 2 < 3e-18).
_LOG_SOFTPLUS_LINEAR = -40.0


def _log_softplus(x: Tensor) -> Tensor:
    """log(softplus(x)) = log(log(1 + e^x)) without underflow (x itself where softplus(x) = e^x
    to rounding) and to full precision for large x (F.softplus returns x above its threshold)."""
    linear = x < _LOG_SOFTPLUS_LINEAR
    safe = torch.where(linear, 0.0, x)
    softplus = safe.clamp_min(0.0) + torch.log1p(torch.exp(-safe.abs()))
    return torch.where(linear, x, torch.log(softplus))


def _log_one_minus_exp(x: Tensor, log_x: Tensor) -> Tensor:
    """log(1 − e^{−x}) for x >= 0 given x and log x, exact down to x = 0 (−inf) and for an x
    that underflows where log x does not: log x + log(−expm1(−x) / x), the second term −x/2
    for tiny x."""
    small = x < _SMALL_X
    safe = torch.where(small, 1.0, x)
    return log_x + torch.where(small, -0.5 * x, torch.log(-torch.expm1(-safe)) - torch.log(safe))


class BPMaxPool2d(nn.Module):
    """k×k max pooling of ±1 activations as a message-passing channel (module docstring).

    Goes between message-passing layers of a :class:`~bpkernels.BPSequential`, after a hidden
    layer with image outputs (a BPConv2d), e.g. ``conv32k5p2-maxpool2-...`` in an architecture
    string. It has no weights: it takes part in the forward and backward sweeps of
    ``bp_step`` and in both predictions, and has nothing to update.

    Args:
        kernel_size: k, the side of the square window and its stride (>= 1).
    """

    kind = "maxpool2d"

    def __init__(self, kernel_size: int):
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be an int >= 1, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def config(self) -> dict:
        return dict(type=self.kind, kernel_size=self.kernel_size)

    def output_shape(self, input_shape: tuple) -> tuple:
        """Per-sample output shape (C, H // k, W // k) of a per-sample input shape (C, H, W)
        (None: unknown size)."""
        k = self.kernel_size
        if len(input_shape) != 3:
            raise ValueError(f"BPMaxPool2d({k}) needs images [B, C, H, W], got per-sample shape "
                             f"{list(input_shape)}")
        channels, *size = input_shape
        if None in size:
            return (channels, None, None)
        if min(size) < k:
            raise ValueError(f"BPMaxPool2d({k}): a {size[0]}×{size[1]} image is smaller than "
                             f"the {k}×{k} window")
        return (channels, size[0] // k, size[1] // k)

    # ---- windows ---------------------------------------------------------------------------

    def _windows(self, t: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H // k, W // k, k²], one window per output unit."""
        k = self.kernel_size
        b, c, h, w = t.shape
        ho, wo = h // k, w // k
        t = t[:, :, :ho * k, :wo * k].reshape(b, c, ho, k, wo, k)
        return t.permute(0, 1, 2, 4, 3, 5).reshape(b, c, ho, wo, k * k)

    def _unwindows(self, t: Tensor, shape: torch.Size) -> Tensor:
        """[B, C, H // k, W // k, k²] -> [B, C, H, W], zeros on the rows and columns that fill
        no window."""
        k = self.kernel_size
        b, c, ho, wo, _ = t.shape
        t = t.reshape(b, c, ho, wo, k, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, ho * k, wo * k)
        return F.pad(t, (0, shape[-1] - wo * k, 0, shape[-2] - ho * k))

    # ---- message passing (called by BPSequential.bp_step) --------------------------------

    def up_field(self, u: Tensor) -> Tensor:
        """The up-field of the pooled units, [B, C, H, W] -> [B, C, H // k, W // k]:
        u_y = ½ [log(1 − e^{−S}) + S], S = Σ_j softplus(2 u_j) over the window."""
        log_s = self._windows(_log_softplus(2.0 * u))
        log_total = torch.logsumexp(log_s, dim=-1)  # log S, S = −log P(y = −1)
        total = torch.exp(log_total)
        return 0.5 * (_log_one_minus_exp(total, log_total) + total)

    def down_field(self, u: Tensor, b_top: Tensor) -> Tensor:
        """The downward field on the inputs, b_top [B, C, H // k, W // k] (the layer above's
        downward field on y) and u [B, C, H, W] (the inputs' up-fields) -> [B, C, H, W]:
        b_k = −½ log[(1 − e^{−R_k}) + e^{−R_k − 2b}], R_k = Σ_{j≠k} softplus(2 u_j)."""
        log_s = self._windows(_log_softplus(2.0 * u))
        # log R_k from the exclusive prefix and suffix log-sums over the window (no cancellation
        # against a dominant s_k, no underflow of a small R_k)
        empty = torch.full_like(log_s[..., :1], -math.inf)
        before = torch.cat([empty, torch.logcumsumexp(log_s, dim=-1)[..., :-1]], dim=-1)
        after = torch.cat([empty, torch.logcumsumexp(log_s.flip(-1), dim=-1)[..., :-1]],
                          dim=-1).flip(-1)
        log_rest = torch.logaddexp(before, after)  # −inf for a 1×1 window: then b_k = b
        rest = torch.exp(log_rest)
        b = -0.5 * torch.logaddexp(_log_one_minus_exp(rest, log_rest),
                                   -rest - 2.0 * b_top.unsqueeze(-1))
        return self._unwindows(b, u.shape)

    # ---- predictions ---------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Point-wise: max over each window of the ±1 activations [B, C, H, W]."""
        return F.max_pool2d(x, self.kernel_size)

    def bayes(self, x_hat: Tensor, delta: Tensor | None) -> tuple[Tensor, Tensor]:
        """Moment propagation (docs §6): ŷ = 1 − 2 Π_j (1 − x̂_j)/2, Δ_y = 1 − ŷ², for
        independent inputs of means x̂ [B, C, H, W] (their variances are 1 − x̂², as for any
        ±1 unit, so ``delta`` adds nothing)."""
        log_minus = torch.log((1.0 - self._windows(x_hat)).clamp_min(0.0)) - math.log(2.0)
        y_hat = 1.0 - 2.0 * torch.exp(log_minus.sum(dim=-1))
        return y_hat, 1.0 - y_hat.square()
