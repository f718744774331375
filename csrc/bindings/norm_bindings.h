// Bindings of the fused gradient-norm clipping (cpu/norms.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace pyfastopt {

// Adds `clip_grad_norm` to the module.
void register_norm_bindings(pybind11::module_& m);

}  // namespace pyfastopt
