// Sixteen float32 lanes (AVX-512) for the rules' arithmetic: the overloads a rule's operator()
// needs when the traversal hands it a vector instead of one element (see multi_tensor.h). Each
// is the single IEEE instruction its scalar counterpart in rules.h compiles to, so a rule gives
// the same bits on either path; GCC's vector extensions supply + - * / and scalar broadcasts.
// Only the AVX-512 build of the kernels defines PFO_LANES.
#pragma once

#if defined(__AVX512F__) && defined(__FMA__) && defined(__F16C__) && !defined(__CUDACC__)
#define PFO_LANES 1

// GCC 12's AVX-512 intrinsics start some results from _mm512_undefined_*(), and when they are
// inlined -Wmaybe-uninitialized reports each use inside the header (GCC bug 105593, fixed in
// GCC 13): thousands of false warnings per kernel build. Only the header's own lines are exempt.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif

#include <cstdint>

#include "pyfastopt/macros.h"

#ifndef PFO_ISA_NS
#define PFO_ISA_NS generic
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {

using Lanes = __m512;      // 16 x float32
using LaneBits = __m512i;  // 16 x uint32
constexpr int kLanes = 16;

PFO_HD Lanes fmadd(Lanes a, Lanes b, Lanes c) { return _mm512_fmadd_ps(a, b, c); }
PFO_HD Lanes fmadd(float a, Lanes b, Lanes c) { return _mm512_fmadd_ps(_mm512_set1_ps(a), b, c); }

PFO_HD Lanes sqrt_of(Lanes x) { return _mm512_sqrt_ps(x); }

// `a` where the mask is all ones, `b` where it is zero (the mask is one per tensor)
PFO_HD Lanes pick(uint32_t mask, Lanes a, Lanes b) {
  const __m512i m = _mm512_set1_epi32(static_cast<int>(mask));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(a), m),
                                             _mm512_andnot_si512(m, _mm512_castps_si512(b))));
}

PFO_HD Lanes broadcast(float x) { return _mm512_set1_ps(x); }

PFO_HD Lanes abs_of(Lanes x) { return _mm512_abs_ps(x); }

// `a` where the comparison holds, else `b` (ordered: never where an operand is NaN)
PFO_HD Lanes select_gt(Lanes x, Lanes y, Lanes a, Lanes b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_GT_OQ), b, a);
}
PFO_HD Lanes select_lt(Lanes x, Lanes y, Lanes a, Lanes b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_LT_OQ), b, a);
}
PFO_HD Lanes select_eq(Lanes x, Lanes y, Lanes a, Lanes b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_EQ_OQ), b, a);
}

// torch.maximum: NaN in either operand propagates (`a` if a is NaN or a > b, else b)
PFO_HD Lanes max_nan(Lanes a, Lanes b) {
  const __mmask16 take_a =
      _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ);
  return _mm512_mask_blend_ps(take_a, b, a);
}
PFO_HD Lanes max_nan(Lanes a, float b) { return max_nan(a, _mm512_set1_ps(b)); }

}  // namespace PFO_ISA_NS
}  // namespace pyfastopt

#endif
