// CUDA kernels of packed (XNOR-popcount) inference: xnor_im2col (sign bits gathered per
// convolution patch) and xnor_gemm (binary GEMM by __popcll). Semantics and argument checks are
// those of csrc/cpu/xnor_cpu.cpp; the bit maths is bpkernels/xnor.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "bpkernels/xnor.h"
#include "checks.h"
#include "cuda/cuda_utils.cuh"


namespace bpk {
namespace cuda {
namespace {

// ---- binary GEMM ------------------------------------------------------------------------------

// A block computes a kTile × kTile tile of z (rows × units) with kTile × kRowThreads threads,
// each kTile / kRowThreads rows of one unit; kTile words of x and w per step are staged in
// shared memory (rows padded by one word against bank conflicts).
constexpr int kTile = 32;
constexpr int kRowThreads = 8;

struct GemmArgs {
  const uint64_t* x;   // [R, W]
  const uint64_t* w;   // [K, W]
  const uint64_t* xv;  // [P, W] or null
  const uint64_t* wn;  // [K, W] or null
  int32_t* z;          // [R, K]
  int64_t R, K, W, P, n;
};

// z[r, k] = count − 2·Σ_j popcount((x[r, j] XOR w[k, j]) AND care), care = xv[r mod P, j] AND
// wn[k, j] (planes that are given), count = Σ_j popcount(care), or n when no plane is given.
template <bool kXV, bool kWN>
__global__ void xnor_gemm_kernel(GemmArgs a) {
  __shared__ uint64_t xs[kTile][kTile + 1], ws[kTile][kTile + 1];
  __shared__ uint64_t vs[kXV ? kTile : 1][kTile + 1], ns[kWN ? kTile : 1][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTile + tx;
  const int64_t r0 = int64_t(blockIdx.y) * kTile, k0 = int64_t(blockIdx.x) * kTile;
  constexpr int kRows = kTile / kRowThreads;
  int64_t mism[kRows] = {}, count[kRows] = {};
  for (int64_t j0 = 0; j0 < a.W; j0 += kTile) {
    for (int e = tid; e < kTile * kTile; e += kTile * kRowThreads) {
      const int row = e / kTile, col = e % kTile;
      const int64_t j = j0 + col, r = r0 + row, k = k0 + row;
      const bool jin = j < a.W;
      xs[row][col] = (jin && r < a.R) ? a.x[r * a.W + j] : 0;
      ws[row][col] = (jin && k < a.K) ? a.w[k * a.W + j] : 0;
      if constexpr (kXV) vs[row][col] = (jin && r < a.R) ? a.xv[(r % a.P) * a.W + j] : 0;
      if constexpr (kWN) ns[row][col] = (jin && k < a.K) ? a.wn[k * a.W + j] : 0;
    }
    __syncthreads();
#pragma unroll 4
    for (int jj = 0; jj < kTile; ++jj) {
      const uint64_t wv = ws[tx][jj];
      const uint64_t nv = kWN ? ns[tx][jj] : ~uint64_t(0);
#pragma unroll
      for (int q = 0; q < kRows; ++q) {
        const int row = ty + q * kRowThreads;
        uint64_t care = nv;
        if constexpr (kXV) care &= vs[row][jj];
        mism[q] += xnor::mismatches(xs[row][jj], wv, care);
        if constexpr (kXV || kWN) count[q] += xnor::popcount64(care);
      }
    }
    __syncthreads();
  }
  const int64_t k = k0 + tx;
  if (k >= a.K) return;
#pragma unroll
  for (int q = 0; q < kRows; ++q) {
    const int64_t r = r0 + ty + q * kRowThreads;
    if (r < a.R) a.z[r * a.K + k] = int32_t(((kXV || kWN) ? count[q] : a.n) - 2 * mism[q]);
  }
}

at::Tensor xnor_gemm_cuda(const at::Tensor& x, const at::Tensor& w,
                          const std::optional<at::Tensor>& x_valid,
                          const std::optional<at::Tensor>& w_nonzero, int64_t n) {
  TORCH_CHECK(x.is_cuda(), "xnor_gemm: x must be a CUDA tensor for the CUDA kernel, got ", x.device());
  check_xnor_gemm(x, w, x_valid, w_nonzero, n);
  const int64_t R = x.size(0), W = x.size(1), K = w.size(0);
  at::Tensor xv, wn;
  if (x_valid) xv = x_valid->contiguous();
  if (w_nonzero) wn = w_nonzero->contiguous();
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  at::Tensor z = at::empty({R, K}, x.options().dtype(at::kInt));
  if (R == 0 || K == 0) return z;
  auto words = [](const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<const uint64_t*>(t.const_data_ptr<int64_t>()) : nullptr;
  };
  const GemmArgs a{words(xc), words(wc), words(xv), words(wn), z.mutable_data_ptr<int32_t>(),
                   R, K, W, xv.defined() ? xv.size(0) : 1, n};
  const dim3 block(kTile, kRowThreads);
  const dim3 grid(grid_dim("xnor_gemm", ceil_div(K, kTile), kGridXLimit, "K"),
                  grid_dim("xnor_gemm", ceil_div(R, kTile), kGridYZLimit, "R"));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (xv.defined() && wn.defined()) {
    xnor_gemm_kernel<true, true><<<grid, block, 0, stream>>>(a);
  } else if (xv.defined()) {
    xnor_gemm_kernel<true, false><<<grid, block, 0, stream>>>(a);
  } else if (wn.defined()) {
    xnor_gemm_kernel<false, true><<<grid, block, 0, stream>>>(a);
  } else {
    xnor_gemm_kernel<false, false><<<grid, block, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return z;
}

// ---- sign bits with im2col ----------------------------------------------------------------------

struct Im2colArgs {
  int64_t B, H, W, C, kh, kw, sh, sw, ph, pw, OH, OW, words;  // words per row
  int64_t sb, sy, sx, sc;                                     // strides of z [B, H, W, C]
};

// One thread per output word: bits[(b, oy, ox), q] (valid: b = 0 and the tap-inside flags).
// Bit t of a row is tap (i, j) = divmod(t / C, kw), channel c = t mod C.
template <typename T, bool kValid>
__global__ void xnor_im2col_kernel(const T* z, uint64_t* out, Im2colArgs a, int64_t n_words) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n_words;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = e / a.words, q = e % a.words;
    const int64_t positions = a.OH * a.OW;
    const int64_t b = kValid ? 0 : row / positions, pos = row % positions;
    const int64_t oy = pos / a.OW, ox = pos % a.OW;
    const int64_t t0 = q * 64, len = min(int64_t(64), a.kh * a.kw * a.C - t0);
    uint64_t word = 0;
    for (int64_t bit = 0; bit < len; ++bit) {
      const int64_t t = t0 + bit, tap = t / a.C, c = t % a.C;
      const int64_t y = oy * a.sh - a.ph + tap / a.kw, x = ox * a.sw - a.pw + tap % a.kw;
      if (y < 0 || y >= a.H || x < 0 || x >= a.W) continue;
      const bool on = kValid || xnor::sign_bit<T>(z[b * a.sb + y * a.sy + x * a.sx + c * a.sc]);
      word |= uint64_t(on) << bit;
    }
    out[e] = word;
  }
}

std::tuple<at::Tensor, at::Tensor> xnor_im2col_cuda(const at::Tensor& z, at::IntArrayRef kernel_size,
                                                    at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(z.is_cuda(), "xnor_im2col: z must be a CUDA tensor for the CUDA kernel, got ", z.device());
  check_xnor_im2col(z, kernel_size, stride, padding);
  Im2colArgs a{};
  a.B = z.size(0), a.H = z.size(1), a.W = z.size(2), a.C = z.size(3);
  a.kh = kernel_size[0], a.kw = kernel_size[1], a.sh = stride[0], a.sw = stride[1];
  a.ph = padding[0], a.pw = padding[1];
  a.OH = xnor::conv_out_size(a.H, a.kh, a.sh, a.ph);
  a.OW = xnor::conv_out_size(a.W, a.kw, a.sw, a.pw);
  a.words = (a.kh * a.kw * a.C + 63) / 64;
  a.sb = z.stride(0), a.sy = z.stride(1), a.sx = z.stride(2), a.sc = z.stride(3);
  const c10::cuda::CUDAGuard guard(z.device());
  const auto opts = z.options().dtype(at::kLong);
  const int64_t P = a.OH * a.OW;
  at::Tensor bits = at::empty({a.B * P, a.words}, opts), valid = at::empty({P, a.words}, opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  auto out = [](at::Tensor& t) { return reinterpret_cast<uint64_t*>(t.mutable_data_ptr<int64_t>()); };
  AT_DISPATCH_SWITCH(
      z.scalar_type(), "xnor_im2col",
      AT_DISPATCH_CASE(at::kFloat, [&] {
        if (bits.numel() > 0) {
          xnor_im2col_kernel<float, false><<<elementwise_blocks(bits.numel()), kThreads, 0, stream>>>(
              z.const_data_ptr<float>(), out(bits), a, bits.numel());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        xnor_im2col_kernel<float, true><<<elementwise_blocks(valid.numel()), kThreads, 0, stream>>>(
            nullptr, out(valid), a, valid.numel());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }) AT_DISPATCH_CASE(at::kDouble, [&] {
        if (bits.numel() > 0) {
          xnor_im2col_kernel<double, false><<<elementwise_blocks(bits.numel()), kThreads, 0, stream>>>(
              z.const_data_ptr<double>(), out(bits), a, bits.numel());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        xnor_im2col_kernel<double, true><<<elementwise_blocks(valid.numel()), kThreads, 0, stream>>>(
            nullptr, out(valid), a, valid.numel());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }) AT_DISPATCH_CASE(at::kInt, [&] {
        if (bits.numel() > 0) {
          xnor_im2col_kernel<int32_t, false><<<elementwise_blocks(bits.numel()), kThreads, 0, stream>>>(
              z.const_data_ptr<int32_t>(), out(bits), a, bits.numel());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        xnor_im2col_kernel<int32_t, true><<<elementwise_blocks(valid.numel()), kThreads, 0, stream>>>(
            nullptr, out(valid), a, valid.numel());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }));
  return {bits, valid};
}

}  // namespace
}  // namespace cuda
}  // namespace bpk

TORCH_LIBRARY_IMPL(bpkernels, CUDA, m) {
  m.impl("xnor_im2col", &bpk::cuda::xnor_im2col_cuda);
  m.impl("xnor_gemm", &bpk::cuda::xnor_gemm_cuda);
}
