// The CUDA traversal (csrc/cuda/traversal.h) emulated on the host: the planner's launches, every
// block and every thread, over many tables. Proves without a GPU that
//   1. every element of every tensor is visited exactly once, none outside its tensor, and
//      empty tensors not at all (tables: empty and 1-element tensors, tensors larger than a
//      chunk and than a launch, misaligned addresses, more tensors than a launch holds, many
//      tiny tensors, 2 to 6 arrays of 2-, 4- and 8-byte elements);
//   2. a vector group is only ever taken where every array is aligned for it;
//   3. each launch respects its limits, and its slots name the right rows and addresses;
//   4. index arithmetic is 64-bit (a tensor of 5e9 elements);
//   5. real rules through apply_group (vector, scalar and tail paths, every storage policy,
//      stochastic rounding) give the bits of a plain element-by-element loop.
// Build: g++ -std=c++17 -O2 -I csrc/include -I csrc/cuda tests/native/check_cuda_traversal.cpp
// (tests/test_cuda_planner.py does). Prints "ok: ..." and exits 0, or prints the first failures.
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "checks.h"
#include "pyfastopt/call_storage.h"
#include "pyfastopt/rules.h"
#include "pyfastopt/storage.h"
#include "traversal.h"

using namespace pyfastopt;
using namespace pyfastopt::gpu;
using namespace pyfastopt::host;

namespace {

struct Stats {
  int64_t tables = 0, launches = 0, blocks = 0, vector_blocks = 0, elements = 0;
  int64_t max_tensors = 0;
};

// One table of K arrays: rows [numel, aux, ptr...] with fake addresses (never dereferenced).
template <int K>
void check_table(const std::vector<int64_t>& numels, const int (&bytes)[K], int64_t chunk,
                 std::mt19937_64& rng, Stats& stats, int misalign_one_in) {
  const int64_t width = 2 + K;
  std::vector<int64_t> table;
  int64_t base = int64_t{1} << 40;
  for (std::size_t r = 0; r < numels.size(); ++r) {
    table.push_back(numels[r]);
    table.push_back(static_cast<int64_t>(0x1000 + 8 * r));  // aux: recognisable per row
    for (int k = 0; k < K; ++k) {
      base += 1 << 20;
      int64_t a = base + static_cast<int64_t>(numels[r]) * 8 * (k + 1);
      a -= a % 256;  // torch's allocator: aligned
      if (misalign_one_in > 0 && rng() % misalign_one_in == 0) {
        a += bytes[k] * static_cast<int64_t>(1 + rng() % 3);  // an offset view
      }
      table.push_back(a);
      base = a + numels[r] * bytes[k];
    }
  }
  const int64_t rows = static_cast<int64_t>(numels.size());
  std::vector<std::vector<uint8_t>> seen(numels.size());
  for (std::size_t r = 0; r < numels.size(); ++r) seen[r].assign(numels[r], 0);
  auto launch = std::make_unique<Launch<K>>();
  plan<K>(table.data(), rows, width, chunk, *launch, [&](const Launch<K>& l) {
    ++stats.launches;
    CHECK(l.blocks > 0 && l.blocks <= kMaxBlocks, "blocks %d", l.blocks);
    CHECK(l.tensors > 0 && l.tensors <= Launch<K>::kMaxTensors, "tensors %d", l.tensors);
    if (l.tensors > stats.max_tensors) stats.max_tensors = l.tensors;
    for (int s = 0; s < l.tensors; ++s) {  // each slot is its row, addresses and aux included
      const int64_t* row = table.data() + static_cast<int64_t>(l.row[s]) * width;
      CHECK(l.numel[s] == row[0] && l.aux[s] == row[1], "slot %d", s);
      for (int k = 0; k < K; ++k) CHECK(l.ptr[s][k] == row[2 + k], "slot %d array %d", s, k);
    }
    std::vector<bool> used(l.tensors, false);
    for (int b = 0; b < l.blocks; ++b) {
      ++stats.blocks;
      CHECK(l.block_slot[b] < l.tensors, "block %d slot %d", b, l.block_slot[b]);
      const Work w = block_work(l, b, chunk, bytes);
      used[w.slot] = true;
      CHECK(w.n > 0 && w.n <= chunk && w.begin % chunk == 0, "block %d n %" PRId64, b, w.n);
      bool aligned = true;
      for (int k = 0; k < K; ++k) {
        aligned &= (l.ptr[w.slot][k] + w.begin * bytes[k]) % (kILP * bytes[k]) == 0;
      }
      CHECK(w.vector == aligned, "block %d: vector path %d where aligned %d", b, w.vector, aligned);
      stats.vector_blocks += w.vector;
      const int r = l.row[w.slot];
      for (int tid = 0; tid < kThreads; ++tid) {
        for_each_group(w, tid, kThreads, [&](const Group& g) {
          CHECK(g.count >= 1 && g.count <= kILP, "count %d", g.count);
          if (g.vector) {
            CHECK(g.count == kILP && g.stride == 1, "vector group shape");
            for (int k = 0; k < K; ++k) {
              const int64_t at = l.ptr[w.slot][k] + g.first * bytes[k];
              CHECK(at % (kILP * bytes[k]) == 0, "misaligned vector group, array %d", k);
            }
          }
          for (int j = 0; j < g.count; ++j) {
            const int64_t i = g.first + j * g.stride;
            if (i < w.begin || i >= w.begin + w.n) {
              CHECK(false, "row %d element %" PRId64 " outside block [%" PRId64 ", +%" PRId64 ")",
                    r, i, w.begin, w.n);
              continue;
            }
            ++seen[r][i];
          }
        });
      }
    }
    for (int s = 0; s < l.tensors; ++s) CHECK(used[s], "slot %d of %d has no block", s, l.tensors);
  });
  for (std::size_t r = 0; r < numels.size(); ++r) {
    for (int64_t i = 0; i < numels[r]; ++i) {
      if (seen[r][i] != 1) {
        CHECK(false, "row %zu element %" PRId64 " visited %d times", r, i, seen[r][i]);
        break;
      }
    }
    stats.elements += numels[r];
  }
  ++stats.tables;
}

template <int K>
void table_family(const int (&bytes)[K], std::mt19937_64& rng, Stats& stats) {
  const int64_t chunks[] = {kChunk, 64, 4};
  for (int64_t chunk : chunks) {
    const int64_t big = chunk == kChunk ? 3 : 40;  // tensors of several chunks
    std::vector<std::vector<int64_t>> tables = {
        {},                               // nothing
        {0},                              // one empty tensor
        {0, 0, 1, 0},                     // empty around one element
        {1},                              // one element
        {chunk - 1, chunk, chunk + 1},    // around one chunk
        {chunk * big + 3, 5, chunk * 2},  // several chunks, tail
        {7, 0, 3 * chunk, 0, 2},          // empty last
    };
    std::vector<int64_t> many;  // more tensors than a launch holds, tiny and empty ones
    for (int i = 0; i < 3 * Launch<K>::kMaxTensors + 17; ++i) many.push_back(rng() % 9);
    tables.push_back(many);
    std::vector<int64_t> mixed;  // random sizes, spanning launches by slots and by blocks
    for (int i = 0; i < Launch<K>::kMaxTensors + 40; ++i) {
      const int kind = static_cast<int>(rng() % 8);
      mixed.push_back(kind == 0  ? 0
                      : kind < 5 ? static_cast<int64_t>(rng() % 37)
                      : kind < 7 ? static_cast<int64_t>(rng() % (3 * chunk))
                                 : chunk * static_cast<int64_t>(1 + rng() % 3));
    }
    tables.push_back(mixed);
    if (chunk != kChunk) {  // more blocks than a launch: one tensor, then a tensor across them
      tables.push_back({chunk * kMaxBlocks * 2 + 5});
      tables.push_back({3, chunk * (kMaxBlocks - 1) + 1, chunk * 5, 1});
    } else if (K == 2) {  // past one launch at the real chunk size: 134M elements, once
      tables.push_back({kChunk * kMaxBlocks + kChunk / 2 + 3});
    }
    for (const auto& t : tables) {
      check_table<K>(t, bytes, chunk, rng, stats, 0);  // aligned
      check_table<K>(t, bytes, chunk, rng, stats, 3);  // some arrays misaligned
    }
  }
}

// 64-bit indices: the last chunk of a tensor of 5e9 elements, fake addresses.
void check_huge() {
  auto l = std::make_unique<Launch<2>>();
  const int64_t n = 5000000000LL;
  l->tensors = 1;
  l->blocks = 1;
  l->numel[0] = n;
  l->ptr[0][0] = int64_t{1} << 44;
  l->ptr[0][1] = int64_t{1} << 45;
  l->block_slot[0] = 0;
  l->block_chunk[0] = static_cast<int32_t>((n - 1) / kChunk);
  const int bytes[2] = {4, 4};
  const Work w = block_work(*l, 0, kChunk, bytes);
  CHECK(w.begin == (n - 1) / kChunk * kChunk && w.begin + w.n == n, "huge tensor: last block");
  int64_t lo = n, hi = -1, count = 0;
  for (int tid = 0; tid < kThreads; ++tid) {
    for_each_group(w, tid, kThreads, [&](const Group& g) {
      for (int j = 0; j < g.count; ++j) {
        const int64_t i = g.first + j * g.stride;
        lo = i < lo ? i : lo;
        hi = i > hi ? i : hi;
        ++count;
      }
    });
  }
  CHECK(lo == w.begin && hi == n - 1 && count == w.n, "huge tensor: indices %" PRId64, lo);
  CHECK(lo > (int64_t{1} << 32), "the test reaches past 2^32");
}

// ---- 5. arithmetic: apply_group against a plain loop ------------------------------------------

template <class Pols, class Rule, std::size_t... I>
void reference(const Rule& rule, const int64_t* ptrs, int64_t n, uint64_t salt,
               std::index_sequence<I...>) {
  using C = typename Rule::value_type;
  for (int64_t i = 0; i < n; ++i) {
    C v[sizeof...(I)] = {static_cast<C>(PolicyAt<Pols, I>::load(
        reinterpret_cast<const typename PolicyAt<Pols, I>::storage*>(ptrs[I]) + i))...};
    rule(v[I]...);
    const uint32_t r = element_random(salt, i);
    (PolicyAt<Pols, I>::store(reinterpret_cast<typename PolicyAt<Pols, I>::storage*>(ptrs[I]) + i,
                              v[I], rotate_bits(r, rotation_of(I))),
     ...);
  }
}

template <class St, class R>
void check_arithmetic(const char* name, const R& base_rule, float scale, std::mt19937_64& rng,
                      Stats& stats) {
  using Full = decltype(compose_rule<St>(base_rule, typename St::compute(1)));
  using Pols = Policies<St, Full>;
  constexpr int K = Full::kArrays;
  const Full rule = compose_rule<St>(base_rule, static_cast<typename St::compute>(scale));
  const int64_t chunk = 64;  // many blocks from few elements
  const std::vector<int64_t> numels = {1, 3, 64, 65, 200, 0, 131, 4};
  constexpr ElementBytes<Pols> eb{};
  for (int misaligned = 0; misaligned < 2; ++misaligned) {
    // each array: 64-byte aligned storage, one element in when misaligned (a scalar path);
    // values in (0, 1] (state buffers stay valid), of both signs for the gradient
    std::vector<std::vector<std::vector<unsigned char>>> ours(numels.size()), ref(numels.size());
    std::vector<int64_t> table;
    std::vector<std::vector<int64_t>> ref_ptrs(numels.size());
    for (std::size_t r = 0; r < numels.size(); ++r) {
      table.push_back(numels[r]);
      table.push_back(0);
      for (int k = 0; k < K; ++k) {
        const std::size_t b = static_cast<std::size_t>(eb.value[k]);
        ours[r].emplace_back(static_cast<std::size_t>(numels[r]) * b + 128, 0);
        ref[r].emplace_back(static_cast<std::size_t>(numels[r]) * b + 128, 0);
      }
      for (int k = 0; k < K; ++k) {
        const std::size_t b = static_cast<std::size_t>(eb.value[k]);
        const std::size_t off = misaligned && k == 1 ? b : 0;
        auto at = [&](std::vector<unsigned char>& v) {
          const std::size_t a = reinterpret_cast<std::uintptr_t>(v.data());
          return v.data() + (64 - a % 64) % 64 + off;
        };
        unsigned char* mine = at(ours[r][k]);
        unsigned char* theirs = at(ref[r][k]);
        for (int64_t i = 0; i < numels[r]; ++i) {
          double d = static_cast<double>(1 + rng() % 1000) / 1000.0;
          if (k == 1 && rng() % 2 == 0) d = -d;
          unsigned char bytes[8];
          if (b == 2) {
            const uint16_t h = f32_to_bf16(static_cast<float>(d));
            std::memcpy(bytes, &h, 2);
          } else if (b == 4) {
            const float f = static_cast<float>(d);
            std::memcpy(bytes, &f, 4);
          } else {
            std::memcpy(bytes, &d, 8);
          }
          std::memcpy(mine + i * b, bytes, b);
          std::memcpy(theirs + i * b, bytes, b);
        }
        table.push_back(numels[r] ? reinterpret_cast<int64_t>(mine) : 0);
        ref_ptrs[r].push_back(reinterpret_cast<int64_t>(theirs));
      }
    }
    const uint64_t seed = rng();
    auto launch = std::make_unique<Launch<K>>();
    plan<K>(table.data(), static_cast<int64_t>(numels.size()), 2 + K, chunk, *launch,
            [&](const Launch<K>& l) {
              for (int b = 0; b < l.blocks; ++b) {
                const Work w = block_work(l, b, chunk, eb.value);
                stats.vector_blocks += w.vector;
                int64_t ptrs[K];
                for (int k = 0; k < K; ++k) ptrs[k] = l.ptr[w.slot][k];
                const uint64_t salt = row_salt(seed, l.row[w.slot]);
                for (int tid = 0; tid < 32; ++tid) {
                  for_each_group(w, tid, 32, [&](const Group& g) {
                    apply_group<Pols>(rule, ptrs, g, salt, std::make_index_sequence<K>{});
                  });
                }
              }
            });
    for (std::size_t r = 0; r < numels.size(); ++r) {
      reference<Pols>(rule, ref_ptrs[r].data(), numels[r], row_salt(seed, static_cast<int64_t>(r)),
                      std::make_index_sequence<K>{});
      const int64_t* mine = table.data() + r * (2 + K) + 2;
      for (int k = 0; k < K; ++k) {
        const bool same =
            numels[r] == 0 || std::memcmp(reinterpret_cast<const void*>(mine[k]),
                                          reinterpret_cast<const void*>(ref_ptrs[r][k]),
                                          static_cast<std::size_t>(numels[r] * eb.value[k])) == 0;
        CHECK(same, "%s: row %zu array %d differs from the plain loop (misaligned %d)", name, r, k,
              misaligned);
      }
    }
  }
  ++stats.tables;
}

}  // namespace

int main() {
  std::mt19937_64 rng(20261124);
  Stats stats;
  {
    const int b2[2] = {4, 4};
    table_family<2>(b2, rng, stats);
    const int b3[3] = {8, 8, 8};
    table_family<3>(b3, rng, stats);
    const int b5[5] = {4, 2, 4, 4, 4};
    table_family<5>(b5, rng, stats);
    const int b6[6] = {4, 2, 4, 4, 4, 2};
    table_family<6>(b6, rng, stats);
  }
  check_huge();

  AdamParams adam{1e-2, 0.9, 0.99, 1e-8, 0.1, true, true, false};
  SgdParams sgd{0.05, 0.9, 0.1, 0.01, true, false};
  RmspropParams rms{0.01, 0.9, 1e-6, 0.05, 0.3, true, true};
  check_arithmetic<Storage<Plain<float>, ReadOnly<Plain<float>>, Plain<float>>>(
      "adam f32", AdamRule<float, true>(adam, 3.0), 1.0f, rng, stats);
  check_arithmetic<Storage<Plain<double>, ReadOnly<Plain<double>>, Plain<double>>>(
      "sgd f64", SgdRule<double, true>(sgd, false), 1.0f, rng, stats);
  check_arithmetic<Storage<Bf16Stochastic, ReadOnly<Bf16>, Bf16>>(
      "rmsprop bf16 stochastic", RmspropRule<float, true, true>(rms), 1.0f, rng, stats);
  check_arithmetic<Storage<Plain<float>, Bf16, Plain<float>, Bf16, true>>(
      "adam bf16 master + GradScaler", AdamRule<float, true>(adam, 7.0), 1024.0f, rng, stats);
  check_arithmetic<Storage<Plain<float>, ReadOnly<Plain<float>>, Bf16Stochastic>>(
      "adam f32, bf16 state stochastic", AdamRule<float, false>(adam, 2.0), 1.0f, rng, stats);

  std::printf("checked: %" PRId64 " tables, %" PRId64 " launches, %" PRId64 " blocks (%" PRId64
              " vector), %" PRId64 " elements each visited exactly once; up to %" PRId64
              " tensors per launch; sizeof(Launch<2>) = %zu, sizeof(Launch<6>) = %zu bytes\n",
              stats.tables, stats.launches, stats.blocks, stats.vector_blocks, stats.elements,
              stats.max_tensors, sizeof(Launch<2>), sizeof(Launch<6>));
  return report_failures();
}
