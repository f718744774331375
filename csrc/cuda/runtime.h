// The CUDA runtime as the CUDA module's sources use it, and how they launch a kernel.
//
// Built by nvcc, this is <cuda_runtime.h> and the triple-chevron launch. Built by the host
// compiler with PFO_CUDA_EMULATION (tests/native/check_cuda_emulated.cpp only), the same sources
// run on the host: tests/native/emulated_cuda.h supplies the few runtime calls they make and runs
// a launch as a loop over its blocks and threads, which is exact for these kernels (no thread
// reads what another writes, no barriers).
#pragma once

#if defined(PFO_CUDA_EMULATION)
#include "emulated_cuda.h"
#define PFO_LAUNCH(kernel, blocks, threads, stream, ...) \
  ::pfo_emulation::launch((kernel), (blocks), (threads), (stream), __VA_ARGS__)
#else
#include <cuda_runtime.h>
#define PFO_LAUNCH(kernel, blocks, threads, stream, ...) \
  (kernel)<<<(blocks), (threads), 0, (stream)>>>(__VA_ARGS__)
#endif
