// The second kind of multi-tensor pass: reductions (a global gradient norm for clipping,
// per-tensor norms for LAMB-style trust ratios, Adafactor's row and column moments).
//
// A reducing call cuts its tensors into *units* in a way that depends only on their shapes (the
// unit plan is the caller's: blocks of a flat tensor, tiles of a matrix), reduces every unit to
// partial results in slots of its own, and combines the partials in unit order on one thread.
// Threads only choose which units they compute, so results do not depend on the thread count
// (nor on the ISA: the arithmetic below is plain double additions in a fixed order).
//
// Four pieces, each usable alone:
//  - lane_reduce: one unit's reduction of n terms in a fixed order (element i accumulates into
//    lane i % kSumLanes, each lane in order, the lanes joined by a fixed pairwise tree), and
//    run_reduce, the same for runs of any length (short ones joined in order);
//  - UnitSplit: the units' element counts and the split of the units between threads (each
//    thread one contiguous range of units, balanced by elements);
//  - RowBlocks: the simplest unit plan, rows (tensors, or segments of a flat vector) cut into
//    blocks of kRowBlock elements, with each block's row and offset in it, and its UnitSplit;
//  - run_passes: parallel passes over the units and serial steps between them, in one OpenMP
//    region; each thread takes the same units in every pass (still in its cache), and a serial
//    step runs on one thread after every thread finished the pass before it. `rounds` repeats a
//    pass and a serial step a number of times known at run time, the serial step deciding
//    whether to go on.
//
// Users: the fused clip_grad_norm_ (norms.cpp: RowBlocks; reduce, combine into the total norm,
// scale), Adafactor (adafactor.cpp: tiles of matrices; reduce, combine, reduce, combine, update)
// and the vector operations of L-BFGS and BFGS (vector_ops.cpp: RowBlocks; one pass of a small
// program, or the 2m + 1 rounds of the two-loop recursion). Per-tensor norms, LAMB's trust
// ratios, are the same shape as Adafactor's parameter and update norms: one partial per unit,
// combined per tensor in unit order by a serial step, read by the next pass.
// tests/native/check_reduce.cpp checks RowBlocks and the rounds (tests/test_reduce.py).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#ifndef PFO_ISA_NS
#error "PFO_ISA_NS must name the ISA namespace of this build"
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {  // see rules.h: one copy per ISA build
namespace cpu {

// Independent accumulators of a unit: enough to hide the latency of double additions.
constexpr int kSumLanes = 32;

// Plain summation as a reduction kind (the interface lane_reduce takes: identity() and join()).
struct Sum {
  double identity() const { return 0.0; }
  static double join(double a, double b) { return a + b; }
};

// Joins term(i) for i in [0, n) in the fixed order described above. `op` provides identity()
// and join(a, b); `term(i)` returns element i's contribution as a double.
template <class Op, class Term>
double lane_reduce(const Op& op, int64_t n, Term&& term) {
  double acc[kSumLanes];
  for (int j = 0; j < kSumLanes; ++j) acc[j] = op.identity();
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
    for (int j = 0; j < kSumLanes; ++j) acc[j] = Op::join(acc[j], term(i + j));
  }
  for (int j = 0; i + j < n; ++j) acc[j] = Op::join(acc[j], term(i + j));
  for (int w = kSumLanes / 2; w > 0; w /= 2) {
    for (int j = 0; j < w; ++j) acc[j] = Op::join(acc[j], acc[j + w]);
  }
  return acc[0];
}

// lane_reduce, cheaper for short runs: fewer than kSumLanes terms are joined one after another
// in order (the order is still fixed by n alone).
template <class Op, class Term>
double run_reduce(const Op& op, int64_t n, Term&& term) {
  if (n >= kSumLanes) return lane_reduce(op, n, term);
  double acc = op.identity();
  for (int64_t i = 0; i < n; ++i) acc = Op::join(acc, term(i));
  return acc;
}

// The units of a call, by element count, and which units each thread takes.
class UnitSplit {
 public:
  UnitSplit() : start_{0} {}
  void reserve(std::size_t units) { start_.reserve(units + 1); }
  // Appends a unit of n elements.
  void add(int64_t n) { start_.push_back(start_.back() + n); }
  int64_t units() const { return static_cast<int64_t>(start_.size()) - 1; }
  int64_t total() const { return start_.back(); }
  // Thread t of nt takes the units starting in [total * t / nt, total * (t + 1) / nt).
  int64_t bound(int64_t t, int64_t nt) const {
    if (t >= nt) return units();
    const int64_t target = static_cast<int64_t>(static_cast<double>(total()) *
                                                static_cast<double>(t) / static_cast<double>(nt));
    return std::lower_bound(start_.begin(), start_.end() - 1, target) - start_.begin();
  }

 private:
  std::vector<int64_t> start_;  // elements before each unit, then the total
};

// Elements per block of RowBlocks: a multiple of the lanes, and of 32 (so that a 2-byte array's
// blocks start on a 64-byte line of a 64-byte aligned tensor: threads writing neighbouring blocks
// do not share a cache line).
constexpr int64_t kRowBlock = 4096;
static_assert(kRowBlock % kSumLanes == 0, "a block must hold whole lane rounds");

// One block of RowBlocks: elements [begin, begin + n) of row `row`.
struct RowBlock {
  int64_t row;
  int64_t begin;
  int64_t n;
};

// Rows of numel(r) >= 0 elements, r in [0, rows), cut into blocks of kRowBlock elements (the
// last block of a row shorter; an empty row has none), a block never spanning two rows. The
// blocks are the units, in row order.
class RowBlocks {
 public:
  template <class Numel>
  RowBlocks(int64_t rows, Numel&& numel) {
    first_.reserve(static_cast<std::size_t>(rows) + 1);
    for (int64_t r = 0; r < rows; ++r) {
      first_.push_back(size());
      const int64_t n = numel(r);
      for (int64_t b = 0; b < n; b += kRowBlock) {
        const int64_t len = std::min(kRowBlock, n - b);
        blocks_.push_back(RowBlock{r, b, len});
        split_.add(len);
      }
    }
    first_.push_back(size());
  }
  int64_t size() const { return static_cast<int64_t>(blocks_.size()); }
  const RowBlock& operator[](int64_t b) const { return blocks_[static_cast<std::size_t>(b)]; }
  // The first block of row r; first(rows) is size().
  int64_t first(int64_t r) const { return first_[static_cast<std::size_t>(r)]; }
  const UnitSplit& split() const { return split_; }

 private:
  std::vector<RowBlock> blocks_;
  std::vector<int64_t> first_;
  UnitSplit split_;
};

// The steps of run_passes: a pass f(u0, u1) over units [u0, u1), run by every thread on its own
// range; a serial step f() run by one thread between passes; or `count` rounds (count known at
// run time) of a pass f(k, u0, u1) and a serial step between(k) that returns whether to go on
// with round k + 1 (the steps after the rounds run either way). None may throw: check
// everything that could fail before the passes start.
template <class F>
struct Pass {
  F f;
};
template <class F>
struct Serial {
  F f;
};
template <class F, class B>
struct Rounds {
  int64_t count;
  F f;
  B between;
};
template <class F>
Pass<F> pass(F f) {
  return Pass<F>{std::move(f)};
}
template <class F>
Serial<F> serial(F f) {
  return Serial<F>{std::move(f)};
}
template <class F, class B>
Rounds<F, B> rounds(int64_t count, F f, B between) {
  return Rounds<F, B>{count, std::move(f), std::move(between)};
}

namespace detail {
template <class F>
void run_step(const Pass<F>& s, int64_t u0, int64_t u1, bool) {
  s.f(u0, u1);
}
template <class F>
void run_step(const Serial<F>& s, int64_t, int64_t, bool in_region) {
  if (!in_region) {
    s.f();
    return;
  }
#pragma omp barrier
#pragma omp single
  s.f();  // the implicit barrier after `single` publishes what it wrote to every thread
}
template <class F, class B>
void run_step(const Rounds<F, B>& s, int64_t u0, int64_t u1, bool in_region) {
  bool go = true;  // private: every thread gets the serial step's answer through copyprivate
  for (int64_t k = 0; k < s.count && go; ++k) {
    s.f(k, u0, u1);
    if (!in_region) {
      go = s.between(k);
      continue;
    }
#pragma omp barrier
#pragma omp single copyprivate(go)
    go = s.between(k);
  }
}
}  // namespace detail

// Runs the steps in order over `split`'s units: in one OpenMP region of `num_threads` threads,
// or on the calling thread when there is one thread, one unit, or fewer than `parallel_min`
// elements.
template <class... Steps>
void run_passes(const UnitSplit& split, int num_threads, int64_t parallel_min,
                const Steps&... steps) {
  const int64_t units = split.units();
  if (num_threads > 1 && split.total() >= parallel_min && units > 1) {
#pragma omp parallel num_threads(num_threads)
    {
#if defined(_OPENMP)
      const int64_t t = omp_get_thread_num();
      const int64_t nt = omp_get_num_threads();
#else
      const int64_t t = 0, nt = 1;
#endif
      const int64_t u0 = split.bound(t, nt), u1 = split.bound(t + 1, nt);
      (detail::run_step(steps, u0, u1, true), ...);
    }
  } else {
    (detail::run_step(steps, 0, units, false), ...);
  }
}

}  // namespace cpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
