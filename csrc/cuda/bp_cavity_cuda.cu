// CUDA kernels of relaxed BP with τ_max > 1 (docs/algorithms.md §4.3) in the minimal state of docs/algorithms.md §8.3: the
// per-edge cavity state is only m̃ and b̃ ([K, N, B], batch innermost); x̃, ω̃, ĝ and H̃ are
// recomputed in registers by each pass. Semantics and argument checks are those of
// csrc/cpu/bp_cavity_cpu.cpp. Every kernel reads the state coalesced (lane ↔ sample a, the
// innermost dimension) and every reduction has a fixed order (no atomics).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "bpkernels/binary_bp.h"
#include "checks.h"
#include "cuda/cuda_utils.cuh"

namespace bpk {
namespace cuda {
namespace {

constexpr int kCavWarps = 8;                       // warps per block of every kernel below
constexpr int kCavThreads = kCavWarps * kWarpSize;

// ---- ω[a,k] = Σ_i m̃[k,i,a] x̃[k,i,a] --------------------------------------------------------
//
// Block (k, chunk of 32 samples): lane ↔ a, warp w sums the inputs i ≡ w (mod kCavWarps) in
// ascending order, then warp 0 adds the warps' sums in warp order.

// x_t: [N, B] (x_in transposed);  b_cav, mag_cav: [K, N, B] (b_cav nullptr: first layer);
// omega: [B, K].
template <typename T>
__global__ void __launch_bounds__(kCavThreads)
    omega_bp_kernel(const T* __restrict__ x_t, const T* __restrict__ b_cav,
                    const T* __restrict__ mag_cav, T* __restrict__ omega, int64_t B, int64_t N,
                    int64_t K) {
  __shared__ T s_sum[kCavWarps][kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t k = blockIdx.x;
  const int64_t a = int64_t(blockIdx.y) * kWarpSize + lane;
  T acc = T(0);
  if (a < B) {
    const int64_t row0 = k * N * B + a;  // element (k, 0, a)
#pragma unroll 4
    for (int64_t i = warp; i < N; i += kCavWarps) {
      const int64_t e = row0 + i * B;
      acc += mag_cav[e] * cavity_input(x_t[i * B + a], b_cav, e);
    }
  }
  s_sum[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && a < B) {
    T total = s_sum[0][lane];
#pragma unroll
    for (int w = 1; w < kCavWarps; ++w) total += s_sum[w][lane];
    omega[a * K + k] = total;
  }
}

at::Tensor omega_bp_cuda(const at::Tensor& x_in, const std::optional<at::Tensor>& b_cav,
                         const at::Tensor& mag_cav) {
  const LayerDims d = check_linear_omega_bp(x_in, b_cav, mag_cav);
  const int64_t B = d.B, N = d.N, K = d.K;
  check_cuda("bp_linear_omega_bp", x_in, "x_in");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor omega = at::empty({B, K}, x_in.options());
  if (K == 0) return omega;
  if (N == 0) return omega.zero_();
  const at::Tensor x_t = x_in.t().contiguous(), mc = mag_cav.contiguous();
  const at::Tensor bc = b_cav ? b_cav->contiguous() : at::Tensor();
  const dim3 grid(grid_dim("bp_linear_omega_bp", K, kGridXLimit, "K"),
                  grid_dim("bp_linear_omega_bp", ceil_div(B, kWarpSize), kGridYZLimit, "B"));
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "bp_linear_omega_bp_cuda", [&] {
    omega_bp_kernel<scalar_t><<<grid, kCavThreads, 0, stream>>>(
        x_t.const_data_ptr<scalar_t>(), bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr,
        mc.const_data_ptr<scalar_t>(), omega.mutable_data_ptr<scalar_t>(), B, N, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return omega;
}

// ---- cavity backward ----------------------------------------------------------------------
//
//   ĝ[k,i,a] = g(b_top[a,k], ω[a,k] − m̃ x̃, s[a,k]);  b[a,i] = Σ_k m̃ ĝ;  H_in[k,i] = Σ_a ĝ x̃.
// Block (8 inputs i, k-tile of 32 units): warp ↔ i, lane ↔ a (chunks of 32 samples), so the
// state rows m̃[k,i,·], b̃[k,i,·] are read coalesced. For each chunk a warp walks the k-tile:
//   * b: each lane accumulates Σ_k m̃ ĝ over the tile in a register and writes the partial
//     b_part[k-tile, i, a] (a second pass sums the tiles in order);
//   * H_in: ĝ x̃ is summed over the warp's lanes by a fixed xor-butterfly, and lane kk keeps
//     H_in[k0 + kk, i] in a register across the chunks (ascending a), written at the end.
// K·N·B is never materialised; the partials are [n_ktiles, N, B].

constexpr int kBpTK = kWarpSize;  // units per k-tile (one H_in register per lane)
// Unrolling of the k loop (independent state loads in flight). For double, deeper unrolling
// makes ptxas spill around the division slow path.
template <typename T>
constexpr int kBpUnroll = sizeof(T) == 4 ? 4 : 1;

// coef: [K, B] records (unit-major);  x_t: [N, B];  b_cav, mag_cav: [K, N, B] (b_cav nullptr:
// first layer);  b_part: [n_ktiles, N, B] (unused when !kComputeB);  h_in: [K, N].
template <typename T, bool kHard, bool kComputeB>
__global__ void __launch_bounds__(kCavThreads)
    bwd_bp_kernel(const CoefOmega<T>* __restrict__ coef, const T* __restrict__ x_t,
                  const T* __restrict__ b_cav, const T* __restrict__ mag_cav,
                  T* __restrict__ b_part, T* __restrict__ h_in, int64_t B, int64_t N, int64_t K) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t i = int64_t(blockIdx.x) * kCavWarps + warp;
  if (i >= N) return;  // warp-uniform; no block-level synchronisation in this kernel
  const int64_t k0 = int64_t(blockIdx.y) * kBpTK;
  const int k_count = static_cast<int>(K - k0 < kBpTK ? K - k0 : kBpTK);
  T h = T(0);  // H_in[k0 + lane, i]
  for (int64_t a0 = 0; a0 < B; a0 += kWarpSize) {
    const int64_t a = a0 + lane;
    const bool a_ok = a < B;
    const T x = a_ok ? x_t[i * B + a] : T(0);
    T b_acc = T(0);
#pragma unroll(kBpUnroll<T>)
    for (int kk = 0; kk < k_count; ++kk) {
      const int64_t k = k0 + kk;
      T t = T(0);
      if (a_ok) {
        const int64_t e = (k * N + i) * B + a;
        const T m = mag_cav[e];
        const T xc = cavity_input(x, b_cav, e);
        const CoefOmega<T> cf = coef[k * B + a];
        const T g_cav = cavity_g<kHard>(cf, cavity_omega(cf.omega, m, xc));
        t = g_cav * xc;
        if constexpr (kComputeB) b_acc += m * g_cav;
      }
      t = warp_sum(t);
      if (lane == kk) h += t;
    }
    if (kComputeB && a_ok) b_part[(int64_t(blockIdx.y) * N + i) * B + a] = b_acc;
  }
  if (lane < k_count) h_in[(k0 + lane) * N + i] = h;
}

template <typename T, bool kHard, bool kComputeB>
void launch_bwd_bp(dim3 grid, cudaStream_t stream, const CoefOmega<T>* coef, const T* x_t,
                   const T* b_cav, const T* mag_cav, T* b_part, T* h_in, int64_t B, int64_t N,
                   int64_t K) {
  bwd_bp_kernel<T, kHard, kComputeB>
      <<<grid, kCavThreads, 0, stream>>>(coef, x_t, b_cav, mag_cav, b_part, h_in, B, N, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> linear_bwd_bp_cuda(const at::Tensor& b_top,
                                                      const at::Tensor& omega,
                                                      const at::Tensor& var,
                                                      const at::Tensor& x_in,
                                                      const std::optional<at::Tensor>& b_cav,
                                                      const at::Tensor& mag_cav, bool hard,
                                                      bool compute_b) {
  const LayerDims d = check_linear_bwd_bp(b_top, omega, var, x_in, b_cav, mag_cav);
  const int64_t B = d.B, N = d.N, K = d.K;
  check_cuda("bp_linear_bwd_bp", x_in, "x_in");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor h_in = at::empty({K, N}, x_in.options());
  if (K == 0 || N == 0) {
    at::Tensor b = compute_b ? at::zeros({B, N}, x_in.options()) : x_in.new_empty({B, 0});
    return {b, h_in};
  }
  const at::Tensor x_t = x_in.t().contiguous(), mc = mag_cav.contiguous();
  const at::Tensor bc = b_cav ? b_cav->contiguous() : at::Tensor();
  const at::Tensor btc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  const int64_t n_ktiles = ceil_div(K, kBpTK);
  const dim3 grid(grid_dim("bp_linear_bwd_bp", ceil_div(N, kCavWarps), kGridXLimit, "N"),
                  grid_dim("bp_linear_bwd_bp", n_ktiles, kGridYZLimit, "K"));
  at::Tensor b_t = compute_b ? at::empty({N, B}, x_in.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "bp_linear_bwd_bp_cuda", [&] {
    // [K, B] coefficient records, unit-major (lane ↔ a reads them coalesced).
    const at::Tensor coef = make_coef<scalar_t>(btc, oc, vc, B, K, hard, /*k_major=*/true, stream);
    const auto* pc = reinterpret_cast<const CoefOmega<scalar_t>*>(coef.const_data_ptr<scalar_t>());
    const scalar_t* px = x_t.const_data_ptr<scalar_t>();
    const scalar_t* pb = bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pm = mc.const_data_ptr<scalar_t>();
    scalar_t* ph = h_in.mutable_data_ptr<scalar_t>();
    if (!compute_b) {
      if (hard) launch_bwd_bp<scalar_t, true, false>(grid, stream, pc, px, pb, pm, nullptr, ph, B, N, K);
      else launch_bwd_bp<scalar_t, false, false>(grid, stream, pc, px, pb, pm, nullptr, ph, B, N, K);
      return;
    }
    // Per-k-tile partials of bᵀ ([N, B] itself when there is one k-tile), then their ordered sum.
    at::Tensor part = n_ktiles > 1 ? at::empty({n_ktiles, N, B}, x_in.options()) : b_t;
    scalar_t* pp = part.mutable_data_ptr<scalar_t>();
    if (hard) launch_bwd_bp<scalar_t, true, true>(grid, stream, pc, px, pb, pm, pp, ph, B, N, K);
    else launch_bwd_bp<scalar_t, false, true>(grid, stream, pc, px, pb, pm, pp, ph, B, N, K);
    if (n_ktiles > 1) {
      sum_partials<scalar_t>(pp, b_t.mutable_data_ptr<scalar_t>(), n_ktiles, N * B, stream);
    }
  });
  at::Tensor b = compute_b ? b_t.t().contiguous() : x_in.new_empty({B, 0});
  return {b, h_in};
}

// ---- cavity-state update ------------------------------------------------------------------
//
// After the field update of the same inner iteration (H already holds the new field):
//   b̃[k,i,a] ← b[a,i] − m̃ ĝ,   H̃ = H[k,i] − ĝ x̃,   m̃ ← ψ m̃ + (1 − ψ) tanh(H̃) · mask[k,i],
// with x̃ and ĝ recomputed from the state before this update (old b̃ and m̃). Element-wise over
// [K, N, B]: one warp per row (k, i), lanes over a; each element is read and written by one
// thread only, so the in-place update is race-free.

// coef: [K, B] records;  x_t, b_t: [N, B] (b_t nullptr: first layer);  field, mask (nullptr: 1):
// [K, N];  mag_cav, b_cav (nullptr: first layer): [K, N, B], updated in place.
template <typename T, bool kHard>
__global__ void __launch_bounds__(kCavThreads)
    cavity_update_kernel(const CoefOmega<T>* __restrict__ coef, const T* __restrict__ x_t,
                         const T* __restrict__ b_t, const T* __restrict__ field,
                         const T* __restrict__ mask, T* __restrict__ mag_cav,
                         T* __restrict__ b_cav, T psi, int64_t B, int64_t N, int64_t K) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kCavWarps + threadIdx.x / kWarpSize;  // k·N + i
  if (row >= K * N) return;
  const int64_t k = row / N, i = row % N;
  const T H = field[row];
  const T msk = mask ? mask[row] : T(1);
  const CoefOmega<T>* ck = coef + k * B;
  const T* xi = x_t + i * B;
  const T* bi = b_t ? b_t + i * B : nullptr;
  for (int64_t a = lane; a < B; a += kWarpSize) {
    const int64_t e = row * B + a;
    const T m = mag_cav[e];
    const T xc = cavity_input(xi[a], b_cav, e);
    const CoefOmega<T> cf = ck[a];
    const T g_cav = cavity_g<kHard>(cf, cavity_omega(cf.omega, m, xc));
    if (b_cav) b_cav[e] = bi[a] - m * g_cav;
    mag_cav[e] = cavity_mag_update(m, H, g_cav, xc, msk, psi);
  }
}

void cavity_update_cuda(at::Tensor& mag_cav, const std::optional<at::Tensor>& b_cav,
                        const at::Tensor& b_top, const at::Tensor& omega, const at::Tensor& var,
                        const at::Tensor& x_in, const std::optional<at::Tensor>& b,
                        const at::Tensor& field, const std::optional<at::Tensor>& mask,
                        double psi, bool hard) {
  const LayerDims d =
      check_cavity_update(mag_cav, b_cav, b_top, omega, var, x_in, b, field, mask);
  const int64_t B = d.B, N = d.N, K = d.K;
  check_cuda("bp_cavity_update_", x_in, "x_in");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (K == 0 || N == 0) return;
  const at::Tensor x_t = x_in.t().contiguous();
  const at::Tensor b_t = b ? b->t().contiguous() : at::Tensor();
  const at::Tensor btc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  const at::Tensor fc = field.contiguous();
  const at::Tensor mkc = mask ? mask->contiguous() : at::Tensor();
  const unsigned blocks =
      grid_dim("bp_cavity_update_", ceil_div(K * N, kCavWarps), kGridXLimit, "K·N");
  AT_DISPATCH_FLOATING_TYPES(x_in.scalar_type(), "bp_cavity_update_cuda", [&] {
    const at::Tensor coef = make_coef<scalar_t>(btc, oc, vc, B, K, hard, /*k_major=*/true, stream);
    const auto* pc = reinterpret_cast<const CoefOmega<scalar_t>*>(coef.const_data_ptr<scalar_t>());
    const scalar_t* px = x_t.const_data_ptr<scalar_t>();
    const scalar_t* pbs = b_t.defined() ? b_t.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pH = fc.const_data_ptr<scalar_t>();
    const scalar_t* pk = mkc.defined() ? mkc.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* pm = mag_cav.mutable_data_ptr<scalar_t>();
    scalar_t* pb = b_cav ? b_cav->mutable_data_ptr<scalar_t>() : nullptr;
    const scalar_t psi_t = psi;
    if (hard) {
      cavity_update_kernel<scalar_t, true><<<blocks, kCavThreads, 0, stream>>>(
          pc, px, pbs, pH, pk, pm, pb, psi_t, B, N, K);
    } else {
      cavity_update_kernel<scalar_t, false><<<blocks, kCavThreads, 0, stream>>>(
          pc, px, pbs, pH, pk, pm, pb, psi_t, B, N, K);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace cuda
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CUDA, m) {
  m.impl("bp_linear_omega_bp", &bpk::cuda::omega_bp_cuda);
  m.impl("bp_linear_bwd_bp", &bpk::cuda::linear_bwd_bp_cuda);
  m.impl("bp_cavity_update_", &bpk::cuda::cavity_update_cuda);
}
