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
//
// The table lookup is one gather per 16 values, and the division one more trip through the
// divider: together most of an 8-bit step's time. The AVX-512 build therefore encodes by
// arithmetic first (`Lines`, q8_fast_half): the map's values are evenly spaced within each
// decade, so between the few irregular thresholds (the first one, the junctions of two decades,
// the last one) the count of thresholds below y is floor(slope * y + offset), capped at the
// count of the next irregular threshold. A lookup by y's binary exponent (registers, no gather)
// finds the region; y is x times the reciprocal of the scale. Where that result could differ
// from the exact one (y within 2^-10 of a threshold in units of the region's spacing, or within
// 16 ulps of an irregular threshold: x * (1 / scale) is within 6 ulps of x / scale), the vector is
// encoded again by the exact path. tests/native/check_quant.cpp proves, for every float32 in
// [0, 2] and beyond, that an unflagged fast code is the exact code of every value within 16 ulps.
#pragma once

#include <cmath>
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

// The arithmetic encoder of a map's non-negative half (see the top of this file). A binade
// (binary exponent & 31; exponents below 2^-30 are clamped there first, 2^0 and above, Inf and
// NaN fall in binade 31, the top region) holds at most one irregular threshold, `bound`; values
// above it are in region `below + 1`, the others in region `below`. A region's count is
// min(fma(y, slope, offset), cap), rounded down.
constexpr int kBinades = 32;
constexpr int kRegions = 16;
constexpr float kFastFloor = 0x1p-30f;  // smallest y the binade lookup sees
constexpr float kFastDelta = 0x1p-10f;  // counts closer than this to an integer are re-encoded
constexpr uint32_t kFastUlps = 16;      // so are values this close to an irregular threshold
// smaller scales take the exact path (their reciprocal may overflow)
constexpr float kFastMinScale = 0x1p-125f;

struct Lines {
  float bound[kBinades];  // +inf: no irregular threshold in the binade
  int32_t below[kBinades];
  float slope[kRegions], offset[kRegions], cap[kRegions];
  bool ok;  // built and checked (else only the exact path runs)
};

struct Map {
  float value[kCodes];     // code -> value, ascending
  uint32_t lut[kLutSize];  // bucket -> (thresholds below the bucket) << 16 | low bits of the
                           // threshold inside it (0xFFFF: none)
  bool ok;                 // every bucket holds at most one threshold (checked when built)
  Lines lines;
  uint8_t plane[4][kCodes];  // byte k of each value (the byte-permute decoder)
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

// The count of thresholds below a = |y| by arithmetic (see the top of this file) for a value
// the binade lookup sees as it is (NaN kept); sets `flag` where it may differ from the exact
// count of a value within kFastUlps.
PFO_HD uint32_t q8_fast_half(const quant::Lines& l, float a, bool& flag) {
  a = quant::kFastFloor > a ? quant::kFastFloor : a;
  const uint32_t u = q8_f32_bits(a);
  const int e = static_cast<int>((u >> 23) & 31u);
  const float bound = l.bound[e];
  const int r = l.below[e] + (a > bound ? 1 : 0);
  const float line = std::fma(a, l.slope[r], l.offset[r]);
  const float t = line < l.cap[r] ? line : l.cap[r];
  const float frac = t - std::nearbyint(t);
  const uint32_t ub = q8_f32_bits(bound);
  const uint32_t d = u > ub ? u - ub : ub - u;
  flag = flag || std::fabs(frac) < quant::kFastDelta || d <= quant::kFastUlps;
  return static_cast<uint32_t>(t);
}

#if defined(PFO_LANES)
// Dequantises 64 codes at a time with byte permutes (AVX512-VBMI, which the caller checked):
// each byte of the 64 values comes from its plane (two 128-byte permutes and a select on code
// bit 7), and byte unpacks put the four planes together; the codes are first reordered so that
// the unpacks, which work within 128-bit lanes, leave the values in order. Returns how many
// values it wrote (a multiple of 64).
__attribute__((target("avx512vbmi"))) inline int64_t dequantize_vbmi(const uint8_t* codes,
                                                                     float scale,
                                                                     const quant::Map& map,
                                                                     float* out, int64_t n) {
  alignas(64) static constexpr uint8_t kOrder[64] = {
      0,  1,  2,  3,  16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51,  // position 16L + 4r + d
      4,  5,  6,  7,  20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,  // holds code 16r + 4L + d
      8,  9,  10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59,
      12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
  const __m512i order = _mm512_load_si512(kOrder);
  const __m512 s = _mm512_set1_ps(scale);
  // (here and in dequantize_block: the register arrays stay in registers only when their small
  // loops are unrolled completely, which GCC's -O2, the kernels' level, does not do by itself)
  __m512i p[4][4];
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) p[k][q] = _mm512_loadu_si512(map.plane[k] + 64 * q);
  }
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512i c = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(codes + i));
    const __mmask64 high = _mm512_movepi8_mask(c);
    __m512i b[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      b[k] = _mm512_mask_blend_epi8(high, _mm512_permutex2var_epi8(p[k][0], c, p[k][1]),
                                    _mm512_permutex2var_epi8(p[k][2], c, p[k][3]));
    }
    const __m512i lo01 = _mm512_unpacklo_epi8(b[0], b[1]), hi01 = _mm512_unpackhi_epi8(b[0], b[1]);
    const __m512i lo23 = _mm512_unpacklo_epi8(b[2], b[3]), hi23 = _mm512_unpackhi_epi8(b[2], b[3]);
    const __m512i r[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                          _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      _mm512_storeu_ps(out + i + 16 * q, _mm512_mul_ps(_mm512_castsi512_ps(r[q]), s));
    }
  }
  return i;
}
#endif

// x[i] = map[codes[i]] * scale; `vbmi`: the CPU has AVX512-VBMI (lanes_mode(), kLanesVbmi).
inline void dequantize_block(const uint8_t* codes, float scale, const quant::Map& m, float* out,
                             int64_t n, bool vbmi = false) {
  static_cast<void>(vbmi);  // read by the AVX-512 build only
  const float* map = m.value;
  int64_t i = 0;
#if defined(PFO_LANES)
  if (vbmi) i = dequantize_vbmi(codes, scale, m, out, n);
  // then 16 codes at a time: the map held in 16 registers, looked up by
  // eight two-register permutes (code bits 0-4) and a select tree on bits 5-7 (no gather)
  const __m512 s = _mm512_set1_ps(scale);
  __m512 t[16];
#pragma GCC unroll 16
  for (int k = 0; k < 16; ++k) t[k] = _mm512_loadu_ps(map + 16 * k);
  for (; i + kLanes <= n; i += kLanes) {
    const __m512i c =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
    __m512 r[8];
#pragma GCC unroll 8
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

#if defined(PFO_LANES)
// The code of 16 values from the 32-bit count j of their magnitudes: the signed map mirrors its
// non-negative half around code 127 (without the 1), the unsigned one encodes negatives as 0.
template <bool Unsigned>
inline __m512i q8_codes_lanes(__m512i j, __mmask16 neg) {
  if constexpr (Unsigned) {
    return _mm512_maskz_mov_epi32(static_cast<__mmask16>(~neg), j);
  } else {
    const __m512i zero = _mm512_set1_epi32(127);
    return _mm512_mask_blend_epi32(neg, _mm512_add_epi32(zero, j),
                                   _mm512_sub_epi32(zero, _mm512_min_epu32(j, zero)));
  }
}

// q8_encode_bits on 16 lanes of x / s: one gather from the table.
template <bool Unsigned>
inline __m512i q8_encode_exact_lanes(const uint32_t* lut, __m512 x, __m512 s) {
  const __m512i b = _mm512_castps_si512(_mm512_div_ps(x, s));
  const __mmask16 neg = _mm512_movepi32_mask(b);
  const __m512i low16 = _mm512_set1_epi32(0xFFFF);
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
  return q8_codes_lanes<Unsigned>(j, neg);
}

// The arithmetic encoder's tables in registers.
struct LinesLanes {
  __m512 bound_lo, bound_hi, slope, offset, cap;
  __m512i below_lo, below_hi;
  explicit LinesLanes(const quant::Lines& l)
      : bound_lo(_mm512_loadu_ps(l.bound)),
        bound_hi(_mm512_loadu_ps(l.bound + 16)),
        slope(_mm512_loadu_ps(l.slope)),
        offset(_mm512_loadu_ps(l.offset)),
        cap(_mm512_loadu_ps(l.cap)),
        below_lo(_mm512_loadu_si512(l.below)),
        below_hi(_mm512_loadu_si512(l.below + 16)) {}
};

// q8_fast_half and the sign on 16 lanes of y: the codes, and in `flags` the lanes whose code
// must come from the exact path.
template <bool Unsigned>
inline __m512i q8_encode_fast_lanes(const LinesLanes& t, __m512 y, __mmask16& flags) {
  const __m512i yb = _mm512_castps_si512(y);
  const __m512 a = _mm512_maskz_max_ps(  // (maskz: GCC 12 warns on the unmasked form)
      0xFFFF, _mm512_set1_ps(quant::kFastFloor),
      _mm512_castsi512_ps(_mm512_and_si512(yb, _mm512_set1_epi32(0x7FFFFFFF))));
  const __m512i ab = _mm512_castps_si512(a);
  const __m512i e = _mm512_srli_epi32(ab, 23);
  const __m512 bound = _mm512_permutex2var_ps(t.bound_lo, e, t.bound_hi);
  const __m512i below = _mm512_permutex2var_epi32(t.below_lo, e, t.below_hi);
  const __mmask16 up = _mm512_cmp_ps_mask(a, bound, _CMP_GT_OQ);
  const __m512i r = _mm512_mask_add_epi32(below, up, below, _mm512_set1_epi32(1));
  const __m512 line =
      _mm512_fmadd_ps(a, _mm512_permutexvar_ps(r, t.slope), _mm512_permutexvar_ps(r, t.offset));
  const __m512 count = _mm512_min_ps(line, _mm512_permutexvar_ps(r, t.cap));
  const __m512 frac = _mm512_reduce_ps(count, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512i d = _mm512_abs_epi32(_mm512_sub_epi32(ab, _mm512_castps_si512(bound)));
  flags |= _mm512_cmp_ps_mask(_mm512_abs_ps(frac), _mm512_set1_ps(quant::kFastDelta), _CMP_LT_OQ) |
           _mm512_cmple_epu32_mask(d, _mm512_set1_epi32(static_cast<int>(quant::kFastUlps)));
  return q8_codes_lanes<Unsigned>(_mm512_cvttps_epi32(count), _mm512_movepi32_mask(yb));
}
#endif

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
#if defined(PFO_LANES)  // 16 lanes: by arithmetic on x * (1 / scale), the exact path for a
                        // vector with a flagged lane (and for tiny or non-finite scales)
  const __m512 s = _mm512_set1_ps(absmax);
  if (map.lines.ok && absmax >= quant::kFastMinScale && top < 0x7F800000u) {
    const LinesLanes t(map.lines);
    const __m512 inv = _mm512_set1_ps(1.0f / absmax);
    for (; i + kLanes <= n; i += kLanes) {
      const __m512 v = _mm512_loadu_ps(x + i);
      __mmask16 flags = 0;
      __m512i c = q8_encode_fast_lanes<Unsigned>(t, _mm512_mul_ps(v, inv), flags);
      if (flags != 0) c = q8_encode_exact_lanes<Unsigned>(lut, v, s);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(c));
    }
  }
  for (; i + kLanes <= n; i += kLanes) {
    const __m512i c = q8_encode_exact_lanes<Unsigned>(lut, _mm512_loadu_ps(x + i), s);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(c));
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
