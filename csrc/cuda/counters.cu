// Step counters on the device (capturable/fused groups): advanced by a small kernel on the
// call's stream before the step's own launches, which then read them (launch.cuh).
#include "launch.cuh"

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {
namespace {

constexpr int kMaxSteps = 3800;  // 8 bytes each, within the kernel-parameter limit
struct StepList {
  int64_t addr[kMaxSteps];
  int32_t n;
};

// Each counter advances by one (float32 or float64), unless GradScaler's found_inf is 1 (torch's
// fused step adds one, then subtracts found_inf). Atomic, so a counter shared by two rows
// advances twice, as on the CPU.
__global__ void advance_steps(const __grid_constant__ StepList list, bool f64,
                              const float* found_inf) {
  if (found_inf != nullptr && *found_inf == 1.0f) return;
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < list.n;
       i += static_cast<int>(gridDim.x * blockDim.x)) {
    if (f64) {
      atomicAdd(reinterpret_cast<double*>(list.addr[i]), 1.0);
    } else {
      atomicAdd(reinterpret_cast<float*>(list.addr[i]), 1.0f);
    }
  }
}

}  // namespace

void advance_device_steps(const int64_t* table, int64_t rows, int64_t width, bool f64,
                          const float* found_inf, cudaStream_t stream) {
  auto list = std::make_unique<StepList>();
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxSteps) {
    list->n = static_cast<int32_t>(rows - r0 < kMaxSteps ? rows - r0 : kMaxSteps);
    for (int32_t i = 0; i < list->n; ++i) list->addr[i] = table[(r0 + i) * width + 1];
    const unsigned blocks = static_cast<unsigned>((list->n + 255) / 256);
    PFO_LAUNCH(advance_steps, blocks, 256, stream, *list, f64, found_inf);
    check(cudaGetLastError(), "step counter launch failed");
  }
}

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
