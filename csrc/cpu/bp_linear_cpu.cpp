// CPU kernels of the dense-layer message updates: the element-wise operators (input moments,
// upward field, output functions, weight variance), the fused BPI cavity backward and the
// field / reinforcement / damping update. Multithreaded with at::parallel_for (OpenMP); inner
// loops are `omp simd`. The ATen-only operators are in linear_composite.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "bpkernels/binary_bp.h"
#include "checks.h"
#include "cpu/cavity_loop.h"
#include "cpu/coef_rows.h"
#include "cpu/isa.h"

namespace bpk {
namespace {

// Element-wise work below this many elements runs on one thread.
constexpr int64_t kGrainElems = 16384;

at::Tensor contiguous_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->contiguous() : at::Tensor();
}

// Runs body(e) for every e in [0, n): chunks of at least `grain` elements in parallel, each chunk
// an `omp simd` loop compiled for the widest vector ISA of the processor (isa.h). The body must
// be always-inline and branch-free for the loop to vectorise (the float maths of special.h is).
template <typename Body>
BPK_ALWAYS_INLINE void simd_range(int64_t begin, int64_t end, const Body& body) {
#pragma omp simd
  for (int64_t e = begin; e < end; ++e) body(e);
}

template <typename Body>
void parallel_simd_for(int64_t n, int64_t grain, const Body& body) {
  const CpuIsa isa = cpu_isa();
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    BPK_ISA_DISPATCH(isa, simd_range(begin, end, body));
  });
}

// ---- x̂ = tanh(u + b), Δ = 1 − x̂² ------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> linear_input_cpu(const at::Tensor& u,
                                                    const std::optional<at::Tensor>& b) {
  check_linear_input(u, b);
  const at::Tensor uc = u.contiguous(), bc = contiguous_or_null(b);
  at::Tensor x_hat = at::empty_like(uc), delta = at::empty_like(uc);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "bp_linear_input", [&] {
    const scalar_t* pu = uc.const_data_ptr<scalar_t>();
    const scalar_t* pb = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* px = x_hat.mutable_data_ptr<scalar_t>();
    scalar_t* pd = delta.mutable_data_ptr<scalar_t>();
    if (pb) {
      parallel_simd_for(uc.numel(), kGrainElems, [=](int64_t e) BPK_ALWAYS_INLINE_LAMBDA {
        input_moments<scalar_t>(pu[e], pb[e], px[e], pd[e]);
      });
    } else {
      parallel_simd_for(uc.numel(), kGrainElems, [=](int64_t e) BPK_ALWAYS_INLINE_LAMBDA {
        input_moments<scalar_t>(pu[e], scalar_t(0), px[e], pd[e]);
      });
    }
  });
  return {x_hat, delta};
}

// u = U(ω, √V)
at::Tensor upfield_cpu(const at::Tensor& omega, const at::Tensor& var) {
  check_upfield(omega, var);
  const at::Tensor oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor u = at::empty_like(oc);
  AT_DISPATCH_FLOATING_TYPES(omega.scalar_type(), "bp_upfield", [&] {
    const scalar_t* po = oc.const_data_ptr<scalar_t>();
    const scalar_t* pv = vc.const_data_ptr<scalar_t>();
    scalar_t* pu = u.mutable_data_ptr<scalar_t>();
    parallel_simd_for(oc.numel(), kGrainElems / 4, [=](int64_t e) BPK_ALWAYS_INLINE_LAMBDA {
      pu[e] = upfield<scalar_t>(po[e], std::sqrt(pv[e]));
    });
  });
  return u;
}

// ---- output function g and curvature Γ ----------------------------------------------------

std::tuple<at::Tensor, at::Tensor> output_cpu(const at::Tensor& b_top, const at::Tensor& omega,
                                              const at::Tensor& var, bool hard) {
  check_output(b_top, omega, var);
  const at::Tensor bc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor g = at::empty_like(oc), gamma = at::empty_like(oc);
  AT_DISPATCH_FLOATING_TYPES(omega.scalar_type(), "bp_output", [&] {
    const scalar_t* pb = bc.const_data_ptr<scalar_t>();
    const scalar_t* po = oc.const_data_ptr<scalar_t>();
    const scalar_t* pv = vc.const_data_ptr<scalar_t>();
    scalar_t* pg = g.mutable_data_ptr<scalar_t>();
    scalar_t* pG = gamma.mutable_data_ptr<scalar_t>();
    // g and Γ = −∂g/∂ω from the coefficients as scalars (see output_g_gamma; c = −∞ when hard)
    if (hard) {
      parallel_simd_for(oc.numel(), kGrainElems / 4, [=](int64_t e) BPK_ALWAYS_INLINE_LAMBDA {
        scalar_t alpha, num;
        output_coef_hard(pb[e], std::sqrt(pv[e]), alpha, num);
        output_g_gamma(alpha, -inf_value<scalar_t>(), num, po[e], pv[e], pg[e], pG[e]);
      });
    } else {
      parallel_simd_for(oc.numel(), kGrainElems / 4, [=](int64_t e) BPK_ALWAYS_INLINE_LAMBDA {
        scalar_t alpha, c, num;
        output_coef(pb[e], std::sqrt(pv[e]), alpha, c, num);
        output_g_gamma(alpha, c, num, po[e], pv[e], pg[e], pG[e]);
      });
    }
  });
  return {g, gamma};
}

// ArgMax layer: for each sample a with class c, g[a,k] for k ≠ c and g[a,c] = −Σ_{k≠c} g[a,k].
at::Tensor argmax_output_cpu(const at::Tensor& omega, const at::Tensor& var,
                             const at::Tensor& labels) {
  check_argmax_output(omega, var, labels);
  const int64_t B = omega.size(0), K = omega.size(1);
  const at::Tensor oc = omega.contiguous(), vc = var.contiguous(), lc = labels.contiguous();
  const int64_t* pl = lc.const_data_ptr<int64_t>();
  for (int64_t a = 0; a < B; ++a) {
    TORCH_CHECK(pl[a] >= 0 && pl[a] < K, "bp_argmax_output: label ", pl[a], " of sample ", a,
                " is outside [0, ", K, ")");
  }
  at::Tensor g = at::empty_like(oc);
  AT_DISPATCH_FLOATING_TYPES(omega.scalar_type(), "bp_argmax_output", [&] {
    const scalar_t* po = oc.const_data_ptr<scalar_t>();
    const scalar_t* pv = vc.const_data_ptr<scalar_t>();
    scalar_t* pg = g.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B, std::max<int64_t>(1, 1024 / K), [&](int64_t begin, int64_t end) {
      for (int64_t a = begin; a < end; ++a) {
        const int64_t c = pl[a];
        const scalar_t* o = po + a * K;
        const scalar_t* v = pv + a * K;
        scalar_t* ga = pg + a * K;
        scalar_t sum = 0;
        for (int64_t k = 0; k < K; ++k) {
          if (k == c) continue;
          ga[k] = argmax_g_wrong_class(o[c], o[k], v[c], v[k]);
          sum += ga[k];
        }
        ga[c] = -sum;
      }
    });
  });
  return g;
}

// ---- fused BPI cavity backward ------------------------------------------------------------
//
// H_in[k,i] = Σ_a ĝ[k,i,a] x̂[a,i] and b[a,i] = Σ_k m[k,i] ĝ[k,i,a] in one pass over the weights
// (the loop and its layout: cpu/cavity_loop.h).

std::tuple<at::Tensor, at::Tensor> linear_bwd_bpi_cpu(const at::Tensor& b_top,
                                                      const at::Tensor& omega,
                                                      const at::Tensor& var,
                                                      const at::Tensor& x_hat,
                                                      const at::Tensor& mag, bool hard,
                                                      bool compute_b) {
  const LayerDims d = check_linear_bwd_bpi(b_top, omega, var, x_hat, mag);
  const int64_t B = d.B, N = d.N, K = d.K;

  const at::Tensor x_t = x_hat.t().contiguous();
  const at::Tensor mc = mag.contiguous();
  const at::Tensor bc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor h_in = at::empty({K, N}, x_hat.options());
  at::Tensor b_t = compute_b ? at::zeros({N, B}, x_hat.options()) : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES(x_hat.scalar_type(), "bp_linear_bwd_bpi", [&] {
    const CoefRows<scalar_t> rows =
        make_coef_rows(bc.const_data_ptr<scalar_t>(), oc.const_data_ptr<scalar_t>(),
                       vc.const_data_ptr<scalar_t>(), B, K, hard);
    const scalar_t* px = x_t.const_data_ptr<scalar_t>();
    const scalar_t* pm = mc.const_data_ptr<scalar_t>();
    scalar_t* ph = h_in.mutable_data_ptr<scalar_t>();
    scalar_t* pb = compute_b ? b_t.mutable_data_ptr<scalar_t>() : nullptr;
    cavity_backward<scalar_t, false>(hard, compute_b, K, N, B, rows, px, pm, pb, ph);
  });
  at::Tensor b = compute_b ? b_t.t().contiguous() : x_hat.new_empty({B, 0});
  return {b, h_in};
}

// ---- field / reinforcement / damping update -----------------------------------------------
//
//   H ← H_in + r H + ρ H_prior,  m ← [ψ m + (1 − ψ) tanh H] · mask        (damp_field = False)
//   H ← ψ H + (1 − ψ)(H_in + r H + ρ H_prior),  m ← tanh(H) · mask         (damp_field = True)
//   returns δ = mean |m_new − m_old| (0-dim).
// H_prior = None means H_prior = H (the prior of the first inner iteration, θ = ρH).
// δ is summed over fixed chunks in a fixed order, so it does not depend on the thread count.

// One chunk [e0, e1) of the update, vectorised; returns Σ |m_new − m_old| over the chunk.
template <typename T, bool kDampField, bool kMask>
BPK_ALWAYS_INLINE double field_update_chunk(int64_t e0, int64_t e1, T* field, T* mag,
                                            const T* h_in, const T* prior, const T* mask, T rho,
                                            T r, T psi) {
  double change = 0;
#pragma omp simd reduction(+ : change)
  for (int64_t e = e0; e < e1; ++e) {
    const T msk = kMask ? mask[e] : T(1);
    const T m_new = kDampField
                        ? field_update_damped_field(field[e], h_in[e], prior[e], msk, rho, r, psi)
                        : field_update(field[e], h_in[e], prior[e], mag[e], msk, rho, r, psi);
    change += std::fabs(static_cast<double>(m_new - mag[e]));
    mag[e] = m_new;
  }
  return change;
}

at::Tensor field_update_cpu(at::Tensor& field, at::Tensor& mag, const at::Tensor& h_in,
                            const std::optional<at::Tensor>& field_prior,
                            const std::optional<at::Tensor>& mask, double rho, double r,
                            double psi, bool damp_field) {
  check_field_update(field, mag, h_in, field_prior, mask);
  const at::Tensor hc = h_in.contiguous(), pc = contiguous_or_null(field_prior),
                   mkc = contiguous_or_null(mask);
  const int64_t numel = field.numel();
  constexpr int64_t kChunk = 4096;
  const int64_t n_chunks = (numel + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks, 0.0);

  AT_DISPATCH_FLOATING_TYPES(field.scalar_type(), "bp_field_update_", [&] {
    scalar_t* pH = field.mutable_data_ptr<scalar_t>();
    scalar_t* pm = mag.mutable_data_ptr<scalar_t>();
    const scalar_t* ph = hc.const_data_ptr<scalar_t>();
    // H_prior = None is H itself (read at e before H[e] is written)
    const scalar_t* pp = pc.defined() ? pc.const_data_ptr<scalar_t>() : pH;
    const scalar_t* pk = mkc.defined() ? mkc.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t rho_t = rho, r_t = r, psi_t = psi;
    const CpuIsa isa = cpu_isa();
    at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        const int64_t e0 = chunk * kChunk, e1 = std::min(numel, e0 + kChunk);
        double change = 0;
        if (damp_field && pk) {
          BPK_ISA_DISPATCH(isa, change = field_update_chunk<scalar_t, true, true>(
                                    e0, e1, pH, pm, ph, pp, pk, rho_t, r_t, psi_t));
        } else if (damp_field) {
          BPK_ISA_DISPATCH(isa, change = field_update_chunk<scalar_t, true, false>(
                                    e0, e1, pH, pm, ph, pp, pk, rho_t, r_t, psi_t));
        } else if (pk) {
          BPK_ISA_DISPATCH(isa, change = field_update_chunk<scalar_t, false, true>(
                                    e0, e1, pH, pm, ph, pp, pk, rho_t, r_t, psi_t));
        } else {
          BPK_ISA_DISPATCH(isa, change = field_update_chunk<scalar_t, false, false>(
                                    e0, e1, pH, pm, ph, pp, pk, rho_t, r_t, psi_t));
        }
        partial[chunk] = change;
      }
    });
  });
  double total = 0;
  for (double p : partial) total += p;
  return at::scalar_tensor(numel ? total / numel : 0.0, field.options());
}

// ---- weight variance σ = (1 − m²) · mask --------------------------------------------------

at::Tensor weight_var_cpu(const at::Tensor& mag, const std::optional<at::Tensor>& mask) {
  check_weight_var(mag, mask);
  const at::Tensor mc = mag.contiguous(), mkc = contiguous_or_null(mask);
  at::Tensor sigma = at::empty_like(mc);
  AT_DISPATCH_FLOATING_TYPES(mag.scalar_type(), "bp_weight_var", [&] {
    const scalar_t* pm = mc.const_data_ptr<scalar_t>();
    scalar_t* ps = sigma.mutable_data_ptr<scalar_t>();
    if (mkc.defined()) {
      const scalar_t* pk = mkc.const_data_ptr<scalar_t>();
      parallel_simd_for(mc.numel(), kGrainElems, [=](int64_t e) BPK_ALWAYS_INLINE_LAMBDA {
        ps[e] = weight_variance(pm[e], pk[e]);
      });
    } else {
      parallel_simd_for(mc.numel(), kGrainElems, [=](int64_t e) BPK_ALWAYS_INLINE_LAMBDA {
        ps[e] = weight_variance(pm[e], scalar_t(1));
      });
    }
  });
  return sigma;
}

}  // namespace

}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CPU, m) {
  m.impl("bp_linear_input", &bpk::linear_input_cpu);
  m.impl("bp_upfield", &bpk::upfield_cpu);
  m.impl("bp_output", &bpk::output_cpu);
  m.impl("bp_argmax_output", &bpk::argmax_output_cpu);
  m.impl("bp_linear_bwd_bpi", &bpk::linear_bwd_bpi_cpu);
  m.impl("bp_field_update_", &bpk::field_update_cpu);
  m.impl("bp_weight_var", &bpk::weight_var_cpu);
}
