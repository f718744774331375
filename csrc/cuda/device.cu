// The CUDA runtime as this module sees it: versions, devices, and the architectures it was
// compiled for. Host code only; nothing here runs when the module is imported.
#include <cuda_runtime.h>

#include "steps.h"

#define PFO_STR2(...) #__VA_ARGS__
#define PFO_STR(...) PFO_STR2(__VA_ARGS__)

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {

DeviceStatus device_status() {
  DeviceStatus s{};
  cudaRuntimeGetVersion(&s.runtime_version);
  if (cudaDriverGetVersion(&s.driver_version) != cudaSuccess) s.driver_version = 0;
  const cudaError_t e = cudaGetDeviceCount(&s.devices);
  if (e != cudaSuccess) s.devices = 0;
  s.error = static_cast<int>(e);
  s.error_name = cudaGetErrorName(e);
  s.message = cudaGetErrorString(e);
  cudaGetLastError();  // a failed query leaves nothing behind for later calls
  return s;
}

const char* arch_list() {
#if defined(__CUDA_ARCH_LIST__)
  return PFO_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
