// RMSprop on the GPU: the rule and storage choices of cpu/kernels.cpp's rmsprop(), run by
// launch.cuh.
#include "launch.cuh"

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {

void rmsprop(const Call& c, DType dtype, const RmspropParams& hp) {
  with_storage<false, StateStores::k16Bit>(c.table, dtype, [&](auto st) {
    using St = decltype(st);
    with_bool(hp.centered, [&](auto cen) {
      with_bool(hp.momentum > 0.0, [&](auto mom) {
        using R = RmspropRule<typename St::compute, decltype(cen)::value, decltype(mom)::value>;
        run<St, R, WithoutStep>(c, hp);
      });
    });
  });
}

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
