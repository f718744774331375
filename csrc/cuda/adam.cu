// Adam and AdamW on the GPU: the rule and storage choices of cpu/kernels.cpp's adam(), run by
// launch.cuh (bias corrections computed per tensor from its step, in double, as torch's fused
// CUDA kernel does).
#include "launch.cuh"

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {

void adam(const Call& c, DType dtype, const AdamParams& hp) {
  // the only betas whose powers can reach 1 exactly
  refuse_zero_division(c, hp.beta1 == 1.0 || hp.beta1 == -1.0,
                       [&](double step) { return 1.0 - std::pow(hp.beta1, step); });
  with_storage<true, StateStores::k16Bit>(c.table, dtype, [&](auto st) {
    using St = decltype(st);
    with_bool(hp.amsgrad, [&](auto ams) {
      using R = AdamRule<typename St::compute, decltype(ams)::value>;
      run<St, R, WithStep>(c, hp);
    });
  });
}

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
