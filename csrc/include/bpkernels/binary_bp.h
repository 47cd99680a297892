// Scalar message-passing maths for layers of ±1 weights and sign activations
// (docs/algorithms.md §2–§6). Torch-free: the CPU kernels loop over these functions and the
// CUDA kernels call them per thread, so every backend evaluates the same formulas.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "bpkernels/macros.h"
#include "bpkernels/special.h"

namespace bpk {

// ε added to every preactivation variance V (docs/algorithms.md §4.0, pitfall §10.3).
constexpr double kVarEps = 1e-8;
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // √(2/π)
constexpr double kInvSqrt2 = 0.70710678118654752440;     // 1/√2
constexpr double kLn2 = 0.69314718055994530942;
constexpr double kSqrtPi = 1.77245385090551602730;       // √π

template <typename T>
BPK_HD T inf_value() {
  return std::numeric_limits<T>::infinity();
}

// Variance of a ±1 weight with magnetisation m under its 0/1 mask (docs/algorithms.md §4.0):
//   σ = (1 − m²) · mask.
// σ is derived state: every operator that needs it evaluates this function (the CPU kernels in
// an ISA-dispatched vectorised loop, where the compiler contracts 1 − m² into one FMA, as it did
// when the field update stored σ).
template <typename T>
BPK_HD T weight_variance(T mag, T mask) {
  return (T(1) - mag * mag) * mask;
}

// Input moments of a hidden layer from the upward field of the layer below and this layer's
// downward field:  x̂ = tanh(u + b),  Δ = 1 − x̂².
template <typename T>
BPK_HD void input_moments(T u, T b, T& x_hat, T& delta) {
  x_hat = vtanh(u + b);
  delta = T(1) - x_hat * x_hat;
}

// Upward field (half log-odds of the next activation) of a preactivation z ~ N(ω, s²):
//   U(ω, s) = atanh erf(ω / (√2 s)).
// With y = |ω|/(√2 s) it is evaluated as
//   y < 1/2:  sgn(ω) atanh(erf y)
//   y ≥ 1/2:  sgn(ω) · (½ [ln 2 + log1p(−½ erfcx(y) e^{−y²}) − ln erfcx(y)] + (y/√2)²),
// which never rounds erf to 1 and grows like ω²/(4s²) = y²/2,
// the asymptote of ½ ln(2/erfc y) (pitfall §10.2); y²/2 is formed as (y/√2)², which overflows
// only where U itself does (y² alone overflows at half that for tiny V).
// Host float: both branches are evaluated branch-free and blended (the CPU loops vectorise),
// with erf y = (2/√π) y Σ_n (−y²)ⁿ/(n!(2n+1)) to n = 7 (first omitted term < 1e-9 relative at
// y = ½) and atanh e = ½ log1p(2e/(1 − e)).
template <typename T>
BPK_HD T upfield(T omega, T s) {
  const T y = std::fabs(omega) * (T(kInvSqrt2) / s);
#if !defined(__CUDA_ARCH__)
  if constexpr (std::is_same<T, float>::value) {
    const float ys = select(y < 0.5f, y, 0.5f), yl = select(y < 0.5f, 0.5f, y);
    const float z = ys * ys;
    const float erf_y = 1.1283792f * ys * (1.0f + z * (-0.33333334f + z * (0.1f + z * (-0.023809524f
                          + z * (0.0046296296f + z * (-0.00075757576f + z * (0.00010683761f
                          + z * -1.3227513e-05f)))))));
    const float small = 0.5f * vlog1p(2.0f * erf_y / (1.0f - erf_y));
    const float ex = erfcx(yl);
    const float h = yl * float(kInvSqrt2);
    const float large = 0.5f * (float(kLn2) + vlog1p(-0.5f * ex * vexp(-yl * yl)) - vlog(ex)) + h * h;
    const float mag = select(y < 0.5f, small, large);
    return select(omega < 0.0f, -mag, mag);
  }
#endif
  T mag;
  if (y < T(0.5)) {
    mag = std::atanh(std::erf(y));
  } else {
    const T ex = erfcx(y);
    const T h = y * T(kInvSqrt2);
    mag = T(0.5) * (T(kLn2) + std::log1p(T(-0.5) * ex * std::exp(-y * y)) - std::log(ex)) + h * h;
  }
  return omega < T(0) ? -mag : mag;
}

// Per-(unit, sample) constants of the sign-unit output function g(b, ω, s) (docs/algorithms.md §2.2).
// With ς = sgn b, t = tanh b and z = −ς ω / s, the log-domain form is
//   g = (ς √(2/π) / s) / [exp(z²/2 + c) + erfcx(z/√2)],   c = ln((1 − |t|)/|t|),
// so writing x = z/√2 = alpha·ω with alpha = −ς/(√2 s):
//   g = num / [exp(x² + c) + erfcx(x)],   num = ς √(2/π) / s.
// A hard label y = ±1 (b = ±∞) is c = −∞; b = 0 is c = +∞ (g = 0).
template <typename T>
struct OutputCoef {
  T alpha;  // −ς / (√2 s)
  T c;      // ln((1 − |tanh b|) / |tanh b|)
  T num;    // ς √(2/π) / s
};

// c = ln((1 − |t|)/|t|) for every |b| including 0 (c = +∞) and ±∞ (c = −∞). As
// (1 − |t|)/|t| = e^{−|b|}/sinh|b|:
//   |b| ≥ 1/8:  c = ln 2 − 2|b| − log1p(−e^{−2|b|})
//   |b| < 1/8:  c = −|b| − ln|b| − log1p(b²/6 + b⁴/120 + b⁶/5040 + b⁸/362880)   (ln(sinh|b|/|b|);
//               the first omitted term, b¹⁰/39916800, is < 3e-17 there).
// The first line alone loses the absolute accuracy ε/(2|b|) in 1 − e^{−2|b|} as |b| → 0 (in
// float32 e^{−2|b|} rounds to 1 for |b| ≤ 3e-8, c becomes +∞ and g = 0: pitfall §10.16).
template <typename T>
BPK_HD T soft_label_log_ratio(T b) {
  const T ab = std::fabs(b);
  const T z = ab * ab;
  const T small = -ab - vlog(ab)
                  - vlog1p(z * (T(1.0 / 6) + z * (T(1.0 / 120) + z * (T(1.0 / 5040) + z * T(1.0 / 362880)))));
  const T large = T(kLn2) - T(2) * ab - vlog1p(-vexp(T(-2) * ab));
  return select(ab < T(0.125), small, large);
}

// Coefficients for a finite or infinite downward field b on the unit's output, as scalars (the
// form the CPU's vectorised loops call: GCC does not vectorise a loop that builds a struct per
// iteration) and as an OutputCoef.
template <typename T>
BPK_HD void output_coef(T b, T s, T& alpha, T& c, T& num) {
  const T sgn = select(b < T(0), T(-1), T(1));
  alpha = -sgn * T(kInvSqrt2) / s;
  c = soft_label_log_ratio(b);
  num = sgn * T(kSqrt2OverPi) / s;
}

template <typename T>
BPK_HD OutputCoef<T> output_coef(T b, T s) {
  OutputCoef<T> k;
  output_coef(b, s, k.alpha, k.c, k.num);
  return k;
}

// Coefficients for a hard label y = ±1 (the perceptron channel, b = y·∞; c = −∞).
template <typename T>
BPK_HD void output_coef_hard(T y, T s, T& alpha, T& num) {
  const T sgn = select(y < T(0), T(-1), T(1));
  alpha = -sgn * T(kInvSqrt2) / s;
  num = sgn * T(kSqrt2OverPi) / s;
}

template <typename T>
BPK_HD OutputCoef<T> output_coef_hard(T y, T s) {
  OutputCoef<T> k;
  output_coef_hard(y, s, k.alpha, k.num);
  k.c = -inf_value<T>();
  return k;
}

// g at preactivation mean ω (cavity or not) for a soft field, from the coefficients as scalars:
//   g = num / [exp(x² + c) + erfcx(x)],  x = alpha ω.
template <typename T>
BPK_HD T output_g(T alpha, T c, T num, T omega) {
  const T x = alpha * omega;
  return num / (vexp(x * x + c) + erfcx(x));
}

// g for a hard label (c = −∞):  g = num / erfcx(alpha ω).
template <typename T>
BPK_HD T output_g_hard(T alpha, T num, T omega) {
  return num / erfcx(alpha * omega);
}

template <typename T>
BPK_HD T output_g(OutputCoef<T> k, T omega) {
  return output_g(k.alpha, k.c, k.num, omega);
}

template <typename T>
BPK_HD T output_g_hard(OutputCoef<T> k, T omega) {
  return output_g_hard(k.alpha, k.num, omega);
}

// K(x) = 1/(√π erfcx(x)) − x for x > 0, the excess of the inverse Mills ratio over its asymptote
// (K ~ 1/(2x) as x → ∞), without the cancellation of that difference for large x.
//   x ≥ x_t:  Laplace's continued fraction √π erfcx(x) = 1/(x + K(x)),
//             K(x) = (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …)))) (n-th coefficient n/2), evaluated
//             bottom-up from its n-th level; truncation error at x = x_t below 5e-17 (double:
//             x_t = 4, n = 24) and 1e-8 (float: x_t = 3, n = 12), smaller for larger x;
//   x < x_t:  the difference itself, which loses log2(1 + 2x²) bits at most (5 in double, 4.2
//             in float).
// e = √π erfcx(x) is passed in (the caller has it). Host float: both branches are evaluated and
// blended (x clamped to x_t in the fraction), so that the CPU loops vectorise.
template <typename T>
BPK_HD T mills_excess(T x, T e) {
  constexpr bool kFloat = std::is_same<T, float>::value;
  constexpr T kXt = kFloat ? T(3) : T(4);
  constexpr int kLevels = kFloat ? 12 : 24;
#if defined(__CUDA_ARCH__)
  constexpr bool kBlend = false;
#else
  constexpr bool kBlend = kFloat;
#endif
  if constexpr (!kBlend) {
    if (x < kXt) return T(1) / e - x;
  }
  const T xc = select(x < kXt, kXt, x);
  T t = T(0);
  for (int n = kLevels; n >= 1; --n) t = (T(0.5) * T(n)) / (xc + t);
  return select(x < kXt, T(1) / e - x, t);
}

// g and the curvature Γ = −∂g/∂ω of the output function for every finite or infinite b
// (docs/algorithms.md §2.2, §10.15), from the coefficients as scalars (c = −∞: hard label).
// With x = αω, E = exp(x² + c), e = √π erfcx(x) and p = 1/(√π E + e):
//   g = num/(E + erfcx(x)) = ς √2 p / s,
//   Γ = 2 p (p − x) / V
// (from ∂_x[E + erfcx(x)] = 2x(E + erfcx(x)) − 2/√π and ∂x/∂ω = α). p − x is a sum of
// non-negative terms for x ≤ 0; for x > 0 (ω against the label or field) p ≈ x, and
//   p − x = p (1 − x e − x √π E) = p e K(x) − x q,   q = √π E p = 1/(1 + e/(√π E)),
// with 1 − x e = K e (Laplace's fraction, see mills_excess), is free of cancellation for hard
// labels (q = 0: Γ = GH(z)(GH(z) − z)/s², z = √2 x) and cancels for soft ones only where Γ
// itself changes sign. The product form g (ω/V + g) loses ~(ω/s)² ulps there (pitfall §10.15).
template <typename T>
BPK_HD void output_g_gamma(T alpha, T c, T num, T omega, T var, T& g, T& gamma) {
  const T x = alpha * omega;
  const T big_e = vexp(x * x + c);
  const T ex = erfcx(x);
  g = num / (big_e + ex);
  const T e = T(kSqrtPi) * ex;
  const T p = T(1) / (T(kSqrtPi) * big_e + e);
  const T q = T(1) / (T(1) + e / (T(kSqrtPi) * big_e));
  const T excess = select(x > T(0), p * e * mills_excess(x, e) - x * q, p - x);
  gamma = T(2) * p * excess / var;
}

// ---- BP cavity quantities (docs/algorithms.md §4.2, §4.3) ------------------------------------

// Cavity input of factor k for input i and sample a:  x̃ = tanh(x_in + b̃) for a hidden layer
// (x_in = u of the layer below, b̃ = b_cav[e]), x̃ = x_in for the first layer (b_cav = nullptr).
template <typename T>
BPK_HD T cavity_input(T x_in, const T* b_cav, std::int64_t e) {
  return b_cav ? vtanh(x_in + b_cav[e]) : x_in;
}

// Cavity preactivation mean  ω̃ = ω − m x  (the factor's mean without the edge's own term).
// On the device the product and the difference are rounded separately (no FMA contraction), as
// in the CPU's scalar BP loops: where ω̃ cancels and s is small, ĝ is ill-conditioned in ω̃
// (relative error ~ |alpha ω̃| · ulp(m x) / s), and equal rounding keeps the backends within a
// few ulps of each other there too.
template <typename T>
BPK_HD T cavity_omega(T omega, T m, T x) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<T, float>::value) {
    return __fsub_rn(omega, __fmul_rn(m, x));
  } else {
    return __dsub_rn(omega, __dmul_rn(m, x));
  }
#else
  return omega - m * x;
#endif
}

// Cavity magnetisation update after the field update (H the new field):
//   m̃ ← ψ m̃ + (1 − ψ) tanh(H − ĝ x̃) · mask.
template <typename T>
BPK_HD T cavity_mag_update(T mag_cav, T field, T g_cav, T x_cav, T mask, T psi) {
  return psi * mag_cav + (T(1) - psi) * vtanh(field - g_cav * x_cav) * mask;
}

// ArgMax output layer, one wrong class k ≠ c of a sample with true class c (docs/algorithms.md §2.3):
//   g_k = −GH(−(ω_c − ω_k)/s_k) / s_k,  s_k = √(V_k + V_c),  GH(z) = √(2/π) / erfcx(z/√2);
// the true class gets g_c = −Σ_{k≠c} g_k.
template <typename T>
BPK_HD T argmax_g_wrong_class(T omega_true, T omega_k, T var_true, T var_k) {
  const T s = std::sqrt(var_true + var_k);
  return -T(kSqrt2OverPi) / (s * erfcx(-(omega_true - omega_k) * (T(kInvSqrt2) / s)));
}

// Field / reinforcement / damping update of one weight (docs/algorithms.md §4.1 step 4, §5.1):
//   H ← H_in + r H + ρ H_prior,   m ← [ψ m + (1 − ψ) tanh H] · mask.
// Returns the new magnetisation (σ is derived from it where it is used: weight_variance).
template <typename T>
BPK_HD T field_update(T& field, T h_in, T field_prior, T mag, T mask, T rho, T r, T psi) {
  field = h_in + r * field + rho * field_prior;
  return (psi * mag + (T(1) - psi) * vtanh(field)) * mask;
}

// ArgMax layer variant: the field is damped, not the magnetisation (docs/algorithms.md §4.5):
//   H ← ψ H + (1 − ψ)(H_in + r H + ρ H_prior),   m ← tanh(H) · mask.
template <typename T>
BPK_HD T field_update_damped_field(T& field, T h_in, T field_prior, T mask, T rho, T r, T psi) {
  field = psi * field + (T(1) - psi) * (h_in + r * field + rho * field_prior);
  return vtanh(field) * mask;
}

}  // namespace bpk
