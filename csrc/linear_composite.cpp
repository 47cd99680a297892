// The operators built from ATen matrix products (MKL / cuBLAS), registered once for every device
// (CompositeExplicitAutograd). Their element-wise pieces are themselves bpkernels operators,
// called through the dispatcher, so each device runs its own kernel for them: the weight
// variance σ = (1 − m²)·mask (bp_weight_var) and the upward field u = U(ω, √V) (bp_upfield).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "bpkernels/binary_bp.h"
#include "checks.h"

namespace bpk {
namespace {

using OptTensor = std::optional<at::Tensor>;

// σ = (1 − m²)·mask  [K, N], by the device's bp_weight_var kernel.
at::Tensor weight_var(const at::Tensor& mag, const OptTensor& mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("bpkernels::bp_weight_var", "")
                             .typed<at::Tensor(const at::Tensor&, const OptTensor&)>();
  return op.call(mag, mask);
}

// u = U(ω, √V)  [B, K], by the device's bp_upfield kernel.
at::Tensor upfield(const at::Tensor& omega, const at::Tensor& var) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("bpkernels::bp_upfield", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(omega, var);
}

// ω = x̂ mᵀ and V = x̂² σᵀ + Δ (m² + σ)ᵀ + ε.
std::tuple<at::Tensor, at::Tensor> moments(const at::Tensor& x_hat, const OptTensor& delta,
                                           const at::Tensor& mag, const at::Tensor& sigma) {
  at::Tensor omega = at::mm(x_hat, mag.t());
  at::Tensor var = at::mm(x_hat.square(), sigma.t());
  if (delta) var.addmm_(*delta, (mag.square() + sigma).t());
  var.add_(kVarEps);
  return {omega, var};
}

// ω = x̂ mᵀ,  V = x̂² σᵀ + Δ (m² + σ)ᵀ + ε,  u = U(ω, √V),  σ = (1 − m²)·mask.
//   x_hat [B, N], delta [B, N] or None (Δ = 0), mag [K, N], mask [K, N] or None -> 3 × [B, K].
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_fwd(const at::Tensor& x_hat,
                                                          const OptTensor& delta,
                                                          const at::Tensor& mag,
                                                          const OptTensor& mask) {
  check_linear_fwd("bp_linear_fwd", x_hat, delta, mag, mask);
  auto [omega, var] = moments(x_hat, delta, mag, weight_var(mag, mask));
  at::Tensor u = upfield(omega, var);
  return {omega, var, u};
}

// AMP forward with Onsager terms (docs/algorithms.md §4.4):
//   ω = x̂ mᵀ − g_old ⊙ [(x̂ ⊙ x̂_old) σᵀ] − g_old ⊙ [Δ (m ⊙ m_old)ᵀ]
//       + g_old² ⊙ [(x̂_old ⊙ Δ)(σ ⊙ m_old)ᵀ];   V, u as linear_fwd.
//   g_old [B, K], x_hat_old [B, N], mag_old [K, N].
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_fwd_amp(
    const at::Tensor& x_hat, const OptTensor& delta, const at::Tensor& mag,
    const OptTensor& mask, const at::Tensor& g_old, const at::Tensor& x_hat_old,
    const at::Tensor& mag_old) {
  check_linear_fwd_amp(x_hat, delta, mag, mask, g_old, x_hat_old, mag_old);
  const at::Tensor sigma = weight_var(mag, mask);
  auto [omega, var] = moments(x_hat, delta, mag, sigma);
  omega.sub_(g_old * at::mm(x_hat * x_hat_old, sigma.t()));
  if (delta) {
    omega.sub_(g_old * at::mm(*delta, (mag * mag_old).t()));
    omega.add_(g_old.square() * at::mm(x_hat_old * *delta, (sigma * mag_old).t()));
  }
  at::Tensor u = upfield(omega, var);
  return {omega, var, u};
}

// MF backward:  b = g m  [B, N] ([B, 0] unless compute_b),  H_in = gᵀ x̂  [K, N].
//   g [B, K], x_hat [B, N], mag [K, N].
std::tuple<at::Tensor, at::Tensor> linear_bwd_mf(const at::Tensor& g, const at::Tensor& x_hat,
                                                 const at::Tensor& mag, bool compute_b) {
  const LayerDims d = check_linear_bwd_mf(g, x_hat, mag);
  at::Tensor b = compute_b ? at::mm(g, mag) : x_hat.new_empty({d.B, 0});
  return {b, at::mm(g.t(), x_hat)};
}

// AMP backward (docs/algorithms.md §4.4), σ = (1 − m²)·mask:
//   b    = g m + x̂ ⊙ (Γ m²) − x̂_old ⊙ ((g ⊙ g_old) σ) − x̂ ⊙ x̂_old ⊙ ((g_old ⊙ Γ)(σ ⊙ m))
//   H_in = gᵀ x̂ + m ⊙ (Γᵀ x̂²) − m_old ⊙ ((g ⊙ g_old)ᵀ Δ) − m ⊙ m_old ⊙ ((g_old ⊙ Γ)ᵀ (Δ ⊙ x̂))
// The old-state terms are dropped when g_old is None (first inner iteration).
std::tuple<at::Tensor, at::Tensor> linear_bwd_amp(
    const at::Tensor& g, const at::Tensor& gamma, const at::Tensor& x_hat,
    const OptTensor& delta, const at::Tensor& mag, const OptTensor& mask,
    const OptTensor& g_old, const OptTensor& x_hat_old, const OptTensor& mag_old,
    bool compute_b) {
  const LayerDims d =
      check_linear_bwd_amp(g, gamma, x_hat, delta, mag, mask, g_old, x_hat_old, mag_old);
  at::Tensor h_in = at::mm(g.t(), x_hat).addcmul_(mag, at::mm(gamma.t(), x_hat.square()));
  at::Tensor b = x_hat.new_empty({d.B, 0});
  if (compute_b) b = at::mm(g, mag).addcmul_(x_hat, at::mm(gamma, mag.square()));
  if (g_old) {
    const at::Tensor gg_old = g * *g_old;
    const at::Tensor gold_gamma = *g_old * gamma;
    if (delta) {
      h_in.sub_(*mag_old * at::mm(gg_old.t(), *delta));
      h_in.sub_(mag * *mag_old * at::mm(gold_gamma.t(), *delta * x_hat));
    }
    if (compute_b) {
      const at::Tensor sigma = weight_var(mag, mask);
      b.sub_(*x_hat_old * at::mm(gg_old, sigma));
      b.sub_(x_hat * *x_hat_old * at::mm(gold_gamma, sigma * mag));
    }
  }
  return {b, h_in};
}

// Bayesian moment propagation (docs/algorithms.md §6): ω, V as linear_fwd, x̂ = erf(ω/√(2V)), Δ = 1 − x̂².
std::tuple<at::Tensor, at::Tensor> bayes_fwd(const at::Tensor& x_hat, const OptTensor& delta,
                                             const at::Tensor& mag, const OptTensor& mask) {
  check_linear_fwd("bp_bayes_fwd", x_hat, delta, mag, mask);
  auto [omega, var] = moments(x_hat, delta, mag, weight_var(mag, mask));
  at::Tensor x_out = at::erf(omega * var.mul_(2.0).rsqrt_());
  at::Tensor delta_out = 1.0 - x_out.square();
  return {x_out, delta_out};
}

}  // namespace
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CompositeExplicitAutograd, m) {
  m.impl("bp_linear_fwd", &bpk::linear_fwd);
  m.impl("bp_linear_fwd_amp", &bpk::linear_fwd_amp);
  m.impl("bp_linear_bwd_mf", &bpk::linear_bwd_mf);
  m.impl("bp_linear_bwd_amp", &bpk::linear_bwd_amp);
  m.impl("bp_bayes_fwd", &bpk::bayes_fwd);
}

// ---- Gaussian (continuous) weight family (docs/algorithms.md §4.7) ---------------------------

namespace bpk {
namespace {

// ω = x̂ mᵀ,  V = x̂² σᵀ + Δ (m² + σ)ᵀ + ε,  u = U(ω, √V),  σ = 1/Ω (Gaussian weights).
//   x_hat [B, N], delta [B, N] or None (Δ = 0), mag [K, N], precision [K, N] -> 3 × [B, K].
std::tuple<at::Tensor, at::Tensor, at::Tensor> gauss_linear_fwd(const at::Tensor& x_hat,
                                                                const OptTensor& delta,
                                                                const at::Tensor& mag,
                                                                const at::Tensor& precision) {
  check_gauss_linear_fwd(x_hat, delta, mag, precision);
  auto [omega, var] = moments(x_hat, delta, mag, at::reciprocal(precision));
  at::Tensor u = upfield(omega, var);
  return {omega, var, u};
}

}  // namespace
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CompositeExplicitAutograd, m) {
  m.impl("gauss_linear_fwd", &bpk::gauss_linear_fwd);
}
