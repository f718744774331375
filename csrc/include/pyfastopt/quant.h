// Block-wise 8-bit quantisation of optimizer state (Dettmers et al., "8-bit Optimizers via
// Block-wise Quantization", ICLR 2022): a buffer is split into blocks of B elements; a block
// stores one float32 scale, its absolute maximum, and one 8-bit code per element, the index of
// the nearest value of a fixed dynamic map to element / scale. The maps are bitsandbytes'
// `create_dynamic_map(signed)` (max_exponent_bits 7), bit for bit: 256 sorted values in
// [-1, 1] (signed, first moments) or [0, 1] (unsigned, second moments), each with an exact 0 and
// an exact 1.
//
// Encoding is exact nearest-code rounding, ties toward zero, with no search: a table indexed by
// the top 16 bits of |x|'s float32 pattern (exponent and 7 mantissa bits; the map's values are
// log-spaced, so every such bucket holds at most one decision threshold) gives the count of
// thresholds below the bucket and the low 16 bits of the one inside it, and one integer compare
// finishes. A threshold is the midpoint of two neighbouring map values rounded down to float32,
// so `x > threshold` in float32 is `x > midpoint` in real numbers.
#pragma once

#include <cstdint>
#include <cstring>

#include "pyfastopt/lanes.h"
#include "pyfastopt/macros.h"

namespace pyfastopt {
namespace quant {

constexpr int kCodes = 256;
constexpr uint8_t kSignedZero = 127;    // the code of 0 in the signed map
constexpr uint8_t kUnsignedZero = 0;    // and in the unsigned map
constexpr int32_t kLutBase = 103 << 7;  // top 16 bits of 2^-24: smaller |x| all encode as 0
constexpr int32_t kLutTop = 127 << 7;   // of 1.0; larger patterns (NaN) clamp here
constexpr int32_t kLutSize = kLutTop - kLutBase + 1;

struct Map {
  float value[kCodes];     // code -> value, ascending
  uint32_t lut[kLutSize];  // bucket -> (thresholds below the bucket) << 16 | low bits of the
                           // threshold inside it (0xFFFF: none)
  bool ok;                 // every bucket holds at most one threshold (checked when built)
};

// Built once, on first use (thread-safe), from the literal maps in quant_maps.cpp.
const Map& signed_map();
const Map& unsigned_map();

}  // namespace quant

// The functions are compiled into each ISA build (see rules.h).
#ifndef PFO_ISA_NS
#define PFO_ISA_NS generic
#endif
inline namespace PFO_ISA_NS {

// The code of n = x / scale for the map's non-negative half, as a count of thresholds below |n|.
PFO_HD uint32_t q8_half_index(const uint32_t* lut, uint32_t abs_bits) {
  int32_t idx = static_cast<int32_t>(abs_bits >> 16) - quant::kLutBase;
  idx = idx < 0 ? 0 : idx;
  idx = idx > quant::kLutSize - 1 ? quant::kLutSize - 1 : idx;
  const uint32_t e = lut[idx];
  return (e >> 16) + ((abs_bits & 0xFFFFu) > (e & 0xFFFFu) ? 1u : 0u);
}

// Nearest code of the normalised value with float32 pattern `bits`. Signed map: the negative
// half mirrors the positive one without its 1 (codes 0..126 are -value[254..128]); unsigned
// map: a negative value (never produced by a second moment) encodes as 0.
template <bool Unsigned>
PFO_HD uint8_t q8_encode_bits(const uint32_t* lut, uint32_t bits) {
  const uint32_t neg = bits >> 31;
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if constexpr (Unsigned) {
    return static_cast<uint8_t>(q8_half_index(lut, neg ? 0u : abs_bits));
  } else {
    const uint32_t j = q8_half_index(lut, abs_bits);
    const uint32_t jn = j < 127u ? j : 127u;
    return static_cast<uint8_t>(neg ? 127u - jn : 127u + j);
  }
}

PFO_HD uint32_t q8_f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// x[i] = map[codes[i]] * scale
inline void dequantize_block(const uint8_t* codes, float scale, const float* map, float* out,
                             int64_t n) {
  int64_t i = 0;
#if defined(PFO_LANES)  // 16 codes at a time: the map held in 16 registers, looked up by
  // eight two-register permutes (code bits 0-4) and a select tree on bits 5-7 (no gather)
  const __m512 s = _mm512_set1_ps(scale);
  __m512 t[16];
  for (int k = 0; k < 16; ++k) t[k] = _mm512_loadu_ps(map + 16 * k);
  for (; i + kLanes <= n; i += kLanes) {
    const __m512i c =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
    __m512 r[8];
    for (int k = 0; k < 8; ++k) r[k] = _mm512_permutex2var_ps(t[2 * k], c, t[2 * k + 1]);
    const __mmask16 b5 = _mm512_test_epi32_mask(c, _mm512_set1_epi32(32));
    const __mmask16 b6 = _mm512_test_epi32_mask(c, _mm512_set1_epi32(64));
    const __mmask16 b7 = _mm512_test_epi32_mask(c, _mm512_set1_epi32(128));
    const __m512 a0 = _mm512_mask_blend_ps(b5, r[0], r[1]);
    const __m512 a1 = _mm512_mask_blend_ps(b5, r[2], r[3]);
    const __m512 a2 = _mm512_mask_blend_ps(b5, r[4], r[5]);
    const __m512 a3 = _mm512_mask_blend_ps(b5, r[6], r[7]);
    const __m512 v = _mm512_mask_blend_ps(b7, _mm512_mask_blend_ps(b6, a0, a1),
                                          _mm512_mask_blend_ps(b6, a2, a3));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(v, s));
  }
#endif
#pragma omp simd
  for (int64_t k = i; k < n; ++k) out[k] = map[codes[k]] * scale;
}

// Writes the codes of x[0, n) for the scale absmax(x) and returns that scale: code i is the
// nearest map value to x[i] / scale (float32 division). NaN in x gives a NaN scale (as in every
// block-wise implementation, the block then reads back as NaN).
template <bool Unsigned>
inline float quantize_block(const float* x, int64_t n, uint8_t* codes, const quant::Map& map) {
  uint32_t top = 0;  // |x| as float32 patterns: an integer maximum, which a NaN wins
#pragma omp simd reduction(max : top)
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = q8_f32_bits(x[i]) & 0x7FFFFFFFu;
    top = b > top ? b : top;
  }
  const uint8_t zero = Unsigned ? quant::kUnsignedZero : quant::kSignedZero;
  if (top == 0) {
    for (int64_t i = 0; i < n; ++i) codes[i] = zero;
    return 0.0f;
  }
  float absmax;
  std::memcpy(&absmax, &top, sizeof absmax);
  const uint32_t* lut = map.lut;
  int64_t i = 0;
#if defined(PFO_LANES)  // q8_encode_bits on 16 lanes: one gather from the table
  const __m512 s = _mm512_set1_ps(absmax);
  const __m512i low16 = _mm512_set1_epi32(0xFFFF);
  for (; i + kLanes <= n; i += kLanes) {
    const __m512i b = _mm512_castps_si512(_mm512_div_ps(_mm512_loadu_ps(x + i), s));
    const __mmask16 neg = _mm512_movepi32_mask(b);
    __m512i a = _mm512_and_si512(b, _mm512_set1_epi32(0x7FFFFFFF));
    if constexpr (Unsigned) a = _mm512_maskz_mov_epi32(static_cast<__mmask16>(~neg), a);
    __m512i idx = _mm512_sub_epi32(_mm512_srli_epi32(a, 16), _mm512_set1_epi32(quant::kLutBase));
    idx = _mm512_min_epi32(_mm512_max_epi32(idx, _mm512_setzero_si512()),
                           _mm512_set1_epi32(quant::kLutSize - 1));
    const __m512i e = _mm512_i32gather_epi32(idx, lut, 4);
    const __mmask16 up =
        _mm512_cmpgt_epu32_mask(_mm512_and_si512(a, low16), _mm512_and_si512(e, low16));
    __m512i j = _mm512_srli_epi32(e, 16);
    j = _mm512_mask_add_epi32(j, up, j, _mm512_set1_epi32(1));
    if constexpr (!Unsigned) {
      const __m512i zero = _mm512_set1_epi32(127);
      const __m512i jn = _mm512_min_epu32(j, zero);
      j = _mm512_mask_blend_epi32(neg, _mm512_add_epi32(zero, j), _mm512_sub_epi32(zero, jn));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(j));
  }
#endif
#pragma omp simd
  for (int64_t k = i; k < n; ++k) {
    codes[k] = q8_encode_bits<Unsigned>(lut, q8_f32_bits(x[k] / absmax));
  }
  return absmax;
}

template <bool Unsigned>
inline const quant::Map& q8_map() {
  return Unsigned ? quant::unsigned_map() : quant::signed_map();
}

}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
