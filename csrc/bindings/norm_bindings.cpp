// Bindings of the fused gradient-norm clipping: the Python layer (pyfastopt/clip.py) validates
// the gradients and hands over their addresses; see pyfastopt/norms.h for the table.
#include "norm_bindings.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "pyfastopt/norms.h"

namespace pyfastopt {
namespace norm_bindings {

namespace py = pybind11;

// Below this many elements releasing and re-taking the GIL costs more than it can give.
constexpr int64_t kNormReleaseGilMin = 16384;

py::tuple clip_grad_norm(const std::vector<int64_t>& table, double norm_type, double max_norm,
                         int64_t out_dtype, int64_t out_addr, bool scale, bool error_if_nonfinite,
                         int num_threads, int64_t parallel_min) {
  if (table.size() % 3 != 0) {
    throw std::invalid_argument("pyfastopt: norm table length is not a multiple of 3");
  }
  const NormCall call{table.data(), static_cast<int64_t>(table.size() / 3),
                      norm_type,    max_norm,
                      out_dtype,    out_addr,
                      scale,        error_if_nonfinite,
                      num_threads,  parallel_min};
  int64_t total = 0;
  for (std::size_t i = 0; i < table.size(); i += 3) total += table[i] > 0 ? table[i] : 0;
  NormResult r{};
  // the caller's frame holds every tensor whose address is in the table
  if (total >= kNormReleaseGilMin) {
    py::gil_scoped_release nogil;
    r = active_norm_kernels().clip_grad_norm(call);
  } else {
    r = active_norm_kernels().clip_grad_norm(call);
  }
  return py::make_tuple(static_cast<int>(r.status), r.coef, r.scaled);
}

}  // namespace norm_bindings

void register_norm_bindings(pybind11::module_& m) {
  m.def("clip_grad_norm", &norm_bindings::clip_grad_norm, pybind11::arg("table"),
        pybind11::arg("norm_type"), pybind11::arg("max_norm"), pybind11::arg("out_dtype"),
        pybind11::arg("out_addr"), pybind11::arg("scale"), pybind11::arg("error_if_nonfinite"),
        pybind11::arg("num_threads"), pybind11::arg("parallel_min"),
        "Fused clip_grad_norm_ over a table of int64 rows [numel, dtype, address] (dtype: 0 "
        "float32, 1 float64, 2 bfloat16, 3 float16; dense gradients). Writes the total norm to "
        "the 0-d tensor at out_addr (of dtype out_dtype) and, if scale, multiplies every "
        "gradient by torch's clamped clip coefficient. Returns (status, coef, scaled): status 0 "
        "done, 1 gradients overlap (nothing done), 2 non-finite norm with error_if_nonfinite "
        "(nothing scaled); coef: the clamped coefficient; scaled: whether the gradients were "
        "written (not when coef is exactly 1).");
}

}  // namespace pyfastopt
