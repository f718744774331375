// The one CUDA multi-tensor traversal, in the multi_tensor_apply style of apex and ATen: the
// tensors of a call are cut into chunks of kChunk elements, one thread block per chunk, and the
// addresses of every tensor of a launch travel by value in the kernel's arguments (a Launch),
// so a launch needs no device allocation and no copy and can be captured in a CUDA graph.
//
// This header is compiled twice: by nvcc for the kernel (cuda/kernels.cu), and by the host
// compiler for tests/native/check_cuda_traversal.cpp, which emulates every launch, block and
// thread of many tables and proves that every element is visited exactly once. Everything a
// kernel decides about indices is here:
//   - plan(): the host loop that lays the rows of a call's table out into launches;
//   - block_work(): which tensor, which element range, and vector or scalar path a block takes;
//   - for_each_group(): the element groups one thread handles;
//   - apply_group(): load a group of every array through its storage policy (storage.h), run
//     the rule (rules.h) on each element, store back through the policy.
// The kernel itself (kernels.cu) only reads blockIdx/threadIdx and builds the rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include "pyfastopt/macros.h"
#include "pyfastopt/storage.h"

#ifndef PFO_ISA_NS
#define PFO_ISA_NS generic
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {

constexpr int kThreads = 512;      // threads per block
constexpr int kILP = 4;            // elements a thread loads before it computes
constexpr int64_t kChunk = 65536;  // elements per block (a multiple of kILP)
constexpr int kMaxBlocks = 2048;   // blocks per launch
// Bytes of a Launch: CUDA 13 (driver >= 580, sm >= 75) always has 32764 bytes of kernel
// parameters; the rest of a kernel's arguments fit in what is left.
constexpr std::size_t kLaunchBytes = 30 * 1024;
static_assert(kChunk % kILP == 0, "vector groups never straddle chunks");

// The tensors of one launch (K arrays per tensor) and the chunk each block takes.
template <int K>
struct Launch {
  static constexpr int kArrays = K;
  // as many tensors as fit beside the block table
  static constexpr int kMaxTensors =
      static_cast<int>((kLaunchBytes - 16 - kMaxBlocks * (sizeof(uint16_t) + sizeof(int32_t))) /
                       (sizeof(int64_t) * (K + 2) + sizeof(int32_t)));
  int64_t ptr[kMaxTensors][K];  // each array's address (element 0 of the tensor)
  int64_t numel[kMaxTensors];
  int64_t aux[kMaxTensors];  // the row's aux word (a step counter's address, flags, a step)
  int32_t row[kMaxTensors];  // the row of the call's table (stochastic rounding's key)
  uint16_t block_slot[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
  int32_t tensors;
  int32_t blocks;
};
static_assert(Launch<6>::kMaxTensors < 65536, "slots are uint16");

// ---- the host planner ------------------------------------------------------------------------

// Lays the rows of a table (`rows` rows of `width` int64: [numel, aux, ptr_0 .. ptr_{K-1}, ...])
// out into launches of `chunk` elements per block, and calls emit(launch) for each, in order. As
// in apex and ATen: tensors fill slots and their chunks fill blocks; a launch goes when the
// blocks are full, or when the slots are full and the last tensor's last chunk is placed; a
// tensor whose chunks do not all fit continues as slot 0 of the next launch. Empty tensors take
// no slot. `launch` is the caller's buffer; emit() must copy it (a kernel launch does).
template <int K, class Emit>
void plan(const int64_t* table, int64_t rows, int64_t width, int64_t chunk, Launch<K>& launch,
          Emit&& emit) {
  if (width < 2 + K || chunk <= 0 || chunk % kILP != 0) {
    throw std::invalid_argument("pyfastopt: invalid table for the CUDA planner");
  }
  launch.tensors = 0;
  launch.blocks = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* row = table + r * width;
    const int64_t n = row[0];
    if (n <= 0) continue;
    const int64_t chunks = (n + chunk - 1) / chunk;
    if (chunks > INT32_MAX || r > INT32_MAX) {
      throw std::invalid_argument("pyfastopt: tensor too large for the CUDA planner");
    }
    int slot = launch.tensors++;
    launch.numel[slot] = n;
    launch.aux[slot] = row[1];
    launch.row[slot] = static_cast<int32_t>(r);
    for (int k = 0; k < K; ++k) launch.ptr[slot][k] = row[2 + k];
    for (int64_t c = 0; c < chunks; ++c) {
      launch.block_slot[launch.blocks] = static_cast<uint16_t>(slot);
      launch.block_chunk[launch.blocks] = static_cast<int32_t>(c);
      ++launch.blocks;
      const bool last_chunk = c == chunks - 1;
      const bool slots_full = launch.tensors == Launch<K>::kMaxTensors && last_chunk;
      if (slots_full || launch.blocks == kMaxBlocks) {
        emit(static_cast<const Launch<K>&>(launch));
        launch.blocks = 0;
        if (last_chunk) {
          launch.tensors = 0;
        } else {  // the rest of this tensor: slot 0 of the next launch
          launch.numel[0] = launch.numel[slot];
          launch.aux[0] = launch.aux[slot];
          launch.row[0] = launch.row[slot];
          for (int k = 0; k < K; ++k) launch.ptr[0][k] = launch.ptr[slot][k];
          launch.tensors = 1;
          slot = 0;
        }
      }
    }
  }
  if (launch.blocks > 0) emit(static_cast<const Launch<K>&>(launch));
}

// ---- what a block and a thread do --------------------------------------------------------------

// Block `b`'s work: elements [begin, begin + n) of the tensor in `slot`; `vector` when every
// array's address at `begin` is aligned to kILP elements of its storage type.
struct Work {
  int slot;
  int64_t begin;
  int64_t n;
  bool vector;
};

// `bytes[k]`: the storage size of array k's elements.
template <int K>
PFO_HD Work block_work(const Launch<K>& launch, int b, int64_t chunk, const int (&bytes)[K]) {
  Work w;
  w.slot = launch.block_slot[b];
  w.begin = static_cast<int64_t>(launch.block_chunk[b]) * chunk;
  const int64_t left = launch.numel[w.slot] - w.begin;
  w.n = left < chunk ? left : chunk;
  bool aligned = true;
  for (int k = 0; k < K; ++k) {
    const int64_t at = launch.ptr[w.slot][k] + w.begin * bytes[k];
    aligned = aligned && at % (static_cast<int64_t>(kILP) * bytes[k]) == 0;
  }
  w.vector = aligned;
  return w;
}

// Elements first, first + stride, ... (`count` of them, at most kILP) of the block's tensor;
// `vector`: count == kILP, stride 1, and the group is aligned for one vector load per array.
struct Group {
  int64_t first;
  int64_t stride;
  int count;
  bool vector;
};

// Calls f(group) for every group thread `tid` of `nthreads` handles in `w`, in order. Vector
// path: kILP consecutive elements per group, thread t taking vectors t, t + nthreads, ... Then
// the elements no vector covers (all of them on the scalar path, where some array is not
// aligned; fewer than kILP after the vectors otherwise) as in ATen's scalar path: per round,
// each thread takes kILP elements nthreads apart, so that neighbouring threads read
// neighbouring elements. One call site of f: the kernel holds one copy of the rule.
template <class F>
PFO_HD void for_each_group(const Work& w, int tid, int nthreads, F&& f) {
  const int64_t vectors = w.vector ? w.n / kILP : 0;
  const int64_t rest = vectors * kILP;  // scalar groups cover [rest, n)
  const int64_t round = static_cast<int64_t>(nthreads) * kILP;
  const int64_t my_vectors = vectors > tid ? (vectors - tid + nthreads - 1) / nthreads : 0;
  const int64_t my_rounds = w.n - rest > tid ? (w.n - rest - tid + round - 1) / round : 0;
  for (int64_t i = 0; i < my_vectors + my_rounds; ++i) {
    Group g;
    if (i < my_vectors) {
      g = Group{w.begin + (tid + i * nthreads) * kILP, 1, kILP, true};
    } else {
      const int64_t first = rest + (i - my_vectors) * round + tid;
      const int64_t left = (w.n - first + nthreads - 1) / nthreads;  // first + j*nthreads < n
      g = Group{w.begin + first, nthreads, left < kILP ? static_cast<int>(left) : kILP, false};
    }
    f(g);
  }
}

// ---- one group through the storage policies and the rule --------------------------------------

template <class P>
struct IsReadOnly : std::false_type {};
template <class P>
struct IsReadOnly<ReadOnly<P>> : std::true_type {};

// kILP elements of storage type S, aligned for one load or store.
template <class S>
struct alignas(sizeof(S) * kILP) Vec {
  S v[kILP];
};

template <class Pols, std::size_t I>
using PolicyAt = std::tuple_element_t<I, Pols>;

template <class Pols, std::size_t... I>
constexpr void element_bytes_of(int (&out)[sizeof...(I)], std::index_sequence<I...>) {
  ((out[I] = static_cast<int>(sizeof(typename PolicyAt<Pols, I>::storage))), ...);
}

// The storage size of each array's elements, for block_work().
template <class Pols>
struct ElementBytes {
  static constexpr std::size_t K = std::tuple_size_v<Pols>;
  int value[K];
  constexpr ElementBytes() : value{} {
    element_bytes_of<Pols>(value, std::make_index_sequence<K>{});
  }
};

// Loads the group's elements of one array into `out` (compute type C).
template <class P, class C>
PFO_HD void load_group(int64_t address, const Group& g, C (&out)[kILP]) {
  using S = typename P::storage;
  const S* p = reinterpret_cast<const S*>(address);
  if (g.vector) {
    const Vec<S> x = *reinterpret_cast<const Vec<S>*>(p + g.first);
    for (int j = 0; j < kILP; ++j) out[j] = static_cast<C>(P::load(&x.v[j]));
    return;
  }
  for (int j = 0; j < kILP; ++j) {
    out[j] = j < g.count ? static_cast<C>(P::load(p + g.first + j * g.stride)) : C(0);
  }
}

// Stores the group's elements of one array (array number I rotates the random bits as the CPU
// traversal does); a read-only array is not written at all.
template <class P, int Rotation, class C>
PFO_HD void store_group(int64_t address, const Group& g, const C (&in)[kILP], uint64_t salt) {
  if constexpr (!IsReadOnly<P>::value) {
    using S = typename P::storage;
    S* p = reinterpret_cast<S*>(address);
    Vec<S> x;
    for (int j = 0; j < kILP; ++j) {
      const uint32_t r =
          P::kRandom ? rotate_bits(element_random(salt, g.first + j * g.stride), Rotation) : 0u;
      if (j < g.count) P::store(&x.v[j], static_cast<typename P::compute>(in[j]), r);
    }
    if (g.vector) {
      *reinterpret_cast<Vec<S>*>(p + g.first) = x;
    } else {
      for (int j = 0; j < g.count; ++j) p[g.first + j * g.stride] = x.v[j];
    }
  }
}

// Runs `rule` over one group: every array loaded, the rule applied element by element, every
// written array stored. `ptrs`: the row's array addresses; `salt`: its stochastic-rounding key.
template <class Pols, class Rule, std::size_t... I>
PFO_HD void apply_group(const Rule& rule, const int64_t* ptrs, const Group& g, uint64_t salt,
                        std::index_sequence<I...>) {
  using C = typename Rule::value_type;
  C v[sizeof...(I)][kILP];
  (load_group<PolicyAt<Pols, I>>(ptrs[I], g, v[I]), ...);
  for (int j = 0; j < kILP; ++j) {
    if (j < g.count) rule(v[I][j]...);
  }
  (store_group<PolicyAt<Pols, I>, rotation_of(I)>(ptrs[I], g, v[I], salt), ...);
}

// The stochastic-rounding key of a row, as the CPU traversal computes it (multi_tensor.h).
PFO_HD uint64_t row_salt(uint64_t seed, int64_t row) {
  return seed ^ (static_cast<uint64_t>(row) * 0x9E3779B97F4A7C15ull);
}

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
