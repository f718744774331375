// The signature of a tensor: everything the native core relies on when it is handed the tensor's
// address. A Plan records one per tensor when the general path has validated it and re-reads it on
// every fast-path step through the same reader, so the fast path checks exactly what the general
// path checked.
//
// What is read: type (exact torch.Tensor or torch.nn.Parameter), data_ptr(), dtype, shape, the
// layout (is_contiguous(), or stride() for a dense non-contiguous tensor), is_neg() and is_conj().
// Two readers answer the same questions: torch's C entry points (torch_abi.h, when its probe
// passed; about ten times faster) or torch's Python accessors. A signature records which reader
// took it and is only ever compared through that reader; switching readers sends every plan back
// to the general path.
// What is implied rather than read, for tensors a Plan holds across steps: the Plan keeps an alias
// of each such tensor's storage, so while it lives no other allocation, host or device, can have
// the same address; equal addresses then mean the same storage at the same storage offset on the
// CPU. Gradients are not held across steps, so their device is read (is_cpu).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pyfastopt {

struct TensorSig {
  PyTypeObject* type = nullptr;
  int64_t ptr = 0;
  PyObject* dtype = nullptr;  // borrowed: torch's dtype objects are singletons that outlive us
  pybind11::object shape;     // the torch.Size read when the signature was taken
  pybind11::object strides;   // None when contiguous, else the stride tuple
  bool single = false;        // at most one element: any strides lay it out alike
  bool complex = false;       // whether the conjugate bit must be read too
  int64_t itemsize = 0;       // bytes per element (a gradient's storage must hold its extent)
  // the C reader's fields (`native`): scalar type, sizes, strides (empty when contiguous)
  bool native = false;
  int32_t scalar = -1;
  std::vector<int64_t> sizes, layout;
};

// Reads `t`'s signature. False (Python error cleared) when `t` is not a plain CPU-strided tensor
// the core can take: another type, a read that fails, or a neg/conj bit set.
bool read_sig(PyObject* t, TensorSig* out);

// True when `t` still has signature `s`, address included.
bool same_sig(PyObject* t, const TensorSig& s);

// True when `g` can serve as the gradient of a parameter with signature `p`: a plain CPU tensor of
// p's dtype, shape and layout, no neg/conj bit, whose elements lie inside its storage (one shrunk
// in place keeps its sizes; gradients are new tensors at each step, so their addresses say
// nothing). Its address goes to *ptr.
bool grad_fits(PyObject* g, const TensorSig& p, int64_t* ptr);

// p.grad as a new reference, or nullptr (Python error cleared) when the read fails.
PyObject* grad_of(PyObject* p);

// Diagnostics for the breakdown tool: nanoseconds per read of each accessor on `t`, and of a
// whole same_sig(), averaged over `reps` reads.
std::vector<std::pair<std::string, double>> time_reads(PyObject* t, int reps);

}  // namespace pyfastopt
