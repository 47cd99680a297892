// Arithmetic ceilings of the device for the bpkernels CUDA kernels, measured by
// benchmarks/gpu_ceilings.py (which builds this file with nvcc into a small shared library and
// calls it through ctypes: no torch headers, so it builds in seconds).
//
// Every kernel keeps its data in registers: the only memory traffic is one float per thread
// written at the end, so the time is the arithmetic alone. Each thread runs kChains
// independent chains (or kRows independent evaluations) per iteration so that the pipelines
// stay full. Inputs come from kernel arguments and the thread index, so nothing is folded at
// compile time. What one iteration of each kernel counts as:
//   kFma32 / kFma64   kChains fused multiply-adds, x ← x·a + b             (2 FLOP each)
//   kExp              kChains expf, x ← expf(−x) (converges to 0.567, stays normal)
//   kErfcx            kChains bpk::erfcx<float> at spread arguments in [−2, 4]
//   kGSoft / kGHard   kRows cavity output functions ĝ = g(b, ω − m x̂, s) of a soft field b /
//                     a hard label, accumulated as H_in += ĝ x̂ and b += m ĝ: the inner loop of
//                     the fused BPI kernel (bpi_cavity_kernel) without its loads, i.e. the
//                     kernel's arithmetic ceiling in ĝ evaluations per second.
#include <cuda_runtime.h>

#include "bpkernels/binary_bp.h"

namespace {

constexpr int kChains = 8;
constexpr int kRows = 4;

enum Which { kFma32 = 0, kFma64 = 1, kExp = 2, kErfcx = 3, kGSoft = 4, kGHard = 5 };

template <typename T>
__global__ void fma_kernel(float* out, int iters, T a, T b) {
  T x[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) x[c] = T(threadIdx.x % 7) + T(c);
#pragma unroll 4
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) x[c] = x[c] * a + b;  // one FMA (contracted)
  }
  T s = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += x[c];
  out[blockIdx.x * blockDim.x + threadIdx.x] = static_cast<float>(s);
}

__global__ void exp_kernel(float* out, int iters, float scale) {
  float x[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) x[c] = 0.1f * float(c) + 1e-3f * float(threadIdx.x % 13);
#pragma unroll 4
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) x[c] = bpk::vexp(-scale * x[c]);
  }
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += x[c];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

__global__ void erfcx_kernel(float* out, int iters, float step) {
  // Arguments sweep [−2, 4): x = −2 + 6·frac(start + it·step), one start per chain and thread.
  float start[kChains], acc[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) {
    start[c] = 0.125f * float(c) + 0.0078125f * float(threadIdx.x % 17);
    acc[c] = 0.0f;
  }
#pragma unroll 4
  for (int it = 0; it < iters; ++it) {
    const float t = float(it) * step;
#pragma unroll
    for (int c = 0; c < kChains; ++c) {
      const float u = start[c] + t;
      acc[c] += bpk::erfcx(6.0f * (u - floorf(u)) - 2.0f);
    }
  }
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) s += acc[c];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

// One thread holds kRows weights (units k) of one input i, as in the fused BPI kernel; per
// iteration one sample a with its own (b, ω, s): ĝ[k] = g(b, ω − m[k] x̂, s), H_in[k] += ĝ[k] x̂,
// b_i += m[k] ĝ[k].
template <bool kHard>
__global__ void g_kernel(float* out, int iters, float step) {
  float m[kRows], h_in[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = 0.9f - 0.37f * float(r) + 1e-3f * float(threadIdx.x % 11);
    h_in[r] = 0.0f;
  }
  float b_i = 0.0f;
  const float x_hat = 0.5f + 1e-3f * float(threadIdx.x % 29);
#pragma unroll 2
  for (int it = 0; it < iters; ++it) {
    const float t = float(it) * step;
    const float u = t - floorf(t);                   // per-sample inputs in [0, 1)
    const float s = 3.0f + 20.0f * u;                // s = √V
    const float omega = (6.0f * u - 3.0f) * s;       // ω/s in [−3, 3)
    const float label = u < 0.5f ? -1.0f : 1.0f;
    float alpha, c, num;
    if constexpr (kHard) {
      bpk::output_coef_hard(label, s, alpha, num);
      c = 0.0f;
    } else {
      bpk::output_coef(label * (0.5f + 4.0f * u), s, alpha, c, num);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float o = omega - m[r] * x_hat;
      const float g = kHard ? bpk::output_g_hard(alpha, num, o) : bpk::output_g(alpha, c, num, o);
      h_in[r] += g * x_hat;
      b_i += m[r] * g;
    }
  }
  float sum = b_i;
#pragma unroll
  for (int r = 0; r < kRows; ++r) sum += h_in[r];
  out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}

}  // namespace

extern "C" {

// Operations one thread performs per iteration of kernel `which` (FLOP for the FMA kernels,
// function evaluations otherwise).
int bpk_ceiling_ops_per_iter(int which) {
  switch (which) {
    case kFma32:
    case kFma64:
      return 2 * kChains;
    case kExp:
    case kErfcx:
      return kChains;
    case kGSoft:
    case kGHard:
      return kRows;
    default:
      return -1;
  }
}

// Runs kernel `which` once on `blocks` × `threads` threads, `iters` iterations each, on the
// legacy default stream, and writes its time in milliseconds (CUDA events) to *ms. Returns a
// cudaError_t (0 = success); `out` must hold blocks·threads floats of device memory.
int bpk_ceiling_run(int which, float* out, int blocks, int threads, int iters, float* ms) {
  cudaEvent_t start, stop;
  cudaError_t err = cudaEventCreate(&start);
  if (err != cudaSuccess) return err;
  err = cudaEventCreate(&stop);
  if (err != cudaSuccess) return err;
  cudaEventRecord(start, 0);
  switch (which) {
    case kFma32:
      fma_kernel<float><<<blocks, threads>>>(out, iters, 0.999f, 1e-3f);
      break;
    case kFma64:
      fma_kernel<double><<<blocks, threads>>>(out, iters, 0.999, 1e-3);
      break;
    case kExp:
      exp_kernel<<<blocks, threads>>>(out, iters, 1.0f);
      break;
    case kErfcx:
      erfcx_kernel<<<blocks, threads>>>(out, iters, 0.0137f);
      break;
    case kGSoft:
      g_kernel<false><<<blocks, threads>>>(out, iters, 0.0137f);
      break;
    case kGHard:
      g_kernel<true><<<blocks, threads>>>(out, iters, 0.0137f);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  err = cudaGetLastError();
  if (err == cudaSuccess) {
    cudaEventRecord(stop, 0);
    err = cudaEventSynchronize(stop);
  }
  if (err == cudaSuccess) err = cudaEventElapsedTime(ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return err;
}

}  // extern "C"
