// Host/device qualifiers for the torch-free maths headers shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define BPK_HD __host__ __device__ __forceinline__
#else
#define BPK_HD inline
#endif
