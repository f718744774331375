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
// `random` is 32 bits of an element-keyed hash (see `element_random`); only stochastic rounding
// reads it, and the traversal computes it only for a policy with `kRandom`. Every conversion is
// exact integer arithmetic (or the IEEE conversion instruction, which is the same function), the
// same on every SIMD build, on the CUDA build, and in the low-memory state of a later issue,
// whose block-quantised policies plug in here. No per-element branch survives: the few
// conditionals below are if-converted to selects, so every policy vectorises.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

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

// Stored as it is computed (float32, float64).
template <typename T>
struct Plain {
  using storage = T;
  using compute = T;
  static constexpr bool kRandom = false;
  static PFO_HD T load(const T* p) { return *p; }
  static PFO_HD void store(T* p, T v, uint32_t) { *p = v; }
};

// bfloat16 storage, float32 compute, rounded to nearest even on store.
struct Bf16 {
  using storage = uint16_t;
  using compute = float;
  static constexpr bool kRandom = false;
  static PFO_HD float load(const uint16_t* p) { return bf16_to_f32(*p); }
  static PFO_HD void store(uint16_t* p, float v, uint32_t) { *p = f32_to_bf16(v); }
};

// bfloat16 storage, stochastic rounding on store.
struct Bf16Stochastic {
  using storage = uint16_t;
  using compute = float;
  static constexpr bool kRandom = true;
  static PFO_HD float load(const uint16_t* p) { return bf16_to_f32(*p); }
  static PFO_HD void store(uint16_t* p, float v, uint32_t r) { *p = f32_to_bf16_stochastic(v, r); }
};

// float16 storage, float32 compute, rounded to nearest even on store.
struct Fp16 {
  using storage = uint16_t;
  using compute = float;
  static constexpr bool kRandom = false;
  static PFO_HD float load(const uint16_t* p) { return fp16_to_f32(*p); }
  static PFO_HD void store(uint16_t* p, float v, uint32_t) { *p = f32_to_fp16(v); }
};

// Read, never written (a gradient the step does not unscale).
template <class P>
struct ReadOnly : P {
  static constexpr bool kRandom = false;
  static PFO_HD void store(typename P::storage*, typename P::compute, uint32_t) {}
};

// Written, never read (a low-precision parameter rewritten from its float32 master copy).
template <class P>
struct WriteOnly : P {
  static PFO_HD typename P::compute load(const typename P::storage*) {
    return typename P::compute(0);
  }
};

}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
