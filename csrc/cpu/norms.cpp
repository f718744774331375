// The fused clip_grad_norm_ (norms.h). This file is compiled once per ISA (see CMakeLists.txt),
// each time into its own namespace PFO_ISA_NS, like kernels.cpp.
//
// Reduction order, fixed so that the result does not depend on the thread count (nor on the ISA):
// each gradient is cut into blocks of 4096 elements (reduce.h's RowBlocks), the units of the
// reduction pass; within a block, element i goes to accumulator lane i % kSumLanes, each lane
// accumulating in order, and the lanes are combined in a fixed pairwise tree; a gradient's block
// results are combined in block order; the per-gradient norms are then combined in table order.
// Threads only choose which blocks they compute.
//
// Arithmetic, chosen to match torch's `vector_norm(stack([vector_norm(g, p) for g]), p)`:
//  - each element's term (|x|^p, x*x, |x|, x != 0) is computed in the gradient's compute type
//    (float for float32/bfloat16/float16, double for float64), so terms underflow and overflow
//    where torch's do; the terms are accumulated in double, and a float32-range sum that exceeds
//    float's range becomes inf, as torch's float accumulator would;
//  - each gradient's norm is rounded to its dtype, the norms are combined in the same way in the
//    total norm's dtype, and the total norm is rounded to that dtype;
//  - the clip coefficient follows torch's three tensor ops, `clamp(max_norm / (total + 1e-6),
//    max=1)`, rounding as each of them does in the total norm's dtype; the gradients are scaled as
//    torch's `mul_` by a 0-d tensor does (low precision: float(g) * float(coef), rounded once).
#include "pyfastopt/norms.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "pyfastopt/storage.h"
#include "reduce.h"

#ifndef PFO_ISA_NS
#error "PFO_ISA_NS must name the ISA namespace of this build"
#endif
#ifndef PFO_ISA_NAME
#error "PFO_ISA_NAME must name the ISA of this build"
#endif
#define PFO_NORM_STR2(x) #x
#define PFO_NORM_STR(x) PFO_NORM_STR2(x)

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

int64_t elem_size(int64_t code) {
  switch (static_cast<NormDType>(code)) {
    case NormDType::kFloat32:
      return 4;
    case NormDType::kFloat64:
      return 8;
    case NormDType::kBFloat16:
    case NormDType::kFloat16:
      return 2;
  }
  throw std::invalid_argument("pyfastopt: invalid gradient dtype code in the norm table");
}

// ---- the norm kinds ---------------------------------------------------------------------------
// term(v): what one element (in its compute type C) contributes, computed in C and widened to
// double; join: how two accumulators combine; root: the norm of an accumulated value.

struct SumSquares {  // p = 2
  static constexpr bool kSum = true;
  double identity() const { return 0.0; }
  template <class C>
  double term(C v) const {
    return static_cast<double>(v * v);
  }
  static double join(double a, double b) { return a + b; }
  double root(double s) const { return std::sqrt(s); }
};

struct SumAbs {  // p = 1
  static constexpr bool kSum = true;
  double identity() const { return 0.0; }
  template <class C>
  double term(C v) const {
    return static_cast<double>(std::fabs(v));
  }
  static double join(double a, double b) { return a + b; }
  double root(double s) const { return s; }
};

struct CountNonzero {  // p = 0
  static constexpr bool kSum = true;
  double identity() const { return 0.0; }
  template <class C>
  double term(C v) const {
    return v != C(0) ? 1.0 : 0.0;  // NaN counts, as in torch
  }
  static double join(double a, double b) { return a + b; }
  double root(double s) const { return s; }
};

// max / min of |x|; a NaN wins, as torch's amax / amin propagate it
struct MaxAbs {  // p = inf
  static constexpr bool kSum = false;
  double identity() const { return 0.0; }
  template <class C>
  double term(C v) const {
    return static_cast<double>(std::fabs(v));
  }
  static double join(double a, double b) { return (b > a || b != b) ? b : a; }
  double root(double s) const { return s; }
};

struct MinAbs {  // p = -inf
  static constexpr bool kSum = false;
  double identity() const { return kInf; }
  template <class C>
  double term(C v) const {
    return static_cast<double>(std::fabs(v));
  }
  static double join(double a, double b) { return (b < a || b != b) ? b : a; }
  double root(double s) const { return s; }
};

struct SumPow {  // any other p (including negative p: a zero element makes the norm 0)
  static constexpr bool kSum = true;
  double p;
  double identity() const { return 0.0; }
  template <class C>
  double term(C v) const {
    // |x|^p in double, rounded to C: the term torch's C-typed pow would give, within its ulp
    return static_cast<double>(static_cast<C>(std::pow(static_cast<double>(std::fabs(v)), p)));
  }
  static double join(double a, double b) { return a + b; }
  double root(double s) const { return std::pow(s, 1.0 / p); }
};

// ---- pass 1: one block ------------------------------------------------------------------------

template <class P, class Op>
double reduce_block(const Op& op, int64_t addr, int64_t begin, int64_t n) {
  const auto* x = reinterpret_cast<const typename P::storage*>(addr) + begin;
  return cpu::lane_reduce(op, n, [&](int64_t i) { return op.term(P::load(x + i)); });
}

template <class Op>
double reduce_block_of(const Op& op, int64_t code, int64_t addr, int64_t begin, int64_t n) {
  switch (static_cast<NormDType>(code)) {
    case NormDType::kFloat32:
      return reduce_block<Plain<float>>(op, addr, begin, n);
    case NormDType::kFloat64:
      return reduce_block<Plain<double>>(op, addr, begin, n);
    case NormDType::kBFloat16:
      return reduce_block<Bf16>(op, addr, begin, n);
    case NormDType::kFloat16:
      return reduce_block<Fp16>(op, addr, begin, n);
  }
  return 0.0;  // unreachable: codes were checked
}

// ---- pass 2: one block ------------------------------------------------------------------------

template <class P>
void scale_block(int64_t addr, int64_t begin, int64_t n, typename P::compute c) {
  auto* x = reinterpret_cast<typename P::storage*>(addr) + begin;
  for (int64_t i = 0; i < n; ++i) P::store(x + i, P::load(x + i) * c, 0u);
}

void scale_block_of(int64_t code, int64_t addr, int64_t begin, int64_t n, double coef) {
  // torch's mul_ by a 0-d tensor: a float64 gradient by the coefficient, any other by the
  // coefficient as a float (a float32 gradient by a float64 coefficient: cast first)
  const float cf = static_cast<float>(coef);
  switch (static_cast<NormDType>(code)) {
    case NormDType::kFloat32:
      scale_block<Plain<float>>(addr, begin, n, cf);
      return;
    case NormDType::kFloat64:
      scale_block<Plain<double>>(addr, begin, n, coef);
      return;
    case NormDType::kBFloat16:
      scale_block<Bf16>(addr, begin, n, cf);
      return;
    case NormDType::kFloat16:
      scale_block<Fp16>(addr, begin, n, cf);
      return;
  }
}

// ---- rounding to a dtype, through the storage policies ---------------------------------------

template <class P>
double round_through(float v) {
  typename P::storage h;
  P::store(&h, v, 0u);
  return static_cast<double>(P::load(&h));
}

double round_to(int64_t code, double v) {
  switch (static_cast<NormDType>(code)) {
    case NormDType::kFloat32:
      return static_cast<double>(static_cast<float>(v));
    case NormDType::kFloat64:
      return v;
    case NormDType::kBFloat16:
      return round_through<Bf16>(static_cast<float>(v));
    case NormDType::kFloat16:
      return round_through<Fp16>(static_cast<float>(v));
  }
  return v;
}

void store_to(int64_t code, int64_t addr, double v) {
  switch (static_cast<NormDType>(code)) {
    case NormDType::kFloat32:
      Plain<float>::store(reinterpret_cast<float*>(addr), static_cast<float>(v), 0u);
      return;
    case NormDType::kFloat64:
      Plain<double>::store(reinterpret_cast<double*>(addr), v, 0u);
      return;
    case NormDType::kBFloat16:
      Bf16::store(reinterpret_cast<uint16_t*>(addr), static_cast<float>(v), 0u);
      return;
    case NormDType::kFloat16:
      Fp16::store(reinterpret_cast<uint16_t*>(addr), static_cast<float>(v), 0u);
      return;
  }
}

// torch's `clip_coef_clamped = clamp(max_norm / (total_norm + 1e-6), max=1.0)` on a 0-d tensor of
// dtype `code`: `x / t` is `t.reciprocal() * x`; the Python scalars are cast to the dtype for the
// addition and to float for the multiplication (reduced-precision kernels take a float scalar).
double clip_coefficient(int64_t code, double total, double max_norm) {
  double c = 0.0;
  switch (static_cast<NormDType>(code)) {
    case NormDType::kFloat64:
      c = (1.0 / (total + 1e-6)) * max_norm;
      break;
    case NormDType::kFloat32: {
      const float t1 = static_cast<float>(total) + static_cast<float>(1e-6);
      const float t2 = 1.0f / t1;
      c = static_cast<double>(t2 * static_cast<float>(max_norm));
      break;
    }
    case NormDType::kBFloat16:
    case NormDType::kFloat16: {
      auto r = [code](float v) { return static_cast<float>(round_to(code, v)); };
      const float eps = r(static_cast<float>(1e-6));
      const float t1 = r(static_cast<float>(total) + eps);
      const float t2 = r(1.0f / t1);
      c = static_cast<double>(r(t2 * static_cast<float>(max_norm)));
      break;
    }
  }
  return c > 1.0 ? 1.0 : c;  // clamp(max=1): a NaN stays NaN
}

// ---- the call ---------------------------------------------------------------------------------

// The rows of a norm table, [numel, NormDType code, address], and their blocks.
struct BlockPlan {
  const NormCall& call;
  cpu::RowBlocks blocks;
  int64_t code(int64_t r) const { return call.table[r * 3 + 1]; }
  int64_t addr(int64_t r) const { return call.table[r * 3 + 2]; }
};

template <class Op>
NormResult run(const Op& op, const BlockPlan& plan) {
  const NormCall& call = plan.call;
  std::vector<double> partial(static_cast<std::size_t>(plan.blocks.size()));
  NormResult result{NormStatus::kDone, std::numeric_limits<double>::quiet_NaN(), false};

  auto reduce_range = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const cpu::RowBlock& k = plan.blocks[b];
      partial[b] = reduce_block_of(op, plan.code(k.row), plan.addr(k.row), k.begin, k.n);
    }
  };
  auto scale_range = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const cpu::RowBlock& k = plan.blocks[b];
      scale_block_of(plan.code(k.row), plan.addr(k.row), k.begin, k.n, result.coef);
    }
  };
  // Between the passes, on one thread: the per-gradient norms, the total norm, the coefficient.
  auto combine = [&]() {
    const int64_t out = call.out_dtype;
    const bool out_float = static_cast<NormDType>(out) != NormDType::kFloat64;
    double total = op.identity();
    for (int64_t r = 0; r < call.rows; ++r) {
      const int64_t code = plan.code(r);
      double s = op.identity();
      for (int64_t b = plan.blocks.first(r); b < plan.blocks.first(r + 1); ++b) {
        s = Op::join(s, partial[b]);
      }
      // torch accumulates float32 / bfloat16 / float16 in float: past float's range, inf
      if (Op::kSum && static_cast<NormDType>(code) != NormDType::kFloat64 &&
          std::isinf(static_cast<float>(s))) {
        s = kInf;
      }
      const double norm = round_to(code, op.root(s));  // exactly representable in `out` too
      total = Op::join(total, out_float ? op.term(static_cast<float>(norm)) : op.term(norm));
    }
    if (Op::kSum && out_float && std::isinf(static_cast<float>(total))) total = kInf;
    total = round_to(out, op.root(total));
    store_to(out, call.out_addr, total);
    if (!call.scale) return;
    if (call.error_if_nonfinite && !std::isfinite(total)) {
      result.status = NormStatus::kNonFinite;
      return;
    }
    result.coef = clip_coefficient(out, total, call.max_norm);
    // g * 1 is g (a signalling NaN aside): the pass that would write every gradient is skipped
    result.scaled = result.coef != 1.0;
  };

  // the scaling pass takes the same blocks as the reduction: still in this core's cache
  cpu::run_passes(plan.blocks.split(), call.num_threads, call.parallel_min, cpu::pass(reduce_range),
                  cpu::serial(combine), cpu::pass([&](int64_t b0, int64_t b1) {
                    if (result.scaled) scale_range(b0, b1);
                  }));
  return result;
}

// Two gradients whose bytes overlap: torch would scale the shared elements twice, and two threads
// must not write them at once. The caller hands such a call to torch.
bool aliased(const NormCall& call) {
  std::vector<std::pair<int64_t, int64_t>> spans;
  spans.reserve(static_cast<std::size_t>(call.rows));
  for (int64_t r = 0; r < call.rows; ++r) {
    const int64_t n = call.table[r * 3];
    if (n == 0) continue;
    const int64_t a = call.table[r * 3 + 2];
    spans.emplace_back(a, a + n * elem_size(call.table[r * 3 + 1]));
  }
  std::sort(spans.begin(), spans.end());
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].second) return true;
  }
  return false;
}

// Defence in depth: the Python layer validated every extent; here we still refuse what would
// make this code read or write where it must not.
void check(const NormCall& call, bool empty_is_error) {
  if (call.rows < 0 || (call.rows > 0 && call.table == nullptr)) {
    throw std::invalid_argument("pyfastopt: invalid norm table");
  }
  if (std::isnan(call.norm_type)) throw std::invalid_argument("pyfastopt: norm_type is NaN");
  const int64_t out_size = elem_size(call.out_dtype);
  if (call.out_addr == 0 || call.out_addr % out_size != 0) {
    throw std::invalid_argument("pyfastopt: null or misaligned output address");
  }
  for (int64_t r = 0; r < call.rows; ++r) {
    const int64_t n = call.table[r * 3];
    const int64_t size = elem_size(call.table[r * 3 + 1]);
    const int64_t a = call.table[r * 3 + 2];
    if (n < 0) throw std::invalid_argument("pyfastopt: negative element count");
    if (n == 0) {
      if (empty_is_error) {
        throw std::invalid_argument(
            "pyfastopt: this norm of an empty gradient is undefined (torch raises)");
      }
      continue;
    }
    if (a == 0 || a % size != 0) {
      throw std::invalid_argument("pyfastopt: null or misaligned gradient address");
    }
  }
}

NormResult clip_grad_norm(const NormCall& call) {
  const double p = call.norm_type;
  // norms without an identity (max, min, negative p): torch refuses an empty tensor
  check(call, p == kInf || p < 0.0);
  if (aliased(call)) return NormResult{NormStatus::kAliased, 0.0, false};

  const BlockPlan plan{call,
                       cpu::RowBlocks(call.rows, [&](int64_t r) { return call.table[r * 3]; })};

  if (p == 2.0) return run(SumSquares{}, plan);
  if (p == 1.0) return run(SumAbs{}, plan);
  if (p == 0.0) return run(CountNonzero{}, plan);
  if (p == kInf) return run(MaxAbs{}, plan);
  if (p == -kInf) return run(MinAbs{}, plan);
  return run(SumPow{p}, plan);
}

}  // namespace
}  // namespace PFO_ISA_NS

#define PFO_NORM_CAT2(a, b) a##b
#define PFO_NORM_CAT(a, b) PFO_NORM_CAT2(a, b)
extern const NormKernelSet PFO_NORM_CAT(norm_kernels_, PFO_ISA_NAME) = {PFO_NORM_STR(PFO_ISA_NAME),
                                                                        PFO_ISA_NS::clip_grad_norm};

}  // namespace pyfastopt
