r"""Operators of packed (XNOR-popcount) inference: bit-packed sign activations and the binary
GEMM of ±1 bit vectors, on the CPU (AVX-512 VPOPCNTDQ / AVX2 / portable, chosen at run time)
and CUDA. Their pure-PyTorch twins are in :mod:`bpkernels.packed_reference`; the file format
and the network that uses them are in :mod:`bpkernels.packed`.

Bit convention: bit 1 is +1, bit 0 is −1; element i of a packed row is bit i % 64 of int64
word i // 64 (least significant bit first); bits past the row's length are 0. A zero entry
(a masked weight, a zero-padded pixel) is bit 0 together with a 0 in a second plane
(``w_nonzero`` for weights, ``x_valid`` for inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

_ops = torch.ops.bpkernels


def xnor_im2col(z: Tensor, kernel_size: tuple[int, int] = (1, 1), stride: tuple[int, int] = (1, 1),
                padding: tuple[int, int] = (0, 0)) -> tuple[Tensor, Tensor]:
    r"""Sign bits of a preactivation, gathered per convolution patch (im2col of bits).

    The activation is :math:`x = \operatorname{sign}(z + 10^{-10})`, i.e. +1 for z ≥ 0 on
    integer z (the tie rule of :meth:`bpkernels.sequential.BPSequential.predict`). Row (b, oy, ox) of
    ``bits`` holds the patch of output position (oy, ox), tap (i, j) and channel c at bit
    (i·kw + j)·C + c; taps in the zero padding are bit 0, and 0 in ``valid``.

    Args:
        z: [B, H, W, C] float32, float64 or int32 preactivations, any strides (an NCHW tensor
            passes as ``z.permute(0, 2, 3, 1)`` without a copy).
        kernel_size, stride, padding: (h, w) pairs. A dense layer is kernel (1, 1) on a
            [B, 1, 1, N] view; a dense layer after a convolution is kernel (H, W).
    Returns:
        (bits, valid): int64 words, [B·OH·OW, ⌈kh·kw·C/64⌉] and [OH·OW, ⌈kh·kw·C/64⌉].
    """
    return _ops.xnor_im2col.default(z, list(kernel_size), list(stride), list(padding))


def pack_signs(z: Tensor) -> Tensor:
    """Sign bits of z [B, N] (float32, float64 or int32): int64 [B, ⌈N/64⌉]."""
    return xnor_im2col(z.view(z.shape[0], 1, 1, z.shape[1]))[0]


def xnor_gemm(x: Tensor, w: Tensor, x_valid: Tensor | None, w_nonzero: Tensor | None,
              n: int) -> Tensor:
    r"""Binary GEMM by XNOR-popcount: the integer preactivations of ±1 weights on ±1 inputs.

    .. math::
        z_{rk} = \sum_{i \in S_{rk}} x_{ri} w_{ki}
               = |S_{rk}| - 2\,\mathrm{popcount}\big((x_r \oplus w_k) \wedge S_{rk}\big),
        \qquad S_{rk} = \mathrm{valid}_{r \bmod P} \wedge \mathrm{nonzero}_k

    (all n bits where a plane is None).

    Args:
        x: [R, W] int64 packed inputs.  w: [K, W] int64 packed weights.
        x_valid: [P, W] input validity plane, P dividing R (row r uses row r mod P), or None.
        w_nonzero: [K, W] weight nonzero plane, or None.
        n: bits per row, 64·(W − 1) < n ≤ 64·W.
    Returns:
        z: [R, K] int32.
    """
    return _ops.xnor_gemm.default(x, w, x_valid, w_nonzero, n)


def xnor_cpu_isa() -> str:
    """The instruction set the CPU ``xnor_gemm`` runs: "avx512" (AVX-512 VPOPCNTDQ), "avx2" or
    "portable"; the environment variable BPK_XNOR_ISA forces a narrower one."""
    return _ops.xnor_cpu_isa.default()
