// Host/device qualifiers for the torch-free maths headers shared by the CPU and CUDA kernels.
// On the host the functions are always inlined: the CPU kernels' `omp simd` loops only
// vectorise when every call in their body is inlined, and GCC's inliner otherwise gives up on
// the larger special functions once a loop body calls several of them.
#pragma once

#if defined(__CUDACC__)
#define BPK_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define BPK_HD inline __attribute__((always_inline))
#else
#define BPK_HD inline
#endif
