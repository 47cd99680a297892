// Per-(unit, sample) output-function coefficients laid out unit-major ([K, B]) for the CPU
// cavity kernels, whose innermost loop runs over the batch.
#pragma once
#include <ATen/Parallel.h>

#include <vector>

#include "bpkernels/binary_bp.h"

namespace bpk {

// Coefficients of g (see OutputCoef) and ω for every (k, a), each row-major [K, B].
template <typename T>
struct CoefRows {
  std::vector<T> alpha, c, num, omega;
  CoefRows(int64_t K, int64_t B) : alpha(K * B), c(K * B), num(K * B), omega(K * B) {}
};

// b_top, omega, var: [B, K] (b_top holds labels ±1 when hard).
template <typename T>
CoefRows<T> make_coef_rows(const T* b_top, const T* omega, const T* var, int64_t B, int64_t K,
                           bool hard) {
  CoefRows<T> rows(K, B);
  at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t a = 0; a < B; ++a) {
        const int64_t src = a * K + k, dst = k * B + a;
        const T s = std::sqrt(var[src]);
        const OutputCoef<T> coef = hard ? output_coef_hard(b_top[src], s)
                                        : output_coef(b_top[src], s);
        rows.alpha[dst] = coef.alpha;
        rows.c[dst] = coef.c;
        rows.num[dst] = coef.num;
        rows.omega[dst] = omega[src];
      }
    }
  });
  return rows;
}

}  // namespace bpk
