// Bindings of the 8-bit block quantisation (pyfastopt/quant.h): the maps, and whole-buffer
// conversions used when state changes form (load_state_dict, the float32 export).
#pragma once

#include <pybind11/pybind11.h>

namespace pyfastopt {

// Adds `quant_map`, `quant_tables_ok`, `quantize_blockwise` and `dequantize_blockwise`.
void register_quant_bindings(pybind11::module_& m);

}  // namespace pyfastopt
