// The norm kernels follow the optimizer kernels' SIMD choice (dispatch.cpp, by cpuid or
// select_kernels): one place decides, and this picks the norm build of the same name.
#include <cstring>

#include "pyfastopt/dispatch.h"
#include "pyfastopt/norms.h"

namespace pyfastopt {

const NormKernelSet& active_norm_kernels() {
  const char* name = active_kernels().name;
#if defined(PFO_HAVE_X86_ISAS)
  if (std::strcmp(name, norm_kernels_avx512.name) == 0) return norm_kernels_avx512;
  if (std::strcmp(name, norm_kernels_avx2.name) == 0) return norm_kernels_avx2;
#else
  (void)name;
#endif
  return norm_kernels_baseline;
}

}  // namespace pyfastopt
