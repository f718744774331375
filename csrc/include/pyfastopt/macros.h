// Portability macros shared by the CPU and CUDA builds of the update rules.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PFO_HD __host__ __device__ __forceinline__
#else
#define PFO_HD inline __attribute__((always_inline))
#endif

// The rules' constructors, which take host-side hyper-parameters: also device functions under
// nvcc, so the CUDA kernel builds each rule on the device from its step counter and a tensor
// learning rate (cuda/kernels.cu). Nothing changes for the host compilers.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define PFO_HOST_DEVICE __host__ __device__
#else
#define PFO_HOST_DEVICE
#endif

#if defined(_MSC_VER)
#define PFO_RESTRICT __restrict
#else
#define PFO_RESTRICT __restrict__
#endif
