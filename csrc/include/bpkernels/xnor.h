// Scalar maths of the packed (XNOR-popcount) inference kernels, shared by the CPU and CUDA
// backends. Torch-free.
//
// Bit convention (activations and weights alike): bit 1 <=> +1, bit 0 <=> -1. Bit i of a
// packed row lives in word i / 64 at bit position i % 64 (least significant bit first); the
// bits past the row's length in its last word are 0. A zero weight (a masked one, or m = 0) is
// the pair (sign bit 0, nonzero bit 0) of a second "nonzero" plane; a zero-padded input
// position of a convolution is likewise the pair (bit 0, valid bit 0).
#pragma once

#include <cstdint>

#include "bpkernels/macros.h"

namespace bpk {
namespace xnor {

BPK_HD int popcount64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __popcll(v);
#else
  return __builtin_popcountll(v);
#endif
}

// The sign activation of a hidden unit, as the float model computes it: x = sign(z + 1e-10),
// so a zero preactivation gives +1 (the tie rule). On integer preactivations this is z >= 0.
template <typename T>
BPK_HD bool sign_bit(T z) {
  return z + T(1e-10) > T(0);
}
template <>
BPK_HD bool sign_bit<int32_t>(int32_t z) {
  return z >= 0;
}

// One word of the ±1 dot product z = Σ_i w_i x_i over the positions of `care` (the others
// contribute 0): equal bits give +1, different bits -1, so
//   z = popcount(care) − 2·popcount((x XOR w) AND care).
// This returns the second popcount; the caller subtracts twice the sum from the count.
BPK_HD int mismatches(uint64_t x, uint64_t w, uint64_t care) { return popcount64((x ^ w) & care); }

// Output size of a convolution along one axis: ⌊(n + 2p − k) / s⌋ + 1.
BPK_HD int64_t conv_out_size(int64_t n, int64_t k, int64_t s, int64_t p) {
  return (n + 2 * p - k) / s + 1;
}

// ORs the low `len` bits of v (len <= 64, higher bits 0) into the bit string dst at bit offset
// `at`: bit i of v becomes bit at + i of dst.
BPK_HD void or_bits(uint64_t* dst, int64_t at, uint64_t v, int len) {
  const int64_t word = at >> 6;
  const int shift = int(at & 63);
  dst[word] |= v << shift;
  if (shift != 0 && shift + len > 64) dst[word + 1] |= v >> (64 - shift);
}

// All-ones in the low `len` bits (1 <= len <= 64).
BPK_HD uint64_t low_bits(int len) { return len >= 64 ? ~uint64_t(0) : (uint64_t(1) << len) - 1; }

}  // namespace xnor
}  // namespace bpk
