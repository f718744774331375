// Proves the arithmetic 8-bit encoder (quant.h: q8_fast_half, q8_encode_fast_lanes) exact:
// for every `stride`-th float32 pattern y in [0, 2) and every NaN pattern (and every pattern
// within 256 ulps of each threshold and map value), of both maps, an unflagged fast count equals
// the exact count (the table encoder) of every value within kFastUlps of y, so also of x / scale
// when y is x * (1 / scale); and the 16-lane encoder gives the scalar one's codes and flags for y
// and -y. (The encoder sees y = x * (1 / scale) with |x| <= scale, scale >= kFastMinScale and
// finite: |y| < 1 + 2^-22, so [0, 2) holds every input; 2 and above alias the lowest binades.)
// Built and run by tests/test_lowmem.py; `check_quant 1` checks every pattern.
//   g++ -O2 -std=c++17 -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma -mf16c
//       -I csrc/include tests/native/check_quant.cpp csrc/cpu/quant_maps.cpp
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "pyfastopt/quant.h"

#if !defined(PFO_LANES)
#error "build with the AVX-512 flags of the kernels"
#endif

using namespace pyfastopt;

namespace {

int64_t failures = 0, flagged = 0, checked = 0;

void fail(const char* what, bool is_unsigned, uint32_t y, uint32_t got, uint32_t want) {
  if (++failures <= 10) {
    std::printf("%s (%s map): y 0x%08x got %u want %u\n", what, is_unsigned ? "unsigned" : "signed",
                y, got, want);
  }
}

float f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The exact code of y (the table encoder), both signs.
template <bool Unsigned>
uint32_t exact_code(const quant::Map& m, uint32_t bits) {
  return q8_encode_bits<Unsigned>(m.lut, bits);
}

template <bool Unsigned>
void check_scalar(const quant::Map& m, uint32_t y) {
  bool flag = false;
  const uint32_t fast = q8_fast_half(m.lines, f32(y), flag);
  ++checked;
  if (flag) {
    ++flagged;
    return;
  }
  const uint32_t lo = q8_half_index(m.lut, y > quant::kFastUlps ? y - quant::kFastUlps : 0);
  const uint32_t hi = q8_half_index(m.lut, y + quant::kFastUlps);
  if (lo != fast) fail("fast count vs exact below", Unsigned, y, fast, lo);
  if (hi != fast) fail("fast count vs exact above", Unsigned, y, fast, hi);
}

template <bool Unsigned>
void check_lanes(const quant::Map& m, const uint32_t* y16) {
  const LinesLanes t(m.lines);
  for (uint32_t sign : {0u, 0x80000000u}) {
    alignas(64) uint32_t in[16], out[16];
    for (int k = 0; k < 16; ++k) in[k] = y16[k] | sign;
    __mmask16 flags = 0;
    const __m512i c =
        q8_encode_fast_lanes<Unsigned>(t, _mm512_castsi512_ps(_mm512_loadu_si512(in)), flags);
    _mm512_storeu_si512(out, c);
    for (int k = 0; k < 16; ++k) {
      bool flag = false;
      q8_fast_half(m.lines, f32(y16[k] & 0x7FFFFFFFu), flag);
      if (((flags >> k) & 1) != (flag ? 1 : 0)) fail("lanes flag", Unsigned, in[k], flags, flag);
      if (flag) continue;
      // the scalar code of the count: the exact encoder's sign rule
      const uint32_t want = exact_code<Unsigned>(m, in[k]);
      if (out[k] != want) fail("lanes code", Unsigned, in[k], out[k], want);
    }
  }
}

template <bool Unsigned>
void run(const quant::Map& m, uint64_t stride) {
  if (!m.lines.ok) {
    fail("tables not built", Unsigned, 0, 0, 1);
    return;
  }
  std::vector<uint32_t> ys;
  for (uint64_t u = 0; u < 0x40000000ull; u += stride) ys.push_back(static_cast<uint32_t>(u));
  for (uint64_t u = 0x7F800001ull; u <= 0x7FFFFFFFull; u += stride) {
    ys.push_back(static_cast<uint32_t>(u));
  }
  // every pattern near each threshold and each value of the map
  for (int c = 0; c < quant::kCodes; ++c) {
    const float v = m.value[c] < 0 ? -m.value[c] : m.value[c];
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    for (int64_t d = -256; d <= 256; ++d) {
      if (static_cast<int64_t>(u) + d >= 0) ys.push_back(static_cast<uint32_t>(u + d));
    }
  }
  for (int32_t b = 0; b < quant::kLutSize; ++b) {  // each bucket's threshold
    const uint32_t e = m.lut[b];
    if ((e & 0xFFFFu) == 0xFFFFu) continue;
    const uint32_t t = (static_cast<uint32_t>(quant::kLutBase + b) << 16) | (e & 0xFFFFu);
    for (int64_t d = -256; d <= 256; ++d) ys.push_back(static_cast<uint32_t>(t + d));
  }
  for (uint32_t y : ys) check_scalar<Unsigned>(m, y & 0x7FFFFFFFu);
  while (ys.size() % 16 != 0) ys.push_back(0);
  for (std::size_t i = 0; i < ys.size(); i += 16) check_lanes<Unsigned>(m, ys.data() + i);
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t stride = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 61;
  run<false>(quant::signed_map(), stride);
  run<true>(quant::unsigned_map(), stride);
  std::printf("%lld patterns, %lld flagged, %lld mismatches\n", static_cast<long long>(checked),
              static_cast<long long>(flagged), static_cast<long long>(failures));
  return failures == 0 ? 0 : 1;
}
