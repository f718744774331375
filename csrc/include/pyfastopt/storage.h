// Storage policies: how an array that a rule touches is stored, apart from the type the rule
// computes in. The traversal loads each element through its array's policy (converting to the
// compute type), applies the rule, and stores every array the rule may write back through the
// same policy (rounding once). rules.h never sees a storage type.
//
// A policy is a type with
//   using storage = ...;   // what the array holds (float, double, or the 16-bit word of a
//                          // bfloat16 / float16)
//   using compute = ...;   // what the rule computes in
//   static compute load(const storage* p);
//   static void store(storage* p, compute v, uint32_t random);
// and, in the AVX-512 build (lanes.h), the same two functions for 16 consecutive elements,
// `load_lanes` and `store_lanes`, built on the CPU's conversion instructions (VCVTNEPS2BF16,
// VCVTPS2PH, VCVTPH2PS). Those give the scalar functions' bits: where an instruction differs
// (VCVTNEPS2BF16 flushes subnormal inputs to zero; VCVTPS2PH keeps a NaN's payload, c10 does
// not) the affected lanes, found by one test per vector, are recomputed by the scalar rule.
// tools/check_lanes.cpp compares every float32 input.
// `kBf16Insn` marks a policy whose lanes store needs AVX512-BF16 (checked at run time).
// `random` is 32 bits of an element-keyed hash (see `element_random`); only stochastic rounding
// reads it, and the traversal computes it only for a policy with `kRandom`. Every conversion is
// exact integer arithmetic (or the IEEE conversion instruction, which is the same function), the
// same on every SIMD build, on the CUDA build, and in the low-memory state of a later issue,
// whose block-quantised policies plug in here. No per-element branch survives: the few
// conditionals below are if-converted to selects, so every policy vectorises.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "pyfastopt/lanes.h"
#include "pyfastopt/macros.h"

#ifndef PFO_ISA_NS
#define PFO_ISA_NS generic
#endif

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

// float16 on the host: c10's own bit-exact conversions (integer operations and exact float
// scalings; they need IEEE subnormals, which this library never turns off). GCC 12 does not
// vectorise _Float16 conversions without AVX512-FP16, while these vectorise on every SIMD build.

namespace pyfastopt {
inline namespace PFO_ISA_NS {

PFO_HD uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

PFO_HD float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// ---- bfloat16: the high half of a float32 ----------------------------------------------------

PFO_HD float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

// Round to nearest, ties to even, as c10::BFloat16 does; a NaN stays a (quiet) NaN.
PFO_HD uint16_t f32_to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x0040u;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
}

// Stochastic rounding: add 16 uniform random bits below the kept ones and truncate, so a value
// rounds up with probability equal to its distance from the lower neighbour (unbiased). Inf and
// NaN keep their class.
PFO_HD uint16_t f32_to_bf16_stochastic(float f, uint32_t random) {
  const uint32_t u = f32_bits(f);
  const uint32_t rounded = (u + (random & 0xFFFFu)) >> 16;
  const uint32_t special = (u >> 16) | ((u & 0x007FFFFFu) != 0 ? 0x0040u : 0u);
  return static_cast<uint16_t>((u & 0x7F800000u) == 0x7F800000u ? special : rounded);
}

// ---- float16 -----------------------------------------------------------------------------------

PFO_HD float fp16_to_f32(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  // c10::detail::fp16_ieee_to_fp32_value: normals (and Inf/NaN) by one exact scaling of the
  // shifted bits, subnormals by one exact subtraction; a select, no branch
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t mag = two_w < (1u << 27) ? f32_bits(denormalized) : f32_bits(normalized);
  return bits_f32(sign | mag);
#endif
}

// Round to nearest, ties to even (IEEE binary16), overflow to Inf, NaN stays NaN.
PFO_HD uint16_t f32_to_fp16(float v) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(v));
#else
  // c10::detail::fp16_ieee_from_fp32_value: the float unit rounds the mantissa (one exact
  // scaling pair and one add), integer ops assemble the result; a select, no branch
  const float base0 = (std::fabs(v) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_bits(v);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  const float base = bits_f32((bias >> 1) + 0x07800000u) + base0;
  const uint32_t bits = f32_bits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
#endif
}

// ---- element-keyed random bits ------------------------------------------------------------------

// 32 random bits for element `index` of a tensor under `salt` (which mixes the seed, the step and
// the tensor): a pure function of its arguments, so results do not depend on how the elements are
// split between threads or blocks. lowbias32 (C. Wellons), full avalanche.
PFO_HD uint32_t element_random(uint64_t salt, int64_t index) {
  const uint64_t i = static_cast<uint64_t>(index);
  uint32_t x = static_cast<uint32_t>(salt) ^ static_cast<uint32_t>(i) * 0x9E3779B9u;
  x ^= static_cast<uint32_t>(salt >> 32) + static_cast<uint32_t>(i >> 32) * 0x85EBCA6Bu;
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// ---- the policies
// --------------------------------------------------------------------------------

#if defined(PFO_LANES)
// ---- 16 lanes (AVX-512 build) ---------------------------------------------------------------

PFO_HD LaneBits lane_bits(Lanes v) { return _mm512_castps_si512(v); }
PFO_HD Lanes bits_lanes(LaneBits u) { return _mm512_castsi512_ps(u); }
PFO_HD LaneBits splat(uint32_t x) { return _mm512_set1_epi32(static_cast<int>(x)); }

PFO_HD __m256i load_words(const uint16_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
PFO_HD void store_words(uint16_t* p, __m256i w) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), w);
}

PFO_HD Lanes bf16_to_f32_lanes(__m256i h) {
  return bits_lanes(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// f32_to_bf16, lane by lane, in integer arithmetic (a 32-bit result per lane)
PFO_HD LaneBits f32_to_bf16_exact_lanes(Lanes f) {
  const LaneBits u = lane_bits(f);
  const LaneBits odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), splat(1));
  const LaneBits rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, splat(0x7FFF)), odd), 16);
  const LaneBits nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), splat(0x40));
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), rounded, nan);
}

// VCVTNEPS2BF16 (round to nearest even, a NaN quieted as f32_to_bf16 does; written as an
// assembler mnemonic, so the kernels need no AVX512-BF16 flag and run it only where cpuid
// reports it), then the exact rule for the rare subnormal lanes, which the instruction flushes
// to zero. The branch is per vector of 16, not per element.
PFO_HD __m256i f32_to_bf16_lanes(Lanes f) {
  __m256i h;
  asm("vcvtneps2bf16 %1, %0" : "=v"(h) : "v"(f));
  const __mmask16 odd = _mm512_fpclass_ps_mask(f, 0x20);  // subnormal
  if (__builtin_expect(odd != 0, 0)) {
    h = _mm256_mask_blend_epi16(odd, h, _mm512_cvtepi32_epi16(f32_to_bf16_exact_lanes(f)));
  }
  return h;
}

PFO_HD __m256i f32_to_bf16_stochastic_lanes(Lanes f, LaneBits random) {
  const LaneBits u = lane_bits(f);
  const LaneBits rounded =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_and_si512(random, splat(0xFFFF))), 16);
  const __mmask16 payload = _mm512_test_epi32_mask(u, splat(0x007FFFFF));
  const LaneBits special = _mm512_mask_or_epi32(_mm512_srli_epi32(u, 16), payload,
                                                _mm512_srli_epi32(u, 16), splat(0x40));
  const __mmask16 inf_nan =
      _mm512_cmpeq_epi32_mask(_mm512_and_si512(u, splat(0x7F800000)), splat(0x7F800000));
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(inf_nan, rounded, special));
}

PFO_HD Lanes fp16_to_f32_lanes(__m256i h) { return _mm512_cvtph_ps(h); }

// VCVTPS2PH rounds to nearest even with IEEE subnormals and overflow to Inf, as f32_to_fp16;
// a NaN becomes (sign | 0x7E00) as in c10.
PFO_HD __m256i f32_to_fp16_lanes(Lanes f) {
  __m256i h = _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
  if (__builtin_expect(nan != 0, 0)) {
    const LaneBits canon = _mm512_or_si512(
        _mm512_srli_epi32(_mm512_and_si512(lane_bits(f), splat(0x80000000u)), 16), splat(0x7E00));
    h = _mm256_mask_blend_epi16(nan, h, _mm512_cvtepi32_epi16(canon));
  }
  return h;
}

// element_random for consecutive blocks of 16 elements from index0 on, block after block: the
// index's own products advance by additions ((i + 16) * c = i * c + 16 * c modulo 2^32, and
// i >> 32 changes only where the low word wraps, where the block is computed afresh), so a block
// costs the finaliser's two multiplications instead of four. The same bits as element_random.
class RandomLanes {
 public:
  PFO_HD RandomLanes(uint64_t salt, int64_t index0)
      : salt_lo_(splat(static_cast<uint32_t>(salt))), salt_hi_(static_cast<uint32_t>(salt >> 32)) {
    start(static_cast<uint64_t>(index0));
  }

  // the bits of the current block; the next call gives the next block's
  PFO_HD LaneBits next() {
    LaneBits x = _mm512_xor_si512(_mm512_xor_si512(salt_lo_, lo_mul_), hi_term_);
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, splat(0x7FEB352Du));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, splat(0x846CA68Bu));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    index_ += kLanes;
    const uint32_t low = static_cast<uint32_t>(index_);
    constexpr uint32_t kStep = kLanes;
    if (__builtin_expect(low > 0xFFFFFFFFu - kStep || low < kStep, 0)) {
      start(index_);  // this block or the one before holds a wrap of the low word
    } else {
      lo_mul_ = _mm512_add_epi32(lo_mul_, splat(kStep * 0x9E3779B9u));
    }
    return x;
  }

 private:
  PFO_HD void start(uint64_t base) {
    index_ = base;
    const LaneBits base_lo = splat(static_cast<uint32_t>(base));
    const LaneBits lo = _mm512_add_epi32(
        base_lo, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __mmask16 carry = _mm512_cmplt_epu32_mask(lo, base_lo);
    const LaneBits hi0 = splat(static_cast<uint32_t>(base >> 32));
    const LaneBits hi = _mm512_mask_add_epi32(hi0, carry, hi0, splat(1));
    lo_mul_ = _mm512_mullo_epi32(lo, splat(0x9E3779B9u));
    hi_term_ = _mm512_add_epi32(splat(salt_hi_), _mm512_mullo_epi32(hi, splat(0x85EBCA6Bu)));
  }

  LaneBits salt_lo_;
  uint32_t salt_hi_;
  uint64_t index_ = 0;
  LaneBits lo_mul_, hi_term_;
};

// RandomLanes' stand-in where no array rounds stochastically: no work at all.
struct NoRandomLanes {
  PFO_HD NoRandomLanes(uint64_t, int64_t) {}
  PFO_HD LaneBits next() { return _mm512_setzero_si512(); }
};

#endif

// ---- the policies ------------------------------------------------------------------------------

// Stored as it is computed (float32, float64).
template <typename T>
struct Plain {
  using storage = T;
  using compute = T;
  static constexpr bool kRandom = false;
  static constexpr bool kBf16Insn = false;
  static constexpr bool kBlock = false;
  static PFO_HD T load(const T* p) { return *p; }
  static PFO_HD void store(T* p, T v, uint32_t) { *p = v; }
#if defined(PFO_LANES)  // used for float32 only
  static PFO_HD Lanes load_lanes(const storage* p) { return _mm512_loadu_ps(p); }
  static PFO_HD void store_lanes(storage* p, Lanes v, LaneBits) { _mm512_storeu_ps(p, v); }
#endif
};

// bfloat16 storage, float32 compute, rounded to nearest even on store.
struct Bf16 {
  using storage = uint16_t;
  using compute = float;
  static constexpr bool kRandom = false;
  static constexpr bool kBf16Insn = true;
  static constexpr bool kBlock = false;
  static PFO_HD float load(const uint16_t* p) { return bf16_to_f32(*p); }
  static PFO_HD void store(uint16_t* p, float v, uint32_t) { *p = f32_to_bf16(v); }
  // what a store leaves, read back (master weights compare it with the parameter)
  static PFO_HD float rounded(float v) { return bf16_to_f32(f32_to_bf16(v)); }
#if defined(PFO_LANES)
  static PFO_HD Lanes load_lanes(const storage* p) { return bf16_to_f32_lanes(load_words(p)); }
  static PFO_HD void store_lanes(storage* p, Lanes v, LaneBits) {
    store_words(p, f32_to_bf16_lanes(v));
  }
  static PFO_HD Lanes rounded(Lanes v) { return bf16_to_f32_lanes(f32_to_bf16_lanes(v)); }
#endif
};

// bfloat16 storage, stochastic rounding on store.
struct Bf16Stochastic {
  using storage = uint16_t;
  using compute = float;
  static constexpr bool kRandom = true;
  static constexpr bool kBf16Insn = false;
  static constexpr bool kBlock = false;
  static PFO_HD float load(const uint16_t* p) { return bf16_to_f32(*p); }
  static PFO_HD void store(uint16_t* p, float v, uint32_t r) { *p = f32_to_bf16_stochastic(v, r); }
#if defined(PFO_LANES)
  static PFO_HD Lanes load_lanes(const storage* p) { return bf16_to_f32_lanes(load_words(p)); }
  static PFO_HD void store_lanes(storage* p, Lanes v, LaneBits r) {
    store_words(p, f32_to_bf16_stochastic_lanes(v, r));
  }
#endif
};

// float16 storage, float32 compute, rounded to nearest even on store.
struct Fp16 {
  using storage = uint16_t;
  using compute = float;
  static constexpr bool kRandom = false;
  static constexpr bool kBf16Insn = false;
  static constexpr bool kBlock = false;
  static PFO_HD float load(const uint16_t* p) { return fp16_to_f32(*p); }
  static PFO_HD void store(uint16_t* p, float v, uint32_t) { *p = f32_to_fp16(v); }
  static PFO_HD float rounded(float v) { return fp16_to_f32(f32_to_fp16(v)); }
#if defined(PFO_LANES)
  static PFO_HD Lanes load_lanes(const storage* p) { return fp16_to_f32_lanes(load_words(p)); }
  static PFO_HD void store_lanes(storage* p, Lanes v, LaneBits) {
    store_words(p, f32_to_fp16_lanes(v));
  }
  static PFO_HD Lanes rounded(Lanes v) { return fp16_to_f32_lanes(f32_to_fp16_lanes(v)); }
#endif
};

// Read, never written (a gradient the step does not unscale).
template <class P>
struct ReadOnly : P {
  static constexpr bool kRandom = false;
  static constexpr bool kBf16Insn = false;
  static PFO_HD void store(typename P::storage*, typename P::compute, uint32_t) {}
#if defined(PFO_LANES)
  static PFO_HD void store_lanes(typename P::storage*, Lanes, LaneBits) {}
#endif
};

// 8-bit block-quantised state (quant.h): `Unsigned` picks the map (second moments). The
// traversal dequantises a block into float32, runs the rule over it as Plain<float>, and
// requantises it (multi_tensor.h); the element functions are not used.
template <bool Unsigned>
struct Block8 {
  using storage = uint8_t;
  using compute = float;
  static constexpr bool kRandom = false;
  static constexpr bool kBf16Insn = false;
  static constexpr bool kBlock = true;
  static constexpr bool kUnsigned = Unsigned;
};

// What the element loop sees for an array: a block-quantised one as its float32 block buffer.
template <class P>
using ElementPolicy = std::conditional_t<P::kBlock, Plain<float>, P>;

// The random bits array I rounds with: the element's hash rotated by a different amount per
// array, so a parameter and its state buffers do not round up and down together (array 0 takes
// the hash as it is).
PFO_HD uint32_t rotate_bits(uint32_t r, int by) {
  return by == 0 ? r : (r << by) | (r >> (32 - by));
}
constexpr int rotation_of(std::size_t array) { return static_cast<int>((array * 11) % 32); }

}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
