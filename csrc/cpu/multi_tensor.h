// The one CPU multi-tensor traversal: the elements of all tensors of a call, laid end to end,
// are split between the threads of one OpenMP region, and each thread runs `omp simd` loops that
// apply a rule element by element. Each array of a row is read and written through its storage
// policy (storage.h): load and convert to the rule's type, apply the rule, convert and store.
// Where a span starts never changes the arithmetic (stochastic rounding draws its bits from the
// element's index), so results do not depend on the thread count.
//
// 16-bit storage in the AVX-512 build takes an explicit 16-lane loop instead (apply_span_lanes):
// GCC vectorises the exact integer conversions of storage.h but not the CPU's conversion
// instructions, which make the difference between compute-bound and memory-bound bfloat16
// steps. The rule is the same template, applied to 16 lanes; the bits are the same.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "pyfastopt/dispatch.h"
#include "pyfastopt/quant.h"
#include "pyfastopt/storage.h"

namespace pyfastopt {
inline namespace PFO_ISA_NS {  // see rules.h: one copy per ISA build
namespace cpu {

inline int64_t row_numel(const Table& t, int64_t r) { return t.data[r * t.width]; }
inline int64_t row_aux(const Table& t, int64_t r) { return t.data[r * t.width + 1]; }
inline const int64_t* row_ptrs(const Table& t, int64_t r) { return t.data + r * t.width + 2; }

// Thread boundaries fall on multiples of this many elements, so two threads never write the
// same cache line (tensors themselves start 64-byte aligned in torch's allocator).
constexpr int64_t kAlign = 64;

// Pols: a std::tuple of one storage policy per array of the rule.
template <class Pols, std::size_t I>
using PolicyAt = std::tuple_element_t<I, Pols>;

template <class Pols, class Rule, std::size_t... I>
inline void apply_span(const Rule& rule_in, const int64_t* ptrs, int64_t begin, int64_t n,
                       uint64_t salt, std::index_sequence<I...>) {
  using C = typename Rule::value_type;
  const Rule rule = rule_in;  // a local copy: its scalars are loop invariants, not memory that
                              // the stores might alias (else 16-bit loops stay scalar)
  constexpr bool kRandom = (PolicyAt<Pols, I>::kRandom || ...);
  std::tuple<typename PolicyAt<Pols, I>::storage*...> a{
      (reinterpret_cast<typename PolicyAt<Pols, I>::storage*>(ptrs[I]) + begin)...};
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    C v[sizeof...(I)] = {static_cast<C>(PolicyAt<Pols, I>::load(std::get<I>(a) + i))...};
    rule(v[I]...);
    const uint32_t r = kRandom ? element_random(salt, begin + i) : 0u;
    (PolicyAt<Pols, I>::store(std::get<I>(a) + i, v[I], rotate_bits(r, rotation_of(I))), ...);
  }
}

// Whether a call's arrays take the 16-lane loop: 16-bit storage computed in float32, in the
// AVX-512 build, with the lanes switched on (dispatch.h) and, for a bfloat16 store rounded to
// nearest, a CPU with AVX512-BF16.
template <class Pols, class Rule>
struct LanesFor;
template <class Rule, class... P>
struct LanesFor<std::tuple<P...>, Rule> {
#if defined(PFO_LANES)
  static constexpr bool kPossible = std::is_same_v<typename Rule::value_type, float> &&
                                    (std::is_same_v<typename P::storage, uint16_t> || ...);
#else
  static constexpr bool kPossible = false;
#endif
  static constexpr bool kBf16Insn = (P::kBf16Insn || ...);
  static bool usable(int mode) {
    return kPossible && (mode & kLanesOn) != 0 && (!kBf16Insn || (mode & kLanesBf16) != 0);
  }
};

#if defined(PFO_LANES)
template <int By>
inline LaneBits rotate_lanes(LaneBits r) {
  if constexpr (By == 0) {
    return r;
  } else {
    return _mm512_rol_epi32(r, By);
  }
}

// apply_span in steps of 16 elements; the remainder takes apply_span.
template <class Pols, class Rule, std::size_t... I>
inline void apply_span_lanes(const Rule& rule_in, const int64_t* ptrs, int64_t begin, int64_t n,
                             uint64_t salt, std::index_sequence<I...> arrays) {
  const Rule rule = rule_in;
  constexpr bool kRandom = (PolicyAt<Pols, I>::kRandom || ...);
  std::tuple<typename PolicyAt<Pols, I>::storage*...> a{
      (reinterpret_cast<typename PolicyAt<Pols, I>::storage*>(ptrs[I]) + begin)...};
  std::conditional_t<kRandom, RandomLanes, NoRandomLanes> random(salt, begin);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Lanes v[sizeof...(I)] = {PolicyAt<Pols, I>::load_lanes(std::get<I>(a) + i)...};
    rule(v[I]...);
    const LaneBits r = random.next();
    (PolicyAt<Pols, I>::store_lanes(std::get<I>(a) + i, v[I], rotate_lanes<rotation_of(I)>(r)),
     ...);
  }
  if (i < n) apply_span<Pols>(rule, ptrs, begin + i, n - i, salt, arrays);
}
#endif

// The stochastic-rounding key of row r: the call's seed (user seed, group, step) and the row.
inline uint64_t row_salt(const Table& t, int64_t r) {
  return t.seed ^ (static_cast<uint64_t>(r) * 0x9E3779B97F4A7C15ull);
}

// Elements [begin, begin + n) of one row: the 16-lane loop where the call takes it.
template <class Pols, class Rule>
inline void apply_row_span(const Rule& rule, const int64_t* ptrs, int64_t begin, int64_t n,
                           uint64_t salt, bool lanes) {
  constexpr auto arrays = std::make_index_sequence<Rule::kArrays>{};
#if defined(PFO_LANES)
  if constexpr (LanesFor<Pols, Rule>::kPossible) {
    if (lanes) return apply_span_lanes<Pols>(rule, ptrs, begin, n, salt, arrays);
  }
#endif
  static_cast<void>(lanes);  // read only by the AVX-512 build
  apply_span<Pols>(rule, ptrs, begin, n, salt, arrays);
}

// Applies each row's rule to elements [begin, end) of the rows laid end to end.
template <class Pols, class Rule>
void apply_range(const Table& table, const Rule* rules, int64_t begin, int64_t end, bool lanes) {
  int64_t offset = 0;
  for (int64_t r = 0; r < table.rows && offset < end; ++r) {
    const int64_t n = row_numel(table, r);
    const int64_t lo = begin > offset ? begin : offset;
    const int64_t hi = end < offset + n ? end : offset + n;
    if (lo < hi) {
      apply_row_span<Pols>(rules[r], row_ptrs(table, r), lo - offset, hi - lo, row_salt(table, r),
                           lanes);
    }
    offset += n;
  }
}

// ---- 8-bit block-quantised state ------------------------------------------------------------
//
// A call whose state is block-quantised (storage.h, Block8) walks blocks instead of elements:
// each thread takes whole blocks, and for each block it dequantises every quantised buffer into
// a float32 buffer on its stack, runs the ordinary element loop (apply_row_span, the 16-lane loop
// included) with those buffers in place of the codes, then finds each buffer's new absolute
// maximum and requantises it. Blocks start at multiples of `block` in each tensor, so the codes
// and scales do not depend on the thread count.

template <class Pols>
struct BlockArrays;
template <class... P>
struct BlockArrays<std::tuple<P...>> {
  static constexpr std::size_t kCount = (std::size_t{P::kBlock} + ... + 0);
  using Elements = std::tuple<ElementPolicy<P>...>;
  // the scale slot of array I: how many quantised arrays come before it
  static constexpr std::size_t slot(std::size_t i) {
    constexpr bool block[] = {P::kBlock...};
    std::size_t n = 0;
    for (std::size_t k = 0; k < i; ++k) n += block[k] ? 1 : 0;
    return n;
  }
};

constexpr int64_t kMaxBlock = 4096;

// Blocks [b0, b1) of row `r`.
template <class Pols, class Rule, std::size_t... I>
inline void apply_row_blocks(const Table& t, const Rule& rule, int64_t r, int64_t b0, int64_t b1,
                             int mode, std::index_sequence<I...>) {
  const bool lanes = LanesFor<typename BlockArrays<Pols>::Elements, Rule>::usable(mode);
  const bool vbmi = (mode & kLanesVbmi) != 0;
  using BA = BlockArrays<Pols>;
  constexpr std::size_t Q = BA::kCount;
  const int64_t n = row_numel(t, r);
  const int64_t* ptrs = row_ptrs(t, r);
  float* const* scales = reinterpret_cast<float* const*>(ptrs + sizeof...(I));
  const uint64_t salt = row_salt(t, r);
  const int64_t B = t.block;
  alignas(64) float buf[Q][kMaxBlock];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t begin = b * B;
    const int64_t len = n - begin < B ? n - begin : B;
    int64_t local[sizeof...(I)] = {ptrs[I]...};
    auto load = [&](auto idx) {
      constexpr std::size_t k = decltype(idx)::value;
      using P = PolicyAt<Pols, k>;
      if constexpr (P::kBlock) {
        constexpr std::size_t q = BA::slot(k);
        dequantize_block(reinterpret_cast<const uint8_t*>(ptrs[k]) + begin, scales[q][b],
                         q8_map<P::kUnsigned>(), buf[q], len, vbmi);
        // apply_span adds `begin` to every address: this one then lands on the buffer
        local[k] = reinterpret_cast<int64_t>(buf[q]) - begin * static_cast<int64_t>(sizeof(float));
      }
    };
    (load(std::integral_constant<std::size_t, I>{}), ...);
    apply_row_span<typename BA::Elements>(rule, local, begin, len, salt, lanes);
    auto store = [&](auto idx) {
      constexpr std::size_t k = decltype(idx)::value;
      using P = PolicyAt<Pols, k>;
      if constexpr (P::kBlock) {
        constexpr std::size_t q = BA::slot(k);
        scales[q][b] = quantize_block<P::kUnsigned>(
            buf[q], len, reinterpret_cast<uint8_t*>(ptrs[k]) + begin, q8_map<P::kUnsigned>());
      }
    };
    (store(std::integral_constant<std::size_t, I>{}), ...);
  }
}

inline int64_t row_blocks(const Table& t, int64_t r) {
  return (row_numel(t, r) + t.block - 1) / t.block;
}

// Blocks [u0, u1) of the rows' blocks laid end to end.
template <class Pols, class Rule>
void apply_block_range(const Table& t, const Rule* rules, int64_t u0, int64_t u1, int mode) {
  int64_t offset = 0;
  for (int64_t r = 0; r < t.rows && offset < u1; ++r) {
    const int64_t nb = row_blocks(t, r);
    const int64_t lo = u0 > offset ? u0 : offset;
    const int64_t hi = u1 < offset + nb ? u1 : offset + nb;
    if (lo < hi) {
      apply_row_blocks<Pols>(t, rules[r], r, lo - offset, hi - offset, mode,
                             std::make_index_sequence<Rule::kArrays>{});
    }
    offset += nb;
  }
}

template <class Pols, class Rule>
void multi_tensor_apply_blocks(const Table& table, const std::vector<Rule>& rules,
                               int num_threads) {
  int64_t total = 0, units = 0;
  for (int64_t r = 0; r < table.rows; ++r) {
    total += row_numel(table, r);
    units += row_blocks(table, r);
  }
  if (total == 0) return;
  const Rule* rs = rules.data();
  const int mode = lanes_mode();
  if (num_threads > 1 && total >= table.parallel_min) {
#pragma omp parallel num_threads(num_threads)
    {
#if defined(_OPENMP)
      const int64_t t = omp_get_thread_num();
      const int64_t nt = omp_get_num_threads();
#else
      const int64_t t = 0, nt = 1;
#endif
      const int64_t per = (units + nt - 1) / nt;
      const int64_t u0 = t * per < units ? t * per : units;
      const int64_t u1 = u0 + per < units ? u0 + per : units;
      apply_block_range<Pols>(table, rs, u0, u1, mode);
    }
  } else {
    apply_block_range<Pols>(table, rs, 0, units, mode);
  }
}

// Splits the elements of all rows, laid end to end, between the threads of one OpenMP region:
// f(begin, end) on each thread, one contiguous span each (so the hardware prefetchers see long
// streams), boundaries on multiples of kAlign; small calls run f(0, total) on the calling thread.
template <class F>
void for_element_spans(const Table& table, int num_threads, F&& f) {
  int64_t total = 0;
  for (int64_t r = 0; r < table.rows; ++r) total += row_numel(table, r);
  if (total == 0) return;
  if (num_threads > 1 && total >= table.parallel_min) {
#pragma omp parallel num_threads(num_threads)
    {
#if defined(_OPENMP)
      const int64_t t = omp_get_thread_num();
      const int64_t nt = omp_get_num_threads();
#else
      const int64_t t = 0, nt = 1;
#endif
      const int64_t per = (total + nt - 1) / nt;
      const int64_t step = (per + kAlign - 1) / kAlign * kAlign;
      const int64_t begin = t * step < total ? t * step : total;
      const int64_t end = begin + step < total ? begin + step : total;
      f(begin, end);
    }
  } else {
    f(int64_t{0}, total);
  }
}

// Runs `rules[r]` over every element of row r, the rows' elements split by for_element_spans.
template <class Pols, class Rule>
void multi_tensor_apply_elements(const Table& table, const std::vector<Rule>& rules,
                                 int num_threads) {
  const Rule* rs = rules.data();
  const bool lanes = LanesFor<Pols, Rule>::usable(lanes_mode());
  for_element_spans(table, num_threads, [&](int64_t begin, int64_t end) {
    apply_range<Pols>(table, rs, begin, end, lanes);
  });
}

// ---- gathered rows: the positions a sparse gradient lists ---------------------------------
//
// A gathered row (SparseAdam) `[n, aux, ptr_0..ptr_{K-1}, offsets, width, numel]` updates n
// elements: n / width blocks of `width` consecutive elements of the arrays other than array 1,
// block k at element offset offsets[k] (int64), with elements k*width... of array 1 (the
// gradient's values, packed). The caller checked that the blocks lie inside the arrays and never
// overlap (strictly increasing offsets), so threads write distinct elements. Each element is
// computed by the element loop as in a dense row, its random bits keyed by its position.

// Elements [begin, end) of the gathered rows laid end to end.
template <class Pols, class Rule>
void apply_gathered_range(const Table& t, const Rule* rules, int64_t begin, int64_t end,
                          bool lanes) {
  constexpr int K = Rule::kArrays;
  constexpr int64_t kGradSize = sizeof(typename PolicyAt<Pols, 1>::storage);
  int64_t offset = 0;
  for (int64_t r = 0; r < t.rows && offset < end; ++r) {
    const int64_t n = row_numel(t, r);
    const int64_t lo = (begin > offset ? begin : offset) - offset;
    const int64_t hi = (end < offset + n ? end : offset + n) - offset;
    const int64_t* ptrs = row_ptrs(t, r);
    const int64_t* at = reinterpret_cast<const int64_t*>(ptrs[K]);
    const int64_t w = ptrs[K + 1];
    for (int64_t k = lo / w; lo < hi && k * w < hi; ++k) {
      const int64_t j0 = (lo > k * w ? lo : k * w) - k * w;
      const int64_t j1 = (hi < (k + 1) * w ? hi : (k + 1) * w) - k * w;
      int64_t local[K];
      for (int i = 0; i < K; ++i) local[i] = ptrs[i];
      // apply_span adds the position to every address: the gradient's then lands on block k
      local[1] = ptrs[1] + (k * w - at[k]) * kGradSize;
      apply_row_span<Pols>(rules[r], local, at[k] + j0, j1 - j0, row_salt(t, r), lanes);
    }
    offset += n;
  }
}

template <class Pols, class Rule>
void multi_tensor_apply_gathered(const Table& table, const std::vector<Rule>& rules,
                                 int num_threads) {
  const Rule* rs = rules.data();
  const bool lanes = LanesFor<Pols, Rule>::usable(lanes_mode());
  for_element_spans(table, num_threads, [&](int64_t begin, int64_t end) {
    apply_gathered_range<Pols>(table, rs, begin, end, lanes);
  });
}

// A call's traversal: by blocks where a state buffer is block-quantised, else by elements.
template <class Pols, class Rule>
void multi_tensor_apply(const Table& table, const std::vector<Rule>& rules, int num_threads) {
  if constexpr (BlockArrays<Pols>::kCount > 0) {
    multi_tensor_apply_blocks<Pols>(table, rules, num_threads);
  } else {
    multi_tensor_apply_elements<Pols>(table, rules, num_threads);
  }
}

// Refuses a table whose step counters do not all hold a finite count >= 0, as the first step's
// checks do (_state.check_step): a cached plan re-checks the counters' identity, not their
// values, which may have been set in place since. Before anything is written.
inline void check_step_values(const Table& table) {
  for (int64_t r = 0; r < table.rows; ++r) {
    const int64_t addr = row_aux(table, r);
    const double v = table.step_f64 ? *reinterpret_cast<const double*>(addr)
                                    : static_cast<double>(*reinterpret_cast<const float*>(addr));
    if (!(std::isfinite(v) && v >= 0.0)) {
      throw BadStepCounter("state['step'] must be a finite count >= 0, got " + std::to_string(v) +
                           " (row " + std::to_string(r) + " of the call)");
    }
  }
}

// The value a step counter will have after this step, without advancing it.
inline double next_step(const Table& table, int64_t row) {
  const int64_t addr = row_aux(table, row);
  if (table.step_f64) return *reinterpret_cast<const double*>(addr) + 1.0;
  return static_cast<double>(*reinterpret_cast<const float*>(addr) + 1.0f);
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
