// SGD on the GPU: the rule and storage choices of cpu/kernels.cpp's sgd(), run by launch.cuh.
#include "launch.cuh"

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {

void sgd(const Call& c, DType dtype, const SgdParams& hp) {
  with_storage<true, StateStores::k16Bit>(c.table, dtype, [&](auto st) {
    using St = decltype(st);
    with_bool(hp.momentum != 0.0, [&](auto mom) {
      run<St, SgdRule<typename St::compute, decltype(mom)::value>, WithFirstFlag>(c, hp);
    });
  });
}

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
