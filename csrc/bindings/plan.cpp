// Plan: construction (signatures, aliases) and the per-step checks of the fast path.
#include "plan.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "torch_abi.h"

namespace py = pybind11;

namespace pyfastopt {
namespace {

PyObject* interned(const char* s) {
  PyObject* o = PyUnicode_InternFromString(s);
  if (o == nullptr) throw py::error_already_set();
  return o;  // never released
}

PyObject* detach_name() {
  static PyObject* n = interned("detach");
  return n;
}

}  // namespace

Plan::Plan(py::list group_params, py::list rows, std::vector<int64_t> table, int64_t width,
           py::list written, py::object bump, std::vector<std::pair<int64_t, int64_t>> extents,
           std::vector<int64_t> grad_bytes)
    : group_params_list_(std::move(group_params)),
      table_(std::move(table)),
      width_(width),
      written_(std::move(written)),
      bump_(std::move(bump)),
      grad_bytes_(std::move(grad_bytes)) {
  for (py::handle p : group_params_list_) group_params_.push_back(p.ptr());
  if (width_ < 4 || table_.size() != rows.size() * static_cast<std::size_t>(width_)) {
    throw std::invalid_argument("pyfastopt: plan table does not match its rows");
  }
  if (grad_bytes_.size() != rows.size()) {
    throw std::invalid_argument("pyfastopt: one gradient extent per plan row");
  }
  add_extents(std::move(extents));
  std::size_t i = 0;
  for (py::handle r : rows) {
    py::tuple t = py::reinterpret_borrow<py::tuple>(r);
    if (t.size() != 4 || !py::isinstance<py::tuple>(t[2]) || !py::isinstance<py::tuple>(t[3])) {
      throw std::invalid_argument("pyfastopt: plan rows are (param, state, checks, held)");
    }
    Row row;
    row.param = py::reinterpret_borrow<py::object>(t[0]);
    row.hash = PyObject_Hash(row.param.ptr());
    if (row.hash == -1) throw py::error_already_set();
    row.state = py::reinterpret_borrow<py::object>(t[1]);
    row.checks = py::reinterpret_borrow<py::object>(t[2]);
    for (py::handle pair : row.checks) {  // collect() reads them without further checks
      if (!PyTuple_Check(pair.ptr()) || PyTuple_GET_SIZE(pair.ptr()) != 2) {
        throw std::invalid_argument("pyfastopt: plan checks are (key, value) pairs");
      }
    }
    if (!row.state.is_none() && !PyDict_Check(row.state.ptr())) {
      throw std::invalid_argument("pyfastopt: a plan row's state must be a dict or None");
    }
    for (py::handle h : py::reinterpret_borrow<py::tuple>(t[3])) {
      TensorSig sig;
      if (!read_sig(h.ptr(), &sig)) {
        throw std::invalid_argument("pyfastopt: plan tensor is not a plain CPU tensor");
      }
      PyObject* args[1] = {h.ptr()};
      PyObject* alias = PyObject_VectorcallMethod(detach_name(), args,
                                                  1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
      if (alias == nullptr) throw py::error_already_set();
      row.alias.push_back(py::reinterpret_steal<py::object>(alias));
      row.held.push_back(py::reinterpret_borrow<py::object>(h));
      row.sigs.push_back(std::move(sig));
    }
    // held[0] is the parameter (its gradient must fit it); the row writes it as array 0, or as
    // its last array when array 0 is a float32 master copy
    bool holds = false;
    for (int64_t k = 2; !row.sigs.empty() && k < width_; ++k) {
      holds |= table_[i * static_cast<std::size_t>(width_) + static_cast<std::size_t>(k)] ==
               row.sigs[0].ptr;
    }
    if (!holds) throw std::invalid_argument("pyfastopt: plan row does not hold its parameter");
    rows_.push_back(std::move(row));
    ++i;
  }
}

void Plan::add_extents(std::vector<std::pair<int64_t, int64_t>> extents) {
  extents.insert(extents.end(), extents_.begin(), extents_.end());
  std::sort(extents.begin(), extents.end());
  extents_.clear();
  for (const auto& e : extents) {
    if (e.second <= e.first) continue;  // empty
    if (!extents_.empty() && e.first <= extents_.back().second) {
      extents_.back().second = std::max(extents_.back().second, e.second);
    } else {
      extents_.push_back(e);
    }
  }
}

bool Plan::collect(py::handle current_params, py::handle state, bool grads_written) {
  grads_.clear();
  // 1. The group still lists exactly the parameters the plan was built for.
  PyObject* cur = current_params.ptr();
  if (!PyList_Check(cur) || PyList_GET_SIZE(cur) != static_cast<Py_ssize_t>(group_params_.size())) {
    return false;
  }
  for (std::size_t i = 0; i < group_params_.size(); ++i) {
    if (PyList_GET_ITEM(cur, static_cast<Py_ssize_t>(i)) != group_params_[i]) return false;
  }
  if (!PyDict_Check(state.ptr())) return false;
  grads_.reserve(rows_.size());
  // 2. Per row: the same state objects, every tensor with its signature, a fitting gradient.
  for (std::size_t i = 0; i < rows_.size(); ++i) {
    const Row& row = rows_[i];
    PyObject* p = row.param.ptr();
    if (!row.state.is_none()) {
#if PY_VERSION_HEX < 0x030D0000
      PyObject* sd = _PyDict_GetItem_KnownHash(state.ptr(), p, row.hash);  // borrowed
#else
      PyObject* sd = PyDict_GetItemWithError(state.ptr(), p);
#endif
      if (sd == nullptr) {
        PyErr_Clear();
        return false;
      }
      if (sd != row.state.ptr()) return false;
      PyObject* checks = row.checks.ptr();
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
    for (std::size_t k = 0; k < row.sigs.size(); ++k) {
      if (!same_sig(row.held[k].ptr(), row.sigs[k])) return false;
    }
    PyObject* g = grad_of(p);
    if (g == nullptr) return false;
    grads_.push_back(py::reinterpret_steal<py::object>(g));  // held until finish()
    int64_t gptr = 0;
    if (g == Py_None || !grad_fits(g, row.sigs[0], &gptr)) return false;
    if (overlaps_held(gptr, gptr + grad_bytes_[i])) return false;
    table_[i * static_cast<std::size_t>(width_) + 3] = gptr;
  }
  if (grads_written && rows_.size() > 1) {  // each gradient written by its own row only
    std::vector<std::pair<int64_t, int64_t>> spans;
    spans.reserve(rows_.size());
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const int64_t lo = table_[i * static_cast<std::size_t>(width_) + 3];
      if (grad_bytes_[i] > 0) spans.emplace_back(lo, lo + grad_bytes_[i]);
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t k = 1; k < spans.size(); ++k) {
      if (spans[k].first < spans[k - 1].second) return false;
    }
  }
  return true;
}

bool Plan::overlaps_held(int64_t lo, int64_t hi) const {
  if (hi <= lo) return false;
  // the first merged range ending after lo (the ranges are disjoint, so their ends increase)
  const auto it = std::upper_bound(
      extents_.begin(), extents_.end(), lo,
      [](int64_t v, const std::pair<int64_t, int64_t>& e) { return v < e.second; });
  return it != extents_.end() && it->first < hi;
}

void Plan::set_aux(const std::vector<int64_t>& aux) {
  if (aux.size() != rows_.size()) throw std::invalid_argument("pyfastopt: one aux word per row");
  for (std::size_t i = 0; i < aux.size(); ++i) {
    table_[i * static_cast<std::size_t>(width_) + 1] = aux[i];
  }
}

void Plan::finish() {
  grads_.clear();
  PyObject* written = written_.ptr();
  Py_ssize_t done = 0;
  if (abi::enabled()) {  // torch's own bump, called directly
    while (done < PyList_GET_SIZE(written) && abi::bump_version(PyList_GET_ITEM(written, done))) {
      ++done;
    }
  }
  if (done == PyList_GET_SIZE(written)) return;
  // the Python entry point bumps the rest, or raises torch's error for the one it refuses
  py::list rest = py::reinterpret_steal<py::list>(PyList_GetSlice(written, done, PY_SSIZE_T_MAX));
  if (!rest) throw py::error_already_set();
  PyObject* r = PyObject_CallOneArg(bump_.ptr(), rest.ptr());
  if (r == nullptr) throw py::error_already_set();
  Py_DECREF(r);
}

}  // namespace pyfastopt
