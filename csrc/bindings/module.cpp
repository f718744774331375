// pybind11 bindings of the native core: one step function per algorithm plus build and ISA
// introspection. The module takes plain integers (addresses, counts, dtype codes) and never links
// libtorch, so one build serves every torch version.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "norm_bindings.h"
#include "plan.h"
#include "pyfastopt/dispatch.h"
#include "quant_bindings.h"
#include "torch_abi.h"
#include "vector_bindings.h"

namespace py = pybind11;
using pyfastopt::DType;
using pyfastopt::Table;

namespace {

using pyfastopt::Plan;

// Below this many elements a call is so short that releasing and re-taking the GIL costs more
// than another Python thread could gain.
constexpr int64_t kReleaseGilMin = 16384;

DType to_dtype(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("pyfastopt: invalid dtype code");
  return static_cast<DType>(code);
}

// The storage options of a call: None, or (rounding, seed, grad_scale address, found_inf
// address, state store, block, lr_f32) with 0 for an absent scalar. The addresses are of float32
// scalars that the caller validated and holds for the call; lr_f32: lr is a 0-d float32 tensor
// (params.h).
struct Extra {
  pyfastopt::Rounding rounding = pyfastopt::Rounding::kNearest;
  uint64_t seed = 0;
  const float* grad_scale = nullptr;
  const float* found_inf = nullptr;
  pyfastopt::StateStore state = pyfastopt::StateStore::kAsParam;
  int64_t block = 0;
  bool lr_f32 = false;
};

Extra to_extra(py::handle extra) {
  Extra e;
  if (extra.is_none()) return e;
  if (!py::isinstance<py::tuple>(extra) || py::len(extra) != 7) {
    throw std::invalid_argument("pyfastopt: extra must be None or a 7-tuple");
  }
  auto t = extra.cast<std::tuple<int, uint64_t, int64_t, int64_t, int, int64_t, bool>>();
  const int rounding = std::get<0>(t);
  if (rounding < 0 || rounding > 2) throw std::invalid_argument("pyfastopt: invalid rounding");
  e.rounding = static_cast<pyfastopt::Rounding>(rounding);
  e.seed = std::get<1>(t);
  for (int64_t a : {std::get<2>(t), std::get<3>(t)}) {
    if (a < 0 || a % static_cast<int64_t>(alignof(float)) != 0) {
      throw std::invalid_argument("pyfastopt: invalid GradScaler scalar address");
    }
  }
  e.grad_scale = reinterpret_cast<const float*>(std::get<2>(t));
  e.found_inf = reinterpret_cast<const float*>(std::get<3>(t));
  const int state = std::get<4>(t);
  if (state < 0 || state > 3) throw std::invalid_argument("pyfastopt: invalid state store");
  e.state = static_cast<pyfastopt::StateStore>(state);
  e.block = std::get<5>(t);
  e.lr_f32 = std::get<6>(t);
  return e;
}

// Runs `kernel(table)` on either a plain list table or a cached Plan (which first re-checks its
// parameters, unless `params` is None because the caller already did). False: stale plan.
template <class Kernel>
bool run_on(py::handle source, py::handle params, py::handle state, int64_t width, bool step_f64,
            int64_t parallel_min, py::handle extra, Kernel&& kernel) {
  const Extra ex = to_extra(extra);
  std::vector<int64_t> owned;
  const int64_t* data = nullptr;
  std::size_t size = 0;
  Plan* plan = nullptr;
  if (py::isinstance<Plan>(source)) {
    plan = &source.cast<Plan&>();
    if (!params.is_none() && !plan->collect(params, state, ex.grad_scale != nullptr)) {
      return false;
    }
    if (plan->width() != width) throw std::invalid_argument("pyfastopt: plan width mismatch");
    data = plan->table().data();
    size = plan->table().size();
  } else {
    owned = source.cast<std::vector<int64_t>>();
    data = owned.data();
    size = owned.size();
  }
  if (width < 4 || width > 12) throw std::invalid_argument("pyfastopt: invalid table row width");
  if (size % static_cast<std::size_t>(width) != 0) {
    throw std::invalid_argument("pyfastopt: table length is not a multiple of its row width");
  }
  const Table t{data,         static_cast<int64_t>(size) / width,
                width,        step_f64,
                parallel_min, ex.rounding,
                ex.seed,      ex.grad_scale,
                ex.found_inf, ex.state,
                ex.block,     ex.lr_f32};
  int64_t total = 0;
  for (int64_t r = 0; r < t.rows; ++r) total += data[r * width];
  // Every tensor whose address is in the table is held while the kernel runs: by the Plan (its
  // tensors, their aliases and the gradients collect() read) or by the caller's frame (a list).
  if (total >= kReleaseGilMin) {
    py::gil_scoped_release nogil;
    kernel(t);
  } else {
    kernel(t);
  }
  if (plan != nullptr) plan->finish();  // version counters, as torch's in-place step bumps them
  return true;
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
  d["traversal"] = "one OpenMP region, one contiguous span of all elements per thread";
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

  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const pyfastopt::ZeroDivision& z) {
      PyErr_SetString(PyExc_ZeroDivisionError, z.what());
    } catch (const pyfastopt::BadStepCounter& b) {
      const py::object state_error = py::module_::import("pyfastopt.errors").attr("StateError");
      PyErr_SetString(state_error.ptr(), b.what());
    }
  });

  py::class_<Plan>(m, "Plan", "A validated step table plus what must hold for it to stay valid.")
      .def(py::init<py::list, py::list, std::vector<int64_t>, int64_t, py::list, py::object,
                    std::vector<std::pair<int64_t, int64_t>>, std::vector<int64_t>>(),
           py::arg("group_params"), py::arg("rows"), py::arg("table"), py::arg("width"),
           py::arg("written"), py::arg("bump"), py::arg("extents"), py::arg("grad_bytes"))
      .def("collect", &Plan::collect, py::arg("params"), py::arg("state"),
           py::arg("grads_written") = false,
           "Re-check the plan and fill in gradient addresses; False if it is stale.")
      .def("add_extents", &Plan::add_extents, py::arg("extents"),
           "Byte ranges [lo, hi) a gradient must not overlap either (the group's other calls).")
      .def("set_aux", &Plan::set_aux, py::arg("aux"), "Replace each row's aux word.")
      .def_property_readonly("table", &Plan::table)
      .def_property_readonly("width", &Plan::width)
      .def("__len__", &Plan::rows);

  const char* doc =
      "source: a list of int64 rows [numel, aux, ptr_0..ptr_{K-1}] or a Plan; params/state: the "
      "group's parameter list and the optimizer state to re-check a Plan against (None: already "
      "checked); width: row length; dtype: 0 float32, 1 float64, 2 bfloat16, 3 float16; step_f64: "
      "float64 step counters; extra: None or (rounding, seed, grad_scale address, found_inf "
      "address, state store, block). Returns False, doing nothing, when a Plan is stale.";

  m.def(
      "sgd_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype, double lr,
         double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
         int num_threads, int64_t parallel_min, py::handle extra) {
        const pyfastopt::SgdParams hp{lr, momentum, dampening, weight_decay, nesterov, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(src, params, state, width, false, parallel_min, extra, [&](const Table& t) {
          pyfastopt::active_kernels().sgd(t, dt, hp, num_threads);
        });
      },
      doc);
  m.def(
      "adagrad_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double lr_decay, double weight_decay, double eps, bool maximize,
         int num_threads, int64_t parallel_min, py::handle extra) {
        const pyfastopt::AdagradParams hp{lr, lr_decay, weight_decay, eps, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().adagrad(t, dt, hp, num_threads); });
      },
      doc);
  m.def(
      "adadelta_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double rho, double eps, double weight_decay, bool maximize,
         int num_threads, int64_t parallel_min, py::handle extra) {
        const pyfastopt::AdadeltaParams hp{lr, rho, eps, weight_decay, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().adadelta(t, dt, hp, num_threads); });
      },
      doc);
  m.def(
      "rmsprop_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double alpha, double eps, double weight_decay, double momentum,
         bool centered, bool maximize, int num_threads, int64_t parallel_min, py::handle extra) {
        const pyfastopt::RmspropParams hp{lr,       alpha,    eps,     weight_decay,
                                          momentum, centered, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().rmsprop(t, dt, hp, num_threads); });
      },
      doc);
  m.def(
      "adam_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double beta1, double beta2, double eps, double weight_decay,
         bool amsgrad, bool maximize, bool decoupled, int num_threads, int64_t parallel_min,
         py::handle extra) {
        const pyfastopt::AdamParams hp{lr,           beta1,   beta2,    eps,
                                       weight_decay, amsgrad, maximize, decoupled};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().adam(t, dt, hp, num_threads); });
      },
      doc);
  m.def(
      "nadam_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double beta1, double beta2, double eps, double weight_decay,
         double momentum_decay, bool maximize, bool decoupled, int num_threads,
         int64_t parallel_min, py::handle extra) {
        const pyfastopt::NadamParams hp{lr,           beta1,          beta2,    eps,
                                        weight_decay, momentum_decay, maximize, decoupled};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().nadam(t, dt, hp, num_threads); });
      },
      doc);
  m.def(
      "radam_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double beta1, double beta2, double eps, double weight_decay,
         bool maximize, bool decoupled, int num_threads, int64_t parallel_min, py::handle extra) {
        const pyfastopt::RadamParams hp{lr, beta1, beta2, eps, weight_decay, maximize, decoupled};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().radam(t, dt, hp, num_threads); });
      },
      doc);
  m.def(
      "adamax_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double beta1, double beta2, double eps, double weight_decay,
         bool maximize, int num_threads, int64_t parallel_min, py::handle extra) {
        const pyfastopt::AdamaxParams hp{lr, beta1, beta2, eps, weight_decay, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().adamax(t, dt, hp, num_threads); });
      },
      doc);
  m.def(
      "asgd_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double lambd, double alpha, double t0, double weight_decay,
         bool maximize, int default_dtype, int num_threads, int64_t parallel_min,
         py::handle extra) {
        const pyfastopt::AsgdParams hp{lr, lambd, alpha, t0, weight_decay, default_dtype, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().asgd(t, dt, hp, num_threads); });
      },
      "As the other step functions; default_dtype: the dtype code of torch.get_default_dtype() "
      "(torch.as_tensor rounds the new eta and mu to it).");
  m.def(
      "rprop_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double etaminus, double etaplus, double step_size_min, double step_size_max,
         bool maximize, int num_threads, int64_t parallel_min, py::handle extra) {
        const pyfastopt::RpropParams hp{etaminus, etaplus, step_size_min, step_size_max, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().rprop(t, dt, hp, num_threads); });
      },
      doc);

  m.def(
      "adafactor_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, double lr, double beta2_decay, double eps1, double eps2, double d,
         double weight_decay, bool maximize, int num_threads, int64_t parallel_min,
         py::handle extra) {
        const pyfastopt::AdafactorParams hp{lr, beta2_decay, eps1, eps2, d, weight_decay, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(
            src, params, state, width, step_f64, parallel_min, extra,
            [&](const Table& t) { pyfastopt::active_kernels().adafactor(t, dt, hp, num_threads); });
      },
      "Adafactor: rows [numel, step address, p, g, row_var or variance, col_var or 0, "
      "(low-precision parameter after a master), rows (0: not factored), cols]; otherwise as "
      "adam_step (eps1: torch's eps[0], resolved).");
  m.def(
      "sparse_adam_step",
      [](py::handle src, int64_t width, int dtype, double beta1, double beta2, double eps,
         bool maximize, int num_threads, int64_t parallel_min) {
        const pyfastopt::SparseAdamParams hp{beta1, beta2, eps, maximize};
        const DType dt = to_dtype(dtype);
        return run_on(src, py::none(), py::none(), width, false, parallel_min, py::none(),
                      [&](const Table& t) {
                        pyfastopt::active_kernels().sparse_adam(t, dt, hp, num_threads);
                      });
      },
      "SparseAdam on a list table of rows [n, bits of the float64 -step_size, p, values, "
      "exp_avg, exp_avg_sq, offsets address (int64, strictly increasing), width, numel]: n / "
      "width blocks of width elements at the offsets, with the gradient's packed values.");

  m.def(
      "use_torch_abi",
      [](py::list samples, bool on) { return pyfastopt::abi::enable(samples.ptr(), on); },
      py::arg("samples"), py::arg("on") = true,
      "Read tensor metadata through torch's C entry points if a probe on `samples` agrees with "
      "the Python accessors (else, or with on=False, through the accessors). Returns whether "
      "the C reader is on. Plans taken with the other reader go back to the general path.");
  m.def("torch_abi_enabled", &pyfastopt::abi::enabled, "Whether the C reader is on.");
  m.def(
      "time_signature_reads",
      [](py::handle t, int reps) { return pyfastopt::time_reads(t.ptr(), reps); },
      py::arg("tensor"), py::arg("reps") = 100000,
      "Diagnostics: ns per read of each signature field of `tensor` (the breakdown tool).");
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
  m.def(
      "use_lanes",
      [](bool on) {
        pyfastopt::set_lanes(on);
        return pyfastopt::lanes_mode();
      },
      py::arg("on") = true,
      "Switch the AVX-512 build's 16-lane loop for bfloat16/float16 storage on or off (it gives "
      "the same bits as the compiler-vectorised loop). Returns lanes_mode().");
  m.def("lanes_mode", &pyfastopt::lanes_mode,
        "Bit 0: the 16-lane loop is on; bit 1: this CPU has AVX512-BF16 (bfloat16 stores rounded "
        "to nearest take the loop only then); bit 2: it has AVX512-VBMI (8-bit state decodes "
        "with byte permutes). 0 while the loop is switched off.");
  m.def("build_info", &build_info, "Compiler, OpenMP version and build options of the core.");
  m.def("openmp_max_threads", &omp_threads, "omp_get_max_threads() of the OpenMP runtime in use.");
  pyfastopt::register_norm_bindings(m);
  pyfastopt::register_quant_bindings(m);
  pyfastopt::register_vector_bindings(m);
}
