// The interface between the bindings and the per-ISA builds of cpu/norms.cpp: a fused
// clip_grad_norm_ over all gradients of a call, in two passes of one traversal.
//
// Python hands the core a flat table of int64, one row per gradient, `[numel, dtype, address]`
// (dtype: a NormDType code; the gradient is dense, its `numel` elements one gap-free block
// starting at `address`). Pass 1 reduces every gradient to its norm, with a reduction order that
// does not depend on the thread count, and combines the norms as torch does (a norm of the
// per-tensor norms, each rounded to its gradient's dtype); the total norm is written to a 0-d
// tensor of the result dtype. Pass 2 scales every gradient by torch's clamped clip coefficient.
#pragma once

#include <cstdint>

namespace pyfastopt {

// dtype codes of the norm table and of the total norm (0 and 1 agree with DType's)
enum class NormDType : int64_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

struct NormCall {
  const int64_t* table;  // rows of [numel, NormDType code, address]
  int64_t rows;
  double norm_type;         // torch's norm_type: 2, 1, inf, -inf, 0 or any other p (not NaN)
  double max_norm;          // as torch's float(max_norm)
  int64_t out_dtype;        // NormDType of the total norm (torch's promoted type of the grads)
  int64_t out_addr;         // address of the 0-d tensor the total norm is written to
  bool scale;               // run pass 2
  bool error_if_nonfinite;  // skip pass 2 when the total norm is NaN or infinite
  int num_threads;
  int64_t parallel_min;  // fewer elements than this run on the calling thread
};  // a plain aggregate: no inline code that the per-ISA builds could emit differently

enum class NormStatus : int {
  kDone = 0,       // the total norm was written (and the gradients scaled if asked)
  kAliased = 1,    // two gradients share memory: nothing was read or written
  kNonFinite = 2,  // error_if_nonfinite and a non-finite total norm: nothing was scaled
};

struct NormResult {
  NormStatus status;
  double coef;  // torch's clip_coef_clamped, in the result dtype's precision (NaN if not reached)
  bool scaled;  // whether pass 2 wrote the gradients (not when the coefficient is exactly 1)
};

struct NormKernelSet {
  const char* name;
  NormResult (*clip_grad_norm)(const NormCall&);
};

// Defined by the builds of cpu/norms.cpp (avx512 and avx2 on x86-64 only).
extern const NormKernelSet norm_kernels_avx512;
extern const NormKernelSet norm_kernels_avx2;
extern const NormKernelSet norm_kernels_baseline;

// The build matching active_kernels() (cpu/norm_dispatch.cpp): the ISA is chosen in one place.
const NormKernelSet& active_norm_kernels();

}  // namespace pyfastopt
