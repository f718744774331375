// The one CPU multi-tensor traversal: every tensor of a call is cut into fixed-size chunks, one
// OpenMP region runs over all chunks of all tensors, and each chunk is an `omp simd` loop that
// applies a rule element by element. A chunk never changes the arithmetic, so results do not
// depend on the thread count or on where chunks begin.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "pyfastopt/dispatch.h"

namespace pyfastopt {
inline namespace PFO_ISA_NS {  // see rules.h: one copy per ISA build
namespace cpu {

inline int64_t row_numel(const Table& t, int64_t r) { return t.data[r * t.width]; }
inline int64_t row_aux(const Table& t, int64_t r) { return t.data[r * t.width + 1]; }
inline const int64_t* row_ptrs(const Table& t, int64_t r) { return t.data + r * t.width + 2; }

// Elements per chunk: 64 KiB of float32 per array, small enough to balance two threads on MNIST
// models, large enough that the per-chunk cost vanishes.
constexpr int64_t kChunk = 16384;

struct Chunk {
  int64_t row;
  int64_t begin;
  int64_t len;
};

template <typename T, class Rule, std::size_t... I>
inline void apply_chunk(const Rule& rule, const int64_t* ptrs, int64_t begin, int64_t n,
                        std::index_sequence<I...>) {
  T* a[sizeof...(I)] = {(reinterpret_cast<T*>(ptrs[I]) + begin)...};
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) rule(a[I][i]...);
}

// Runs `rules[r]` over every element of row r of `table`. Rows with numel 0 have no chunks.
template <typename T, class Rule>
void multi_tensor_apply(const Table& table, const std::vector<Rule>& rules, int num_threads) {
  constexpr int K = Rule::kArrays;
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int64_t r = 0; r < table.rows; ++r) {
    const int64_t n = row_numel(table, r);
    total += n;
    for (int64_t b = 0; b < n; b += kChunk)
      chunks.push_back({r, b, n - b < kChunk ? n - b : kChunk});
  }
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
  const bool parallel = num_threads > 1 && nchunks > 1 && total >= table.parallel_min;
  auto run = [&](int64_t c) {
    const Chunk& ch = chunks[c];
    apply_chunk<T>(rules[ch.row], row_ptrs(table, ch.row), ch.begin, ch.len,
                   std::make_index_sequence<K>{});
  };
  if (parallel) {
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (int64_t c = 0; c < nchunks; ++c) run(c);
  } else {
    for (int64_t c = 0; c < nchunks; ++c) run(c);
  }
}

// Advances a step counter stored in a 0-d float32 or float64 tensor and returns its new value,
// exactly as torch's `step_t += 1; step = step_t.item()`.
inline double advance_step(const Table& table, int64_t row) {
  const int64_t addr = row_aux(table, row);
  if (table.step_f64) {
    double* s = reinterpret_cast<double*>(addr);
    *s += 1.0;
    return *s;
  }
  float* s = reinterpret_cast<float*>(addr);
  *s += 1.0f;
  return static_cast<double>(*s);
}

}  // namespace cpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
