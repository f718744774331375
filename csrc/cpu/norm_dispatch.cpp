// The norm and vector kernels follow the optimizer kernels' SIMD choice (dispatch.cpp, by cpuid
// or select_kernels): one place decides, and these pick the build of the same name.
#include <cstring>

#include "pyfastopt/dispatch.h"
#include "pyfastopt/norms.h"
#include "pyfastopt/vector_ops.h"

namespace pyfastopt {
namespace {

// The set among a family's builds whose name is the active optimizer kernels' (a build not
// made for this architecture is null).
template <class Set>
const Set& matching(const Set* avx512, const Set* avx2, const Set& baseline) {
  const char* name = active_kernels().name;
  if (avx512 != nullptr && std::strcmp(name, avx512->name) == 0) return *avx512;
  if (avx2 != nullptr && std::strcmp(name, avx2->name) == 0) return *avx2;
  return baseline;
}

}  // namespace

#if defined(PFO_HAVE_X86_ISAS)
const NormKernelSet& active_norm_kernels() {
  return matching(&norm_kernels_avx512, &norm_kernels_avx2, norm_kernels_baseline);
}
const VecKernelSet& active_vector_kernels() {
  return matching(&vector_kernels_avx512, &vector_kernels_avx2, vector_kernels_baseline);
}
#else
const NormKernelSet& active_norm_kernels() {
  return matching<NormKernelSet>(nullptr, nullptr, norm_kernels_baseline);
}
const VecKernelSet& active_vector_kernels() {
  return matching<VecKernelSet>(nullptr, nullptr, vector_kernels_baseline);
}
#endif

}  // namespace pyfastopt
