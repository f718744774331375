// The vector operations of L-BFGS and BFGS (vector_ops.h). This file is compiled once per ISA
// (see CMakeLists.txt), each time into its own namespace PFO_ISA_NS, like kernels.cpp; the
// passes over the elements and the reduction order are reduce.h's (RowBlocks: blocks of 4096
// elements, never spanning two segments; lane_reduce within a block; the blocks' results
// combined in block order), shared with norms.cpp and adafactor.cpp.
#include "pyfastopt/vector_ops.h"

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyfastopt/rules.h"
#include "reduce.h"

#ifndef PFO_ISA_NAME
#error "PFO_ISA_NAME must name the ISA of this build"
#endif
#define PFO_VEC_STR2(x) #x
#define PFO_VEC_STR(x) PFO_VEC_STR2(x)

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace {

using Block = cpu::RowBlock;

[[noreturn]] void refuse(const char* what) {
  throw std::invalid_argument(std::string("pyfastopt: ") + what);
}

// ---- one block of one operation ---------------------------------------------------------------

template <typename T>
void neg(T* out, const T* a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = -a[i];
}

template <typename T>
void copy(T* out, const T* a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = a[i];
}

template <typename T>
void scale(T* out, T s, const T* a, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = s * a[i];
}

template <typename T>
void axpy(T* out, T s, const T* a, const T* b, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = fmadd(s, a[i], b[i]);
}

template <typename T>
void sub(T* out, const T* a, const T* b, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] - b[i];
}

// The larger of two values as a reduction kind (reduce.h's interface); a NaN wins.
struct Larger {
  double identity() const { return 0.0; }
  static double join(double a, double b) { return max_nan(a, b); }
};

// a*b in double, the term of a dot product. For float32 inputs the product is exact in double,
// so the lane's sum rounds once (the bits of a fused multiply-add into the lane); for float64
// inputs the product rounds, and is kept apart from the sum (the build has -ffp-contract=off) so
// that every SIMD build sums alike.
template <typename T>
double product(T a, T b) {
  return static_cast<double>(a) * static_cast<double>(b);
}

template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  return cpu::lane_reduce(cpu::Sum{}, n, [&](int64_t i) { return product(a[i], b[i]); });
}

// d = s * y + d, then the dot product of z with the new d, in one loop over the elements (the
// three streams advance together). d shares no memory with y or z (the callers' operands are
// distinct, checked in Python).
template <typename T>
double axpy_dot(T* PFO_RESTRICT d, T s, const T* y, const T* z, int64_t n) {
  return cpu::lane_reduce(cpu::Sum{}, n, [&](int64_t i) {
    const T v = fmadd(s, y[i], d[i]);
    d[i] = v;
    return product(z[i], v);
  });
}

template <typename T>
double sum_abs(const T* a, int64_t n) {
  return cpu::lane_reduce(cpu::Sum{}, n,
                          [&](int64_t i) { return std::fabs(static_cast<double>(a[i])); });
}

template <typename T>
double max_abs(const T* a, int64_t n) {
  return cpu::lane_reduce(Larger{}, n,
                          [&](int64_t i) { return std::fabs(static_cast<double>(a[i])); });
}

// ---- operands ---------------------------------------------------------------------------------

// Refuses a call whose addresses the kernels must not follow (the Python layer checked extents).
void check_call(const VecCall& call) {
  if (call.nrows < 0 || call.lists < 0 || call.nflats < 0 ||
      (call.nrows > 0 && call.rows == nullptr) || (call.nflats > 0 && call.flats == nullptr)) {
    refuse("invalid vector operands");
  }
  const int64_t size = call.dtype == static_cast<int64_t>(VecDType::kFloat32)   ? 4
                       : call.dtype == static_cast<int64_t>(VecDType::kFloat64) ? 8
                                                                                : 0;
  if (size == 0) refuse("vector operations take float32 or float64");
  int64_t total = 0;
  for (int64_t r = 0; r < call.nrows; ++r) {
    const int64_t* row = call.rows + r * (1 + call.lists);
    if (row[0] < 0) refuse("negative element count");
    if (row[0] == 0) continue;
    total += row[0];
    for (int64_t k = 0; k < call.lists; ++k) {
      if (row[1 + k] == 0 || row[1 + k] % size != 0) refuse("null or misaligned tensor address");
    }
  }
  for (int64_t j = 0; total > 0 && j < call.nflats; ++j) {
    if (call.flats[j] == 0 || call.flats[j] % size != 0) {
      refuse("null or misaligned flat vector address");
    }
  }
}

void check_operand(const VecCall& call, int64_t k) {
  if (k < 0 || k >= call.lists + call.nflats) refuse("vector operand index out of range");
}

// Where each operand's part of a block starts.
template <typename T>
struct Operands {
  const VecCall& call;
  std::vector<int64_t> offset;  // element offset of each segment in a flat operand

  explicit Operands(const VecCall& c) : call(c) {
    offset.reserve(static_cast<std::size_t>(c.nrows));
    int64_t o = 0;
    for (int64_t r = 0; r < c.nrows; ++r) {
      offset.push_back(o);
      o += c.rows[r * (1 + c.lists)];
    }
  }
  int64_t numel(int64_t r) const { return call.rows[r * (1 + call.lists)]; }
  T* at(int64_t k, const Block& b) const {
    if (k < call.lists) {
      return reinterpret_cast<T*>(call.rows[b.row * (1 + call.lists) + 1 + k]) + b.begin;
    }
    return reinterpret_cast<T*>(call.flats[k - call.lists]) +
           offset[static_cast<std::size_t>(b.row)] + b.begin;
  }
};

template <typename T>
cpu::RowBlocks plan_of(const Operands<T>& ops) {
  return cpu::RowBlocks(ops.call.nrows, [&](int64_t r) { return ops.numel(r); });
}

// ---- a program: one pass ----------------------------------------------------------------------

bool is_reduction(int64_t op) { return op >= static_cast<int64_t>(VecOp::kDot); }

void check_program(const VecCall& call, const VecProgram& p) {
  if (p.count < 0 || (p.count > 0 && p.code == nullptr) || p.nscalars < 0 || p.nresults < 0 ||
      (p.nscalars > 0 && p.scalars == nullptr) || (p.nresults > 0 && p.results == nullptr)) {
    refuse("invalid vector program");
  }
  std::vector<bool> slot_used(static_cast<std::size_t>(p.nresults), false);
  for (int64_t i = 0; i < p.count; ++i) {
    const int64_t* ins = p.code + i * kVecInstrWidth;
    const int64_t op = ins[0];
    if (op < 0 || op > static_cast<int64_t>(VecOp::kMaxAbs)) refuse("unknown vector op");
    const auto vop = static_cast<VecOp>(op);
    const bool two = vop == VecOp::kAxpy || vop == VecOp::kSub || vop == VecOp::kDot;
    if (!is_reduction(op)) check_operand(call, ins[1]);
    check_operand(call, ins[2]);
    if (two) check_operand(call, ins[3]);
    if (vop == VecOp::kScale || vop == VecOp::kAxpy) {
      if (ins[4] < 0 || ins[4] >= p.nscalars) refuse("vector scalar index out of range");
    }
    if (is_reduction(op)) {
      if (ins[4] < 0 || ins[4] >= p.nresults) refuse("vector result slot out of range");
      if (slot_used[static_cast<std::size_t>(ins[4])]) refuse("two reductions into one slot");
      slot_used[static_cast<std::size_t>(ins[4])] = true;
    }
  }
}

template <typename T>
void run_program(const VecCall& call, const VecProgram& p) {
  check_program(call, p);
  const Operands<T> ops(call);
  const cpu::RowBlocks plan = plan_of(ops);
  const auto nb = static_cast<std::size_t>(plan.size());
  std::vector<int64_t> reductions;  // instruction index of each reduction, in program order
  for (int64_t i = 0; i < p.count; ++i) {
    if (is_reduction(p.code[i * kVecInstrWidth])) reductions.push_back(i);
  }
  const std::size_t nr = reductions.size();
  std::vector<double> partial(nb * nr);  // [block][reduction]

  auto pass = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const Block& blk = plan[b];
      std::size_t red = 0;
      for (int64_t i = 0; i < p.count; ++i) {
        const int64_t* ins = p.code + i * kVecInstrWidth;
        const auto op = static_cast<VecOp>(ins[0]);
        const T* a = ops.at(ins[2], blk);
        const int64_t n = blk.n;
        double* part = partial.data() + static_cast<std::size_t>(b) * nr + red;
        switch (op) {
          case VecOp::kCopy:
            copy(ops.at(ins[1], blk), a, n);
            break;
          case VecOp::kScale:
            scale(ops.at(ins[1], blk), static_cast<T>(p.scalars[ins[4]]), a, n);
            break;
          case VecOp::kAxpy:
            axpy(ops.at(ins[1], blk), static_cast<T>(p.scalars[ins[4]]), a, ops.at(ins[3], blk), n);
            break;
          case VecOp::kSub:
            sub(ops.at(ins[1], blk), a, ops.at(ins[3], blk), n);
            break;
          case VecOp::kDot:
            *part = dot(a, ops.at(ins[3], blk), n);
            ++red;
            break;
          case VecOp::kSumAbs:
            *part = sum_abs(a, n);
            ++red;
            break;
          case VecOp::kMaxAbs:
            *part = max_abs(a, n);
            ++red;
            break;
        }
      }
    }
  };
  cpu::run_passes(plan.split(), call.num_threads, call.parallel_min, cpu::pass(pass));
  // the blocks' results, in block order
  for (std::size_t j = 0; j < nr; ++j) {
    const auto op = static_cast<VecOp>(p.code[reductions[j] * kVecInstrWidth]);
    double acc = 0.0;
    for (std::size_t b = 0; b < nb; ++b) {
      const double v = partial[b * nr + j];
      acc = op == VecOp::kMaxAbs ? max_nan(acc, v) : acc + v;
    }
    p.results[p.code[reductions[j] * kVecInstrWidth + 4]] = acc;
  }
}

void program(const VecCall& call, const VecProgram& p) {
  check_call(call);
  if (call.dtype == static_cast<int64_t>(VecDType::kFloat32)) return run_program<float>(call, p);
  run_program<double>(call, p);
}

// ---- the L-BFGS direction ---------------------------------------------------------------------
//
// torch.optim.LBFGS (n_iter > 1), with q kept in d's memory:
//   q = -g
//   for i = m-1 .. 0:  al_i = (s_i . q) * ro_i;  q += -al_i * y_i
//   d = q * H_diag
//   for i = 0 .. m-1:  be_i = (y_i . d) * ro_i;  d += (al_i - be_i) * s_i
//   prev_flat_grad = g;  gtd = g . d
// Each pass applies the update that the previous dot product allowed and computes the next dot
// product in the same loop over a block (axpy_dot: the three streams advance together, and the
// sums are those of an update followed by a dot product). Pass 0 negates g and reduces
// s_{m-1} . q; pass k (1 <= k <= m) applies al_{m-k}, and reduces s_{m-k-1} . q (k < m) or
// scales by H_diag and reduces y_0 . d (k = m); pass m + 1 + j applies al_j - be_j and reduces
// y_{j+1} . d; the last pass instead copies g and reduces g . d, sum |g| and max |d|.

template <typename T>
void run_direction(const VecCall& call, const LbfgsDirection& L) {
  const Operands<T> ops(call);
  const cpu::RowBlocks plan = plan_of(ops);
  const auto nb = static_cast<std::size_t>(plan.size());
  const int64_t m = L.m;
  const int64_t passes = m == 0 ? 1 : 2 * m + 1;
  constexpr std::size_t kOut = 3;  // reductions of the last pass
  std::vector<double> partial(nb * kOut);
  std::vector<T> al(static_cast<std::size_t>(m)), be(static_cast<std::size_t>(m));
  const T h = static_cast<T>(L.h_diag);

  auto last = [&](std::size_t b, const Block& blk, T* d) {
    const T* g = ops.at(L.g, blk);
    copy(ops.at(L.prev, blk), g, blk.n);
    partial[b * kOut] = dot(g, d, blk.n);
    partial[b * kOut + 1] = sum_abs(g, blk.n);
    partial[b * kOut + 2] = max_abs(d, blk.n);
  };
  auto pass = [&](int64_t k, int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const auto b = static_cast<std::size_t>(bi);
      const Block& blk = plan[bi];
      const int64_t n = blk.n;
      T* d = ops.at(L.d, blk);
      if (k == 0) neg(d, static_cast<const T*>(ops.at(L.g, blk)), n);
      if (m == 0) {
        if (!L.first) scale(d, h, d, n);
        last(b, blk, d);
      } else if (k == 0) {
        partial[b * kOut] = dot(ops.at(L.stps[m - 1], blk), d, n);
      } else if (k <= m) {
        const int64_t i = m - k;
        const T a = -al[static_cast<std::size_t>(i)];
        if (k < m) {
          partial[b * kOut] = axpy_dot(d, a, ops.at(L.dirs[i], blk), ops.at(L.stps[i - 1], blk), n);
        } else {
          axpy(d, a, ops.at(L.dirs[i], blk), d, n);
          scale(d, h, d, n);
          partial[b * kOut] = dot(ops.at(L.dirs[0], blk), d, n);
        }
      } else {
        const auto j = static_cast<std::size_t>(k - m - 1);
        const T a = al[j] - be[j];
        if (k < passes - 1) {
          partial[b * kOut] = axpy_dot(d, a, ops.at(L.stps[j], blk), ops.at(L.dirs[j + 1], blk), n);
        } else {
          axpy(d, a, ops.at(L.stps[j], blk), d, n);
          last(b, blk, d);
        }
      }
    }
  };
  auto between = [&](int64_t k) {
    if (k == passes - 1) {
      double gtd = 0.0, sum = 0.0, mx = 0.0;
      for (std::size_t b = 0; b < nb; ++b) {
        gtd += partial[b * kOut];
        sum += partial[b * kOut + 1];
        mx = max_nan(mx, partial[b * kOut + 2]);
      }
      L.out[0] = gtd;
      L.out[1] = sum;
      L.out[2] = mx;
      return false;
    }
    double s = 0.0;
    for (std::size_t b = 0; b < nb; ++b) s += partial[b * kOut];
    // torch: `dot(...) * ro[i]`, a 0-d tensor of the dtype times another
    if (k < m) {
      const auto i = static_cast<std::size_t>(m - 1 - k);
      al[i] = static_cast<T>(s) * static_cast<T>(L.ro[i]);
    } else {
      const auto j = static_cast<std::size_t>(k - m);
      be[j] = static_cast<T>(s) * static_cast<T>(L.ro[j]);
    }
    return true;
  };
  cpu::run_passes(plan.split(), call.num_threads, call.parallel_min,
                  cpu::rounds(passes, pass, between));
  for (int64_t i = 0; i < m; ++i) L.al[i] = static_cast<double>(al[static_cast<std::size_t>(i)]);
}

void lbfgs_direction(const VecCall& call, const LbfgsDirection& L) {
  check_call(call);
  if (L.m < 0 || L.out == nullptr ||
      (L.m > 0 && (L.dirs == nullptr || L.stps == nullptr || L.ro == nullptr || L.al == nullptr))) {
    refuse("invalid L-BFGS direction call");
  }
  if (L.first && L.m != 0) refuse("the first L-BFGS iteration has no history");
  for (int64_t k : {L.g, L.d, L.prev}) check_operand(call, k);
  for (int64_t i = 0; i < L.m; ++i) {
    check_operand(call, L.dirs[i]);
    check_operand(call, L.stps[i]);
  }
  if (call.dtype == static_cast<int64_t>(VecDType::kFloat32)) return run_direction<float>(call, L);
  run_direction<double>(call, L);
}

}  // namespace
}  // namespace PFO_ISA_NS

#define PFO_VEC_CAT2(a, b) a##b
#define PFO_VEC_CAT(a, b) PFO_VEC_CAT2(a, b)
extern const VecKernelSet PFO_VEC_CAT(vector_kernels_, PFO_ISA_NAME) = {
    PFO_VEC_STR(PFO_ISA_NAME), PFO_ISA_NS::program, PFO_ISA_NS::lbfgs_direction};

}  // namespace pyfastopt
