// Helpers shared by the CUDA kernel files: launch arithmetic, deterministic warp / block
// reductions, the per-(unit, sample) output-function coefficients staged by the cavity kernels,
// and the second pass that sums per-tile partials. Included only by csrc/cuda/*.cu.
#pragma once
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "bpkernels/binary_bp.h"
#include "checks.h"

namespace bpk {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kThreads = 256;  // threads per block of the element-wise kernels
// Block cap of the grid-stride element-wise kernels (each thread then loops).
constexpr int64_t kMaxElementwiseBlocks = 8192;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over n elements with kThreads threads per block (n > 0).
inline unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(std::min(ceil_div(n, kThreads), kMaxElementwiseBlocks));
}

// Every CUDA entry point: after the operator's checks (checks.h) have established that all
// tensors share the device of `ref`, require that this device is a CUDA device.
inline void check_cuda(const char* op, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(ref.is_cuda(), op, ": ", name,
              " must be a CUDA tensor for the CUDA kernel, got device ", ref.device());
}

// One dimension of a launch grid must fit the hardware limit.
inline unsigned grid_dim(const char* op, int64_t n, int64_t limit, const char* what) {
  TORCH_CHECK(n <= limit, op, ": ", what, " needs ", n, " blocks in one grid dimension (limit ",
              limit, "); the layer is too large for this kernel");
  return static_cast<unsigned>(n);
}
constexpr int64_t kGridXLimit = 2147483647;
constexpr int64_t kGridYZLimit = 65535;

// Sum over the 32 lanes of a warp by a butterfly of xor shuffles: every lane gets the same
// result, and the order of the additions is fixed (deterministic). All lanes must call it.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum over the threads of a block (blockDim.x a multiple of 32, at most 1024): warp sums, then
// warp 0 sums the per-warp results in a fixed order. The result is valid in thread 0.
// `scratch` holds at least 32 values; the call begins and ends with __syncthreads, so it can
// be called repeatedly with the same scratch.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int n_warps = blockDim.x / kWarpSize;
  __syncthreads();
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = T(0);
  if (warp == 0) {
    total = lane < n_warps ? scratch[lane] : T(0);
    total = warp_sum(total);
  }
  __syncthreads();
  return total;
}

// Output-function coefficients of unit k for sample a (see bpk::OutputCoef) and the
// preactivation mean ω[a,k], packed in one aligned record so a thread loads it with one or two
// 16-byte accesses.
template <typename T>
struct alignas(4 * sizeof(T)) CoefOmega {
  T alpha, c, num, omega;
};

// ĝ = g(b_top, ω̃, s) from a coefficient record at the cavity preactivation mean ω̃:
//   num / erfcx(alpha ω̃) for a hard label, num / [exp((alpha ω̃)² + c) + erfcx(alpha ω̃)] otherwise.
template <bool kHard, typename T>
__device__ __forceinline__ T cavity_g(const CoefOmega<T>& k, T omega_cav) {
  const OutputCoef<T> oc{k.alpha, k.c, k.num};
  if constexpr (kHard) {
    return output_g_hard(oc, omega_cav);
  } else {
    return output_g(oc, omega_cav);
  }
}

// Prologue of the cavity kernels: for every (a, k),
//   s = √V[a,k],  (alpha, c, num) = output_coef(b_top[a,k], s)  (or output_coef_hard),
//   coef[·] = {alpha, c, num, ω[a,k]},
// stored sample-major [B, K] (kKMajor = false) or unit-major [K, B] (kKMajor = true).
//   b_top, omega, var: [B, K] contiguous;  coef: [B, K] or [K, B] records.
template <typename T, bool kHard, bool kKMajor>
__global__ void coef_kernel(const T* __restrict__ b_top, const T* __restrict__ omega,
                            const T* __restrict__ var, CoefOmega<T>* __restrict__ coef, int64_t B,
                            int64_t K) {
  const int64_t n = B * K;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const T s = sqrt(var[e]);
    const OutputCoef<T> oc = kHard ? output_coef_hard(b_top[e], s) : output_coef(b_top[e], s);
    const int64_t dst = kKMajor ? (e % K) * B + e / K : e;
    coef[dst] = CoefOmega<T>{oc.alpha, oc.c, oc.num, omega[e]};
  }
}

// Launches coef_kernel on `stream`; returns the coefficients as a [n_records · 4] tensor of the
// input dtype (read it through data_ptr as CoefOmega<T>).
template <typename T>
at::Tensor make_coef(const at::Tensor& b_top, const at::Tensor& omega, const at::Tensor& var,
                     int64_t B, int64_t K, bool hard, bool k_major, cudaStream_t stream) {
  at::Tensor coef = at::empty({B * K * 4}, omega.options());
  if (B * K == 0) return coef;
  auto* out = reinterpret_cast<CoefOmega<T>*>(coef.mutable_data_ptr<T>());
  const T* pb = b_top.const_data_ptr<T>();
  const T* po = omega.const_data_ptr<T>();
  const T* pv = var.const_data_ptr<T>();
  const unsigned blocks = elementwise_blocks(B * K);
  if (hard && k_major) coef_kernel<T, true, true><<<blocks, kThreads, 0, stream>>>(pb, po, pv, out, B, K);
  if (hard && !k_major) coef_kernel<T, true, false><<<blocks, kThreads, 0, stream>>>(pb, po, pv, out, B, K);
  if (!hard && k_major) coef_kernel<T, false, true><<<blocks, kThreads, 0, stream>>>(pb, po, pv, out, B, K);
  if (!hard && !k_major) coef_kernel<T, false, false><<<blocks, kThreads, 0, stream>>>(pb, po, pv, out, B, K);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return coef;
}

// Second pass of the deterministic tile reductions:
//   out[e] = Σ_{t < n_parts} part[t · stride + e]   (t ascending),  e < stride.
//   part: [n_parts, stride],  out: [stride].
template <typename T>
__global__ void sum_partials_kernel(const T* __restrict__ part, T* __restrict__ out,
                                    int64_t n_parts, int64_t stride) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < stride;
       e += int64_t(gridDim.x) * blockDim.x) {
    T acc = part[e];
    for (int64_t t = 1; t < n_parts; ++t) acc += part[t * stride + e];
    out[e] = acc;
  }
}

template <typename T>
void sum_partials(const T* part, T* out, int64_t n_parts, int64_t stride, cudaStream_t stream) {
  if (stride == 0) return;
  sum_partials_kernel<T><<<elementwise_blocks(stride), kThreads, 0, stream>>>(part, out, n_parts,
                                                                             stride);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace bpk
