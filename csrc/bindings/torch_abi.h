// Reading a tensor's metadata through torch's C entry points instead of its Python accessors.
//
// The core never links libtorch. At run time, after `import torch` has loaded libtorch_cpu, it
// looks up a handful of functions there by name:
//   - the AOTInductor C shim (`aoti_torch_get_data_ptr`, `..._dtype`, `..._sizes`, `..._strides`,
//     `..._device_type`, `..._dim`, and `..._layout` where it exists): a C ABI that torch keeps
//     stable for compiled models; each takes an `at::Tensor*` (AtenTensorHandle);
//   - `at::native::is_neg` / `at::native::is_conj` (the plain functions behind `Tensor.is_neg()`)
//     and `torch::autograd::impl::bump_version` (behind `torch._C._increment_version`).
// The `at::Tensor` a Python tensor wraps sits inside its object (`THPVariable::cdata`); where
// exactly depends on the torch version (a plain `at::Tensor` since 2.10, a `c10::MaybeOwned`
// before). `enable()` probes both layouts on sample tensors and turns this reader on only when
// every answer (the TensorImpl address against `_cdata`, then each field against the Python
// accessor) agrees on every sample; otherwise the Python accessors stay in use. Nothing here
// is needed for correctness: it is a faster way of reading the same fields.
#pragma once

#include <Python.h>

#include <cstdint>

namespace pyfastopt::abi {

// What a signature needs of one tensor. `sizes`/`strides` point into the TensorImpl and are
// valid while the tensor is unchanged and the GIL is held.
struct Meta {
  int64_t ptr = 0;
  int32_t dtype = -1;  // c10::ScalarType
  int64_t dim = 0;
  const int64_t* sizes = nullptr;
  const int64_t* strides = nullptr;
  bool contiguous = false;
  bool neg = false;
  bool conj = false;
  int64_t storage_nbytes = 0;  // the storage's size in bytes
  int64_t storage_offset = 0;  // in elements
};

// Whether the elements of a tensor read as `m`, of `itemsize` bytes each, lie inside its storage
// (a storage shrunk in place keeps the tensor's sizes and strides).
bool within_storage(const Meta& m, int64_t itemsize);

// True when the reader is on (probe passed and not switched off).
bool enabled();

// Probes with `samples` (a list of CPU tensors that must include a neg view, a conj view, a
// transposed view, a 0-d tensor and a Parameter) and turns the reader on if every answer agrees,
// or off when `on` is false. Returns whether it is on. GIL held.
bool enable(PyObject* samples, bool on);

// Reads `t` (a torch.Tensor or Parameter, type checked by the caller). False when it is not a
// strided CPU tensor or a read fails. GIL held.
bool read(PyObject* t, Meta* out);

// Bumps `t`'s autograd version counter as an in-place op does. False when torch refused (an
// inference tensor outside inference mode); the caller then lets torch's Python entry point
// raise its own error.
bool bump_version(PyObject* t);

}  // namespace pyfastopt::abi
