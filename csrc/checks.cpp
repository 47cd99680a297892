#include "checks.h"

namespace bpk {
namespace {

// x_hat [B, N] with B > 0, mag [K, N], delta [B, N] (optional), mask [K, N] (optional).
LayerDims check_layer(const ArgChecker& check, const at::Tensor& x_hat,
                      const std::optional<at::Tensor>& delta, const at::Tensor& mag,
                      const std::optional<at::Tensor>& mask) {
  check(x_hat, "x_hat", {kAny, kAny}, "[B, N]");
  const int64_t B = x_hat.size(0), N = x_hat.size(1);
  TORCH_CHECK(B > 0, check.op(), ": the batch is empty (x_hat has B = 0 rows)");
  check(mag, "mag", {kAny, N}, "[K, N]");
  const int64_t K = mag.size(0);
  if (mask) check(*mask, "mask", {K, N}, "[K, N]");
  if (delta) check(*delta, "delta", {B, N}, "[B, N]");
  return {B, N, K};
}

// x_in [B, N] with B > 0, mag_cav [K, N, B], b_cav [K, N, B] (optional).
LayerDims check_cavity_state(const ArgChecker& check, const at::Tensor& x_in,
                             const std::optional<at::Tensor>& b_cav, const at::Tensor& mag_cav) {
  check(x_in, "x_in", {kAny, kAny}, "[B, N]");
  const int64_t B = x_in.size(0), N = x_in.size(1);
  TORCH_CHECK(B > 0, check.op(), ": the batch is empty (x_in has B = 0 rows)");
  check(mag_cav, "mag_cav", {kAny, N, B}, "[K, N, B]");
  const int64_t K = mag_cav.size(0);
  if (b_cav) check(*b_cav, "b_cav", {K, N, B}, "[K, N, B]");
  return {B, N, K};
}

// The per-unit coefficients of a cavity backward: omega, var, b_top [B, K].
void check_unit_messages(const ArgChecker& check, const at::Tensor& b_top,
                         const at::Tensor& omega, const at::Tensor& var, const LayerDims& d) {
  check(omega, "omega", {d.B, d.K}, "[B, K]");
  check(var, "var", {d.B, d.K}, "[B, K]");
  check(b_top, "b_top", {d.B, d.K}, "[B, K]");
}

}  // namespace

void check_linear_input(const at::Tensor& u, const std::optional<at::Tensor>& b) {
  ArgChecker check("bp_linear_input", u, "u");
  check(u, "u", {kAny, kAny}, "[B, N]");
  if (b) check(*b, "b", {u.size(0), u.size(1)}, "[B, N]");
}

LayerDims check_linear_fwd(const char* op, const at::Tensor& x_hat,
                           const std::optional<at::Tensor>& delta, const at::Tensor& mag,
                           const std::optional<at::Tensor>& mask) {
  return check_layer(ArgChecker(op, x_hat, "x_hat"), x_hat, delta, mag, mask);
}

LayerDims check_linear_fwd_amp(const at::Tensor& x_hat, const std::optional<at::Tensor>& delta,
                               const at::Tensor& mag, const std::optional<at::Tensor>& mask,
                               const at::Tensor& g_old, const at::Tensor& x_hat_old,
                               const at::Tensor& mag_old) {
  ArgChecker check("bp_linear_fwd_amp", x_hat, "x_hat");
  const LayerDims d = check_layer(check, x_hat, delta, mag, mask);
  check(g_old, "g_old", {d.B, d.K}, "[B, K]");
  check(x_hat_old, "x_hat_old", {d.B, d.N}, "[B, N]");
  check(mag_old, "mag_old", {d.K, d.N}, "[K, N]");
  return d;
}

void check_upfield(const at::Tensor& omega, const at::Tensor& var) {
  ArgChecker check("bp_upfield", omega, "omega");
  check(omega, "omega", {kAny, kAny}, "[B, K]");
  check(var, "var", {omega.size(0), omega.size(1)}, "[B, K]");
}

void check_output(const at::Tensor& b_top, const at::Tensor& omega, const at::Tensor& var) {
  ArgChecker check("bp_output", omega, "omega");
  check(omega, "omega", {kAny, kAny}, "[B, K]");
  check(var, "var", {omega.size(0), omega.size(1)}, "[B, K]");
  check(b_top, "b_top", {omega.size(0), omega.size(1)}, "[B, K]");
}

void check_argmax_output(const at::Tensor& omega, const at::Tensor& var,
                         const at::Tensor& labels) {
  ArgChecker check("bp_argmax_output", omega, "omega");
  check(omega, "omega", {kAny, kAny}, "[B, K]");
  const int64_t B = omega.size(0), K = omega.size(1);
  check(var, "var", {B, K}, "[B, K]");
  TORCH_CHECK(labels.scalar_type() == at::kLong && labels.dim() == 1 && labels.size(0) == B,
              "bp_argmax_output: labels must be an int64 tensor of shape [B] = [", B, "], got ",
              labels.scalar_type(), " ", labels.sizes());
  TORCH_CHECK(labels.device() == omega.device(),
              "bp_argmax_output: labels must be on device ", omega.device());
}

LayerDims check_linear_bwd_mf(const at::Tensor& g, const at::Tensor& x_hat,
                              const at::Tensor& mag) {
  ArgChecker check("bp_linear_bwd_mf", x_hat, "x_hat");
  const LayerDims d = check_layer(check, x_hat, std::nullopt, mag, std::nullopt);
  check(g, "g", {d.B, d.K}, "[B, K]");
  return d;
}

LayerDims check_linear_bwd_amp(const at::Tensor& g, const at::Tensor& gamma,
                               const at::Tensor& x_hat, const std::optional<at::Tensor>& delta,
                               const at::Tensor& mag, const std::optional<at::Tensor>& mask,
                               const std::optional<at::Tensor>& g_old,
                               const std::optional<at::Tensor>& x_hat_old,
                               const std::optional<at::Tensor>& mag_old) {
  ArgChecker check("bp_linear_bwd_amp", x_hat, "x_hat");
  const LayerDims d = check_layer(check, x_hat, delta, mag, mask);
  check(g, "g", {d.B, d.K}, "[B, K]");
  check(gamma, "gamma", {d.B, d.K}, "[B, K]");
  const bool has_old = g_old.has_value();
  TORCH_CHECK(has_old == x_hat_old.has_value() && has_old == mag_old.has_value(),
              "bp_linear_bwd_amp: g_old, x_hat_old and mag_old must be given together");
  if (has_old) {
    check(*g_old, "g_old", {d.B, d.K}, "[B, K]");
    check(*x_hat_old, "x_hat_old", {d.B, d.N}, "[B, N]");
    check(*mag_old, "mag_old", {d.K, d.N}, "[K, N]");
  }
  return d;
}

LayerDims check_linear_bwd_bpi(const at::Tensor& b_top, const at::Tensor& omega,
                               const at::Tensor& var, const at::Tensor& x_hat,
                               const at::Tensor& mag) {
  ArgChecker check("bp_linear_bwd_bpi", x_hat, "x_hat");
  const LayerDims d = check_layer(check, x_hat, std::nullopt, mag, std::nullopt);
  check_unit_messages(check, b_top, omega, var, d);
  return d;
}

LayerDims check_linear_omega_bp(const at::Tensor& x_in, const std::optional<at::Tensor>& b_cav,
                                const at::Tensor& mag_cav) {
  return check_cavity_state(ArgChecker("bp_linear_omega_bp", x_in, "x_in"), x_in, b_cav, mag_cav);
}

LayerDims check_linear_bwd_bp(const at::Tensor& b_top, const at::Tensor& omega,
                              const at::Tensor& var, const at::Tensor& x_in,
                              const std::optional<at::Tensor>& b_cav, const at::Tensor& mag_cav) {
  ArgChecker check("bp_linear_bwd_bp", x_in, "x_in");
  const LayerDims d = check_cavity_state(check, x_in, b_cav, mag_cav);
  check_unit_messages(check, b_top, omega, var, d);
  return d;
}

LayerDims check_cavity_update(const at::Tensor& mag_cav, const std::optional<at::Tensor>& b_cav,
                              const at::Tensor& b_top, const at::Tensor& omega,
                              const at::Tensor& var, const at::Tensor& x_in,
                              const std::optional<at::Tensor>& b, const at::Tensor& field,
                              const std::optional<at::Tensor>& mask) {
  ArgChecker check("bp_cavity_update_", x_in, "x_in");
  const LayerDims d = check_cavity_state(check, x_in, b_cav, mag_cav);
  check.inplace(mag_cav, "mag_cav", {d.K, d.N, d.B}, "[K, N, B]");
  if (b_cav) check.inplace(*b_cav, "b_cav", {d.K, d.N, d.B}, "[K, N, B]");
  TORCH_CHECK(b_cav.has_value() == b.has_value(),
              "bp_cavity_update_: b_cav and b must be given together (hidden layers) or both "
              "omitted (first layer)");
  if (b) check(*b, "b", {d.B, d.N}, "[B, N]");
  check_unit_messages(check, b_top, omega, var, d);
  check(field, "field", {d.K, d.N}, "[K, N]");
  if (mask) check(*mask, "mask", {d.K, d.N}, "[K, N]");
  return d;
}

void check_field_update(const at::Tensor& field, const at::Tensor& mag, const at::Tensor& h_in,
                        const std::optional<at::Tensor>& field_prior,
                        const std::optional<at::Tensor>& mask) {
  ArgChecker check("bp_field_update_", field, "field");
  check.inplace(field, "field", {kAny, kAny}, "[K, N]");
  const int64_t K = field.size(0), N = field.size(1);
  check.inplace(mag, "mag", {K, N}, "[K, N]");
  check(h_in, "h_in", {K, N}, "[K, N]");
  if (field_prior) check(*field_prior, "field_prior", {K, N}, "[K, N]");
  if (mask) check(*mask, "mask", {K, N}, "[K, N]");
}

void check_weight_var(const at::Tensor& mag, const std::optional<at::Tensor>& mask) {
  ArgChecker check("bp_weight_var", mag, "mag");
  if (mask) check(*mask, "mask", mag.sizes(), "of mag");
}

namespace {

void check_words(const at::Tensor& t, const at::Tensor& x, const char* name, const char* dims) {
  TORCH_CHECK(t.scalar_type() == at::kLong, "xnor_gemm: ", name, " must be int64 words, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 2, "xnor_gemm: ", name, " must have shape ", dims, ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), "xnor_gemm: ", name, " must be on device ", x.device(),
              " like x, got ", t.device());
}

}  // namespace

void check_xnor_gemm(const at::Tensor& x, const at::Tensor& w,
                     const std::optional<at::Tensor>& x_valid,
                     const std::optional<at::Tensor>& w_nonzero, int64_t n) {
  check_words(x, x, "x", "[R, W]");
  check_words(w, x, "w", "[K, W]");
  const int64_t R = x.size(0), W = x.size(1);
  TORCH_CHECK(w.size(1) == W, "xnor_gemm: w must have shape [K, W] with W = ", W,
              " words like x, got ", w.sizes());
  TORCH_CHECK(n >= 0 && n <= 64 * W && n > 64 * (W - 1), "xnor_gemm: n = ", n,
              " bits does not fit W = ", W, " words (need 64·(W−1) < n <= 64·W)");
  TORCH_CHECK(n < (int64_t(1) << 31), "xnor_gemm: n = ", n, " bits overflows the int32 output");
  if (x_valid) {
    check_words(*x_valid, x, "x_valid", "[P, W]");
    TORCH_CHECK(x_valid->size(1) == W && x_valid->size(0) > 0 && R % x_valid->size(0) == 0,
                "xnor_gemm: x_valid must have shape [P, W] with W = ", W, " and P dividing R = ",
                R, ", got ", x_valid->sizes());
  }
  if (w_nonzero) {
    check_words(*w_nonzero, x, "w_nonzero", "[K, W]");
    TORCH_CHECK(w_nonzero->sizes() == w.sizes(), "xnor_gemm: w_nonzero must have the shape of w ",
                w.sizes(), ", got ", w_nonzero->sizes());
  }
}

void check_xnor_im2col(const at::Tensor& z, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                       at::IntArrayRef padding) {
  TORCH_CHECK(z.dim() == 4, "xnor_im2col: z must have shape [B, H, W, C], got ", z.sizes());
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble ||
                  z.scalar_type() == at::kInt,
              "xnor_im2col: z must be float32, float64 or int32, got ", z.scalar_type());
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2,
              "xnor_im2col: kernel_size, stride and padding must be (h, w) pairs");
  const int64_t H = z.size(1), Wd = z.size(2), C = z.size(3);
  const int64_t kh = kernel_size[0], kw = kernel_size[1], ph = padding[0], pw = padding[1];
  TORCH_CHECK(kh >= 1 && kw >= 1 && stride[0] >= 1 && stride[1] >= 1 && ph >= 0 && pw >= 0,
              "xnor_im2col: need kernel_size >= 1, stride >= 1, padding >= 0, got ", kernel_size,
              ", ", stride, ", ", padding);
  TORCH_CHECK(C >= 1 && H + 2 * ph >= kh && Wd + 2 * pw >= kw, "xnor_im2col: the ", kh, "×", kw,
              " kernel does not fit the padded ", H, "×", Wd, " input with ", C, " channels");
}

// ---- Gaussian (continuous) weight family -----------------------------------------------------

LayerDims check_gauss_linear_fwd(const at::Tensor& x_hat, const std::optional<at::Tensor>& delta,
                                 const at::Tensor& mag, const at::Tensor& precision) {
  ArgChecker check("gauss_linear_fwd", x_hat, "x_hat");
  const LayerDims d = check_layer(check, x_hat, delta, mag, std::nullopt);
  check(precision, "precision", {d.K, d.N}, "[K, N]");
  return d;
}

LayerDims check_gauss_linear_bwd_cbpi(const at::Tensor& b_top, const at::Tensor& omega,
                                      const at::Tensor& var, const at::Tensor& x_hat,
                                      const std::optional<at::Tensor>& delta,
                                      const at::Tensor& mag) {
  ArgChecker check("gauss_linear_bwd_cbpi", x_hat, "x_hat");
  const LayerDims d = check_layer(check, x_hat, delta, mag, std::nullopt);
  check_unit_messages(check, b_top, omega, var, d);
  return d;
}

void check_gauss_field_update(const at::Tensor& field, const at::Tensor& precision,
                              const at::Tensor& mag, const at::Tensor& h_in,
                              const at::Tensor& omega_in,
                              const std::optional<at::Tensor>& field_prior,
                              const std::optional<at::Tensor>& precision_prior) {
  ArgChecker check("gauss_field_update_", field, "field");
  check.inplace(field, "field", {kAny, kAny}, "[K, N]");
  const int64_t K = field.size(0), N = field.size(1);
  check.inplace(precision, "precision", {K, N}, "[K, N]");
  check.inplace(mag, "mag", {K, N}, "[K, N]");
  check(h_in, "h_in", {K, N}, "[K, N]");
  check(omega_in, "omega_in", {K, N}, "[K, N]");
  TORCH_CHECK(field_prior.has_value() == precision_prior.has_value(),
              "gauss_field_update_: field_prior and precision_prior must be given together "
              "(a fixed prior (H, Ω)) or both be None (PasP: the prior is the current (H, Ω))");
  if (field_prior) check(*field_prior, "field_prior", {K, N}, "[K, N]");
  if (precision_prior) check(*precision_prior, "precision_prior", {K, N}, "[K, N]");
}

}  // namespace bpk
