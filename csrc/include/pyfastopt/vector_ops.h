// The interface between the bindings and the per-ISA builds of cpu/vector_ops.cpp: the vector
// work of L-BFGS and BFGS (pyfastopt/optim/lbfgs.py, bfgs.py) done in place over the parameters.
//
// A call's operands hold the same elements: the parameters, their gradients, or flat vectors that
// hold all of them concatenated (torch.optim.LBFGS's `d`, `prev_flat_grad`, `old_dirs`, ...).
// They share one segmentation: `nrows` segments, one per parameter, laid end to end. Operand
// k < lists is a *list* operand: segment r starts at rows[r * (1 + lists) + 1 + k] (a dense
// tensor of that segment's numel). Operand lists + j is *flat*: segment r starts at flats[j] plus
// the segment's element offset. Every operand has the call's dtype (float32 or float64).
//
// The work runs over the reduction passes of cpu/reduce.h, so every reduction has an order that
// does not depend on the thread count: terms in double (a float32 product is exact there), 32
// lanes per block of 4096 elements (RowBlocks), the blocks of all segments combined in order.
//
// The Python layer has validated every address and extent (and that no written operand overlaps
// another); the kernels still refuse null or misaligned addresses and out-of-range indices.
#pragma once

#include <cstdint>

namespace pyfastopt {

// dtype codes (agree with DType's)
enum class VecDType : int64_t { kFloat32 = 0, kFloat64 = 1 };

struct VecCall {
  const int64_t* rows;  // nrows rows of [numel, address of list operand 0, ..., lists - 1]
  int64_t nrows;
  int64_t lists;
  const int64_t* flats;  // the flat operands' addresses
  int64_t nflats;
  int64_t dtype;  // VecDType
  int num_threads;
  int64_t parallel_min;  // fewer elements than this run on the calling thread
};  // a plain aggregate: no inline code that the per-ISA builds could emit differently

// One instruction is kVecInstrWidth words [op, out, a, b, s]: operand indices, and `s` the index
// of a scalar (elementwise) or of a result slot (reductions). Elementwise instructions compute in
// the dtype, the scalar rounded to it first, as torch's kernels take a Python scalar; within a
// block they run in program order, so a later instruction sees what an earlier one wrote.
enum class VecOp : int64_t {
  kCopy = 0,    // out = a
  kScale = 1,   // out = s * a            (torch's mul by a scalar; s = -1 is neg)
  kAxpy = 2,    // out = s * a + b        (torch's b.add(a, alpha=s): fused where ATen fuses it)
  kSub = 3,     // out = a - b
  kDot = 4,     // result[s] = sum of a * b
  kSumAbs = 5,  // result[s] = sum of |a|
  kMaxAbs = 6,  // result[s] = max of |a| (NaN if any element is NaN; 0 for no elements)
};
constexpr int64_t kVecInstrWidth = 5;

struct VecProgram {
  const int64_t* code;  // count instructions
  int64_t count;
  const double* scalars;
  int64_t nscalars;
  double* results;  // nresults slots, each written by at most one reduction
  int64_t nresults;
};

// torch.optim.LBFGS's search direction from the gradient and the history (the two-loop
// recursion), its copy of the gradient into prev_flat_grad and its directional derivative, in
// 2m + 1 passes (one for m = 0) over the elements; the scalars between the passes (al_i, be_i)
// are computed as torch computes them, in the dtype.
struct LbfgsDirection {
  int64_t g, d, prev;   // operands: the gradient (read), d (written), prev_flat_grad (= g)
  const int64_t* dirs;  // m operands, old_dirs (y_i), oldest first (read)
  const int64_t* stps;  // m operands, old_stps (s_i) (read)
  const double* ro;     // m values ro_i (exact in the dtype)
  int64_t m;
  double h_diag;  // H_diag (exact in the dtype)
  bool first;     // torch's first iteration: d = -g, without history or H_diag
  double* al;     // out: m values al_i (exact in the dtype)
  double* out;    // out: [g . d, sum of |g|, max of |d|]
};

struct VecKernelSet {
  const char* name;
  void (*program)(const VecCall&, const VecProgram&);
  void (*lbfgs_direction)(const VecCall&, const LbfgsDirection&);
};

// Defined by the builds of cpu/vector_ops.cpp (avx512 and avx2 on x86-64 only).
extern const VecKernelSet vector_kernels_avx512;
extern const VecKernelSet vector_kernels_avx2;
extern const VecKernelSet vector_kernels_baseline;

// The build matching active_kernels() (cpu/norm_dispatch.cpp).
const VecKernelSet& active_vector_kernels();

}  // namespace pyfastopt
