#include "linear_composite.h"

#include "bpkernels/binary_bp.h"
#include "checks.h"

namespace bpk {
namespace {

// Shared validation of the forward operands; returns (B, N, K).
std::tuple<int64_t, int64_t, int64_t> check_fwd_args(const ArgChecker& check,
                                                     const at::Tensor& x_hat,
                                                     const std::optional<at::Tensor>& delta,
                                                     const at::Tensor& mag,
                                                     const at::Tensor& sigma) {
  check(x_hat, "x_hat", {kAny, kAny}, "[B, N]");
  const int64_t B = x_hat.size(0), N = x_hat.size(1);
  TORCH_CHECK(B > 0, check.op(), ": the batch is empty (x_hat has B = 0 rows)");
  check(mag, "mag", {kAny, N}, "[K, N]");
  const int64_t K = mag.size(0);
  check(sigma, "sigma", {K, N}, "[K, N]");
  if (delta) check(*delta, "delta", {B, N}, "[B, N]");
  return {B, N, K};
}

// ω = x̂ mᵀ and V = x̂² σᵀ + Δ (m² + σ)ᵀ (without ε).
std::tuple<at::Tensor, at::Tensor> moments(const at::Tensor& x_hat,
                                           const std::optional<at::Tensor>& delta,
                                           const at::Tensor& mag, const at::Tensor& sigma) {
  at::Tensor omega = at::mm(x_hat, mag.t());
  at::Tensor var = at::mm(x_hat.square(), sigma.t());
  if (delta) var.addmm_(*delta, (mag.square() + sigma).t());
  return {omega, var};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_fwd(const at::Tensor& x_hat,
                                                          const std::optional<at::Tensor>& delta,
                                                          const at::Tensor& mag,
                                                          const at::Tensor& sigma,
                                                          FwdEpilogue epilogue) {
  ArgChecker check("bp_linear_fwd", x_hat, "x_hat");
  check_fwd_args(check, x_hat, delta, mag, sigma);
  auto [omega, var] = moments(x_hat, delta, mag, sigma);
  at::Tensor u = at::empty_like(omega);
  epilogue(omega, var, u);
  return {omega, var, u};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_fwd_amp(
    const at::Tensor& x_hat, const std::optional<at::Tensor>& delta, const at::Tensor& mag,
    const at::Tensor& sigma, const at::Tensor& g_old, const at::Tensor& x_hat_old,
    const at::Tensor& mag_old, FwdEpilogue epilogue) {
  ArgChecker check("bp_linear_fwd_amp", x_hat, "x_hat");
  auto [B, N, K] = check_fwd_args(check, x_hat, delta, mag, sigma);
  check(g_old, "g_old", {B, K}, "[B, K]");
  check(x_hat_old, "x_hat_old", {B, N}, "[B, N]");
  check(mag_old, "mag_old", {K, N}, "[K, N]");
  auto [omega, var] = moments(x_hat, delta, mag, sigma);
  // ω −= g_old ⊙ [(x̂ ⊙ x̂_old) σᵀ]
  omega.sub_(g_old * at::mm(x_hat * x_hat_old, sigma.t()));
  if (delta) {
    // ω −= g_old ⊙ [Δ (m ⊙ m_old)ᵀ];  ω += g_old² ⊙ [(x̂_old ⊙ Δ)(σ ⊙ m_old)ᵀ]
    omega.sub_(g_old * at::mm(*delta, (mag * mag_old).t()));
    omega.add_(g_old.square() * at::mm(x_hat_old * *delta, (sigma * mag_old).t()));
  }
  at::Tensor u = at::empty_like(omega);
  epilogue(omega, var, u);
  return {omega, var, u};
}

std::tuple<at::Tensor, at::Tensor> linear_bwd_mf(const at::Tensor& g, const at::Tensor& x_hat,
                                                 const at::Tensor& mag, bool compute_b) {
  ArgChecker check("bp_linear_bwd_mf", x_hat, "x_hat");
  check(x_hat, "x_hat", {kAny, kAny}, "[B, N]");
  const int64_t B = x_hat.size(0), N = x_hat.size(1);
  TORCH_CHECK(B > 0, "bp_linear_bwd_mf: the batch is empty (x_hat has B = 0 rows)");
  check(mag, "mag", {kAny, N}, "[K, N]");
  check(g, "g", {B, mag.size(0)}, "[B, K]");
  at::Tensor b = compute_b ? at::mm(g, mag) : x_hat.new_empty({B, 0});
  return {b, at::mm(g.t(), x_hat)};
}

std::tuple<at::Tensor, at::Tensor> linear_bwd_amp(
    const at::Tensor& g, const at::Tensor& gamma, const at::Tensor& x_hat,
    const std::optional<at::Tensor>& delta, const at::Tensor& mag, const at::Tensor& sigma,
    const std::optional<at::Tensor>& g_old, const std::optional<at::Tensor>& x_hat_old,
    const std::optional<at::Tensor>& mag_old, bool compute_b) {
  ArgChecker check("bp_linear_bwd_amp", x_hat, "x_hat");
  auto [B, N, K] = check_fwd_args(check, x_hat, delta, mag, sigma);
  check(g, "g", {B, K}, "[B, K]");
  check(gamma, "gamma", {B, K}, "[B, K]");
  const bool has_old = g_old.has_value();
  TORCH_CHECK(has_old == x_hat_old.has_value() && has_old == mag_old.has_value(),
              "bp_linear_bwd_amp: g_old, x_hat_old and mag_old must be given together");
  if (has_old) {
    check(*g_old, "g_old", {B, K}, "[B, K]");
    check(*x_hat_old, "x_hat_old", {B, N}, "[B, N]");
    check(*mag_old, "mag_old", {K, N}, "[K, N]");
  }
  // H_in = gᵀ x̂ + m ⊙ (Γᵀ x̂²)
  at::Tensor h_in = at::mm(g.t(), x_hat).addcmul_(mag, at::mm(gamma.t(), x_hat.square()));
  at::Tensor b = x_hat.new_empty({B, 0});
  if (compute_b) {
    // b = g m + x̂ ⊙ (Γ m²)
    b = at::mm(g, mag).addcmul_(x_hat, at::mm(gamma, mag.square()));
  }
  if (has_old) {
    const at::Tensor gg_old = g * *g_old;
    const at::Tensor gold_gamma = *g_old * gamma;
    if (delta) {
      // H_in −= m_old ⊙ ((g ⊙ g_old)ᵀ Δ) + m ⊙ m_old ⊙ ((g_old ⊙ Γ)ᵀ (Δ ⊙ x̂))
      h_in.sub_(*mag_old * at::mm(gg_old.t(), *delta));
      h_in.sub_(mag * *mag_old * at::mm(gold_gamma.t(), *delta * x_hat));
    }
    if (compute_b) {
      // b −= x̂_old ⊙ ((g ⊙ g_old) σ) + x̂ ⊙ x̂_old ⊙ ((g_old ⊙ Γ)(σ ⊙ m))
      b.sub_(*x_hat_old * at::mm(gg_old, sigma));
      b.sub_(x_hat * *x_hat_old * at::mm(gold_gamma, sigma * mag));
    }
  }
  return {b, h_in};
}

std::tuple<at::Tensor, at::Tensor> bayes_fwd(const at::Tensor& x_hat,
                                             const std::optional<at::Tensor>& delta,
                                             const at::Tensor& mag, const at::Tensor& sigma) {
  ArgChecker check("bp_bayes_fwd", x_hat, "x_hat");
  check_fwd_args(check, x_hat, delta, mag, sigma);
  auto [omega, var] = moments(x_hat, delta, mag, sigma);
  // x̂ = erf(ω / √(2(V + ε))),  Δ = 1 − x̂²
  at::Tensor x_out = at::erf(omega * (var.add_(kVarEps).mul_(2.0)).rsqrt_());
  at::Tensor delta_out = 1.0 - x_out.square();
  return {x_out, delta_out};
}

}  // namespace bpk
