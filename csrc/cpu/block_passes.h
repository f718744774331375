// The block traversal of the reductions: fused gradient-norm clipping (norms.cpp) and the vector
// operations of L-BFGS / BFGS (vector_ops.cpp). Included by per-ISA translation units only.
//
// The elements of a call's rows (tensors, or segments of a flat vector) are cut into blocks of
// kBlock elements; a block never spans two rows. A call runs one or more passes over all blocks
// inside one OpenMP region; each thread always takes the same blocks (a contiguous range, split
// by element count), so a block it wrote in one pass is still in its cache in the next. Between
// two passes one thread runs a host step (combining the blocks' partial results, computing the
// next pass's scalars) while the others wait.
//
// Reduction order, fixed so that results do not depend on the thread count (nor on the ISA):
// within a block, element i goes to accumulator lane i % kLanes, each lane accumulating in order,
// and the lanes are combined in a fixed pairwise tree (reduce_lanes); the blocks' results are
// then combined in block order by the host step. Threads only choose which blocks they compute.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#ifndef PFO_ISA_NS
#error "PFO_ISA_NS must name the ISA namespace of this build"
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {  // one copy per ISA build (see rules.h)
namespace cpu {

// Elements per block: the unit of work of a thread, and of the reduction order. A multiple of
// kLanes, and of 32 (so that a 2-byte array's blocks start on a 64-byte line of a 64-byte aligned
// tensor: threads writing neighbouring blocks do not share a cache line).
constexpr int64_t kBlock = 4096;
// Independent accumulators per block: enough to hide the latency of double additions.
constexpr int kLanes = 32;
static_assert(kBlock % kLanes == 0, "a block must hold whole lane rounds");

// The reduction of elements 0..n-1 in the fixed lane order: lane j starts at `identity` and
// takes `acc = step(acc, i)` for its elements i in order; the lanes are combined with `join`.
template <class Join, class Step>
inline double reduce_lanes(double identity, Join join, Step step, int64_t n) {
  double acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = identity;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] = step(acc[j], i + j);
  }
  for (int j = 0; i + j < n; ++j) acc[j] = step(acc[j], i + j);
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int j = 0; j < w; ++j) acc[j] = join(acc[j], acc[j + w]);
  }
  return acc[0];
}

struct Block {
  int64_t row;
  int64_t begin;  // first element within the row
  int64_t n;
};

struct BlockPlan {
  std::vector<Block> blocks;
  std::vector<int64_t> start;  // global element offset of each block, then the total
  std::vector<int64_t> first;  // first block of each row, then the block count

  // numel(r): the element count of row r (>= 0)
  template <class Numel>
  BlockPlan(int64_t rows, Numel&& numel) {
    first.reserve(static_cast<std::size_t>(rows) + 1);
    int64_t offset = 0;
    for (int64_t r = 0; r < rows; ++r) {
      first.push_back(static_cast<int64_t>(blocks.size()));
      const int64_t n = numel(r);
      for (int64_t b = 0; b < n; b += kBlock) {
        const int64_t len = std::min(kBlock, n - b);
        blocks.push_back(Block{r, b, len});
        start.push_back(offset);
        offset += len;
      }
    }
    first.push_back(static_cast<int64_t>(blocks.size()));
    start.push_back(offset);
  }

  int64_t size() const { return static_cast<int64_t>(blocks.size()); }
  int64_t total() const { return start.back(); }
  // thread t of nt takes the blocks starting in [total * t / nt, total * (t + 1) / nt)
  int64_t bound(int64_t t, int64_t nt) const {
    if (t >= nt) return size();
    const int64_t target = static_cast<int64_t>(static_cast<double>(total()) *
                                                static_cast<double>(t) / static_cast<double>(nt));
    return std::lower_bound(start.begin(), start.end() - 1, target) - start.begin();
  }
};

// Runs `passes` passes over the plan's blocks: `pass(k, b0, b1)` computes blocks [b0, b1) of pass
// k (on any thread), then `between(k)` runs on one thread once every block of pass k is done; it
// returns whether to go on with pass k + 1. Neither may throw (they run inside an OpenMP region).
// Calls of fewer than `parallel_min` elements, or of one block, stay on the calling thread.
template <class Pass, class Between>
void run_passes(const BlockPlan& plan, int num_threads, int64_t parallel_min, int64_t passes,
                Pass&& pass, Between&& between) {
  const int64_t nb = plan.size();
  if (num_threads > 1 && plan.total() >= parallel_min && nb > 1) {
    bool go = true;  // shared: written in `single`, whose implicit barrier publishes it
#pragma omp parallel num_threads(num_threads)
    {
#if defined(_OPENMP)
      const int64_t t = omp_get_thread_num();
      const int64_t nt = omp_get_num_threads();
#else
      const int64_t t = 0, nt = 1;
#endif
      const int64_t b0 = plan.bound(t, nt), b1 = plan.bound(t + 1, nt);
      for (int64_t k = 0; k < passes && go; ++k) {
        pass(k, b0, b1);
#pragma omp barrier
#pragma omp single
        go = between(k);
      }
    }
  } else {
    for (int64_t k = 0; k < passes; ++k) {
      pass(k, int64_t{0}, nb);
      if (!between(k)) break;
    }
  }
}

}  // namespace cpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
