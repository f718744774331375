// Bindings of the vector operations of L-BFGS and BFGS (cpu/vector_ops.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace pyfastopt {

// Adds `vector_program` and `lbfgs_direction` to the module.
void register_vector_bindings(pybind11::module_& m);

}  // namespace pyfastopt
