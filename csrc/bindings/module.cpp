// pybind11 bindings of the native core: one step function per algorithm plus build and ISA
// introspection. The module takes plain integers (addresses, counts, dtype codes) and never links
// libtorch, so one build serves every torch version.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "pyfastopt/dispatch.h"

namespace py = pybind11;
using pyfastopt::DType;
using pyfastopt::Table;

namespace {

Table make_table(const std::vector<int64_t>& v, int64_t width, bool step_f64,
                 int64_t parallel_min) {
  if (width < 4 || width > 7) throw std::invalid_argument("pyfastopt: invalid table row width");
  if (v.size() % static_cast<std::size_t>(width) != 0) {
    throw std::invalid_argument("pyfastopt: table length is not a multiple of its row width");
  }
  return Table{v.data(), static_cast<int64_t>(v.size()) / width, width, step_f64, parallel_min};
}

DType to_dtype(int code) {
  if (code != 0 && code != 1) throw std::invalid_argument("pyfastopt: invalid dtype code");
  return static_cast<DType>(code);
}

py::dict build_info() {
  py::dict d;
#if defined(__VERSION__)
  d["compiler"] = std::string(__VERSION__);
#endif
#if defined(_OPENMP)
  d["openmp"] = static_cast<int>(_OPENMP);
#else
  d["openmp"] = py::none();
#endif
  d["cuda"] = false;
  d["fp_contract"] = "off (explicit fma where ATen fuses)";
  d["chunk_elements"] = 16384;
  return d;
}

int omp_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyfastopt native core: fused multi-tensor optimizer steps (CPU, OpenMP + SIMD)";

  const char* table_doc =
      "table: flat int64 rows [numel, aux, ptr_0..ptr_{K-1}]; width: row length; dtype: 0 "
      "float32, 1 float64; step_f64: step counters are float64.";

  m.def(
      "sgd_step",
      [](const std::vector<int64_t>& table, int64_t width, int dtype, double lr, double momentum,
         double dampening, double weight_decay, bool nesterov, bool maximize, int num_threads,
         int64_t parallel_min) {
        const Table t = make_table(table, width, false, parallel_min);
        const pyfastopt::SgdParams hp{lr, momentum, dampening, weight_decay, nesterov, maximize};
        const DType dt = to_dtype(dtype);
        py::gil_scoped_release nogil;
        pyfastopt::active_kernels().sgd(t, dt, hp, num_threads);
      },
      table_doc);
  m.def(
      "adagrad_step",
      [](const std::vector<int64_t>& table, int64_t width, int dtype, bool step_f64, double lr,
         double lr_decay, double weight_decay, double eps, bool maximize, int num_threads,
         int64_t parallel_min) {
        const Table t = make_table(table, width, step_f64, parallel_min);
        const pyfastopt::AdagradParams hp{lr, lr_decay, weight_decay, eps, maximize};
        const DType dt = to_dtype(dtype);
        py::gil_scoped_release nogil;
        pyfastopt::active_kernels().adagrad(t, dt, hp, num_threads);
      },
      table_doc);
  m.def(
      "adadelta_step",
      [](const std::vector<int64_t>& table, int64_t width, int dtype, bool step_f64, double lr,
         double rho, double eps, double weight_decay, bool maximize, int num_threads,
         int64_t parallel_min) {
        const Table t = make_table(table, width, step_f64, parallel_min);
        const pyfastopt::AdadeltaParams hp{lr, rho, eps, weight_decay, maximize};
        const DType dt = to_dtype(dtype);
        py::gil_scoped_release nogil;
        pyfastopt::active_kernels().adadelta(t, dt, hp, num_threads);
      },
      table_doc);
  m.def(
      "rmsprop_step",
      [](const std::vector<int64_t>& table, int64_t width, int dtype, bool step_f64, double lr,
         double alpha, double eps, double weight_decay, double momentum, bool centered,
         bool maximize, int num_threads, int64_t parallel_min) {
        const Table t = make_table(table, width, step_f64, parallel_min);
        const pyfastopt::RmspropParams hp{lr, alpha, eps, weight_decay, momentum, centered,
                                          maximize};
        const DType dt = to_dtype(dtype);
        py::gil_scoped_release nogil;
        pyfastopt::active_kernels().rmsprop(t, dt, hp, num_threads);
      },
      table_doc);
  m.def(
      "adam_step",
      [](const std::vector<int64_t>& table, int64_t width, int dtype, bool step_f64, double lr,
         double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
         bool decoupled, int num_threads, int64_t parallel_min) {
        const Table t = make_table(table, width, step_f64, parallel_min);
        const pyfastopt::AdamParams hp{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                                       decoupled};
        const DType dt = to_dtype(dtype);
        py::gil_scoped_release nogil;
        pyfastopt::active_kernels().adam(t, dt, hp, num_threads);
      },
      table_doc);

  m.def(
      "simd_path", []() { return std::string(pyfastopt::active_kernels().name); },
      "The SIMD build in use: avx512, avx2 or baseline.");
  m.def(
      "select_simd",
      [](const std::string& name) {
        if (!pyfastopt::select_kernels(name.c_str())) {
          throw std::invalid_argument("pyfastopt: SIMD path '" + name +
                                      "' is unknown or not supported by this CPU");
        }
        return std::string(pyfastopt::active_kernels().name);
      },
      "Select 'avx512', 'avx2', 'baseline' or 'auto'; returns the path now in use.");
  m.def(
      "supported_simd",
      []() {
        int n = 0;
        const char* const* names = pyfastopt::supported_kernel_names(&n);
        std::vector<std::string> out(names, names + n);
        return out;
      },
      "SIMD paths this CPU can run, best first.");
  m.def("build_info", &build_info, "Compiler, OpenMP version and build options of the core.");
  m.def("openmp_max_threads", &omp_threads, "omp_get_max_threads() of the OpenMP runtime in use.");
}
