// Adagrad on the GPU: the rule and storage choices of cpu/kernels.cpp's adagrad(), run by
// launch.cuh (the decayed learning rate is computed per tensor from its step, in double).
#include "launch.cuh"

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {

void adagrad(const Call& c, DType dtype, const AdagradParams& hp) {
  refuse_zero_division(c, hp.lr_decay < 0.0,
                       [&](double step) { return 1.0 + (step - 1.0) * hp.lr_decay; });
  with_storage<true, StateStores::k16Bit>(c.table, dtype, [&](auto st) {
    using St = decltype(st);
    run<St, AdagradRule<typename St::compute>, WithStep>(c, hp);
  });
}

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
