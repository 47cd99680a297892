// CUDA kernels of the dense-layer message updates: the element-wise operators (input moments,
// upward field, output functions, weight variance), the fused BPI cavity backward and the field
// / reinforcement / damping update. The semantics are those of csrc/cpu/bp_linear_cpu.cpp, the
// argument checks the same functions (checks.h), the maths the BPK_HD functions of
// bpkernels/binary_bp.h, called per thread. The ATen-only operators are registered for every
// device in csrc/linear_composite.cpp. Every reduction is deterministic (fixed order, no
// atomics): per-tile partials, then a second fixed-order pass.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "bpkernels/binary_bp.h"
#include "checks.h"
#include "cuda/cuda_utils.cuh"

namespace bpk {
namespace cuda {
namespace {

at::Tensor contiguous_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->contiguous() : at::Tensor();
}

// Grid-stride loop over [0, n) with 64-bit indices.
#define BPK_GRID_STRIDE(e, n)                                                    \
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < (n); \
       e += int64_t(gridDim.x) * blockDim.x)

// ---- x̂ = tanh(u + b), Δ = 1 − x̂² ------------------------------------------------------

// u, b (nullptr: b = 0), x_hat, delta: [B, N] contiguous, n = B·N.
template <typename T>
__global__ void linear_input_kernel(const T* __restrict__ u, const T* __restrict__ b,
                                    T* __restrict__ x_hat, T* __restrict__ delta, int64_t n) {
  BPK_GRID_STRIDE(e, n) {
    T xe, de;
    input_moments<T>(u[e], b ? b[e] : T(0), xe, de);
    x_hat[e] = xe;
    delta[e] = de;
  }
}

std::tuple<at::Tensor, at::Tensor> linear_input_cuda(const at::Tensor& u,
                                                     const std::optional<at::Tensor>& b) {
  check_linear_input(u, b);
  check_cuda("bp_linear_input", u, "u");
  const c10::cuda::CUDAGuard guard(u.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor uc = u.contiguous(), bc = contiguous_or_null(b);
  at::Tensor x_hat = at::empty_like(uc), delta = at::empty_like(uc);
  const int64_t n = uc.numel();
  if (n == 0) return {x_hat, delta};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "bp_linear_input_cuda", [&] {
    linear_input_kernel<scalar_t><<<elementwise_blocks(n), kThreads, 0, stream>>>(
        uc.const_data_ptr<scalar_t>(), bc.defined() ? bc.const_data_ptr<scalar_t>() : nullptr,
        x_hat.mutable_data_ptr<scalar_t>(), delta.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {x_hat, delta};
}

// ---- u = U(ω, √V) --------------------------------------------------------------------------

// omega, var, u: [B, K] contiguous, n = B·K.
template <typename T>
__global__ void upfield_kernel(const T* __restrict__ omega, const T* __restrict__ var,
                               T* __restrict__ u, int64_t n) {
  BPK_GRID_STRIDE(e, n) { u[e] = upfield<T>(omega[e], sqrt(var[e])); }
}

at::Tensor upfield_cuda(const at::Tensor& omega, const at::Tensor& var) {
  check_upfield(omega, var);
  check_cuda("bp_upfield", omega, "omega");
  const c10::cuda::CUDAGuard guard(omega.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor u = at::empty_like(oc);
  const int64_t n = oc.numel();
  if (n == 0) return u;
  AT_DISPATCH_FLOATING_TYPES(omega.scalar_type(), "bp_upfield_cuda", [&] {
    upfield_kernel<scalar_t><<<elementwise_blocks(n), kThreads, 0, stream>>>(
        oc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
        u.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return u;
}

// ---- output function g and curvature Γ ----------------------------------------------------

// g = g(b_top, ω, √V) (b_top = labels ±1 when kHard) and Γ = −∂g/∂ω (output_g_gamma).
//   b_top, omega, var, g, gamma: [B, K] contiguous, n = B·K.
template <typename T, bool kHard>
__global__ void output_kernel(const T* __restrict__ b_top, const T* __restrict__ omega,
                              const T* __restrict__ var, T* __restrict__ g,
                              T* __restrict__ gamma, int64_t n) {
  BPK_GRID_STRIDE(e, n) {
    const T v = var[e], o = omega[e], s = sqrt(v);
    const OutputCoef<T> k = kHard ? output_coef_hard(b_top[e], s) : output_coef(b_top[e], s);
    output_g_gamma(k.alpha, k.c, k.num, o, v, g[e], gamma[e]);
  }
}

std::tuple<at::Tensor, at::Tensor> output_cuda(const at::Tensor& b_top, const at::Tensor& omega,
                                               const at::Tensor& var, bool hard) {
  check_output(b_top, omega, var);
  check_cuda("bp_output", omega, "omega");
  const c10::cuda::CUDAGuard guard(omega.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor bc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor g = at::empty_like(oc), gamma = at::empty_like(oc);
  const int64_t n = oc.numel();
  if (n == 0) return {g, gamma};
  AT_DISPATCH_FLOATING_TYPES(omega.scalar_type(), "bp_output_cuda", [&] {
    const scalar_t* pb = bc.const_data_ptr<scalar_t>();
    const scalar_t* po = oc.const_data_ptr<scalar_t>();
    const scalar_t* pv = vc.const_data_ptr<scalar_t>();
    scalar_t* pg = g.mutable_data_ptr<scalar_t>();
    scalar_t* pG = gamma.mutable_data_ptr<scalar_t>();
    const unsigned blocks = elementwise_blocks(n);
    if (hard) {
      output_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(pb, po, pv, pg, pG, n);
    } else {
      output_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(pb, po, pv, pg, pG, n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {g, gamma};
}

// ---- ArgMax output layer -------------------------------------------------------------------
//
// One warp per sample a with class c = labels[a]:
//   g[a,k] = argmax_g_wrong_class(ω[a,c], ω[a,k], V[a,c], V[a,k])  (k ≠ c),
//   g[a,c] = −Σ_{k≠c} g[a,k]   (lane partial sums, then a fixed xor-butterfly: deterministic).
// Labels are validated on the device, not on the host: checking them on the host would cost a
// device→host synchronisation on every call. A label outside [0, K) makes the whole row
// g[a, :] NaN (no out-of-bounds access, no poisoned CUDA context as with a device assert); the
// NaNs reach b, H_in and δ of the field update, where the trainer sees them.

constexpr int kArgmaxWarps = kThreads / kWarpSize;  // samples per block

// omega, var, g: [B, K] contiguous;  labels: [B] int64.
template <typename T>
__global__ void argmax_output_kernel(const T* __restrict__ omega, const T* __restrict__ var,
                                     const int64_t* __restrict__ labels, T* __restrict__ g,
                                     int64_t B, int64_t K) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t a = int64_t(blockIdx.x) * kArgmaxWarps + threadIdx.x / kWarpSize;
  if (a >= B) return;  // whole warps leave together; no block-level synchronisation follows
  const int64_t c = labels[a];
  const T* o = omega + a * K;
  const T* v = var + a * K;
  T* ga = g + a * K;
  if (c < 0 || c >= K) {
    for (int64_t k = lane; k < K; k += kWarpSize) ga[k] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  const T oc = o[c], vc = v[c];
  T sum = T(0);
  for (int64_t k = lane; k < K; k += kWarpSize) {
    if (k == c) continue;
    const T gk = argmax_g_wrong_class(oc, o[k], vc, v[k]);
    ga[k] = gk;
    sum += gk;
  }
  sum = warp_sum(sum);
  if (lane == 0) ga[c] = -sum;
}

at::Tensor argmax_output_cuda(const at::Tensor& omega, const at::Tensor& var,
                              const at::Tensor& labels) {
  check_argmax_output(omega, var, labels);
  const int64_t B = omega.size(0), K = omega.size(1);
  check_cuda("bp_argmax_output", omega, "omega");
  const c10::cuda::CUDAGuard guard(omega.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor oc = omega.contiguous(), vc = var.contiguous(), lc = labels.contiguous();
  at::Tensor g = at::empty_like(oc);
  if (B == 0 || K == 0) return g;
  const unsigned blocks =
      grid_dim("bp_argmax_output", ceil_div(B, kArgmaxWarps), kGridXLimit, "the batch");
  AT_DISPATCH_FLOATING_TYPES(omega.scalar_type(), "bp_argmax_output_cuda", [&] {
    argmax_output_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        oc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
        lc.const_data_ptr<int64_t>(), g.mutable_data_ptr<scalar_t>(), B, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return g;
}

// ---- fused BPI cavity backward --------------------------------------------------------------
//
// For each weight (k, i) and sample a, with ĝ[k,i,a] = g(b_top[a,k], ω[a,k] − m[k,i] x̂[a,i], s[a,k]):
//   H_in[k,i] = Σ_a ĝ[k,i,a] x̂[a,i],    b[a,i] = Σ_k m[k,i] ĝ[k,i,a].
// ĝ lives in registers only; no K×N×B buffer exists.
//
// Tiling (docs/algorithms.md §8.4 item 3). A block owns a tile of kTK = kWarps·kRows units k and kTI = 32
// inputs i; lane ↔ i, warp w ↔ the kRows units k0 + w·kRows + r. The block loops over the
// whole batch in chunks of kTA samples; each chunk stages the coefficient records
// {alpha, c, num, ω} of (k-tile × chunk) (made by coef_kernel) and the x̂ tile in shared memory.
// Per sample a each thread evaluates its kRows values ĝ:
//   * H_in[k,i] accumulates in a register over the whole batch (the reduction over a never
//     leaves the thread), and is written once at the end;
//   * its partial Σ_r m ĝ goes to shared memory; after the chunk the block sums the kWarps
//     partials of each (a, i) in warp order and writes b_part[k-tile, a, i].
// A second pass (sum_partials_kernel) adds the [n_ktiles, B, N] partials in tile order. With
// one k-tile the block writes b directly. Both reductions are deterministic.

template <typename T>
struct BpiTile {
  static constexpr int kWarps = 8;
  static constexpr int kRows = 4;                 // units k per thread
  static constexpr int kTK = kWarps * kRows;      // units per block
  static constexpr int kTI = kWarpSize;           // inputs per block
  static constexpr int kTA = 64 / sizeof(T);      // samples per staged chunk
  static constexpr int kThreadsPerBlock = kWarps * kWarpSize;
};

// coef: [B, K] records (sample-major);  x_hat: [B, N];  mag: [K, N];
// b_part: [n_ktiles, B, N] (b itself when n_ktiles = 1; unused when !kComputeB);  h_in: [K, N].
template <typename T, bool kHard, bool kComputeB>
__global__ void __launch_bounds__(BpiTile<T>::kThreadsPerBlock)
    bpi_cavity_kernel(const CoefOmega<T>* __restrict__ coef, const T* __restrict__ x_hat,
                      const T* __restrict__ mag, T* __restrict__ b_part, T* __restrict__ h_in,
                      int64_t B, int64_t N, int64_t K) {
  using Tile = BpiTile<T>;
  constexpr int kWarps = Tile::kWarps, kRows = Tile::kRows, kTK = Tile::kTK, kTI = Tile::kTI,
                kTA = Tile::kTA;
  __shared__ CoefOmega<T> s_coef[kTA][kTK];
  __shared__ T s_x[kTA][kTI];
  __shared__ T s_b[kComputeB ? kWarps : 1][kTA][kTI];

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t k0 = int64_t(blockIdx.y) * kTK, i0 = int64_t(blockIdx.x) * kTI;
  const int k_count = static_cast<int>(K - k0 < kTK ? K - k0 : kTK);
  const int i_count = static_cast<int>(N - i0 < kTI ? N - i0 : kTI);
  const int64_t i = i0 + lane;
  const bool i_ok = lane < i_count;
  const int kw = warp * kRows;                         // this warp's first unit in the tile
  const bool warp_busy = kw < k_count;                 // warp-uniform
  const int busy_warps = (k_count + kRows - 1) / kRows;  // warps holding at least one unit

  T m[kRows], h[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = (i_ok && kw + r < k_count) ? mag[(k0 + kw + r) * N + i] : T(0);
    h[r] = T(0);
  }

  for (int64_t a0 = 0; a0 < B; a0 += kTA) {
    const int ta = static_cast<int>(B - a0 < kTA ? B - a0 : kTA);
    // Stage the chunk. Padding records (unit or sample outside the layer) are all-zero, which
    // gives ĝ = 0; padding inputs have x̂ = m = 0.
    for (int e = threadIdx.x; e < kTA * kTK; e += Tile::kThreadsPerBlock) {
      const int al = e / kTK, kk = e % kTK;
      s_coef[al][kk] = (al < ta && kk < k_count) ? coef[(a0 + al) * K + k0 + kk]
                                                 : CoefOmega<T>{T(0), T(0), T(0), T(0)};
    }
    for (int e = threadIdx.x; e < kTA * kTI; e += Tile::kThreadsPerBlock) {
      const int al = e / kTI, ii = e % kTI;
      s_x[al][ii] = (al < ta && ii < i_count) ? x_hat[(a0 + al) * N + i0 + ii] : T(0);
    }
    __syncthreads();
    if (warp_busy) {
      for (int al = 0; al < ta; ++al) {
        const T x = s_x[al][lane];
        T b_acc = T(0);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const CoefOmega<T> cf = s_coef[al][kw + r];  // broadcast
          const T g_cav = cavity_g<kHard>(cf, cavity_omega(cf.omega, m[r], x));
          h[r] += g_cav * x;
          b_acc += m[r] * g_cav;
        }
        if constexpr (kComputeB) s_b[warp][al][lane] = b_acc;
      }
    }
    __syncthreads();
    if constexpr (kComputeB) {
      // b over the k-tile: the busy warps' partials in warp order.
      for (int e = threadIdx.x; e < ta * kTI; e += Tile::kThreadsPerBlock) {
        const int al = e / kTI, ii = e % kTI;
        if (ii < i_count) {
          T acc = s_b[0][al][ii];
          for (int w = 1; w < busy_warps; ++w) acc += s_b[w][al][ii];
          b_part[(int64_t(blockIdx.y) * B + a0 + al) * N + i0 + ii] = acc;
        }
      }
    }
    // The next chunk's staging writes only s_coef / s_x, which the loop above does not read;
    // s_b is written again only after the next __syncthreads.
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (i_ok && kw + r < k_count) h_in[(k0 + kw + r) * N + i] = h[r];
  }
}

template <typename T, bool kHard, bool kComputeB>
void launch_bpi(dim3 grid, cudaStream_t stream, const CoefOmega<T>* coef, const T* x_hat,
                const T* mag, T* b_part, T* h_in, int64_t B, int64_t N, int64_t K) {
  bpi_cavity_kernel<T, kHard, kComputeB>
      <<<grid, BpiTile<T>::kThreadsPerBlock, 0, stream>>>(coef, x_hat, mag, b_part, h_in, B, N, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> linear_bwd_bpi_cuda(const at::Tensor& b_top,
                                                       const at::Tensor& omega,
                                                       const at::Tensor& var,
                                                       const at::Tensor& x_hat,
                                                       const at::Tensor& mag, bool hard,
                                                       bool compute_b) {
  const LayerDims d = check_linear_bwd_bpi(b_top, omega, var, x_hat, mag);
  const int64_t B = d.B, N = d.N, K = d.K;
  check_cuda("bp_linear_bwd_bpi", x_hat, "x_hat");
  const c10::cuda::CUDAGuard guard(x_hat.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor h_in = at::empty({K, N}, x_hat.options());
  if (K == 0 || N == 0) {
    at::Tensor b = compute_b ? at::zeros({B, N}, x_hat.options()) : x_hat.new_empty({B, 0});
    return {b, h_in};
  }
  const at::Tensor xc = x_hat.contiguous(), mc = mag.contiguous();
  const at::Tensor bc = b_top.contiguous(), oc = omega.contiguous(), vc = var.contiguous();
  at::Tensor b = x_hat.new_empty({B, compute_b ? N : 0});

  AT_DISPATCH_FLOATING_TYPES(x_hat.scalar_type(), "bp_linear_bwd_bpi_cuda", [&] {
    using Tile = BpiTile<scalar_t>;
    const int64_t n_ktiles = ceil_div(K, Tile::kTK);
    const dim3 grid(grid_dim("bp_linear_bwd_bpi", ceil_div(N, Tile::kTI), kGridXLimit, "N"),
                    grid_dim("bp_linear_bwd_bpi", n_ktiles, kGridYZLimit, "K"));
    // [B, K] coefficient records, sample-major (a chunk of samples × a k-tile is contiguous).
    const at::Tensor coef = make_coef<scalar_t>(bc, oc, vc, B, K, hard, /*k_major=*/false, stream);
    const auto* pc = reinterpret_cast<const CoefOmega<scalar_t>*>(coef.const_data_ptr<scalar_t>());
    const scalar_t* px = xc.const_data_ptr<scalar_t>();
    const scalar_t* pm = mc.const_data_ptr<scalar_t>();
    scalar_t* ph = h_in.mutable_data_ptr<scalar_t>();
    if (!compute_b) {
      if (hard) launch_bpi<scalar_t, true, false>(grid, stream, pc, px, pm, nullptr, ph, B, N, K);
      else launch_bpi<scalar_t, false, false>(grid, stream, pc, px, pm, nullptr, ph, B, N, K);
      return;
    }
    // Per-k-tile partials of b (b itself when there is one k-tile), then their ordered sum.
    at::Tensor part = n_ktiles > 1 ? at::empty({n_ktiles, B, N}, x_hat.options()) : b;
    scalar_t* pp = part.mutable_data_ptr<scalar_t>();
    if (hard) launch_bpi<scalar_t, true, true>(grid, stream, pc, px, pm, pp, ph, B, N, K);
    else launch_bpi<scalar_t, false, true>(grid, stream, pc, px, pm, pp, ph, B, N, K);
    if (n_ktiles > 1) {
      sum_partials<scalar_t>(pp, b.mutable_data_ptr<scalar_t>(), n_ktiles, B * N, stream);
    }
  });
  return {b, h_in};
}

// ---- field / reinforcement / damping update -----------------------------------------------
//
//   H ← H_in + r H + ρ H_prior,  m ← [ψ m + (1 − ψ) tanh H] · mask        (damp_field = False)
//   H ← ψ H + (1 − ψ)(H_in + r H + ρ H_prior),  m ← tanh(H) · mask         (damp_field = True)
//   δ = mean |m_new − m_old| (0-dim, accumulated in float64).
// One pass over [K, N]: block j owns the fixed chunk [j·kFieldChunk, (j+1)·kFieldChunk) and
// writes its partial Σ|Δm| (a fixed-order block sum); a one-block second pass sums the partials
// in a fixed order and divides. The grid depends only on K·N, so δ is deterministic.

constexpr int kFieldItems = 8;                            // elements per thread
constexpr int64_t kFieldChunk = int64_t(kThreads) * kFieldItems;  // elements per block

// field, mag: [K, N] (in/out);  h_in, prior (nullptr: H itself), mask (nullptr: 1):
// [K, N];  partial: [n_blocks] float64. No __restrict__: the prior (or any input) may alias the
// field; each element is read before it is written, by the same thread.
template <typename T, bool kDampField>
__global__ void __launch_bounds__(kThreads)
    field_update_kernel(T* field, T* mag, const T* h_in, const T* prior,
                        const T* mask, T rho, T r, T psi, int64_t n,
                        double* __restrict__ partial) {
  __shared__ double scratch[kWarpSize];
  const int64_t base = int64_t(blockIdx.x) * kFieldChunk + threadIdx.x;
  double change = 0;
#pragma unroll
  for (int j = 0; j < kFieldItems; ++j) {
    const int64_t e = base + int64_t(j) * kThreads;
    if (e < n) {
      T H = field[e];
      const T pr = prior ? prior[e] : H;
      const T msk = mask ? mask[e] : T(1);
      const T m_old = mag[e];
      T m_new;
      if constexpr (kDampField) {
        m_new = field_update_damped_field(H, h_in[e], pr, msk, rho, r, psi);
      } else {
        m_new = field_update(H, h_in[e], pr, m_old, msk, rho, r, psi);
      }
      change += fabs(static_cast<double>(m_new - m_old));
      field[e] = H;
      mag[e] = m_new;
    }
  }
  change = block_sum(change, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = change;
}

// out[0] = (Σ_j partial[j]) / numel, one block.  partial: [n_parts] float64;  out: 0-dim.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    field_delta_kernel(const double* __restrict__ partial, int64_t n_parts, int64_t numel,
                       T* __restrict__ out) {
  __shared__ double scratch[kWarpSize];
  double acc = 0;
  for (int64_t j = threadIdx.x; j < n_parts; j += blockDim.x) acc += partial[j];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<T>(acc / static_cast<double>(numel));
}

at::Tensor field_update_cuda(at::Tensor& field, at::Tensor& mag, const at::Tensor& h_in,
                             const std::optional<at::Tensor>& field_prior,
                             const std::optional<at::Tensor>& mask, double rho, double r,
                             double psi, bool damp_field) {
  check_field_update(field, mag, h_in, field_prior, mask);
  check_cuda("bp_field_update_", field, "field");
  const c10::cuda::CUDAGuard guard(field.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t numel = field.numel();
  if (numel == 0) return at::zeros({}, field.options());
  const at::Tensor hc = h_in.contiguous(), pc = contiguous_or_null(field_prior),
                   mkc = contiguous_or_null(mask);
  const int64_t n_blocks = ceil_div(numel, kFieldChunk);
  at::Tensor partial = at::empty({n_blocks}, field.options().dtype(at::kDouble));
  at::Tensor delta = at::empty({}, field.options());
  const unsigned blocks = grid_dim("bp_field_update_", n_blocks, kGridXLimit, "K·N");
  AT_DISPATCH_FLOATING_TYPES(field.scalar_type(), "bp_field_update_cuda", [&] {
    scalar_t* pH = field.mutable_data_ptr<scalar_t>();
    scalar_t* pm = mag.mutable_data_ptr<scalar_t>();
    const scalar_t* ph = hc.const_data_ptr<scalar_t>();
    const scalar_t* pp = pc.defined() ? pc.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* pk = mkc.defined() ? mkc.const_data_ptr<scalar_t>() : nullptr;
    double* ppart = partial.mutable_data_ptr<double>();
    const scalar_t rho_t = rho, r_t = r, psi_t = psi;
    if (damp_field) {
      field_update_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
          pH, pm, ph, pp, pk, rho_t, r_t, psi_t, numel, ppart);
    } else {
      field_update_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
          pH, pm, ph, pp, pk, rho_t, r_t, psi_t, numel, ppart);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    field_delta_kernel<scalar_t><<<1, kThreads, 0, stream>>>(ppart, n_blocks, numel,
                                                             delta.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return delta;
}

// ---- weight variance σ = (1 − m²) · mask --------------------------------------------------

// mag, sigma: n elements contiguous;  mask: n elements, nullptr: 1.
template <typename T>
__global__ void weight_var_kernel(const T* __restrict__ mag, const T* __restrict__ mask,
                                  T* __restrict__ sigma, int64_t n) {
  BPK_GRID_STRIDE(e, n) { sigma[e] = weight_variance(mag[e], mask ? mask[e] : T(1)); }
}

at::Tensor weight_var_cuda(const at::Tensor& mag, const std::optional<at::Tensor>& mask) {
  check_weight_var(mag, mask);
  check_cuda("bp_weight_var", mag, "mag");
  const c10::cuda::CUDAGuard guard(mag.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor mc = mag.contiguous(), mkc = contiguous_or_null(mask);
  at::Tensor sigma = at::empty_like(mc);
  const int64_t n = mc.numel();
  if (n == 0) return sigma;
  AT_DISPATCH_FLOATING_TYPES(mag.scalar_type(), "bp_weight_var_cuda", [&] {
    weight_var_kernel<scalar_t><<<elementwise_blocks(n), kThreads, 0, stream>>>(
        mc.const_data_ptr<scalar_t>(), mkc.defined() ? mkc.const_data_ptr<scalar_t>() : nullptr,
        sigma.mutable_data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return sigma;
}

#undef BPK_GRID_STRIDE

}  // namespace
}  // namespace cuda
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CUDA, m) {
  m.impl("bp_linear_input", &bpk::cuda::linear_input_cuda);
  m.impl("bp_upfield", &bpk::cuda::upfield_cuda);
  m.impl("bp_output", &bpk::cuda::output_cuda);
  m.impl("bp_argmax_output", &bpk::cuda::argmax_output_cuda);
  m.impl("bp_linear_bwd_bpi", &bpk::cuda::linear_bwd_bpi_cuda);
  m.impl("bp_field_update_", &bpk::cuda::field_update_cuda);
  m.impl("bp_weight_var", &bpk::cuda::weight_var_cuda);
}
