// Portability macros shared by the CPU and CUDA builds of the update rules.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PFO_HD __host__ __device__ __forceinline__
#else
#define PFO_HD inline __attribute__((always_inline))
#endif

#if defined(_MSC_VER)
#define PFO_RESTRICT __restrict
#else
#define PFO_RESTRICT __restrict__
#endif
