// CUDA kernels of the Gaussian (continuous) weight family, continuous-weight BPI
// (docs/algorithms.md §4.7). Semantics and argument checks are those of csrc/cpu/gauss_cpu.cpp
// (checks.h), the maths the BPK_HD functions of bpkernels/binary_bp.h and gaussian_bp.h.
//
// The cavity backward reuses the fused BPI kernel (bp_linear_bwd_bpi, through the dispatcher)
// for b and H_in; the precision message needs only the non-cavity g and Γ per (sample, unit),
// so on the GPU it is one element-wise kernel and two cuBLAS products,
//   Ω_in = Γᵀ (x̂² + Δ) − (g²)ᵀ Δ,
// with no K×N×B tensor either way. Every reduction is deterministic (no atomics).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "bpkernels/binary_bp.h"
#include "bpkernels/gaussian_bp.h"
#include "checks.h"
#include "cuda/cuda_utils.cuh"

namespace bpk {
namespace cuda {
namespace {

#define BPK_GAUSS_GRID_STRIDE(e, n)                                              \
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < (n); \
       e += int64_t(gridDim.x) * blockDim.x)

// Per (sample, unit): Γ = −∂g/∂ω of the non-cavity g (non-finite -> 0) and g².
// b_top, omega, var, gamma, g2: [B, K] contiguous, n = B·K.
template <typename T, bool kHard>
__global__ void precision_rows_kernel(const T* __restrict__ b_top, const T* __restrict__ omega,
                                      const T* __restrict__ var, T* __restrict__ gamma,
                                      T* __restrict__ g2, int64_t n) {
  BPK_GAUSS_GRID_STRIDE(e, n) {
    const T s = sqrt(var[e]);
    const OutputCoef<T> k = kHard ? output_coef_hard(b_top[e], s) : output_coef(b_top[e], s);
    T g;
    gamma[e] = precision_curvature(k.alpha, k.c, k.num, omega[e], var[e], g);
    g2[e] = g * g;
  }
}

std::tuple<at::Tensor, at::Tensor> bpi_backward(const at::Tensor& b_top, const at::Tensor& omega,
                                                const at::Tensor& var, const at::Tensor& x_hat,
                                                const at::Tensor& mag, bool hard, bool compute_b) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("bpkernels::bp_linear_bwd_bpi", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, bool, bool)>();
  return op.call(b_top, omega, var, x_hat, mag, hard, compute_b);
}

// b, H_in: the BPI cavity backward;  Ω_in[k,i] = Σ_a [(x̂² + Δ)[a,i] Γ[a,k] − Δ[a,i] g[a,k]²].
std::tuple<at::Tensor, at::Tensor, at::Tensor> gauss_linear_bwd_cbpi_cuda(
    const at::Tensor& b_top, const at::Tensor& omega, const at::Tensor& var,
    const at::Tensor& x_hat, const std::optional<at::Tensor>& delta, const at::Tensor& mag,
    bool hard, bool compute_b) {
  const LayerDims d = check_gauss_linear_bwd_cbpi(b_top, omega, var, x_hat, delta, mag);
  check_cuda("gauss_linear_bwd_cbpi", x_hat, "x_hat");
  const c10::cuda::CUDAGuard guard(x_hat.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  auto [b, h_in] = bpi_backward(b_top, omega, var, x_hat, mag, hard, compute_b);
  const at::Tensor bc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor gamma = at::empty({d.B, d.K}, x_hat.options());
  at::Tensor g2 = at::empty({d.B, d.K}, x_hat.options());
  const int64_t n = d.B * d.K;
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(x_hat.scalar_type(), "gauss_linear_bwd_cbpi_cuda", [&] {
      const scalar_t* pb = bc.const_data_ptr<scalar_t>();
      const scalar_t* po = oc.const_data_ptr<scalar_t>();
      const scalar_t* pv = vc.const_data_ptr<scalar_t>();
      scalar_t* pG = gamma.mutable_data_ptr<scalar_t>();
      scalar_t* pg2 = g2.mutable_data_ptr<scalar_t>();
      if (hard) {
        precision_rows_kernel<scalar_t, true>
            <<<elementwise_blocks(n), kThreads, 0, stream>>>(pb, po, pv, pG, pg2, n);
      } else {
        precision_rows_kernel<scalar_t, false>
            <<<elementwise_blocks(n), kThreads, 0, stream>>>(pb, po, pv, pG, pg2, n);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor omega_in;
  if (delta) {
    omega_in = at::mm(gamma.t(), x_hat.square() + *delta);
    omega_in.sub_(at::mm(g2.t(), *delta));
  } else {
    omega_in = at::mm(gamma.t(), x_hat.square());
  }
  return {b, h_in, omega_in};
}

// Ω ← max(10⁻⁶, Ω_in + rΩ + ρΩ_prior),  H ← H_in + rH + ρH_prior,  m ← ψm + (1 − ψ)H/Ω;
// change[e] = |m_new − m_old|. Priors nullptr: the current H and Ω (read before the write).
template <typename T>
__global__ void gauss_field_update_kernel(T* field, T* precision, T* mag,
                                          const T* __restrict__ h_in,
                                          const T* __restrict__ omega_in,
                                          const T* field_prior, const T* precision_prior,
                                          T* __restrict__ change, T rho, T r, T psi,
                                          int64_t n) {
  BPK_GAUSS_GRID_STRIDE(e, n) {
    T H = field[e], P = precision[e];
    const T hp = field_prior ? field_prior[e] : H;
    const T pp = precision_prior ? precision_prior[e] : P;
    const T m_old = mag[e];
    const T m_new = gaussian_field_update(H, P, h_in[e], omega_in[e], hp, pp, m_old, rho, r, psi);
    field[e] = H;
    precision[e] = P;
    mag[e] = m_new;
    change[e] = fabs(m_new - m_old);
  }
}

at::Tensor gauss_field_update_cuda(at::Tensor& field, at::Tensor& precision, at::Tensor& mag,
                                   const at::Tensor& h_in, const at::Tensor& omega_in,
                                   const std::optional<at::Tensor>& field_prior,
                                   const std::optional<at::Tensor>& precision_prior, double rho,
                                   double r, double psi) {
  check_gauss_field_update(field, precision, mag, h_in, omega_in, field_prior, precision_prior);
  check_cuda("gauss_field_update_", field, "field");
  const c10::cuda::CUDAGuard guard(field.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor hc = h_in.contiguous(), wc = omega_in.contiguous();
  const at::Tensor fpc = field_prior ? field_prior->contiguous() : at::Tensor();
  const at::Tensor ppc = precision_prior ? precision_prior->contiguous() : at::Tensor();
  const int64_t n = field.numel();
  at::Tensor change = at::empty_like(field);
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(field.scalar_type(), "gauss_field_update_cuda", [&] {
      gauss_field_update_kernel<scalar_t><<<elementwise_blocks(n), kThreads, 0, stream>>>(
          field.mutable_data_ptr<scalar_t>(), precision.mutable_data_ptr<scalar_t>(),
          mag.mutable_data_ptr<scalar_t>(), hc.const_data_ptr<scalar_t>(),
          wc.const_data_ptr<scalar_t>(),
          fpc.defined() ? fpc.const_data_ptr<scalar_t>() : nullptr,
          ppc.defined() ? ppc.const_data_ptr<scalar_t>() : nullptr,
          change.mutable_data_ptr<scalar_t>(), scalar_t(rho), scalar_t(r), scalar_t(psi), n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // δ = mean |Δm|, accumulated in float64 (as the CPU kernel) and returned in field's dtype.
  return change.to(at::kDouble).mean().to(field.scalar_type());
}

}  // namespace
}  // namespace cuda
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CUDA, m) {
  m.impl("gauss_linear_bwd_cbpi", &bpk::cuda::gauss_linear_bwd_cbpi_cuda);
  m.impl("gauss_field_update_", &bpk::cuda::gauss_field_update_cuda);
}
