// Runtime choice of the x86 vector ISA for the hot CPU loops. The same loop body is compiled
// three times — for AVX-512 (x86-64-v4), AVX2+FMA (x86-64-v3) and the baseline — by inlining an
// always-inline body into functions carrying GCC target attributes, and the widest one the
// processor supports is called. The wheel stays portable (no -march flag), and the maths is
// the same header code in every clone.
#pragma once

#if defined(__GNUC__)
#define BPK_ALWAYS_INLINE __attribute__((always_inline)) inline
// After a lambda's parameter list: [=](int64_t e) BPK_ALWAYS_INLINE_LAMBDA { ... }
#define BPK_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#else
#define BPK_ALWAYS_INLINE inline
#define BPK_ALWAYS_INLINE_LAMBDA
#endif

namespace bpk {

enum class CpuIsa { kBaseline, kAvx2, kAvx512 };

inline CpuIsa cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const CpuIsa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
      return CpuIsa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
    return CpuIsa::kBaseline;
  }();
  return isa;
#else
  return CpuIsa::kBaseline;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
// Evaluates the call expression (to an always-inline function) compiled for the given ISA.
#define BPK_ISA_DISPATCH(isa, ...)                                       \
  do {                                                                   \
    if ((isa) == ::bpk::CpuIsa::kAvx512) {                               \
      [&]() __attribute__((target("arch=x86-64-v4"))) { __VA_ARGS__; }(); \
    } else if ((isa) == ::bpk::CpuIsa::kAvx2) {                          \
      [&]() __attribute__((target("arch=x86-64-v3"))) { __VA_ARGS__; }(); \
    } else {                                                             \
      __VA_ARGS__;                                                       \
    }                                                                    \
  } while (0)
#else
#define BPK_ISA_DISPATCH(isa, ...) __VA_ARGS__
#endif

}  // namespace bpk
