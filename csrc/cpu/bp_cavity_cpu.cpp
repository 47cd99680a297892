// CPU kernels of relaxed BP with τ_max > 1 (docs/algorithms.md §4.3) in the minimal state of docs/algorithms.md §8.3:
// the per-edge cavity state is only m̃ and b̃ ([K, N, B], batch innermost); x̃, ω̃, ĝ and H̃
// are recomputed in registers by each pass. (At τ_max = 1 BP is BPI and uses the BPI kernel.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "bpkernels/binary_bp.h"
#include "checks.h"
#include "cpu/coef_rows.h"

namespace bpk {
namespace {

// ω[a,k] = Σ_i m̃[k,i,a] x̃[k,i,a]
at::Tensor omega_bp_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& b_cav,
                        const at::Tensor& mag_cav) {
  const LayerDims d = check_linear_omega_bp(x_in, b_cav, mag_cav);
  const int64_t B = d.B, N = d.N, K = d.K;
  const at::Tensor x_t = x_in.t().contiguous(), mc = mag_cav.contiguous();
  const at::Tensor bc = b_cav ? b_cav->contiguous() : at::Tensor();
  at::Tensor omega_t = at::zeros({K, B}, x_in.options());
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "bp_linear_omega_bp", [&] {
    const scalar_t* px = x_t.const_data_ptr<scalar_t>();
    const scalar_t* pm = mc.const_data_ptr<scalar_t>();
    const scalar_t* pb = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* po = omega_t.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        scalar_t* om = po + k * B;
        for (int64_t i = 0; i < N; ++i) {
          const int64_t row = (k * N + i) * B;
          const scalar_t* x = px + i * B;
          for (int64_t a = 0; a < B; ++a) om[a] += pm[row + a] * cavity_input(x[a], pb, row + a);
        }
      }
    });
  });
  return omega_t.t().contiguous();
}

// ĝ[k,i,a] = g(b_top[a,k], ω[a,k] − m̃ x̃, s[a,k]);  b[a,i] = Σ_k m̃ ĝ;  H_in[k,i] = Σ_a ĝ x̃.
// Threads own tiles of inputs i (race-free, deterministic), as in the BPI kernel.
std::tuple<at::Tensor, at::Tensor> linear_bwd_bp_cpu(const at::Tensor& b_top,
                                                     const at::Tensor& omega,
                                                     const at::Tensor& var,
                                                     const at::Tensor& x_in,
                                                     const std::optional<at::Tensor>& b_cav,
                                                     const at::Tensor& mag_cav, bool hard,
                                                     bool compute_b) {
  const LayerDims d = check_linear_bwd_bp(b_top, omega, var, x_in, b_cav, mag_cav);
  const int64_t B = d.B, N = d.N, K = d.K;
  const at::Tensor x_t = x_in.t().contiguous(), mc = mag_cav.contiguous();
  const at::Tensor bc = b_cav ? b_cav->contiguous() : at::Tensor();
  const at::Tensor btc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor h_in = at::empty({K, N}, x_in.options());
  at::Tensor b_t = at::zeros({compute_b ? N : 0, B}, x_in.options());
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "bp_linear_bwd_bp", [&] {
    const CoefRows<scalar_t> rows =
        make_coef_rows(btc.const_data_ptr<scalar_t>(), oc.const_data_ptr<scalar_t>(),
                       vc.const_data_ptr<scalar_t>(), B, K, hard);
    const scalar_t* px = x_t.const_data_ptr<scalar_t>();
    const scalar_t* pm = mc.const_data_ptr<scalar_t>();
    const scalar_t* pb = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* ph = h_in.mutable_data_ptr<scalar_t>();
    scalar_t* pbt = compute_b ? b_t.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, N, 4, [&](int64_t i0, int64_t i1) {
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t row = (k * N + i) * B;
          const scalar_t* x = px + i * B;
          scalar_t acc = 0;
          for (int64_t a = 0; a < B; ++a) {
            const OutputCoef<scalar_t> coef{rows.alpha[k * B + a], rows.c[k * B + a],
                                            rows.num[k * B + a]};
            const scalar_t m = pm[row + a];
            const scalar_t xc = cavity_input(x[a], pb, row + a);
            const scalar_t omega_cav = cavity_omega(rows.omega[k * B + a], m, xc);
            const scalar_t g_cav = output_g(coef, omega_cav);
            acc += g_cav * xc;
            if (pbt) pbt[i * B + a] += m * g_cav;
          }
          ph[k * N + i] = acc;
        }
      }
    });
  });
  at::Tensor b = compute_b ? b_t.t().contiguous() : x_in.new_empty({B, 0});
  return {b, h_in};
}

// After the field update of the same inner iteration (H already holds the new field):
//   b̃[k,i,a] ← b[a,i] − m̃ ĝ,   H̃ = H[k,i] − ĝ x̃,   m̃ ← ψ m̃ + (1 − ψ) tanh(H̃) · mask[k,i],
// with x̃ and ĝ recomputed from the state before this update (old b̃ and m̃).
void cavity_update_cpu(at::Tensor& mag_cav, const std::optional<at::Tensor>& b_cav,
                       const at::Tensor& b_top, const at::Tensor& omega, const at::Tensor& var,
                       const at::Tensor& x_in, const std::optional<at::Tensor>& b,
                       const at::Tensor& field, const std::optional<at::Tensor>& mask,
                       double psi, bool hard) {
  const LayerDims d =
      check_cavity_update(mag_cav, b_cav, b_top, omega, var, x_in, b, field, mask);
  const int64_t B = d.B, N = d.N, K = d.K;
  const at::Tensor x_t = x_in.t().contiguous();
  const at::Tensor b_t = b ? b->t().contiguous() : at::Tensor();
  const at::Tensor btc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  const at::Tensor fc = field.contiguous();
  const at::Tensor mkc = mask ? mask->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "bp_cavity_update_", [&] {
    const CoefRows<scalar_t> rows =
        make_coef_rows(btc.const_data_ptr<scalar_t>(), oc.const_data_ptr<scalar_t>(),
                       vc.const_data_ptr<scalar_t>(), B, K, hard);
    const scalar_t* px = x_t.const_data_ptr<scalar_t>();
    const scalar_t* pbsum = b_t.defined() ? b_t.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pH = fc.const_data_ptr<scalar_t>();
    const scalar_t* pk = mkc.defined() ? mkc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* pm = mag_cav.mutable_data_ptr<scalar_t>();
    scalar_t* pb = b_cav ? b_cav->mutable_data_ptr<scalar_t>() : nullptr;
    const scalar_t psi_t = psi;
    at::parallel_for(0, K * N, 8, [&](int64_t e0, int64_t e1) {
      for (int64_t ki = e0; ki < e1; ++ki) {
        const int64_t k = ki / N, i = ki % N, row = ki * B;
        const scalar_t* x = px + i * B;
        const scalar_t H = pH[ki], msk = pk ? pk[ki] : scalar_t(1);
        for (int64_t a = 0; a < B; ++a) {
          const OutputCoef<scalar_t> coef{rows.alpha[k * B + a], rows.c[k * B + a],
                                          rows.num[k * B + a]};
          const scalar_t m = pm[row + a];
          const scalar_t xc = cavity_input(x[a], pb, row + a);
          const scalar_t g_cav = output_g(coef, cavity_omega(rows.omega[k * B + a], m, xc));
          if (pb) pb[row + a] = pbsum[i * B + a] - m * g_cav;
          pm[row + a] = cavity_mag_update(m, H, g_cav, xc, msk, psi_t);
        }
      }
    });
  });
}

}  // namespace
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CPU, m) {
  m.impl("bp_linear_omega_bp", &bpk::omega_bp_cpu);
  m.impl("bp_linear_bwd_bp", &bpk::linear_bwd_bp_cpu);
  m.impl("bp_cavity_update_", &bpk::cavity_update_cpu);
}
