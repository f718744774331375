// The CUDA module's step functions (one .cu file per algorithm, all through launch.cuh), as the
// bindings (cuda/module.cpp) call them. Host code; no CUDA header needed to include this.
#pragma once

#include <cstdint>
#include <string>

#include "pyfastopt/dispatch.h"
#include "pyfastopt/params.h"

#ifndef PFO_ISA_NS
#error "the CUDA module is built with PFO_ISA_NS=cuda"
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {  // see rules.h
namespace gpu {

// Where a call's step counters live (torch's layout decides): none (SGD: the aux word holds
// flags), 0-d tensors on the host (torch's default for CUDA parameters: read and advanced by the
// host, their values handed to the kernel), or 0-d tensors on the parameters' device (capturable
// or fused: advanced and read by the kernels, so nothing waits for the device).
enum class Steps : int { kNone = 0, kHost = 1, kDevice = 2 };

// One native call on the GPU: a table of device addresses (dispatch.h's rows; `table.grad_scale`
// and `table.found_inf` are device addresses of float32 scalars, or null), the device, torch's
// current stream on it, where the step counters are, and a tensor learning rate on the device
// (null: the params' lr).
struct Call {
  Table table;
  int device;
  int64_t stream;  // a cudaStream_t
  Steps steps;
  const float* lr;
};

void sgd(const Call& c, DType dtype, const SgdParams& hp);
void adagrad(const Call& c, DType dtype, const AdagradParams& hp);
void adadelta(const Call& c, DType dtype, const AdadeltaParams& hp);
void rmsprop(const Call& c, DType dtype, const RmspropParams& hp);
void adam(const Call& c, DType dtype, const AdamParams& hp);

// The CUDA runtime: its version, the driver's (0 without a driver), and the device count with
// the error of cudaGetDeviceCount (0 and "no error" when usable).
struct DeviceStatus {
  int runtime_version;
  int driver_version;
  int error;
  std::string error_name;
  std::string message;
  int devices;
};
DeviceStatus device_status();

// The architectures this module was compiled for (nvcc's __CUDA_ARCH_LIST__), e.g. "750,800".
const char* arch_list();

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
