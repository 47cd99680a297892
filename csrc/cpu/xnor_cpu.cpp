// CPU kernels of packed (XNOR-popcount) inference: bit-packing of sign activations with im2col
// (xnor_im2col) and the binary GEMM z = Σ ±1·±1 by popcount (xnor_gemm). Bit conventions:
// bpkernels/xnor.h. The GEMM is compiled three times and chosen at run time: AVX-512 with
// VPOPCNTDQ (512-bit vector popcount), AVX2 (256-bit popcount by nibble lookup, vpshufb +
// vpsadbw) and a portable scalar loop; BPK_XNOR_ISA=avx512|avx2|portable forces one (tests run
// every path on one machine). Multithreaded with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12's AVX-512 shuffles start from _mm512_undefined_*(), which -Wuninitialized flags
// (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define BPK_XNOR_X86 1
#endif

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "bpkernels/xnor.h"
#include "checks.h"
#include "cpu/isa.h"

namespace bpk {
namespace {

using xnor::popcount64;

// ---- ISA choice ---------------------------------------------------------------------------

enum class XnorIsa { kPortable, kAvx2, kAvx512 };

XnorIsa best_xnor_isa() {
#ifdef BPK_XNOR_X86
  static const XnorIsa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vpopcntdq")) {
      return XnorIsa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return XnorIsa::kAvx2;
    return XnorIsa::kPortable;
  }();
  return best;
#else
  return XnorIsa::kPortable;
#endif
}

const char* isa_name(XnorIsa isa) {
  switch (isa) {
    case XnorIsa::kAvx512: return "avx512";
    case XnorIsa::kAvx2: return "avx2";
    default: return "portable";
  }
}

// The widest ISA of the processor, or the one BPK_XNOR_ISA names (an error if unsupported).
XnorIsa xnor_isa() {
  const XnorIsa best = best_xnor_isa();
  const char* env = std::getenv("BPK_XNOR_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  XnorIsa isa;
  if (want == "avx512") {
    isa = XnorIsa::kAvx512;
  } else if (want == "avx2") {
    isa = XnorIsa::kAvx2;
  } else if (want == "portable") {
    isa = XnorIsa::kPortable;
  } else {
    TORCH_CHECK(false, "BPK_XNOR_ISA must be avx512, avx2 or portable, got '", want, "'");
  }
  TORCH_CHECK(int(isa) <= int(best), "BPK_XNOR_ISA=", want, " but this processor supports at most ",
              isa_name(best));
  return isa;
}

std::string xnor_cpu_isa() { return isa_name(xnor_isa()); }

// ---- binary GEMM ----------------------------------------------------------------------------

// z[r, k] = count − 2·Σ_j popcount((x[r, j] XOR w[k, j]) AND care[r, k, j]), where care is
// xv[r mod P, j] (when given) AND wn[k, j] (when given), all ones otherwise; count is
// Σ_j popcount(care), precomputed per row (count_r) or per unit (count_k) when only one plane is
// given, and n (the row length in bits) when neither is.
struct GemmParams {
  const uint64_t* x;        // [R, W]
  const uint64_t* w;        // [K, W]
  const uint64_t* xv;       // [P, W] or null
  const uint64_t* wn;       // [K, W] or null
  const int64_t* count_r;   // [P] (xv only)
  const int64_t* count_k;   // [K] (wn only)
  int32_t* z;               // [R, K]
  int64_t R, K, W, P, n;
};

// Row and unit tiles: a task covers kRowBlock rows × kUnitBlock units (weights of a task stay
// in L1/L2 while its rows stream past them).
constexpr int64_t kRowBlock = 32;
constexpr int64_t kUnitBlock = 64;

template <bool kXV, bool kWN>
BPK_ALWAYS_INLINE int64_t pair_count(const GemmParams& p, int64_t r, int64_t k) {
  if constexpr (kXV && kWN) {
    const uint64_t* v = p.xv + (r % p.P) * p.W;
    const uint64_t* m = p.wn + k * p.W;
    int64_t c = 0;
    for (int64_t j = 0; j < p.W; ++j) c += popcount64(v[j] & m[j]);
    return c;
  } else if constexpr (kXV) {
    return p.count_r[r % p.P];
  } else if constexpr (kWN) {
    return p.count_k[k];
  } else {
    return p.n;
  }
}

// Portable: one (row, unit) pair at a time with the compiler's popcount.
template <bool kXV, bool kWN>
BPK_ALWAYS_INLINE void block_scalar(const GemmParams& p, int64_t r0, int64_t r1, int64_t k0,
                                    int64_t k1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint64_t* xr = p.x + r * p.W;
    const uint64_t* v = kXV ? p.xv + (r % p.P) * p.W : nullptr;
    for (int64_t k = k0; k < k1; ++k) {
      const uint64_t* wk = p.w + k * p.W;
      const uint64_t* m = kWN ? p.wn + k * p.W : nullptr;
      int64_t mism = 0;
      for (int64_t j = 0; j < p.W; ++j) {
        const uint64_t care = (kXV ? v[j] : ~uint64_t(0)) & (kWN ? m[j] : ~uint64_t(0));
        mism += xnor::mismatches(xr[j], wk[j], care);
      }
      p.z[r * p.K + k] = int32_t(pair_count<kXV, kWN>(p, r, k) - 2 * mism);
    }
  }
}

#ifdef BPK_XNOR_X86

#define BPK_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq")))
#define BPK_TARGET_AVX2 __attribute__((target("avx2,popcnt")))

// Sums of 8 vectors of 8 int64 lanes: lane t of the result is Σ_lanes a[t] (a transpose-add tree:
// pairs within 128-bit lanes, then 128-bit lanes across vectors).
BPK_TARGET_AVX512 inline __m512i reduce8_avx512(const __m512i* a) {
  __m512i s[4];
  for (int i = 0; i < 4; ++i) {
    s[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]),
                            _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
  }
  const __m512i u0 = _mm512_add_epi64(_mm512_shuffle_i64x2(s[0], s[1], 0x88),
                                      _mm512_shuffle_i64x2(s[0], s[1], 0xDD));
  const __m512i u1 = _mm512_add_epi64(_mm512_shuffle_i64x2(s[2], s[3], 0x88),
                                      _mm512_shuffle_i64x2(s[2], s[3], 0xDD));
  return _mm512_add_epi64(_mm512_shuffle_i64x2(u0, u1, 0x88), _mm512_shuffle_i64x2(u0, u1, 0xDD));
}

// kRT rows × 8 units (nk <= 8 of them real; the others repeat unit k0 and are not stored),
// 8 words per step with a masked tail.
template <bool kXV, bool kWN, int kRT>
BPK_TARGET_AVX512 void tile_avx512(const GemmParams& p, int64_t r0, int64_t k0, int nk) {
  const uint64_t* wrow[8];
  for (int t = 0; t < 8; ++t) wrow[t] = p.w + (k0 + (t < nk ? t : 0)) * p.W;
  __m512i mism[kRT][8], cnt[kRT][8];
  for (int i = 0; i < kRT; ++i) {
    for (int t = 0; t < 8; ++t) mism[i][t] = cnt[i][t] = _mm512_setzero_si512();
  }
  for (int64_t j = 0; j < p.W; j += 8) {
    const __mmask8 lanes = p.W - j >= 8 ? __mmask8(0xFF) : __mmask8((1u << (p.W - j)) - 1);
    __m512i xr[kRT], vr[kRT];
    for (int i = 0; i < kRT; ++i) {
      xr[i] = _mm512_maskz_loadu_epi64(lanes, p.x + (r0 + i) * p.W + j);
      if constexpr (kXV) vr[i] = _mm512_maskz_loadu_epi64(lanes, p.xv + ((r0 + i) % p.P) * p.W + j);
    }
    for (int t = 0; t < 8; ++t) {
      const __m512i wv = _mm512_maskz_loadu_epi64(lanes, wrow[t] + j);
      __m512i nv = _mm512_setzero_si512();
      if constexpr (kWN) nv = _mm512_maskz_loadu_epi64(lanes, p.wn + (wrow[t] - p.w) + j);
      for (int i = 0; i < kRT; ++i) {
        __m512i d = _mm512_xor_si512(xr[i], wv);
        if constexpr (kXV && kWN) {
          const __m512i care = _mm512_and_si512(vr[i], nv);
          d = _mm512_and_si512(d, care);
          cnt[i][t] = _mm512_add_epi64(cnt[i][t], _mm512_popcnt_epi64(care));
        } else if constexpr (kXV) {
          d = _mm512_and_si512(d, vr[i]);
        } else if constexpr (kWN) {
          d = _mm512_and_si512(d, nv);
        }
        mism[i][t] = _mm512_add_epi64(mism[i][t], _mm512_popcnt_epi64(d));
      }
    }
  }
  const __mmask8 store = __mmask8((1u << nk) - 1);
  for (int i = 0; i < kRT; ++i) {
    const int64_t r = r0 + i;
    __m512i count;
    if constexpr (kXV && kWN) {
      count = reduce8_avx512(cnt[i]);
    } else if constexpr (kXV) {
      count = _mm512_set1_epi64(p.count_r[r % p.P]);
    } else if constexpr (kWN) {
      count = _mm512_maskz_loadu_epi64(store, p.count_k + k0);
    } else {
      count = _mm512_set1_epi64(p.n);
    }
    const __m512i z = _mm512_sub_epi64(count, _mm512_slli_epi64(reduce8_avx512(mism[i]), 1));
    _mm256_mask_storeu_epi32(p.z + r * p.K + k0, store, _mm512_cvtepi64_epi32(z));
  }
}

template <bool kXV, bool kWN>
BPK_TARGET_AVX512 void block_avx512(const GemmParams& p, int64_t r0, int64_t r1, int64_t k0,
                                    int64_t k1) {
  // Two rows per tile (one when both planes need a second set of accumulators).
  constexpr int kRT = (kXV && kWN) ? 1 : 2;
  int64_t r = r0;
  for (; r + kRT <= r1; r += kRT) {
    for (int64_t k = k0; k < k1; k += 8) {
      tile_avx512<kXV, kWN, kRT>(p, r, k, int(std::min<int64_t>(8, k1 - k)));
    }
  }
  for (; r < r1; ++r) {
    for (int64_t k = k0; k < k1; k += 8) {
      tile_avx512<kXV, kWN, 1>(p, r, k, int(std::min<int64_t>(8, k1 - k)));
    }
  }
}

// Unit panels for many rows: w re-laid as [⌈K/8⌉, W, 8] (8 units' word j side by side, missing
// units 0), so that one vector holds one word of 8 units and the 8 sums build up in the lanes
// without a reduction. A tile is kRT rows × 2 panels (16 units); x words are broadcast.
constexpr int64_t kPanelMinRows = 8;

BPK_TARGET_AVX512 void make_panels(const uint64_t* w, int64_t K, int64_t W, uint64_t* out) {
  for (int64_t kb = 0; kb < (K + 7) / 8; ++kb) {
    for (int64_t j = 0; j < W; ++j) {
      for (int64_t t = 0; t < 8; ++t) {
        const int64_t k = kb * 8 + t;
        out[(kb * W + j) * 8 + t] = k < K ? w[k * W + j] : 0;
      }
    }
  }
}

template <bool kXV, bool kWN, int kRT>
BPK_TARGET_AVX512 void panel_tile_avx512(const GemmParams& p, const uint64_t* wp, const uint64_t* np,
                                         int64_t r0, int64_t kb0, int n_panels) {
  constexpr int kKT = 2;
  __m512i mism[kRT][kKT], cnt[kRT][kKT];
  for (int i = 0; i < kRT; ++i) {
    for (int t = 0; t < kKT; ++t) mism[i][t] = cnt[i][t] = _mm512_setzero_si512();
  }
  const uint64_t* panel[kKT];
  const uint64_t* npanel[kKT];
  for (int t = 0; t < kKT; ++t) {
    const int64_t kb = kb0 + (t < n_panels ? t : 0);
    panel[t] = wp + kb * p.W * 8;
    npanel[t] = kWN ? np + kb * p.W * 8 : nullptr;
  }
  for (int64_t j = 0; j < p.W; ++j) {
    __m512i wv[kKT], nv[kKT];
    for (int t = 0; t < kKT; ++t) {
      wv[t] = _mm512_loadu_si512(panel[t] + j * 8);
      if constexpr (kWN) nv[t] = _mm512_loadu_si512(npanel[t] + j * 8);
    }
    for (int i = 0; i < kRT; ++i) {
      const __m512i xv = _mm512_set1_epi64(int64_t(p.x[(r0 + i) * p.W + j]));
      __m512i vv = _mm512_setzero_si512();
      if constexpr (kXV) vv = _mm512_set1_epi64(int64_t(p.xv[((r0 + i) % p.P) * p.W + j]));
      for (int t = 0; t < kKT; ++t) {
        __m512i d = _mm512_xor_si512(xv, wv[t]);
        if constexpr (kXV && kWN) {
          const __m512i care = _mm512_and_si512(vv, nv[t]);
          d = _mm512_and_si512(d, care);
          cnt[i][t] = _mm512_add_epi64(cnt[i][t], _mm512_popcnt_epi64(care));
        } else if constexpr (kXV) {
          d = _mm512_and_si512(d, vv);
        } else if constexpr (kWN) {
          d = _mm512_and_si512(d, nv[t]);
        }
        mism[i][t] = _mm512_add_epi64(mism[i][t], _mm512_popcnt_epi64(d));
      }
    }
  }
  for (int t = 0; t < n_panels; ++t) {
    const int64_t k0 = (kb0 + t) * 8;
    const int nk = int(std::min<int64_t>(8, p.K - k0));
    const __mmask8 store = __mmask8((1u << nk) - 1);
    for (int i = 0; i < kRT; ++i) {
      const int64_t r = r0 + i;
      __m512i count;
      if constexpr (kXV && kWN) {
        count = cnt[i][t];
      } else if constexpr (kXV) {
        count = _mm512_set1_epi64(p.count_r[r % p.P]);
      } else if constexpr (kWN) {
        count = _mm512_maskz_loadu_epi64(store, p.count_k + k0);
      } else {
        count = _mm512_set1_epi64(p.n);
      }
      const __m512i z = _mm512_sub_epi64(count, _mm512_slli_epi64(mism[i][t], 1));
      _mm256_mask_storeu_epi32(p.z + r * p.K + k0, store, _mm512_cvtepi64_epi32(z));
    }
  }
}

template <bool kXV, bool kWN>
BPK_TARGET_AVX512 void panel_block_avx512(const GemmParams& p, const uint64_t* wp, const uint64_t* np,
                                          int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
  constexpr int kRT = (kXV && kWN) ? 2 : 4;
  const int64_t kb_end = (k1 + 7) / 8;
  int64_t r = r0;
  for (; r + kRT <= r1; r += kRT) {
    for (int64_t kb = k0 / 8; kb < kb_end; kb += 2) {
      panel_tile_avx512<kXV, kWN, kRT>(p, wp, np, r, kb, int(std::min<int64_t>(2, kb_end - kb)));
    }
  }
  for (; r < r1; ++r) {
    for (int64_t kb = k0 / 8; kb < kb_end; kb += 2) {
      panel_tile_avx512<kXV, kWN, 1>(p, wp, np, r, kb, int(std::min<int64_t>(2, kb_end - kb)));
    }
  }
}

// Per-byte popcount by two 4-bit table lookups, summed into the four 64-bit lanes (vpsadbw).
BPK_TARGET_AVX2 inline __m256i popcnt_avx2(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                         2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, nibble));
  const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble));
  return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
}

// Sums of 4 vectors of 4 int64 lanes: lane t of the result is Σ_lanes a[t].
BPK_TARGET_AVX2 inline __m256i reduce4_avx2(const __m256i* a) {
  const __m256i s01 = _mm256_add_epi64(_mm256_unpacklo_epi64(a[0], a[1]),
                                        _mm256_unpackhi_epi64(a[0], a[1]));
  const __m256i s23 = _mm256_add_epi64(_mm256_unpacklo_epi64(a[2], a[3]),
                                        _mm256_unpackhi_epi64(a[2], a[3]));
  return _mm256_add_epi64(_mm256_permute2x128_si256(s01, s23, 0x20),
                          _mm256_permute2x128_si256(s01, s23, 0x31));
}

// 2 rows × 4 units (nk <= 4 real), 4 words per step; the word tail (W mod 4) is scalar.
template <bool kXV, bool kWN, int kRT>
BPK_TARGET_AVX2 void tile_avx2(const GemmParams& p, int64_t r0, int64_t k0, int nk) {
  const int64_t kk[4] = {k0, k0 + (nk > 1), k0 + 2 * (nk > 2), k0 + 3 * (nk > 3)};
  __m256i mism[kRT][4], cnt[kRT][4];
  for (int i = 0; i < kRT; ++i) {
    for (int t = 0; t < 4; ++t) mism[i][t] = cnt[i][t] = _mm256_setzero_si256();
  }
  const int64_t w_vec = p.W & ~int64_t(3);
  for (int64_t j = 0; j < w_vec; j += 4) {
    __m256i xr[kRT], vr[kRT];
    for (int i = 0; i < kRT; ++i) {
      xr[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.x + (r0 + i) * p.W + j));
      if constexpr (kXV) {
        vr[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.xv + ((r0 + i) % p.P) * p.W + j));
      }
    }
    for (int t = 0; t < 4; ++t) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.w + kk[t] * p.W + j));
      __m256i nv = _mm256_setzero_si256();
      if constexpr (kWN) nv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.wn + kk[t] * p.W + j));
      for (int i = 0; i < kRT; ++i) {
        __m256i d = _mm256_xor_si256(xr[i], wv);
        if constexpr (kXV && kWN) {
          const __m256i care = _mm256_and_si256(vr[i], nv);
          d = _mm256_and_si256(d, care);
          cnt[i][t] = _mm256_add_epi64(cnt[i][t], popcnt_avx2(care));
        } else if constexpr (kXV) {
          d = _mm256_and_si256(d, vr[i]);
        } else if constexpr (kWN) {
          d = _mm256_and_si256(d, nv);
        }
        mism[i][t] = _mm256_add_epi64(mism[i][t], popcnt_avx2(d));
      }
    }
  }
  for (int i = 0; i < kRT; ++i) {
    const int64_t r = r0 + i;
    alignas(32) int64_t m_sum[4], c_sum[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(m_sum), reduce4_avx2(mism[i]));
    _mm256_store_si256(reinterpret_cast<__m256i*>(c_sum), reduce4_avx2(cnt[i]));
    for (int t = 0; t < nk; ++t) {
      const int64_t k = kk[t];
      const uint64_t* xr = p.x + r * p.W;
      const uint64_t* wk = p.w + k * p.W;
      for (int64_t j = w_vec; j < p.W; ++j) {
        const uint64_t care = (kXV ? p.xv[(r % p.P) * p.W + j] : ~uint64_t(0)) &
                              (kWN ? p.wn[k * p.W + j] : ~uint64_t(0));
        m_sum[t] += xnor::mismatches(xr[j], wk[j], care);
        if constexpr (kXV && kWN) c_sum[t] += popcount64(care);
      }
      const int64_t count = (kXV && kWN) ? c_sum[t] : pair_count<kXV, kWN>(p, r, k);
      p.z[r * p.K + k] = int32_t(count - 2 * m_sum[t]);
    }
  }
}

template <bool kXV, bool kWN>
BPK_TARGET_AVX2 void block_avx2(const GemmParams& p, int64_t r0, int64_t r1, int64_t k0,
                                int64_t k1) {
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    for (int64_t k = k0; k < k1; k += 4) {
      tile_avx2<kXV, kWN, 2>(p, r, k, int(std::min<int64_t>(4, k1 - k)));
    }
  }
  for (; r < r1; ++r) {
    for (int64_t k = k0; k < k1; k += 4) {
      tile_avx2<kXV, kWN, 1>(p, r, k, int(std::min<int64_t>(4, k1 - k)));
    }
  }
}

#endif  // BPK_XNOR_X86

template <bool kXV, bool kWN>
void gemm_blocks(const GemmParams& p, XnorIsa isa) {
  const int64_t n_rb = (p.R + kRowBlock - 1) / kRowBlock;
  const int64_t n_kb = (p.K + kUnitBlock - 1) / kUnitBlock;
#ifdef BPK_XNOR_X86
  // AVX-512 on many rows: the unit-panel kernel (kUnitBlock is a multiple of 16 units).
  std::vector<uint64_t> panels, nz_panels;
  const bool use_panels = isa == XnorIsa::kAvx512 && p.R >= kPanelMinRows;
  if (use_panels) {
    panels.resize((p.K + 7) / 8 * 8 * p.W);
    make_panels(p.w, p.K, p.W, panels.data());
    if (kWN) {
      nz_panels.resize(panels.size());
      make_panels(p.wn, p.K, p.W, nz_panels.data());
    }
  }
#endif
  at::parallel_for(0, n_rb * n_kb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r0 = (task / n_kb) * kRowBlock, k0 = (task % n_kb) * kUnitBlock;
      const int64_t r1 = std::min(p.R, r0 + kRowBlock), k1 = std::min(p.K, k0 + kUnitBlock);
#ifdef BPK_XNOR_X86
      if (use_panels) {
        panel_block_avx512<kXV, kWN>(p, panels.data(), nz_panels.data(), r0, r1, k0, k1);
        continue;
      }
      if (isa == XnorIsa::kAvx512) {
        block_avx512<kXV, kWN>(p, r0, r1, k0, k1);
        continue;
      }
      if (isa == XnorIsa::kAvx2) {
        block_avx2<kXV, kWN>(p, r0, r1, k0, k1);
        continue;
      }
#endif
      block_scalar<kXV, kWN>(p, r0, r1, k0, k1);
    }
  });
}

// Per-row popcounts of a [rows, W] bit plane.
at::Tensor row_popcounts(const at::Tensor& plane) {
  at::Tensor out = at::empty({plane.size(0)}, plane.options());
  const uint64_t* src = reinterpret_cast<const uint64_t*>(plane.const_data_ptr<int64_t>());
  int64_t* dst = out.mutable_data_ptr<int64_t>();
  const int64_t W = plane.size(1);
  for (int64_t r = 0; r < plane.size(0); ++r) {
    int64_t c = 0;
    for (int64_t j = 0; j < W; ++j) c += popcount64(src[r * W + j]);
    dst[r] = c;
  }
  return out;
}

at::Tensor xnor_gemm_cpu(const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& x_valid,
                         const std::optional<at::Tensor>& w_nonzero, int64_t n) {
  TORCH_CHECK(x.device().is_cpu(), "xnor_gemm: x must be a CPU tensor for the CPU kernel, got ",
              x.device());
  check_xnor_gemm(x, w, x_valid, w_nonzero, n);
  const int64_t R = x.size(0), W = x.size(1), K = w.size(0);
  at::Tensor xv, wn, count_r, count_k;
  if (x_valid) xv = x_valid->contiguous();
  if (w_nonzero) wn = w_nonzero->contiguous();
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  at::Tensor z = at::empty({R, K}, x.options().dtype(at::kInt));
  if (R == 0 || K == 0) return z;
  if (xv.defined() && !wn.defined()) count_r = row_popcounts(xv);
  if (wn.defined() && !xv.defined()) count_k = row_popcounts(wn);
  auto words = [](const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<const uint64_t*>(t.const_data_ptr<int64_t>()) : nullptr;
  };
  const GemmParams p{words(xc), words(wc), words(xv), words(wn),
                     count_r.defined() ? count_r.const_data_ptr<int64_t>() : nullptr,
                     count_k.defined() ? count_k.const_data_ptr<int64_t>() : nullptr,
                     z.mutable_data_ptr<int32_t>(), R, K, W, xv.defined() ? xv.size(0) : 1, n};
  const XnorIsa isa = xnor_isa();
  if (xv.defined() && wn.defined()) {
    gemm_blocks<true, true>(p, isa);
  } else if (xv.defined()) {
    gemm_blocks<true, false>(p, isa);
  } else if (wn.defined()) {
    gemm_blocks<false, true>(p, isa);
  } else {
    gemm_blocks<false, false>(p, isa);
  }
  return z;
}

// ---- sign bits with im2col --------------------------------------------------------------------

// The sign bits of len <= 64 contiguous values (bit c from src[c]).
template <typename T>
BPK_ALWAYS_INLINE uint64_t pack_run_scalar(const T* src, int64_t len) {
  uint64_t word = 0;
  for (int64_t c = 0; c < len; ++c) word |= uint64_t(xnor::sign_bit<T>(src[c])) << c;
  return word;
}

#ifdef BPK_XNOR_X86
// The same with AVX-512 compares into bit masks (16 floats / int32 or 8 doubles per compare).
template <typename T>
BPK_TARGET_AVX512 uint64_t pack_run_avx512(const T* src, int64_t len) {
  constexpr int kLanes = 64 / sizeof(T);
  uint64_t word = 0;
  for (int64_t c = 0; c < len; c += kLanes) {
    const int rem = int(std::min<int64_t>(kLanes, len - c));
    uint64_t bits;
    if constexpr (std::is_same_v<T, float>) {
      const __mmask16 m = __mmask16((1u << rem) - 1);
      const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + c), _mm512_set1_ps(1e-10f));
      bits = _mm512_mask_cmp_ps_mask(m, v, _mm512_setzero_ps(), _CMP_GT_OQ);
    } else if constexpr (std::is_same_v<T, double>) {
      const __mmask8 m = __mmask8((1u << rem) - 1);
      const __m512d v = _mm512_add_pd(_mm512_maskz_loadu_pd(m, src + c), _mm512_set1_pd(1e-10));
      bits = _mm512_mask_cmp_pd_mask(m, v, _mm512_setzero_pd(), _CMP_GT_OQ);
    } else {
      const __mmask16 m = __mmask16((1u << rem) - 1);
      const __m512i v = _mm512_maskz_loadu_epi32(m, src + c);
      bits = _mm512_mask_cmpge_epi32_mask(m, v, _mm512_setzero_si512());
    }
    word |= bits << c;
  }
  return word;
}

// Sign bits of up to 8 contiguous values (the lanes of `lanes`), as one byte.
template <typename T>
BPK_TARGET_AVX512 inline uint8_t sign_byte_avx512(const T* src, __mmask8 lanes) {
  if constexpr (std::is_same_v<T, float>) {
    const __m256 v = _mm256_add_ps(_mm256_maskz_loadu_ps(lanes, src), _mm256_set1_ps(1e-10f));
    return _mm256_mask_cmp_ps_mask(lanes, v, _mm256_setzero_ps(), _CMP_GT_OQ);
  } else if constexpr (std::is_same_v<T, double>) {
    const __m512d v = _mm512_add_pd(_mm512_maskz_loadu_pd(lanes, src), _mm512_set1_pd(1e-10));
    return _mm512_mask_cmp_pd_mask(lanes, v, _mm512_setzero_pd(), _CMP_GT_OQ);
  } else {
    return _mm256_mask_cmpge_epi32_mask(lanes, _mm256_maskz_loadu_epi32(lanes, src),
                                        _mm256_setzero_si256());
  }
}

// One image row of a channel-strided tensor (x contiguous, e.g. NCHW seen as NHWC) into pixel
// words dst[x, q]: per block of 8 pixels × 64 channels, byte c holds channel c's 8 sign bits;
// testing bit x of all 64 bytes at once gives pixel x's 64 channel bits (a bit transpose).
template <typename T>
BPK_TARGET_AVX512 void pack_row_transposed_avx512(const T* src, int64_t sc, int64_t Wd, int64_t C,
                                                  int64_t Wc, uint64_t* dst) {
  alignas(64) uint8_t bytes[64];
  for (int64_t x0 = 0; x0 < Wd; x0 += 8) {
    const int nx = int(std::min<int64_t>(8, Wd - x0));
    const __mmask8 lanes = __mmask8((1u << nx) - 1);
    for (int64_t c0 = 0; c0 < C; c0 += 64) {
      const int nc = int(std::min<int64_t>(64, C - c0));
      for (int c = 0; c < nc; ++c) bytes[c] = sign_byte_avx512<T>(src + (c0 + c) * sc + x0, lanes);
      for (int c = nc; c < 64; ++c) bytes[c] = 0;
      const __m512i v = _mm512_load_si512(bytes);
      for (int x = 0; x < nx; ++x) {
        dst[(x0 + x) * Wc + (c0 >> 6)] = _mm512_test_epi8_mask(v, _mm512_set1_epi8(char(1 << x)));
      }
    }
  }
}
#endif

// pix[b, y, x, q]: the sign bits (xnor::sign_bit) of z[b, y, x, 64q .. 64q + 63].
template <typename T>
void pack_pixels(const at::Tensor& z, uint64_t* pix, int64_t Wc) {
  const int64_t B = z.size(0), H = z.size(1), Wd = z.size(2), C = z.size(3);
  const int64_t sb = z.stride(0), sy = z.stride(1), sx = z.stride(2), sc = z.stride(3);
  const T* base = z.const_data_ptr<T>();
  if (sc == 1) {  // channels contiguous: one word from up to 64 neighbouring values
    const bool avx512 = xnor_isa() == XnorIsa::kAvx512;
    at::parallel_for(0, B * H * Wd, 256, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t b = q / (H * Wd), y = (q / Wd) % H, x = q % Wd;
        const T* src = base + b * sb + y * sy + x * sx;
        for (int64_t c0 = 0; c0 < C; c0 += 64) {
          const int64_t len = std::min<int64_t>(64, C - c0);
#ifdef BPK_XNOR_X86
          if (avx512) {
            pix[q * Wc + (c0 >> 6)] = pack_run_avx512<T>(src + c0, len);
            continue;
          }
#endif
          pix[q * Wc + (c0 >> 6)] = pack_run_scalar<T>(src + c0, len);
        }
      }
    });
  } else if (xnor_isa() == XnorIsa::kAvx512 && sx == 1) {
#ifdef BPK_XNOR_X86
    // e.g. an NCHW tensor seen as NHWC: bit transposes of the rows' sign bytes
    at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        pack_row_transposed_avx512<T>(base + (row / H) * sb + (row % H) * sy, sc, Wd, C, Wc,
                                      pix + row * Wd * Wc);
      }
    });
#endif
  } else {  // otherwise one image row at a time, transposed to [W, C] in a buffer
    const bool avx512 = xnor_isa() == XnorIsa::kAvx512;
    at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
      std::vector<T> buf(Wd * C);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / H, y = row % H;
        for (int64_t c = 0; c < C; ++c) {
          const T* src = base + b * sb + y * sy + c * sc;
          for (int64_t x = 0; x < Wd; ++x) buf[x * C + c] = src[x * sx];
        }
        for (int64_t x = 0; x < Wd; ++x) {
          for (int64_t c0 = 0; c0 < C; c0 += 64) {
            const int64_t len = std::min<int64_t>(64, C - c0);
            uint64_t* dst = pix + (row * Wd + x) * Wc + (c0 >> 6);
#ifdef BPK_XNOR_X86
            if (avx512) {
              *dst = pack_run_avx512<T>(buf.data() + x * C + c0, len);
              continue;
            }
#endif
            *dst = pack_run_scalar<T>(buf.data() + x * C + c0, len);
          }
        }
      }
    });
  }
}

// Appends the C bits of one pixel (Wc words) to a row at bit offset `at`.
inline void append_pixel(uint64_t* row, int64_t at, const uint64_t* src, int64_t C) {
  for (int64_t c0 = 0; c0 < C; c0 += 64) {
    xnor::or_bits(row, at + c0, src[c0 >> 6], int(std::min<int64_t>(64, C - c0)));
  }
}

std::tuple<at::Tensor, at::Tensor> xnor_im2col_cpu(const at::Tensor& z, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding) {
  check_xnor_im2col(z, kernel_size, stride, padding);
  const int64_t B = z.size(0), H = z.size(1), Wd = z.size(2), C = z.size(3);
  const int64_t kh = kernel_size[0], kw = kernel_size[1], sh = stride[0], sw = stride[1];
  const int64_t ph = padding[0], pw = padding[1];
  const int64_t OH = xnor::conv_out_size(H, kh, sh, ph), OW = xnor::conv_out_size(Wd, kw, sw, pw);
  const int64_t P = OH * OW, bits_per_row = kh * kw * C, Wr = (bits_per_row + 63) / 64;
  const int64_t Wc = (C + 63) / 64;
  const auto words = z.options().dtype(at::kLong);
  at::Tensor valid = at::zeros({P, Wr}, words);
  // The validity plane: 1 where the tap lies inside the image.
  uint64_t* pv = reinterpret_cast<uint64_t*>(valid.mutable_data_ptr<int64_t>());
  std::vector<uint64_t> ones(Wc, ~uint64_t(0));
  for (int64_t pos = 0; pos < P; ++pos) {
    const int64_t oy = pos / OW, ox = pos % OW;
    for (int64_t i = 0; i < kh; ++i) {
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t y = oy * sh - ph + i, x = ox * sw - pw + j;
        if (y < 0 || y >= H || x < 0 || x >= Wd) continue;
        for (int64_t c0 = 0; c0 < C; c0 += 64) {
          const int len = int(std::min<int64_t>(64, C - c0));
          xnor::or_bits(pv + pos * Wr, (i * kw + j) * C + c0, xnor::low_bits(len), len);
        }
      }
    }
  }
  if (B == 0) return {at::empty({0, Wr}, words), valid};
  at::Tensor pix = at::empty({B, H, Wd, Wc}, words);
  uint64_t* pp = reinterpret_cast<uint64_t*>(pix.mutable_data_ptr<int64_t>());
  AT_DISPATCH_SWITCH(z.scalar_type(), "xnor_im2col",
                     AT_DISPATCH_CASE(at::kFloat, [&] { pack_pixels<float>(z, pp, Wc); })
                     AT_DISPATCH_CASE(at::kDouble, [&] { pack_pixels<double>(z, pp, Wc); })
                     AT_DISPATCH_CASE(at::kInt, [&] { pack_pixels<int32_t>(z, pp, Wc); }));
  if (kh == 1 && kw == 1 && H == 1 && Wd == 1 && ph == 0 && pw == 0) {
    return {pix.view({B, Wc}), valid};  // a dense layer: the rows are the packed vectors
  }
  at::Tensor bits = at::zeros({B * P, Wr}, words);
  uint64_t* pb = reinterpret_cast<uint64_t*>(bits.mutable_data_ptr<int64_t>());
  // bits[(b, oy, ox), t]: tap (i, j), channel c at t = (i·kw + j)·C + c.
  at::parallel_for(0, B * P, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / P, pos = row % P, oy = pos / OW, ox = pos % OW;
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t y = oy * sh - ph + i;
        if (y < 0 || y >= H) continue;
        for (int64_t j = 0; j < kw; ++j) {
          const int64_t x = ox * sw - pw + j;
          if (x < 0 || x >= Wd) continue;
          append_pixel(pb + row * Wr, (i * kw + j) * C, pp + ((b * H + y) * Wd + x) * Wc, C);
        }
      }
    }
  });
  return {bits, valid};
}

}  // namespace
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CPU, m) {
  m.impl("xnor_im2col", &bpk::xnor_im2col_cpu);
  m.impl("xnor_gemm", &bpk::xnor_gemm_cpu);
}

TORCH_LIBRARY_IMPL(bpkernels, CompositeExplicitAutograd, m) {
  m.impl("xnor_cpu_isa", &bpk::xnor_cpu_isa);
}
