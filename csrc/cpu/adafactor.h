// Adafactor's step function (cpu/adafactor.cpp), declared for the kernel set of the same ISA
// build (kernels.cpp).
#pragma once

#include "pyfastopt/dispatch.h"
#include "pyfastopt/params.h"

#ifndef PFO_ISA_NS
#error "PFO_ISA_NS must name the ISA namespace of this build"
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {

// Table rows `[numel, step, p, g, s0, s1, (out), rows, cols]`: see cpu/adafactor.cpp.
void adafactor(const Table& t, DType dtype, const AdafactorParams& hp, int num_threads);

}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
