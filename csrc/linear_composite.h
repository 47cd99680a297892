// Device-generic operators built from ATen matrix products (cuBLAS / MKL) plus one
// device-specific element-wise epilogue. The CPU and the CUDA backends register these same
// functions, each passing its own epilogue.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace bpk {

// Forward epilogue of one device: var += ε in place and u = U(ω, √var).
//   omega [B, K], var [B, K] (in/out), u [B, K] (out).
using FwdEpilogue = void (*)(const at::Tensor& omega, at::Tensor& var, at::Tensor& u);

// ω = x̂ mᵀ,  V = x̂² σᵀ + Δ (m² + σ)ᵀ + ε,  u = U(ω, √V).
//   x_hat [B, N], delta [B, N] or None (Δ = 0), mag [K, N], sigma [K, N] -> 3 × [B, K].
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_fwd(const at::Tensor& x_hat,
                                                          const std::optional<at::Tensor>& delta,
                                                          const at::Tensor& mag,
                                                          const at::Tensor& sigma,
                                                          FwdEpilogue epilogue);

// AMP forward with Onsager terms:  ω = x̂ mᵀ − g_old ⊙ [(x̂ ⊙ x̂_old) σᵀ] − g_old ⊙ [Δ (m ⊙ m_old)ᵀ]
//   + g_old² ⊙ [(x̂_old ⊙ Δ)(σ ⊙ m_old)ᵀ];  V, u as linear_fwd.
//   g_old [B, K], x_hat_old [B, N], mag_old [K, N].
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_fwd_amp(
    const at::Tensor& x_hat, const std::optional<at::Tensor>& delta, const at::Tensor& mag,
    const at::Tensor& sigma, const at::Tensor& g_old, const at::Tensor& x_hat_old,
    const at::Tensor& mag_old, FwdEpilogue epilogue);

// MF backward:  b = g m  [B, N],  H_in = gᵀ x̂  [K, N].  g [B, K], x_hat [B, N], mag [K, N].
std::tuple<at::Tensor, at::Tensor> linear_bwd_mf(const at::Tensor& g, const at::Tensor& x_hat,
                                                 const at::Tensor& mag, bool compute_b);

// AMP backward (spec §4.4):
//   b    = g m + x̂ ⊙ (Γ m²) − x̂_old ⊙ ((g ⊙ g_old) σ) − x̂ ⊙ x̂_old ⊙ ((g_old ⊙ Γ)(σ ⊙ m))
//   H_in = gᵀ x̂ + m ⊙ (Γᵀ x̂²) − m_old ⊙ ((g ⊙ g_old)ᵀ Δ) − m ⊙ m_old ⊙ ((g_old ⊙ Γ)ᵀ (Δ ⊙ x̂))
// The old-state terms are dropped when g_old is None (first inner iteration).
std::tuple<at::Tensor, at::Tensor> linear_bwd_amp(
    const at::Tensor& g, const at::Tensor& gamma, const at::Tensor& x_hat,
    const std::optional<at::Tensor>& delta, const at::Tensor& mag, const at::Tensor& sigma,
    const std::optional<at::Tensor>& g_old, const std::optional<at::Tensor>& x_hat_old,
    const std::optional<at::Tensor>& mag_old, bool compute_b);

// Bayesian moment propagation (spec §6): ω, V as linear_fwd, x̂ = erf(ω/√(2V)), Δ = 1 − x̂².
std::tuple<at::Tensor, at::Tensor> bayes_fwd(const at::Tensor& x_hat,
                                             const std::optional<at::Tensor>& delta,
                                             const at::Tensor& mag, const at::Tensor& sigma);

}  // namespace bpk
