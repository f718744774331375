// Bindings of the vector operations of L-BFGS and BFGS: the Python layer
// (pyfastopt/optim/_vectors.py) validates every operand and hands over their addresses; see
// pyfastopt/vector_ops.h for the operands and the instructions.
#include "vector_bindings.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "pyfastopt/vector_ops.h"

namespace pyfastopt {
namespace vector_bindings {

namespace py = pybind11;

// Below this many element visits releasing and re-taking the GIL costs more than it can give.
constexpr int64_t kVecReleaseGilMin = 16384;

VecCall call_of(const std::vector<int64_t>& rows, int64_t lists, const std::vector<int64_t>& flats,
                int64_t dtype, int num_threads, int64_t parallel_min, int64_t* total) {
  if (lists < 0 || rows.size() % static_cast<std::size_t>(1 + lists) != 0) {
    throw std::invalid_argument("pyfastopt: vector rows are not a multiple of 1 + lists");
  }
  const auto nrows = static_cast<int64_t>(rows.size()) / (1 + lists);
  *total = 0;
  for (int64_t r = 0; r < nrows; ++r) {
    const int64_t n = rows[static_cast<std::size_t>(r * (1 + lists))];
    *total += n > 0 ? n : 0;
  }
  return VecCall{
      rows.data(), nrows,       lists,       flats.data(), static_cast<int64_t>(flats.size()),
      dtype,       num_threads, parallel_min};
}

// Runs f() without the GIL when the work is large enough. The caller's frame holds every tensor
// whose address is in the call.
template <class F>
void run(int64_t visits, F&& f) {
  if (visits >= kVecReleaseGilMin) {
    py::gil_scoped_release nogil;
    f();
  } else {
    f();
  }
}

std::vector<double> program(const std::vector<int64_t>& rows, int64_t lists,
                            const std::vector<int64_t>& flats, int64_t dtype,
                            const std::vector<int64_t>& code, const std::vector<double>& scalars,
                            int64_t nresults, int num_threads, int64_t parallel_min) {
  int64_t total = 0;
  const VecCall call = call_of(rows, lists, flats, dtype, num_threads, parallel_min, &total);
  if (code.size() % static_cast<std::size_t>(kVecInstrWidth) != 0 || nresults < 0) {
    throw std::invalid_argument("pyfastopt: invalid vector program");
  }
  std::vector<double> results(static_cast<std::size_t>(nresults), 0.0);
  const VecProgram p{code.data(),    static_cast<int64_t>(code.size()) / kVecInstrWidth,
                     scalars.data(), static_cast<int64_t>(scalars.size()),
                     results.data(), nresults};
  run(total, [&] { active_vector_kernels().program(call, p); });
  return results;
}

py::tuple lbfgs_direction(const std::vector<int64_t>& rows, int64_t lists,
                          const std::vector<int64_t>& flats, int64_t dtype, int64_t g, int64_t d,
                          int64_t prev, const std::vector<int64_t>& dirs,
                          const std::vector<int64_t>& stps, const std::vector<double>& ro,
                          double h_diag, bool first, int num_threads, int64_t parallel_min) {
  int64_t total = 0;
  const VecCall call = call_of(rows, lists, flats, dtype, num_threads, parallel_min, &total);
  if (dirs.size() != stps.size() || dirs.size() != ro.size()) {
    throw std::invalid_argument("pyfastopt: old_dirs, old_stps and ro differ in length");
  }
  const auto m = static_cast<int64_t>(dirs.size());
  std::vector<double> al(dirs.size(), 0.0);
  double out[3] = {0.0, 0.0, 0.0};
  const LbfgsDirection L{g, d,      prev,  dirs.data(), stps.data(), ro.data(),
                         m, h_diag, first, al.data(),   out};
  run(total * (2 * m + 1), [&] { active_vector_kernels().lbfgs_direction(call, L); });
  return py::make_tuple(al, out[0], out[1], out[2]);
}

}  // namespace vector_bindings

void register_vector_bindings(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("vector_program", &vector_bindings::program, py::arg("rows"), py::arg("lists"),
        py::arg("flats"), py::arg("dtype"), py::arg("code"), py::arg("scalars"),
        py::arg("nresults"), py::arg("num_threads"), py::arg("parallel_min"),
        "One pass of elementwise instructions and reductions over operands that hold the same "
        "elements. rows: per segment [numel, address of list operand 0..lists-1]; flats: the "
        "flat operands' addresses (operand lists + j); dtype: 0 float32, 1 float64; code: "
        "instructions [op, out, a, b, s] (op 0 copy, 1 scale, 2 axpy, 3 sub, 4 dot, 5 sum|a|, "
        "6 max|a|); scalars: their scalars. Returns the nresults reduction results.");
  m.def("lbfgs_direction", &vector_bindings::lbfgs_direction, py::arg("rows"), py::arg("lists"),
        py::arg("flats"), py::arg("dtype"), py::arg("g"), py::arg("d"), py::arg("prev"),
        py::arg("dirs"), py::arg("stps"), py::arg("ro"), py::arg("h_diag"), py::arg("first"),
        py::arg("num_threads"), py::arg("parallel_min"),
        "torch.optim.LBFGS's direction: d from the gradient g and the history (operands dirs, "
        "stps; values ro) by the two-loop recursion, prev = g. Returns (al, g.d, sum |g|, "
        "max |d|).");
}

}  // namespace pyfastopt
