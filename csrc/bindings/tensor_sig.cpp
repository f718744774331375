// Reading tensor signatures. Each field is read through torch's own Python accessor; the
// descriptor behind each accessor is looked up once per tensor type and then called directly
// (public CPython API: PyGetSetDef / PyMethodDef), which skips the attribute lookup that
// dominates the cost of `t.dtype` or `t.data_ptr()` from C.
#include "tensor_sig.h"

#include <pybind11/stl.h>

#include <array>
#include <chrono>
#include <cstring>
#include <vector>

#include "torch_abi.h"

namespace py = pybind11;

namespace pyfastopt {
namespace {

// One accessor: an attribute (`dtype`) or a no-argument method (`data_ptr()`).
class Accessor {
 public:
  Accessor() = default;
  Accessor(PyTypeObject* type, const char* name, bool method) : method_(method) {
    name_ = PyUnicode_InternFromString(name);
    if (name_ == nullptr) throw py::error_already_set();
    PyObject* d = _PyType_Lookup(type, name_);  // borrowed
    if (d == nullptr) return;
    if (!method && Py_IS_TYPE(d, &PyGetSetDescr_Type)) {
      getset_ = reinterpret_cast<PyGetSetDescrObject*>(d)->d_getset;
    } else if (method && Py_IS_TYPE(d, &PyMethodDescr_Type)) {
      PyMethodDef* def = reinterpret_cast<PyMethodDescrObject*>(d)->d_method;
      const int flags = def->ml_flags & ~(METH_COEXIST | METH_CLASS | METH_STATIC);
      if (flags == METH_NOARGS || flags == (METH_VARARGS | METH_KEYWORDS) ||
          flags == METH_FASTCALL || flags == (METH_FASTCALL | METH_KEYWORDS)) {
        def_ = def;
        flags_ = flags;
      }
    }
    if (getset_ != nullptr || def_ != nullptr) {
      Py_INCREF(d);  // keep the descriptor (and so its tables) alive with the accessor
      descr_ = d;
    }
  }

  // New reference, or nullptr with the Python error cleared.
  PyObject* operator()(PyObject* self) const {
    PyObject* r = nullptr;
    if (getset_ != nullptr) {
      r = getset_->get(self, getset_->closure);
    } else if (def_ != nullptr) {
      switch (flags_) {
        case METH_NOARGS:
          r = def_->ml_meth(self, nullptr);
          break;
        case METH_VARARGS | METH_KEYWORDS:
          r = reinterpret_cast<PyCFunctionWithKeywords>(
              reinterpret_cast<void (*)()>(def_->ml_meth))(self, empty_tuple(), nullptr);
          break;
        case METH_FASTCALL:
          r = reinterpret_cast<_PyCFunctionFast>(reinterpret_cast<void (*)()>(def_->ml_meth))(
              self, nullptr, 0);
          break;
        default:
          r = reinterpret_cast<_PyCFunctionFastWithKeywords>(
              reinterpret_cast<void (*)()>(def_->ml_meth))(self, nullptr, 0, nullptr);
          break;
      }
    } else if (method_) {
      PyObject* args[1] = {self};
      r = PyObject_VectorcallMethod(name_, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
    } else {
      r = PyObject_GetAttr(self, name_);
    }
    if (r == nullptr) PyErr_Clear();
    return r;
  }

 private:
  static PyObject* empty_tuple() {
    static PyObject* t = PyTuple_New(0);
    return t;
  }
  PyObject* name_ = nullptr;
  PyObject* descr_ = nullptr;
  PyGetSetDef* getset_ = nullptr;
  PyMethodDef* def_ = nullptr;
  int flags_ = 0;
  bool method_ = false;
};

struct Accessors {
  PyTypeObject* type = nullptr;
  Accessor data_ptr, dtype, shape, is_contiguous, stride, is_neg, is_conj, is_cpu, is_complex, grad;
  explicit Accessors(PyTypeObject* t)
      : type(t),
        data_ptr(t, "data_ptr", true),
        dtype(t, "dtype", false),
        shape(t, "shape", false),
        is_contiguous(t, "is_contiguous", true),
        stride(t, "stride", true),
        is_neg(t, "is_neg", true),
        is_conj(t, "is_conj", true),
        is_cpu(t, "is_cpu", false),
        is_complex(t, "is_complex", true),
        grad(t, "grad", false) {}
};

// The accessors of the types the core takes (torch.Tensor, torch.nn.Parameter); nullptr for any
// other type (subclasses have their own semantics and go to torch's step).
const Accessors* accessors_for(PyTypeObject* type) {
  static const std::array<Accessors*, 2> known = [] {
    py::module_ torch = py::module_::import("torch");
    auto* tensor = reinterpret_cast<PyTypeObject*>(torch.attr("Tensor").ptr());
    auto* param = reinterpret_cast<PyTypeObject*>(torch.attr("nn").attr("Parameter").ptr());
    return std::array<Accessors*, 2>{new Accessors(tensor), new Accessors(param)};
  }();
  for (const Accessors* a : known) {
    if (a->type == type) return a;
  }
  return nullptr;
}

bool is_true(PyObject* r) {  // consumes r
  if (r == nullptr) return false;
  const bool v = r == Py_True;
  Py_DECREF(r);
  return v;
}

bool is_false(PyObject* r) {  // consumes r
  if (r == nullptr) return false;
  const bool v = r == Py_False;
  Py_DECREF(r);
  return v;
}

bool read_int(PyObject* r, int64_t* out) {  // consumes r
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

bool equal(PyObject* r, PyObject* expected) {  // consumes r
  if (r == nullptr) return false;
  const int eq = PyObject_RichCompareBool(r, expected, Py_EQ);
  Py_DECREF(r);
  if (eq < 0) PyErr_Clear();
  return eq == 1;
}

// The fields shared by every check, read in the same order and the same way everywhere:
// dtype, shape, layout, neg and conj bits against `s`.
bool same_meta(PyObject* t, const Accessors& a, const TensorSig& s) {
  PyObject* dt = a.dtype(t);
  if (dt == nullptr) return false;
  Py_DECREF(dt);  // dtype objects are singletons: identity is equality
  if (dt != s.dtype) return false;
  if (!equal(a.shape(t), s.shape.ptr())) return false;
  if (!s.single &&
      (s.strides.is_none() ? !is_true(a.is_contiguous(t)) : !equal(a.stride(t), s.strides.ptr()))) {
    return false;
  }
  if (!is_false(a.is_neg(t))) return false;
  return !s.complex || is_false(a.is_conj(t));
}

// The same questions through the C reader: `m` against `s`.
bool same_meta(const abi::Meta& m, const TensorSig& s) {
  const auto dim = static_cast<std::size_t>(m.dim);
  if (m.dtype != s.scalar || dim != s.sizes.size() || m.neg || m.conj) return false;
  if (dim != 0 && std::memcmp(m.sizes, s.sizes.data(), dim * sizeof(int64_t)) != 0) return false;
  if (s.single) return true;
  return s.layout.empty() ? m.contiguous
                          : std::memcmp(m.strides, s.layout.data(), dim * sizeof(int64_t)) == 0;
}

// Bytes per element of `t` (0 when the read fails).
int64_t itemsize_of(PyObject* t) {
  int64_t n = 0;
  return read_int(PyObject_CallMethod(t, "element_size", nullptr), &n) ? n : 0;
}

// Whether `g`'s elements lie inside its storage, through torch's Python accessors.
bool within_storage_py(PyObject* g, int64_t itemsize) {
  int64_t nbytes = 0, offset = 0, last = 0;
  PyObject* storage = PyObject_CallMethod(g, "untyped_storage", nullptr);
  if (storage == nullptr) {
    PyErr_Clear();
    return false;
  }
  const bool ok = read_int(PyObject_CallMethod(storage, "nbytes", nullptr), &nbytes) &&
                  read_int(PyObject_CallMethod(g, "storage_offset", nullptr), &offset);
  Py_DECREF(storage);
  py::object shape, strides;
  try {
    shape = py::reinterpret_borrow<py::object>(g).attr("shape");
    strides = py::reinterpret_borrow<py::object>(g).attr("stride")();
  } catch (const py::error_already_set&) {
    return false;
  }
  const auto sizes = shape.cast<std::vector<int64_t>>();
  const auto steps = strides.cast<std::vector<int64_t>>();
  for (std::size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) return ok;
    last += (sizes[d] - 1) * steps[d];
  }
  return ok && itemsize > 0 && (offset + last + 1) * itemsize <= nbytes;
}

bool read_sig_native(PyObject* t, TensorSig* out) {
  abi::Meta m;
  if (!abi::read(t, &m)) return false;
  TensorSig s;
  s.type = Py_TYPE(t);
  s.itemsize = itemsize_of(t);
  s.native = true;
  s.ptr = m.ptr;
  s.scalar = m.dtype;
  s.sizes.assign(m.sizes, m.sizes + m.dim);
  int64_t numel = 1;
  for (int64_t n : s.sizes) numel *= n;
  s.single = numel <= 1;
  if (!m.contiguous) s.layout.assign(m.strides, m.strides + m.dim);  // dim >= 1 here
  if (!same_meta(m, s)) return false;                                // neg/conj bits
  *out = std::move(s);
  return true;
}

}  // namespace

bool read_sig(PyObject* t, TensorSig* out) {
  const Accessors* a = accessors_for(Py_TYPE(t));
  if (a == nullptr) return false;
  if (abi::enabled()) return read_sig_native(t, out);
  TensorSig s;
  s.type = Py_TYPE(t);
  if (!is_true(a->is_cpu(t)) || !read_int(a->data_ptr(t), &s.ptr)) return false;
  s.dtype = a->dtype(t);
  if (s.dtype == nullptr) return false;
  Py_DECREF(s.dtype);
  PyObject* shape = a->shape(t);
  if (shape == nullptr) return false;
  s.shape = py::reinterpret_steal<py::object>(shape);
  Py_ssize_t numel = 1;
  for (py::handle n : s.shape) {
    const Py_ssize_t size = PyLong_AsSsize_t(n.ptr());
    if (size < 0) {
      PyErr_Clear();
      return false;
    }
    numel *= size;
  }
  s.single = numel <= 1;
  PyObject* contiguous = a->is_contiguous(t);
  if (contiguous == nullptr) return false;
  const bool is_contig = contiguous == Py_True;
  Py_DECREF(contiguous);
  if (is_contig) {
    s.strides = py::none();
  } else {
    PyObject* strides = a->stride(t);
    if (strides == nullptr) return false;
    s.strides = py::reinterpret_steal<py::object>(strides);
  }
  PyObject* cplx = a->is_complex(t);
  if (cplx == nullptr) return false;
  s.complex = cplx == Py_True;
  s.itemsize = itemsize_of(t);
  Py_DECREF(cplx);
  // a signature is only taken of a tensor the core may read raw: same_meta confirms the bits
  if (!same_meta(t, *a, s)) return false;
  *out = std::move(s);
  return true;
}

bool same_sig(PyObject* t, const TensorSig& s) {
  if (Py_TYPE(t) != s.type || s.native != abi::enabled()) return false;
  if (s.native) {
    abi::Meta m;
    return abi::read(t, &m) && m.ptr == s.ptr && same_meta(m, s);
  }
  const Accessors* a = accessors_for(s.type);
  int64_t ptr = 0;
  return read_int(a->data_ptr(t), &ptr) && ptr == s.ptr && same_meta(t, *a, s);
}

bool grad_fits(PyObject* g, const TensorSig& p, int64_t* ptr) {
  const Accessors* a = accessors_for(Py_TYPE(g));
  if (a == nullptr || p.native != abi::enabled()) return false;
  if (p.native) {
    abi::Meta m;  // the device is read too: only CPU tensors pass
    if (!abi::read(g, &m)) return false;
    *ptr = m.ptr;
    return same_meta(m, p) && abi::within_storage(m, p.itemsize);
  }
  return a != nullptr && read_int(a->data_ptr(g), ptr) && same_meta(g, *a, p) &&
         is_true(a->is_cpu(g)) && within_storage_py(g, p.itemsize);
}

PyObject* grad_of(PyObject* p) {
  static PyObject* name = PyUnicode_InternFromString("grad");
  const Accessors* a = accessors_for(Py_TYPE(p));
  PyObject* g = a != nullptr ? a->grad(p) : PyObject_GetAttr(p, name);
  if (g == nullptr) PyErr_Clear();
  return g;
}

std::vector<std::pair<std::string, double>> time_reads(PyObject* t, int reps) {
  const Accessors* a = accessors_for(Py_TYPE(t));
  if (a == nullptr) throw std::invalid_argument("pyfastopt: not a torch.Tensor or Parameter");
  std::vector<std::pair<std::string, double>> out;
  auto time = [&](const char* name, const Accessor& acc) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) Py_XDECREF(acc(t));
    const auto t1 = std::chrono::steady_clock::now();
    out.emplace_back(name, std::chrono::duration<double, std::nano>(t1 - t0).count() / reps);
  };
  time("data_ptr", a->data_ptr);
  time("dtype", a->dtype);
  time("shape", a->shape);
  time("is_contiguous", a->is_contiguous);
  time("stride", a->stride);
  time("is_neg", a->is_neg);
  time("is_conj", a->is_conj);
  time("is_cpu", a->is_cpu);
  time("grad", a->grad);
  if (abi::enabled()) {
    abi::Meta m;
    const auto t0 = std::chrono::steady_clock::now();
    bool ok = true;
    for (int i = 0; i < reps; ++i) ok &= abi::read(t, &m);
    const auto t1 = std::chrono::steady_clock::now();
    if (!ok) throw std::runtime_error("pyfastopt: the C reader failed on a plain tensor");
    out.emplace_back("C reader (every field)",
                     std::chrono::duration<double, std::nano>(t1 - t0).count() / reps);
  }
  TensorSig s;
  if (read_sig(t, &s)) {
    const auto t0 = std::chrono::steady_clock::now();
    bool ok = true;
    for (int i = 0; i < reps; ++i) ok &= same_sig(t, s);
    const auto t1 = std::chrono::steady_clock::now();
    if (!ok) throw std::runtime_error("pyfastopt: a tensor's signature changed while timing");
    out.emplace_back("same_sig (all of a held tensor)",
                     std::chrono::duration<double, std::nano>(t1 - t0).count() / reps);
  }
  return out;
}

}  // namespace pyfastopt
