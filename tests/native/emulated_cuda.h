// The CUDA runtime emulated on the host, for tests/native/check_cuda_emulated.cpp: the CUDA
// module's own sources (csrc/cuda/launch.cuh, counters.cu) compiled by the host compiler with
// PFO_CUDA_EMULATION run their launches here, as loops over every block and thread. "Device"
// memory is host memory. Exact for these kernels: no thread reads what another writes and there
// are no barriers, so any order of threads gives the GPU's result.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t : int { cudaSuccess = 0, cudaErrorInsufficientDriver = 35 };

namespace pfo_emulation {

inline thread_local dim3 block_idx, thread_idx, block_dim, grid_dim;
inline int device = 0;
inline bool no_device = false;  // what a machine without a driver answers
inline int64_t launches = 0;    // kernel launches so far
inline int64_t blocks = 0;      // and blocks
// run a block with at most this many threads (0: as launched); the kernels cover their block's
// elements with any thread count (check_cuda_traversal.cpp proves it for 512), and each thread
// here copies its 30 KB of arguments, as a GPU's threads never do
inline unsigned max_threads = 0;

template <class Kernel, class... Args>
void launch(Kernel kernel, unsigned grid, unsigned threads, cudaStream_t, Args&&... args) {
  ++launches;
  if (max_threads != 0 && threads > max_threads) threads = max_threads;
  grid_dim.x = grid;
  block_dim.x = threads;
  for (unsigned b = 0; b < grid; ++b) {
    ++blocks;
    block_idx.x = b;
    for (unsigned t = 0; t < threads; ++t) {
      thread_idx.x = t;
      kernel(args...);
    }
  }
}

}  // namespace pfo_emulation

#define blockIdx ::pfo_emulation::block_idx
#define threadIdx ::pfo_emulation::thread_idx
#define blockDim ::pfo_emulation::block_dim
#define gridDim ::pfo_emulation::grid_dim

inline cudaError_t cudaGetDevice(int* d) {
  if (pfo_emulation::no_device) return cudaErrorInsufficientDriver;
  *d = pfo_emulation::device;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) {
  if (pfo_emulation::no_device) return cudaErrorInsufficientDriver;
  pfo_emulation::device = d;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorName(cudaError_t e) {
  return e == cudaSuccess ? "cudaSuccess" : "cudaErrorInsufficientDriver";
}
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "CUDA driver version is insufficient for CUDA runtime";
}
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
inline double atomicAdd(double* p, double v) {
  const double old = *p;
  *p = old + v;
  return old;
}
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, sizeof d);
  return d;
}
