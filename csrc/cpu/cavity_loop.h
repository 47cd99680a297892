// The loop of the fused cavity backward shared by BPI (binary weights, docs/algorithms.md §4.2)
// and continuous-weight BPI (cbpi, §4.7). For each weight (k, i) and sample a, with
// ĝ[k,i,a] = g(b_top[a,k], ω[a,k] − m[k,i] x̂[a,i], s[a,k]):
//   H_in[k,i] = Σ_a ĝ[k,i,a] x̂[a,i],    b[a,i] = Σ_k m[k,i] ĝ[k,i,a],
// and for cbpi also the precision message, with g and Γ non-cavity:
//   Ω_in[k,i] = Σ_a [(x̂² + Δ)[a,i] Γ[a,k] − Δ[a,i] g[a,k]²].
// ĝ lives in registers only (no K×N×B tensor). Threads own disjoint tiles of inputs i, so every
// reduction is race-free and deterministic; inside a tile the loop runs k outer, i, then a
// innermost over contiguous [·, B] rows (coefficients of unit k; x̂, b, … of input i),
// vectorised by omp simd and compiled for the widest ISA the processor has (isa.h).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "bpkernels/binary_bp.h"
#include "bpkernels/gaussian_bp.h"
#include "cpu/coef_rows.h"
#include "cpu/isa.h"

namespace bpk {

// cbpi's extra inputs and output (unused by BPI).
template <typename T>
struct PrecisionTerms {
  const T* gamma = nullptr;  // [K, B], non-cavity Γ (non-finite -> 0)
  const T* g2 = nullptr;     // [K, B], non-cavity g²
  const T* xx_t = nullptr;   // [N, B], x̂² + Δ
  const T* d_t = nullptr;    // [N, B], Δ
  T* omega_in = nullptr;     // [K, N]
};

template <typename T, bool kHard, bool kComputeB, bool kPrecision>
BPK_ALWAYS_INLINE void cavity_tile(int64_t i0, int64_t i1, int64_t K, int64_t N, int64_t B,
                                   const CoefRows<T>& rows,
                                   const T* x_t,  // [N, B]
                                   const T* mag,  // [K, N]
                                   T* b_t,        // [N, B], accumulated
                                   T* h_in,       // [K, N]
                                   const PrecisionTerms<T>& p) {
  for (int64_t k = 0; k < K; ++k) {
    const T* alpha = rows.alpha.data() + k * B;
    const T* c = rows.c.data() + k * B;
    const T* num = rows.num.data() + k * B;
    const T* om = rows.omega.data() + k * B;
    const T* gamma = kPrecision ? p.gamma + k * B : nullptr;
    const T* g2 = kPrecision ? p.g2 + k * B : nullptr;
    for (int64_t i = i0; i < i1; ++i) {
      const T m = mag[k * N + i];
      const T* x = x_t + i * B;
      const T* xx = kPrecision ? p.xx_t + i * B : nullptr;
      const T* dd = kPrecision ? p.d_t + i * B : nullptr;
      T* bi = b_t + i * B;
      T acc_h = 0, acc_p = 0;
#pragma omp simd reduction(+ : acc_h, acc_p)
      for (int64_t a = 0; a < B; ++a) {
        const T omega_cav = cavity_omega(om[a], m, x[a]);
        const T g_cav = kHard ? output_g_hard(alpha[a], num[a], omega_cav)
                              : output_g(alpha[a], c[a], num[a], omega_cav);
        acc_h += g_cav * x[a];
        if constexpr (kPrecision) acc_p += precision_message_term(xx[a], dd[a], gamma[a], g2[a]);
        if constexpr (kComputeB) bi[a] += m * g_cav;
      }
      h_in[k * N + i] = acc_h;
      if constexpr (kPrecision) p.omega_in[k * N + i] = acc_p;
    }
  }
}

template <typename T, bool kHard, bool kComputeB, bool kPrecision>
void cavity_tiles(int64_t K, int64_t N, int64_t B, const CoefRows<T>& rows, const T* x_t,
                  const T* mag, T* b_t, T* h_in, const PrecisionTerms<T>& p) {
  // Tile of inputs: keeps the tile's streamed [·, B] rows (x̂ and b; cbpi also x̂² + Δ and Δ)
  // within 4096 values, in L1/L2.
  constexpr int64_t kStreamedRows = kPrecision ? 4 : 2;
  const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(16, 4096 / (kStreamedRows * B)));
  const CpuIsa isa = cpu_isa();
  at::parallel_for(0, N, tile, [&](int64_t begin, int64_t end) {
    for (int64_t i0 = begin; i0 < end; i0 += tile) {
      const int64_t i1 = std::min(end, i0 + tile);
      BPK_ISA_DISPATCH(isa, cavity_tile<T, kHard, kComputeB, kPrecision>(i0, i1, K, N, B, rows,
                                                                          x_t, mag, b_t, h_in, p));
    }
  });
}

// The fused cavity backward over all inputs, with the hard-label and compute-b cases compiled
// apart. b_t [N, B] must be zeroed when compute_b (and may be null otherwise).
template <typename T, bool kPrecision>
void cavity_backward(bool hard, bool compute_b, int64_t K, int64_t N, int64_t B,
                     const CoefRows<T>& rows, const T* x_t, const T* mag, T* b_t, T* h_in,
                     const PrecisionTerms<T>& p = {}) {
  if (hard && compute_b) {
    cavity_tiles<T, true, true, kPrecision>(K, N, B, rows, x_t, mag, b_t, h_in, p);
  } else if (hard) {
    cavity_tiles<T, true, false, kPrecision>(K, N, B, rows, x_t, mag, b_t, h_in, p);
  } else if (compute_b) {
    cavity_tiles<T, false, true, kPrecision>(K, N, B, rows, x_t, mag, b_t, h_in, p);
  } else {
    cavity_tiles<T, false, false, kPrecision>(K, N, B, rows, x_t, mag, b_t, h_in, p);
  }
}

}  // namespace bpk
