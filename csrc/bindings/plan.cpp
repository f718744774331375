// Plan::collect: the per-step checks of the fast path, with the CPython API instead of bytecode.
#include "plan.h"

#include <stdexcept>
#include <utility>

namespace py = pybind11;

namespace pyfastopt {
namespace {

PyObject* interned(const char* s) {
  PyObject* o = PyUnicode_InternFromString(s);
  if (o == nullptr) throw py::error_already_set();
  return o;  // immortal for our purposes: never released
}

// The attribute and method names the checks use, interned once.
struct Names {
  PyObject* grad = interned("grad");
  PyObject* data_ptr = interned("data_ptr");
  PyObject* is_contiguous = interned("is_contiguous");
  PyObject* numel = interned("numel");
  PyObject* stride = interned("stride");
};

const Names& names() {
  static const Names n;
  return n;
}

// obj.name() as a new reference, or nullptr with the Python error cleared. Vectorcall avoids
// building a bound-method object per call.
PyObject* call0(PyObject* obj, PyObject* name) {
  PyObject* args[1] = {obj};
  PyObject* r = PyObject_VectorcallMethod(name, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  if (r == nullptr) PyErr_Clear();
  return r;
}

// t.name() as an int64, false on any error.
bool int_method(PyObject* t, PyObject* name, int64_t* out) {
  PyObject* r = call0(t, name);
  if (r == nullptr) return false;
  const long long v = PyLong_AsLongLong(r);
  Py_DECREF(r);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    return false;
  }
  *out = static_cast<int64_t>(v);
  return true;
}

bool data_ptr(PyObject* t, int64_t* out) { return int_method(t, names().data_ptr, out); }

// The gradient's layout is the one the table was built for.
bool layout_ok(PyObject* g, PyObject* strides) {
  if (strides == Py_None) {
    PyObject* r = call0(g, names().is_contiguous);  // raises for sparse gradients -> false
    if (r == nullptr) return false;
    const bool ok = r == Py_True;
    Py_DECREF(r);
    return ok;
  }
  PyObject* r = call0(g, names().stride);
  if (r == nullptr) return false;
  const int eq = PyObject_RichCompareBool(r, strides, Py_EQ);
  Py_DECREF(r);
  if (eq < 0) PyErr_Clear();
  return eq == 1;
}

}  // namespace

Plan::Plan(py::list group_params, py::list entries, std::vector<int64_t> table, int64_t width)
    : group_params_list_(std::move(group_params)), table_(std::move(table)), width_(width) {
  for (py::handle p : group_params_list_) group_params_.push_back(p.ptr());
  if (width_ < 4 || table_.size() != entries.size() * static_cast<std::size_t>(width_)) {
    throw std::invalid_argument("pyfastopt: plan table does not match its entries");
  }
  for (py::handle e : entries) {
    py::tuple t = py::reinterpret_borrow<py::tuple>(e);
    if (t.size() != 5) throw std::invalid_argument("pyfastopt: plan entries are 5-tuples");
    Entry entry{py::reinterpret_borrow<py::object>(t[0]),
                t[1].cast<int64_t>(),
                py::reinterpret_borrow<py::object>(t[2]),
                py::reinterpret_borrow<py::object>(t[3]),
                py::reinterpret_borrow<py::object>(t[4]),
                -1,
                0};
    if (!int_method(entry.param.ptr(), names().numel, &entry.param_numel)) {
      throw std::invalid_argument("pyfastopt: plan parameter has no numel()");
    }
    entry.hash = PyObject_Hash(entry.param.ptr());
    if (entry.hash == -1) throw py::error_already_set();
    if (!py::isinstance<py::tuple>(entry.checks)) {
      throw std::invalid_argument("pyfastopt: plan checks must be a tuple");
    }
    entries_.push_back(std::move(entry));
  }
}

bool Plan::collect(py::handle current_params, py::handle state) {
  // 1. The group still lists exactly the parameters the plan was built for.
  PyObject* cur = current_params.ptr();
  if (!PyList_Check(cur) || PyList_GET_SIZE(cur) != static_cast<Py_ssize_t>(group_params_.size())) {
    return false;
  }
  for (std::size_t i = 0; i < group_params_.size(); ++i) {
    if (PyList_GET_ITEM(cur, static_cast<Py_ssize_t>(i)) != group_params_[i]) return false;
  }
  if (!PyDict_Check(state.ptr())) return false;
  // 2. Per row: same storage, same state objects, a gradient laid out like the parameter.
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    PyObject* p = e.param.ptr();
    int64_t ptr = 0;
    if (!data_ptr(p, &ptr) || ptr != e.param_ptr) return false;
    // the same storage can be re-viewed with fewer elements (p.data = p.data[:k]); the row's
    // extent must still be the parameter's (its gradient has the parameter's shape)
    int64_t numel = 0;
    if (!int_method(p, names().numel, &numel) || numel != e.param_numel) return false;
    if (!e.state.is_none()) {
      // borrowed; a tensor's hash is computed in Python, so reuse the one taken at build time
#if PY_VERSION_HEX < 0x030D0000
      PyObject* sd = _PyDict_GetItem_KnownHash(state.ptr(), p, e.hash);
#else
      PyObject* sd = PyDict_GetItemWithError(state.ptr(), p);
#endif
      if (sd == nullptr) {
        PyErr_Clear();
        return false;
      }
      if (sd != e.state.ptr()) return false;
      PyObject* checks = e.checks.ptr();
      for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(checks); ++k) {
        PyObject* pair = PyTuple_GET_ITEM(checks, k);
        PyObject* now = PyDict_GetItemWithError(sd, PyTuple_GET_ITEM(pair, 0));
        if (now == nullptr) {
          PyErr_Clear();
          return false;
        }
        if (now != PyTuple_GET_ITEM(pair, 1)) return false;
      }
    }
    PyObject* g = PyObject_GetAttr(p, names().grad);
    if (g == nullptr) {
      PyErr_Clear();
      return false;
    }
    int64_t gptr = 0, gnumel = 0;
    // torch lets `p.grad.data = t` give a gradient any shape: its extent is checked every step
    const bool ok = g != Py_None && layout_ok(g, e.strides.ptr()) &&
                    int_method(g, names().numel, &gnumel) && gnumel == e.param_numel &&
                    data_ptr(g, &gptr);
    Py_DECREF(g);
    if (!ok) return false;
    table_[i * static_cast<std::size_t>(width_) + 3] = gptr;
  }
  return true;
}

}  // namespace pyfastopt
