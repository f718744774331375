// Compares the 16-lane conversions of storage.h (AVX-512 build) with the scalar ones, bit for
// bit: every bfloat16/float16 word on load, and float32 inputs on store (every `stride`-th bit
// pattern, plus every subnormal and NaN boundary). Built and run by tests/test_lanes.py;
// `check_lanes 1` checks all 2^32 inputs (about 40 s).
//   g++ -O2 -std=c++17 -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma -mf16c
//       -I csrc/include tests/native/check_lanes.cpp
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "pyfastopt/storage.h"

#if !defined(PFO_LANES)
#error "build with the AVX-512 flags of the kernels"
#endif

using namespace pyfastopt;

namespace {

int64_t failures = 0;

void fail(const char* what, uint32_t in, uint32_t got, uint32_t want) {
  if (++failures <= 10) {
    std::printf("%s: input 0x%08x lanes 0x%04x scalar 0x%04x\n", what, in, got, want);
  }
}

void check_stores(const uint32_t* in, bool bf16_insn) {
  alignas(64) float f[16];
  alignas(64) uint16_t out[16];
  for (int k = 0; k < 16; ++k) f[k] = bits_f32(in[k]);
  const Lanes v = _mm512_loadu_ps(f);
  const LaneBits random = RandomLanes(0x1234567890ABCDEFull, in[0]).next();
  alignas(64) uint32_t r[16];
  _mm512_storeu_si512(r, random);
  if (bf16_insn) {
    store_words(out, f32_to_bf16_lanes(v));
    for (int k = 0; k < 16; ++k) {
      if (out[k] != f32_to_bf16(f[k])) fail("bf16 nearest", in[k], out[k], f32_to_bf16(f[k]));
    }
  }
  store_words(out, f32_to_bf16_stochastic_lanes(v, random));
  for (int k = 0; k < 16; ++k) {
    const uint32_t want_r = element_random(0x1234567890ABCDEFull, int64_t(in[0]) + k);
    if (r[k] != want_r) fail("element_random", in[0] + k, r[k], want_r);
    const uint16_t want = f32_to_bf16_stochastic(f[k], r[k]);
    if (out[k] != want) fail("bf16 stochastic", in[k], out[k], want);
  }
  store_words(out, f32_to_fp16_lanes(v));
  for (int k = 0; k < 16; ++k) {
    if (out[k] != f32_to_fp16(f[k])) fail("fp16", in[k], out[k], f32_to_fp16(f[k]));
  }
}

// RandomLanes block after block, across wraps of the index's low word: element_random's bits
void check_random_stream() {
  const uint64_t salts[] = {0x1234567890ABCDEFull, 0, ~0ull};
  const int64_t starts[] = {0,
                            1,
                            15,
                            16,
                            0xFFFFFFC0ll,
                            0xFFFFFFC7ll,
                            0xFFFFFFEFll,
                            0xFFFFFFF0ll,
                            0xFFFFFFFFll,
                            0x1FFFFFFF5ll,
                            1ll << 40,
                            (1ll << 40) - 9};
  for (const uint64_t salt : salts) {
    for (const int64_t start : starts) {
      RandomLanes random(salt, start);
      for (int64_t b = 0; b < 12; ++b) {
        alignas(64) uint32_t r[16];
        _mm512_storeu_si512(r, random.next());
        for (int k = 0; k < 16; ++k) {
          const int64_t index = start + 16 * b + k;
          const uint32_t want = element_random(salt, index);
          if (r[k] != want) fail("RandomLanes stream", static_cast<uint32_t>(index), r[k], want);
        }
      }
    }
  }
}

void check_loads() {
  for (uint32_t w = 0; w < 65536; w += 16) {
    alignas(64) uint16_t h[16];
    alignas(64) float f[16];
    for (int k = 0; k < 16; ++k) h[k] = static_cast<uint16_t>(w + k);
    _mm512_storeu_ps(f, bf16_to_f32_lanes(load_words(h)));
    for (int k = 0; k < 16; ++k) {
      if (f32_bits(f[k]) != f32_bits(bf16_to_f32(h[k]))) {
        fail("bf16 load", h[k], f32_bits(f[k]), f32_bits(bf16_to_f32(h[k])));
      }
    }
    _mm512_storeu_ps(f, fp16_to_f32_lanes(load_words(h)));
    for (int k = 0; k < 16; ++k) {
      const float want = fp16_to_f32(h[k]);
      if (f32_bits(f[k]) != f32_bits(want)) {
        fail("fp16 load", h[k], f32_bits(f[k]), f32_bits(want));
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t stride = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 61;
  const bool bf16_insn = __builtin_cpu_supports("avx512bf16");
  check_loads();
  check_random_stream();
  uint32_t in[16];
  int n = 0;
  uint64_t count = 0;
  auto push = [&](uint32_t u) {
    in[n++] = u;
    if (n == 16) {
      check_stores(in, bf16_insn);
      count += 16;
      n = 0;
    }
  };
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += stride) push(static_cast<uint32_t>(u));
  // every subnormal magnitude near the edges, both signs; the NaN and Inf boundaries
  for (uint32_t u = 0; u < 0x10000u; ++u) {
    push(u);
    push(0x80000000u | u);
    push(0x007F0000u + u);
    push(0x807F0000u + u);
    push(0x7F7F0000u + u);  // the largest normals, Inf, the first NaNs
    push(0xFF7F0000u + u);
  }
  while (n != 0) push(0);
  std::printf("%llu float32 inputs, 65536 words; bf16 instruction %s; %lld mismatches\n",
              static_cast<unsigned long long>(count), bf16_insn ? "checked" : "absent",
              static_cast<long long>(failures));
  return failures == 0 ? 0 : 1;
}
