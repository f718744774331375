// pybind11 bindings of the optional CUDA module, pyfastopt._cuda: the same step functions as
// pyfastopt._core (same arguments, so an optimizer calls either through `call.backend`), fed
// with a Call (a table of device addresses, the device, torch's current stream, where the step
// counters are). Importing this module touches no CUDA API: on a machine without a driver it
// imports, and device_status() says why no device is usable. It never links libtorch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "pyfastopt/dispatch.h"
#include "steps.h"

namespace py = pybind11;
using pyfastopt::DType;
using pyfastopt::Table;
namespace gpu = pyfastopt::gpu;

namespace {

// A validated native call for the GPU, built by the Python layer (optim/_cuda_rows.py) from
// addresses it has checked. Holds its table; the caller holds the tensors for the call.
struct CallSource {
  std::vector<int64_t> table;
  int64_t width;
  int device;
  int64_t stream;
  gpu::Steps steps;
  int64_t lr;
};

CallSource make_source(std::vector<int64_t> table, int64_t width, int device, int64_t stream,
                       int steps, int64_t lr) {
  if (width < 4 || width > 12 || table.size() % static_cast<std::size_t>(width) != 0) {
    throw std::invalid_argument("pyfastopt._cuda: invalid table (row width " +
                                std::to_string(width) + ")");
  }
  if (device < 0) throw std::invalid_argument("pyfastopt._cuda: invalid device index");
  if (steps < 0 || steps > 2) throw std::invalid_argument("pyfastopt._cuda: invalid step mode");
  if (lr < 0 || lr % static_cast<int64_t>(alignof(float)) != 0) {
    throw std::invalid_argument("pyfastopt._cuda: invalid learning-rate address");
  }
  return CallSource{std::move(table), width, device, stream, static_cast<gpu::Steps>(steps), lr};
}

DType to_dtype(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("pyfastopt: invalid dtype code");
  return static_cast<DType>(code);
}

// As _core's: None, or (rounding, seed, grad_scale address, found_inf address, state store,
// block, lr_f32); here the two addresses are of float32 scalars on the call's device.
void apply_extra(py::handle extra, Table& t) {
  if (extra.is_none()) return;
  if (!py::isinstance<py::tuple>(extra) || py::len(extra) != 7) {
    throw std::invalid_argument("pyfastopt: extra must be None or a 7-tuple");
  }
  auto e = extra.cast<std::tuple<int, uint64_t, int64_t, int64_t, int, int64_t, bool>>();
  const int rounding = std::get<0>(e);
  if (rounding < 0 || rounding > 2) throw std::invalid_argument("pyfastopt: invalid rounding");
  t.rounding = static_cast<pyfastopt::Rounding>(rounding);
  t.seed = std::get<1>(e);
  for (int64_t a : {std::get<2>(e), std::get<3>(e)}) {
    if (a < 0 || a % static_cast<int64_t>(alignof(float)) != 0) {
      throw std::invalid_argument("pyfastopt: invalid GradScaler scalar address");
    }
  }
  t.grad_scale = reinterpret_cast<const float*>(std::get<2>(e));
  t.found_inf = reinterpret_cast<const float*>(std::get<3>(e));
  const int state = std::get<4>(e);
  if (state < 0 || state > 3) throw std::invalid_argument("pyfastopt: invalid state store");
  t.state = static_cast<pyfastopt::StateStore>(state);
  t.block = std::get<5>(e);
  t.lr_f32 = std::get<6>(e);
}

// The Call of one step: `source` must be a CallSource (the CUDA module takes no cached Plan).
template <class Kernel>
bool run_on(py::handle source, py::handle params, py::handle state, int64_t width, bool step_f64,
            py::handle lr, double* lr_value, py::handle extra, Kernel&& kernel) {
  if (!params.is_none() || !state.is_none()) {
    throw std::invalid_argument("pyfastopt._cuda: a CUDA call re-checks nothing (params=None)");
  }
  const CallSource& src = source.cast<const CallSource&>();
  if (src.width != width) throw std::invalid_argument("pyfastopt._cuda: call width mismatch");
  Table t{src.table.data(),
          static_cast<int64_t>(src.table.size()) / width,
          width,
          step_f64,
          0,
          pyfastopt::Rounding::kNearest,
          0,
          nullptr,
          nullptr,
          pyfastopt::StateStore::kAsParam,
          0};
  apply_extra(extra, t);
  // a tensor learning rate on the device is read there; anything else is a host number (a CPU
  // tensor converts like a float, as in _core)
  *lr_value = src.lr != 0 ? 0.0 : lr.cast<double>();
  const gpu::Call call{t, src.device, src.stream, src.steps,
                       reinterpret_cast<const float*>(src.lr)};
  kernel(call);
  return true;
}

py::dict device_status() {
  const gpu::DeviceStatus s = gpu::device_status();
  py::dict d;
  d["runtime_version"] = s.runtime_version;
  d["driver_version"] = s.driver_version;
  d["error"] = s.error;
  d["error_name"] = s.error_name;
  d["message"] = s.message;
  d["devices"] = s.devices;
  return d;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() =
      "pyfastopt's optional CUDA backend: the rules of the native core in one multi-tensor "
      "traversal on the GPU (built only with PYFASTOPT_CUDA=1)";

  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const pyfastopt::ZeroDivision& z) {
      PyErr_SetString(PyExc_ZeroDivisionError, z.what());
    }
  });

  py::class_<CallSource>(m, "Call", "One validated step call on the GPU.")
      .def(py::init(&make_source), py::arg("table"), py::arg("width"), py::arg("device"),
           py::arg("stream"), py::arg("steps"), py::arg("lr") = 0,
           "table: int64 rows [numel, aux, ptr_0..] of device addresses (aux: a step counter's "
           "address or SGD's flags); device: CUDA device index; stream: a cudaStream_t as int; "
           "steps: 0 none, 1 on the host, 2 on the device; lr: address of a float32 learning "
           "rate on the device, or 0")
      .def_property_readonly("table", [](const CallSource& c) { return c.table; })
      .def_property_readonly("device", [](const CallSource& c) { return c.device; })
      .def_property_readonly("steps", [](const CallSource& c) { return static_cast<int>(c.steps); })
      .def("__len__",
           [](const CallSource& c) { return c.table.size() / static_cast<std::size_t>(c.width); });

  const char* doc =
      "As pyfastopt._core's function of the same name, on the GPU: source is a Call; params and "
      "state must be None; threads and parallel_min are ignored. Launches on the Call's stream "
      "and returns at once (True).";

  m.def(
      "sgd_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         py::handle lr, double momentum, double dampening, double weight_decay, bool nesterov,
         bool maximize, int, int64_t, py::handle extra) {
        pyfastopt::SgdParams hp{0.0, momentum, dampening, weight_decay, nesterov, maximize};
        return run_on(src, params, state, width, false, lr, &hp.lr, extra,
                      [&](const gpu::Call& c) { gpu::sgd(c, to_dtype(dtype), hp); });
      },
      doc);
  m.def(
      "adagrad_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, py::handle lr, double lr_decay, double weight_decay, double eps,
         bool maximize, int, int64_t, py::handle extra) {
        pyfastopt::AdagradParams hp{0.0, lr_decay, weight_decay, eps, maximize};
        return run_on(src, params, state, width, step_f64, lr, &hp.lr, extra,
                      [&](const gpu::Call& c) { gpu::adagrad(c, to_dtype(dtype), hp); });
      },
      doc);
  m.def(
      "adadelta_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, py::handle lr, double rho, double eps, double weight_decay, bool maximize,
         int, int64_t, py::handle extra) {
        pyfastopt::AdadeltaParams hp{0.0, rho, eps, weight_decay, maximize};
        return run_on(src, params, state, width, step_f64, lr, &hp.lr, extra,
                      [&](const gpu::Call& c) { gpu::adadelta(c, to_dtype(dtype), hp); });
      },
      doc);
  m.def(
      "rmsprop_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, py::handle lr, double alpha, double eps, double weight_decay,
         double momentum, bool centered, bool maximize, int, int64_t, py::handle extra) {
        pyfastopt::RmspropParams hp{0.0, alpha, eps, weight_decay, momentum, centered, maximize};
        return run_on(src, params, state, width, step_f64, lr, &hp.lr, extra,
                      [&](const gpu::Call& c) { gpu::rmsprop(c, to_dtype(dtype), hp); });
      },
      doc);
  m.def(
      "adam_step",
      [](py::handle src, py::handle params, py::handle state, int64_t width, int dtype,
         bool step_f64, py::handle lr, double beta1, double beta2, double eps, double weight_decay,
         bool amsgrad, bool maximize, bool decoupled, int, int64_t, py::handle extra) {
        pyfastopt::AdamParams hp{0.0,          beta1,   beta2,    eps,
                                 weight_decay, amsgrad, maximize, decoupled};
        return run_on(src, params, state, width, step_f64, lr, &hp.lr, extra,
                      [&](const gpu::Call& c) { gpu::adam(c, to_dtype(dtype), hp); });
      },
      doc);

  m.def("device_status", &device_status,
        "The CUDA runtime's and driver's versions and cudaGetDeviceCount's answer (error code, "
        "name and message; devices). Initialises the CUDA driver in this process.");
  m.def(
      "build_info",
      []() {
        py::dict d;
        d["archs"] = std::string(gpu::arch_list());
        d["cudart"] = "static";
        d["fmad"] = "off (fma exactly where the rules ask, as the CPU builds)";
        return d;
      },
      "The architectures this module holds code for (SASS and PTX) and its build options.");
}
