// Bindings of the 8-bit block quantisation: the Python layer (pyfastopt/optim/_lowmem.py)
// validates the tensors and hands over their addresses. The conversions are the very block
// functions the steps run (quant.h), in the SIMD build the steps use (dispatch.h), so a buffer
// quantised here reads back as a step left it.
#include "quant_bindings.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "pyfastopt/dispatch.h"
#include "pyfastopt/quant.h"

namespace pyfastopt {
namespace quant_bindings {

namespace py = pybind11;

constexpr int64_t kMaxBlock = 4096;

void check(int64_t n, int64_t block, std::initializer_list<int64_t> addrs) {
  if (n < 0 || block < 16 || block > kMaxBlock || block % 16 != 0) {
    throw std::invalid_argument("pyfastopt: invalid element count or block size");
  }
  for (int64_t a : addrs) {
    if (n > 0 && (a == 0 || a % 4 != 0)) {
      throw std::invalid_argument("pyfastopt: null or misaligned address");
    }
  }
}

}  // namespace quant_bindings

void register_quant_bindings(pybind11::module_& m) {
  namespace qb = quant_bindings;
  namespace py = pybind11;
  m.def(
      "quant_map",
      [](bool is_unsigned) {
        const quant::Map& map = is_unsigned ? quant::unsigned_map() : quant::signed_map();
        return std::vector<float>(map.value, map.value + quant::kCodes);
      },
      py::arg("unsigned"),
      "The 256 values of the signed (first moments) or unsigned (second moments) dynamic map.");
  m.def(
      "quant_tables_ok", []() { return quant::signed_map().ok && quant::unsigned_map().ok; },
      "Whether every encoding bucket of both maps holds at most one threshold.");
  m.def(
      "quantize_blockwise",
      [](int64_t src, int64_t codes, int64_t scales, int64_t n, int64_t block, bool is_unsigned) {
        qb::check(n, block, {src, scales});
        if (n > 0 && codes == 0) throw std::invalid_argument("pyfastopt: null address");
        py::gil_scoped_release nogil;
        active_kernels().quantize(reinterpret_cast<const float*>(src),
                                  reinterpret_cast<uint8_t*>(codes),
                                  reinterpret_cast<float*>(scales), n, block, is_unsigned);
      },
      py::arg("src"), py::arg("codes"), py::arg("scales"), py::arg("n"), py::arg("block"),
      py::arg("unsigned"),
      "Quantise n float32 values at src into codes (n bytes) and scales (ceil(n / block) "
      "float32), exactly as a step stores its 8-bit state. The caller validated every extent.");
  m.def(
      "dequantize_blockwise",
      [](int64_t codes, int64_t scales, int64_t dst, int64_t n, int64_t block, bool is_unsigned) {
        qb::check(n, block, {dst, scales});
        if (n > 0 && codes == 0) throw std::invalid_argument("pyfastopt: null address");
        py::gil_scoped_release nogil;
        active_kernels().dequantize(reinterpret_cast<const uint8_t*>(codes),
                                    reinterpret_cast<const float*>(scales),
                                    reinterpret_cast<float*>(dst), n, block, is_unsigned);
      },
      py::arg("codes"), py::arg("scales"), py::arg("dst"), py::arg("n"), py::arg("block"),
      py::arg("unsigned"),
      "The float32 values of 8-bit state (the inverse of quantize_blockwise).");
}

}  // namespace pyfastopt
