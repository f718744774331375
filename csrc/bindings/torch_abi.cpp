// torch's C entry points, found at run time and proven on sample tensors before use.
#include "torch_abi.h"

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#define PFO_HAVE_DLFCN 1
#endif

#include <cstddef>
#include <cstring>
#include <vector>

namespace pyfastopt::abi {
namespace {

using Handle = const void*;  // an at::Tensor* (AtenTensorHandle)
using GetPtr = int32_t (*)(Handle, void**);
using GetI32 = int32_t (*)(Handle, int32_t*);
using GetI64 = int32_t (*)(Handle, int64_t*);
using GetArr = int32_t (*)(Handle, int64_t**);
using Const = int32_t (*)();
using Pred = bool (*)(Handle);  // bool f(const at::Tensor&)
using Bump = void (*)(Handle);  // void f(const at::Tensor&)

struct Functions {
  GetPtr data_ptr = nullptr;
  GetI32 dtype = nullptr, device_type = nullptr, layout = nullptr;
  GetI64 dim = nullptr, storage_size = nullptr, storage_offset = nullptr;
  GetArr sizes = nullptr, strides = nullptr;
  Pred is_neg = nullptr, is_conj = nullptr;
  Bump bump = nullptr;
  int32_t cpu = -1, strided = -1;
};

// Where THPVariable keeps its at::Tensor, right after PyObject_HEAD.
enum class Layout { kNone, kPlain, kMaybeOwned };  // at::Tensor | c10::MaybeOwned<at::Tensor>
constexpr std::size_t kCdata = sizeof(PyObject);
constexpr std::size_t kMaybeOwnedPayload = kCdata + sizeof(void*);  // after `bool isBorrowed_`

Functions g_fn;
Layout g_layout = Layout::kNone;
bool g_on = false;

Handle handle_of(PyObject* t) {
  const char* base = reinterpret_cast<const char*>(t) + kCdata;
  switch (g_layout) {
    case Layout::kPlain:
      return base;
    case Layout::kMaybeOwned: {
      const unsigned char borrowed = *reinterpret_cast<const unsigned char*>(base);
      const char* payload = reinterpret_cast<const char*>(t) + kMaybeOwnedPayload;
      if (borrowed == 0) return payload;
      if (borrowed == 1) return *reinterpret_cast<const void* const*>(payload);
      return nullptr;
    }
    case Layout::kNone:
      break;
  }
  return nullptr;
}

template <class F>
bool find(void* lib, const char* name, F* out) {
#ifdef PFO_HAVE_DLFCN
  void* sym = dlsym(lib, name);
  *out = reinterpret_cast<F>(sym);
  return sym != nullptr;
#else
  (void)lib;
  (void)name;
  (void)out;
  return false;
#endif
}

bool resolve() {
  if (g_fn.bump != nullptr) return true;
#ifdef PFO_HAVE_DLFCN
#ifdef __APPLE__
  void* lib = dlopen("libtorch_cpu.dylib", RTLD_LAZY | RTLD_NOLOAD);
#else
  void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);  // torch's, already loaded
#endif
  if (lib == nullptr) return false;
  Functions f;
  Const cpu = nullptr, strided = nullptr;
  const bool ok = find(lib, "aoti_torch_get_data_ptr", &f.data_ptr) &&
                  find(lib, "aoti_torch_get_dtype", &f.dtype) &&
                  find(lib, "aoti_torch_get_device_type", &f.device_type) &&
                  find(lib, "aoti_torch_get_dim", &f.dim) &&
                  find(lib, "aoti_torch_get_storage_size", &f.storage_size) &&
                  find(lib, "aoti_torch_get_storage_offset", &f.storage_offset) &&
                  find(lib, "aoti_torch_get_sizes", &f.sizes) &&
                  find(lib, "aoti_torch_get_strides", &f.strides) &&
                  find(lib, "aoti_torch_device_type_cpu", &cpu) &&
                  find(lib, "aoti_torch_layout_strided", &strided) &&
                  find(lib, "_ZN2at6native6is_negERKNS_6TensorE", &f.is_neg) &&
                  find(lib, "_ZN2at6native7is_conjERKNS_6TensorE", &f.is_conj) &&
                  find(lib, "_ZN5torch8autograd4impl12bump_versionERKN2at6TensorE", &f.bump);
  // newer torch (2.8 and later) only; without it, strides() failing is what refuses another
  // layout (sparse, mkldnn and nested tensors have none)
  find(lib, "aoti_torch_get_layout", &f.layout);
  dlclose(lib);  // drops the reference NOLOAD took; torch keeps the library loaded
  if (!ok) return false;
  f.cpu = cpu();
  f.strided = strided();
  g_fn = f;
  return true;
#else
  return false;
#endif
}

// TensorImpl's rule for the default memory format: no elements, or each dimension of size other
// than 1 strided by the product of the sizes after it.
bool contiguous(int64_t dim, const int64_t* sizes, const int64_t* strides) {
  for (int64_t d = 0; d < dim; ++d) {
    if (sizes[d] == 0) return true;
  }
  int64_t expected = 1;
  for (int64_t d = dim - 1; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    if (strides[d] != expected) return false;
    expected *= sizes[d];
  }
  return true;
}

// ---- the probe: every answer against torch's Python accessors ----

PyObject* call0(PyObject* t, const char* method) {  // new reference or nullptr
  return PyObject_CallMethod(t, method, nullptr);
}

bool py_int(PyObject* o, int64_t* out) {  // consumes o
  if (o == nullptr) return false;
  const long long v = PyLong_AsLongLong(o);
  Py_DECREF(o);
  if (v == -1 && PyErr_Occurred()) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

bool py_bool(PyObject* o, bool* out) {  // consumes o
  if (o == nullptr) return false;
  const int v = PyObject_IsTrue(o);
  Py_DECREF(o);
  if (v < 0) return false;
  *out = v == 1;
  return true;
}

bool same_ints(PyObject* seq, const int64_t* values, int64_t n) {  // consumes seq
  if (seq == nullptr) return false;
  PyObject* fast = PySequence_Fast(seq, "sizes");
  Py_DECREF(seq);
  if (fast == nullptr) return false;
  bool ok = PySequence_Fast_GET_SIZE(fast) == n;
  for (Py_ssize_t i = 0; ok && i < n; ++i) {
    const long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
    ok = !PyErr_Occurred() && v == values[i];
  }
  Py_DECREF(fast);
  return ok;
}

// Whether the current layout and functions read `t` exactly as its Python accessors do.
bool agrees(PyObject* t, const PyTypeObject* tensor_type, std::vector<PyObject*>* dtypes,
            std::vector<int32_t>* codes) {
  if (!PyObject_TypeCheck(t, const_cast<PyTypeObject*>(tensor_type))) return false;
  if (static_cast<std::size_t>(Py_TYPE(t)->tp_basicsize) < kMaybeOwnedPayload + sizeof(void*)) {
    return false;
  }
  int64_t impl = 0;
  if (!py_int(PyObject_GetAttrString(t, "_cdata"), &impl)) return false;
  if (g_layout == Layout::kMaybeOwned &&  // samples are owned: never follow an unproven pointer
      *reinterpret_cast<const unsigned char*>(reinterpret_cast<const char*>(t) + kCdata) != 0) {
    return false;
  }
  const Handle h = handle_of(t);
  if (h == nullptr || reinterpret_cast<int64_t>(*reinterpret_cast<const void* const*>(h)) != impl) {
    return false;  // not where the at::Tensor lives: call nothing with it
  }
  Meta m;
  if (!read(t, &m)) return false;
  int64_t ptr = 0, dim = 0;
  bool contiguous = false, neg = false, conj = false;
  PyObject* shape = PyObject_GetAttrString(t, "shape");
  if (!py_int(call0(t, "data_ptr"), &ptr) || !py_int(call0(t, "dim"), &dim) ||
      !py_bool(call0(t, "is_contiguous"), &contiguous) || !py_bool(call0(t, "is_neg"), &neg) ||
      !py_bool(call0(t, "is_conj"), &conj) || !same_ints(shape, m.sizes, m.dim) ||
      !same_ints(call0(t, "stride"), m.strides, m.dim)) {
    return false;
  }
  if (ptr != m.ptr || dim != m.dim || contiguous != m.contiguous || neg != m.neg ||
      conj != m.conj) {
    return false;
  }
  int64_t offset = 0, nbytes = 0;
  PyObject* storage = call0(t, "untyped_storage");
  if (!py_int(call0(t, "storage_offset"), &offset) || storage == nullptr ||
      !py_int(call0(storage, "nbytes"), &nbytes) || offset != m.storage_offset ||
      nbytes != m.storage_nbytes) {
    Py_XDECREF(storage);
    return false;
  }
  Py_DECREF(storage);
  // dtype codes: one per torch.dtype, different dtypes different codes
  PyObject* dt = PyObject_GetAttrString(t, "dtype");
  if (dt == nullptr) return false;
  Py_DECREF(dt);  // singletons
  for (std::size_t i = 0; i < dtypes->size(); ++i) {
    if (((*dtypes)[i] == dt) != ((*codes)[i] == m.dtype)) return false;
  }
  dtypes->push_back(dt);
  codes->push_back(m.dtype);
  // the version bump, on a sample the caller does not use afterwards
  int64_t before = 0, after = 0;
  if (!py_int(PyObject_GetAttrString(t, "_version"), &before) || !bump_version(t) ||
      !py_int(PyObject_GetAttrString(t, "_version"), &after)) {
    return false;
  }
  return after == before + 1;
}

bool all_agree(PyObject* samples, const PyTypeObject* tensor_type) {
  std::vector<PyObject*> dtypes;
  std::vector<int32_t> codes;
  bool neg = false, conj = false;
  const Py_ssize_t n = PyList_GET_SIZE(samples);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* t = PyList_GET_ITEM(samples, i);
    if (!agrees(t, tensor_type, &dtypes, &codes)) return false;
    Meta m;
    read(t, &m);
    neg |= m.neg;
    conj |= m.conj;
  }
  return n >= 4 && neg && conj;  // the bits were seen set, not only clear
}

}  // namespace

bool enabled() { return g_on; }

bool enable(PyObject* samples, bool on) {
  g_on = false;
  g_layout = Layout::kNone;
  if (!on || !PyList_Check(samples) || !resolve()) return false;
  PyObject* torch = PyImport_ImportModule("torch");
  if (torch == nullptr) {
    PyErr_Clear();
    return false;
  }
  PyObject* tensor_type = PyObject_GetAttrString(torch, "Tensor");
  Py_DECREF(torch);
  if (tensor_type == nullptr || !PyType_Check(tensor_type)) {
    Py_XDECREF(tensor_type);
    PyErr_Clear();
    return false;
  }
  for (Layout layout : {Layout::kPlain, Layout::kMaybeOwned}) {
    g_layout = layout;
    if (all_agree(samples, reinterpret_cast<PyTypeObject*>(tensor_type))) {
      g_on = true;
      break;
    }
    PyErr_Clear();
  }
  Py_DECREF(tensor_type);
  if (!g_on) g_layout = Layout::kNone;
  return g_on;
}

bool read(PyObject* t, Meta* out) {
  const Handle h = handle_of(t);
  if (h == nullptr) return false;
  int32_t device = -1, layout = -1;
  if (g_fn.device_type(h, &device) != 0 || device != g_fn.cpu) return false;
  if (g_fn.layout != nullptr && (g_fn.layout(h, &layout) != 0 || layout != g_fn.strided)) {
    return false;
  }
  void* ptr = nullptr;
  int64_t* sizes = nullptr;
  int64_t* strides = nullptr;
  if (g_fn.data_ptr(h, &ptr) != 0 || g_fn.dtype(h, &out->dtype) != 0 ||
      g_fn.dim(h, &out->dim) != 0 || g_fn.sizes(h, &sizes) != 0 || g_fn.strides(h, &strides) != 0) {
    return false;
  }
  if (g_fn.storage_size(h, &out->storage_nbytes) != 0 ||
      g_fn.storage_offset(h, &out->storage_offset) != 0) {
    return false;
  }
  out->contiguous = contiguous(out->dim, sizes, strides);
  out->ptr = reinterpret_cast<int64_t>(ptr);
  out->sizes = sizes;
  out->strides = strides;
  out->neg = g_fn.is_neg(h);
  out->conj = g_fn.is_conj(h);
  return true;
}

bool within_storage(const Meta& m, int64_t itemsize) {
  int64_t last = 0;
  for (int64_t d = 0; d < m.dim; ++d) {
    if (m.sizes[d] == 0) return true;  // no elements
    last += (m.sizes[d] - 1) * m.strides[d];
  }
  return itemsize > 0 && (m.storage_offset + last + 1) * itemsize <= m.storage_nbytes;
}

bool bump_version(PyObject* t) {
  const Handle h = handle_of(t);
  if (h == nullptr) return false;
  try {
    g_fn.bump(h);
  } catch (...) {  // c10::Error: torch refused
    return false;
  }
  return true;
}

}  // namespace pyfastopt::abi
