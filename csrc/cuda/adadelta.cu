// Adadelta on the GPU: the rule and storage choices of cpu/kernels.cpp's adadelta(), run by
// launch.cuh.
#include "launch.cuh"

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {

void adadelta(const Call& c, DType dtype, const AdadeltaParams& hp) {
  with_storage<false, StateStores::k16Bit>(c.table, dtype, [&](auto st) {
    using St = decltype(st);
    run<St, AdadeltaRule<typename St::compute>, WithoutStep>(c, hp);
  });
}

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
