// Scalar message-passing maths of the Gaussian (continuous) weight family, continuous-weight
// BPI (docs/algorithms.md §4.7). Each weight has a Gaussian marginal with natural parameters
// (H, Ω): mean H/Ω, variance σ = 1/Ω. The forward moments, the cavity ĝ, b and H_in are BPI's
// (binary_bp.h, with σ = 1/Ω instead of 1 − m²); this header adds the curvature term of the
// precision message and the field / precision update. Torch-free, shared by every backend.
#pragma once
#include <cmath>

#include "bpkernels/binary_bp.h"

namespace bpk {

// Lower bound of the weight precision Ω after every update (docs/algorithms.md §4.7).
constexpr double kMinPrecision = 1e-6;

// Variance of a Gaussian weight of precision Ω:  σ = 1/Ω.
template <typename T>
BPK_HD T gaussian_weight_variance(T precision) {
  return T(1) / precision;
}

// The (non-cavity) output function g and its curvature Γ = −∂g/∂ω entering the precision
// message, from the coefficients of output_coef (c = −∞ for hard labels), Γ in the stable form
// of output_g_gamma; a non-finite Γ is set to 0 (docs/algorithms.md §4.7). Returns Γ.
template <typename T>
BPK_HD T precision_curvature(T alpha, T c, T num, T omega, T var, T& g) {
  T gamma;
  output_g_gamma(alpha, c, num, omega, var, g, gamma);
  return std::isfinite(gamma) ? gamma : T(0);
}

// One sample's term of the precision message of weight (k, i):
//   Ω_in[k,i] = Σ_a [(x̂[a,i]² + Δ[a,i]) Γ[a,k] − Δ[a,i] g[a,k]²].
// xx = x̂² + Δ and delta = Δ of the input; gamma = Γ and g2 = g² of the unit.
template <typename T>
BPK_HD T precision_message_term(T xx, T delta, T gamma, T g2) {
  return xx * gamma - delta * g2;
}

// Field / precision / damping update of one Gaussian weight (docs/algorithms.md §4.7):
//   Ω ← max(10⁻⁶, Ω_in + r Ω + ρ Ω_prior),   H ← H_in + r H + ρ H_prior,
//   m ← ψ m + (1 − ψ) H/Ω.
// Returns the new (damped) mean m.
template <typename T>
BPK_HD T gaussian_field_update(T& field, T& precision, T h_in, T omega_in, T field_prior,
                               T precision_prior, T mag, T rho, T r, T psi) {
  const T p = omega_in + r * precision + rho * precision_prior;
  precision = p < T(kMinPrecision) ? T(kMinPrecision) : p;  // NaN propagates
  field = h_in + r * field + rho * field_prior;
  return psi * mag + (T(1) - psi) * field / precision;
}

}  // namespace bpk
