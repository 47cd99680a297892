"""Pure-PyTorch twins of the packed-inference operators (spec for ``bpkernels::xnor_*``): bits
unpacked to ±1 / 0 and multiplied as integers. Clarity over speed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_SHIFTS = torch.arange(64, dtype=torch.int64)


def pack_bits(bits: Tensor) -> Tensor:
    """Packs a 0/1 tensor [..., N] into int64 words [..., ⌈N/64⌉], element i at bit i % 64 of
    word i // 64."""
    n = bits.shape[-1]
    words = (n + 63) // 64
    padded = F.pad(bits.to(torch.int64), (0, 64 * words - n))
    return (padded.view(*bits.shape[:-1], words, 64) << _SHIFTS.to(bits.device)).sum(-1)


def unpack_bits(words: Tensor, n: int) -> Tensor:
    """The inverse of :func:`pack_bits`: int64 [..., W] -> 0/1 int64 [..., n]."""
    bits = (words.unsqueeze(-1) >> _SHIFTS.to(words.device)) & 1
    return bits.flatten(-2)[..., :n]


def sign_bits(z: Tensor) -> Tensor:
    """1 where sign(z + 1e-10) = +1 (z ≥ 0 for integer z), else 0."""
    if z.is_floating_point():
        return (z + 1e-10 > 0).to(torch.int64)
    return (z >= 0).to(torch.int64)


def xnor_im2col(z: Tensor, kernel_size=(1, 1), stride=(1, 1), padding=(0, 0)):
    """Spec for ``bpkernels::xnor_im2col``: z [B, H, W, C] -> (bits [B·P, W], valid [P, W])."""
    channels = z.shape[3]
    (kh, kw) = kernel_size
    signs = sign_bits(z).permute(0, 3, 1, 2).double()  # [B, C, H, W]
    ones = torch.ones_like(signs[:1])
    # F.unfold orders a patch (c, i, j); the packed order is (i, j, c).
    patches = F.unfold(signs, kernel_size, padding=padding, stride=stride)  # [B, C·kh·kw, P]
    inside = F.unfold(ones, kernel_size, padding=padding, stride=stride)
    positions = patches.shape[2]

    def reorder(t: Tensor) -> Tensor:
        return t.view(t.shape[0], channels, kh * kw, positions).permute(0, 3, 2, 1).reshape(
            t.shape[0] * positions, kh * kw * channels)

    return pack_bits(reorder(patches).long()), pack_bits(reorder(inside).long())


def xnor_gemm(x: Tensor, w: Tensor, x_valid: Tensor | None, w_nonzero: Tensor | None,
              n: int) -> Tensor:
    """Spec for ``bpkernels::xnor_gemm``: z = Σ_i x_ri w_ki over the cared-for bits, int32 [R, K]."""
    xs = unpack_bits(x, n) * 2 - 1  # ±1 [R, n]
    ws = unpack_bits(w, n) * 2 - 1  # ±1 [K, n]
    if w_nonzero is not None:
        ws = ws * unpack_bits(w_nonzero, n)
    if x_valid is None:
        return (xs @ ws.T).to(torch.int32)
    valid = unpack_bits(x_valid, n)  # [P, n]
    xs = xs.view(-1, valid.shape[0], n) * valid  # rows r = (b, p)
    return (xs.reshape(-1, n) @ ws.T).to(torch.int32)
