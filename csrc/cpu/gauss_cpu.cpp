// CPU kernels of the Gaussian (continuous) weight family, continuous-weight BPI
// (docs/algorithms.md §4.7): the fused cavity backward, which computes b, H_in and the precision
// message Ω_in in one pass over the weights (no K×N×B tensor), and the field / precision /
// damping update. The forward (gauss_linear_fwd) is a composite of matrix products
// (csrc/linear_composite.cpp). The maths is bpkernels/binary_bp.h and bpkernels/gaussian_bp.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "bpkernels/binary_bp.h"
#include "bpkernels/gaussian_bp.h"
#include "checks.h"
#include "cpu/cavity_loop.h"
#include "cpu/coef_rows.h"
#include "cpu/isa.h"

namespace bpk {
namespace {

// ---- fused continuous-weight BPI backward ---------------------------------------------------
//
// H_in, b and the precision message Ω_in[k,i] = Σ_a [(x̂² + Δ)[a,i] Γ[a,k] − Δ[a,i] g[a,k]²]
// (g, Γ non-cavity) in one pass over the weights: BPI's loop with one more accumulator
// (cpu/cavity_loop.h).

// Per-(unit, sample) rows [K, B] of the non-cavity Γ (non-finite -> 0) and g².
template <typename T>
struct PrecisionRows {
  std::vector<T> gamma, g2;
};

template <typename T>
PrecisionRows<T> make_precision_rows(const CoefRows<T>& rows, const T* var, int64_t B, int64_t K,
                                     bool hard) {
  PrecisionRows<T> p{std::vector<T>(K * B), std::vector<T>(K * B)};
  at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t a = 0; a < B; ++a) {
        const int64_t e = k * B + a;
        const T omega = rows.omega[e];
        const T c = hard ? -std::numeric_limits<T>::infinity() : rows.c[e];
        T g;
        p.gamma[e] = precision_curvature(rows.alpha[e], c, rows.num[e], omega, var[a * K + k], g);
        p.g2[e] = g * g;
      }
    }
  });
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gauss_linear_bwd_cbpi_cpu(
    const at::Tensor& b_top, const at::Tensor& omega, const at::Tensor& var,
    const at::Tensor& x_hat, const std::optional<at::Tensor>& delta, const at::Tensor& mag,
    bool hard, bool compute_b) {
  const LayerDims d = check_gauss_linear_bwd_cbpi(b_top, omega, var, x_hat, delta, mag);
  const int64_t B = d.B, N = d.N, K = d.K;

  const at::Tensor x_t = x_hat.t().contiguous();
  // Δ = 0 for the first layer (delta = None).
  const at::Tensor d_t = delta ? delta->t().contiguous() : at::zeros_like(x_t);
  const at::Tensor xx_t = x_t.square() + d_t;
  const at::Tensor mc = mag.contiguous();
  const at::Tensor bc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor h_in = at::empty({K, N}, x_hat.options());
  at::Tensor omega_in = at::empty({K, N}, x_hat.options());
  at::Tensor b_t = compute_b ? at::zeros({N, B}, x_hat.options()) : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES(x_hat.scalar_type(), "gauss_linear_bwd_cbpi", [&] {
    const scalar_t* pv = vc.const_data_ptr<scalar_t>();
    const CoefRows<scalar_t> rows = make_coef_rows(bc.const_data_ptr<scalar_t>(),
                                                   oc.const_data_ptr<scalar_t>(), pv, B, K, hard);
    const PrecisionRows<scalar_t> prec = make_precision_rows(rows, pv, B, K, hard);
    const scalar_t* px = x_t.const_data_ptr<scalar_t>();
    const scalar_t* pxx = xx_t.const_data_ptr<scalar_t>();
    const scalar_t* pd = d_t.const_data_ptr<scalar_t>();
    const scalar_t* pm = mc.const_data_ptr<scalar_t>();
    scalar_t* ph = h_in.mutable_data_ptr<scalar_t>();
    scalar_t* pw = omega_in.mutable_data_ptr<scalar_t>();
    scalar_t* pb = compute_b ? b_t.mutable_data_ptr<scalar_t>() : nullptr;
    const PrecisionTerms<scalar_t> terms{prec.gamma.data(), prec.g2.data(), pxx, pd, pw};
    cavity_backward<scalar_t, true>(hard, compute_b, K, N, B, rows, px, pm, pb, ph, terms);
  });
  at::Tensor b = compute_b ? b_t.t().contiguous() : x_hat.new_empty({B, 0});
  return {b, h_in, omega_in};
}

// ---- field / precision / damping update -----------------------------------------------------
//
//   Ω ← max(10⁻⁶, Ω_in + rΩ + ρΩ_prior),  H ← H_in + rH + ρH_prior,  m ← ψm + (1 − ψ)H/Ω;
//   returns δ = mean |m_new − m_old| (0-dim), summed over fixed chunks in a fixed order.
// Priors None mean the current (H, Ω) (the PasP prior of the first inner iteration).

template <typename T>
BPK_ALWAYS_INLINE double gauss_update_chunk(int64_t e0, int64_t e1, T* field, T* precision,
                                            T* mag, const T* h_in, const T* omega_in,
                                            const T* field_prior, const T* precision_prior,
                                            T rho, T r, T psi) {
  double change = 0;
#pragma omp simd reduction(+ : change)
  for (int64_t e = e0; e < e1; ++e) {
    T H = field[e], P = precision[e];
    const T m_new = gaussian_field_update(H, P, h_in[e], omega_in[e], field_prior[e],
                                          precision_prior[e], mag[e], rho, r, psi);
    change += std::fabs(static_cast<double>(m_new - mag[e]));
    field[e] = H;
    precision[e] = P;
    mag[e] = m_new;
  }
  return change;
}

at::Tensor gauss_field_update_cpu(at::Tensor& field, at::Tensor& precision, at::Tensor& mag,
                                  const at::Tensor& h_in, const at::Tensor& omega_in,
                                  const std::optional<at::Tensor>& field_prior,
                                  const std::optional<at::Tensor>& precision_prior, double rho,
                                  double r, double psi) {
  check_gauss_field_update(field, precision, mag, h_in, omega_in, field_prior, precision_prior);
  const at::Tensor hc = h_in.contiguous(), wc = omega_in.contiguous();
  const at::Tensor fpc = field_prior ? field_prior->contiguous() : at::Tensor();
  const at::Tensor ppc = precision_prior ? precision_prior->contiguous() : at::Tensor();
  const int64_t numel = field.numel();
  constexpr int64_t kChunk = 4096;
  const int64_t n_chunks = (numel + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks, 0.0);

  AT_DISPATCH_FLOATING_TYPES(field.scalar_type(), "gauss_field_update_", [&] {
    scalar_t* pH = field.mutable_data_ptr<scalar_t>();
    scalar_t* pP = precision.mutable_data_ptr<scalar_t>();
    scalar_t* pm = mag.mutable_data_ptr<scalar_t>();
    const scalar_t* ph = hc.const_data_ptr<scalar_t>();
    const scalar_t* pw = wc.const_data_ptr<scalar_t>();
    // No prior given: the current H and Ω (read at e before they are written).
    const scalar_t* pfp = fpc.defined() ? fpc.const_data_ptr<scalar_t>() : pH;
    const scalar_t* ppp = ppc.defined() ? ppc.const_data_ptr<scalar_t>() : pP;
    const scalar_t rho_t = rho, r_t = r, psi_t = psi;
    const CpuIsa isa = cpu_isa();
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        const int64_t e0 = chunk * kChunk, e1 = std::min(numel, e0 + kChunk);
        double change = 0;
        BPK_ISA_DISPATCH(isa, change = gauss_update_chunk<scalar_t>(
                                  e0, e1, pH, pP, pm, ph, pw, pfp, ppp, rho_t, r_t, psi_t));
        partial[chunk] = change;
      }
    });
  });
  double total = 0;
  for (double p : partial) total += p;
  return at::scalar_tensor(numel ? total / numel : 0.0, field.options());
}

}  // namespace
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CPU, m) {
  m.impl("gauss_linear_bwd_cbpi", &bpk::gauss_linear_bwd_cbpi_cpu);
  m.impl("gauss_field_update_", &bpk::gauss_field_update_cpu);
}
