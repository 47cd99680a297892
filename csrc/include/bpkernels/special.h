// PLACEHOLDER (being replaced): special functions for the message-passing maths.
#pragma once
#include <cmath>
#include "bpkernels/macros.h"

namespace bpk {

// erfcx(x) = exp(x^2) erfc(x), the scaled complementary error function.
template <typename T>
BPK_HD T erfcx(T x) {
  return std::exp(x * x) * std::erfc(x);
}

// exp(x) that the compiler can vectorise in CPU loops.
template <typename T>
BPK_HD T vexp(T x) {
  return std::exp(x);
}

}  // namespace bpk
