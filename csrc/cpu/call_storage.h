// The host side every step function shares: the storage policies of a call, chosen from its
// dtype, rounding mode, GradScaler use and state store (storage.h), the check of its step
// counters, and the rule wrappers those options add (rules.h). Included by the per-ISA builds
// (kernels.cpp, adafactor.cpp), each time into that build's namespace.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "multi_tensor.h"
#include "pyfastopt/dispatch.h"
#include "pyfastopt/rules.h"
#include "pyfastopt/storage.h"

#ifndef PFO_ISA_NS
#error "PFO_ISA_NS must name the ISA namespace of this build"
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace host {

template <class F>
inline void with_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ---- storage of a call ----------------------------------------------------------------------

// The 8-bit block-quantised state as a Storage's S: each buffer takes the map of its sign
// (Block8<true> for the buffers a rule lists in kUnsignedBuffers).
struct Quantised {};

template <class S, bool Unsigned>
struct StateAt {
  using type = S;
};
template <bool Unsigned>
struct StateAt<Quantised, Unsigned> {
  using type = Block8<Unsigned>;
};

// The storage policies of one call: P for the parameter (array 0), G for the gradient (array 1),
// S for the state buffers (a policy, or Quantised), O for the rounded parameter copy written
// after a float32 master (Rounding::kMaster; void otherwise). AMP: GradScaler unscales the
// gradient in the step.
template <class P, class G, class S, class O = void, bool AMP = false>
struct Storage {
  using param = P;
  using grad = G;
  using state = S;
  using out = O;
  using compute = typename P::compute;
  static constexpr bool kCopy = !std::is_void_v<O>;
  static constexpr bool kAmp = AMP;
  // 16-bit gradients: the reference is torch's fused kernels (Adam's fused arithmetic order)
  static constexpr bool kLowPrecision = std::is_same_v<typename G::storage, uint16_t>;
};

// The policy of array I of rule R (R::kArrays arrays; the state buffers are arrays 2, 3, ...).
template <class St, class R, std::size_t I>
using PolicyFor = std::conditional_t<
    I == 0, typename St::param,
    std::conditional_t<
        I == 1, typename St::grad,
        std::conditional_t<
            St::kCopy && I + 1 == static_cast<std::size_t>(R::kArrays), typename St::out,
            typename StateAt<typename St::state,
                             ((R::kUnsignedBuffers >> (I < 2 ? 0 : I - 2)) & 1u) != 0>::type>>>;

template <class St, class R, std::size_t... I>
std::tuple<PolicyFor<St, R, I>...> policies_of(std::index_sequence<I...>);

template <class St, class R>
using Policies = decltype(policies_of<St, R>(std::make_index_sequence<R::kArrays>{}));

template <class St, class R, std::size_t... I>
constexpr std::array<std::size_t, sizeof...(I)> alignments(std::index_sequence<I...>) {
  return {alignof(typename PolicyFor<St, R, I>::storage)...};
}

[[noreturn]] inline void refuse(const char* what) {
  throw std::invalid_argument(std::string("pyfastopt: ") + what);
}

// Calls f(Storage<P, G, ...>) with the call's state store: S (torch's layout, or float32 beside a
// master copy) or a low-memory one (state_dtype; refused unless kLowMem).
template <class P, class G, class S, class O = void, bool AMP = false, bool kLowMem = true, class F>
void with_state(const Table& t, F&& f) {
  if constexpr (!kLowMem) {
    if (t.state != StateStore::kAsParam) refuse("this optimizer keeps its state in torch's layout");
    return f(Storage<P, G, S, O, AMP>{});
  } else {
    switch (t.state) {
      case StateStore::kAsParam:
        return f(Storage<P, G, S, O, AMP>{});
      case StateStore::kBf16:
        if constexpr (std::is_same_v<S, Bf16>) return f(Storage<P, G, S, O, AMP>{});
        return f(Storage<P, G, Bf16, O, AMP>{});
      case StateStore::kBf16Stochastic:
        return f(Storage<P, G, Bf16Stochastic, O, AMP>{});
      case StateStore::kBlock8:
        return f(Storage<P, G, Quantised, O, AMP>{});
    }
    refuse("unsupported state store code");
  }
}

// Calls f(Storage<...>{}) for the call's dtype, rounding, GradScaler use and state store. Only
// the algorithms torch lets GradScaler hand its scale to (fused SGD, Adagrad, Adam, AdamW)
// instantiate AMP; only those with low-memory state (kLowMem) instantiate its stores.
template <bool kAmpCapable, bool kLowMem = true, class F>
void with_storage(const Table& t, DType dtype, F&& f) {
  const bool amp = t.grad_scale != nullptr;
  if (amp && !kAmpCapable) refuse("this optimizer takes no GradScaler scale in its step");
  if (t.rounding != Rounding::kNearest && (dtype == DType::kFloat32 || dtype == DType::kFloat64)) {
    refuse("stochastic rounding and master weights apply to bfloat16/float16 parameters");
  }
  if (amp && t.rounding == Rounding::kStochastic) {
    refuse(
        "stochastic rounding with GradScaler is not supported (use float16 with master weights)");
  }
  if (amp && dtype == DType::kFloat64) refuse("float64 gradients are unscaled before the call");
  if (t.state == StateStore::kBlock8 &&
      (t.block < 16 || t.block > cpu::kMaxBlock || t.block % 16 != 0)) {
    refuse("the 8-bit state's block size must be a multiple of 16 between 16 and 4096");
  }
  const bool master = t.rounding == Rounding::kMaster;
  switch (dtype) {
    case DType::kFloat32:
      if constexpr (kAmpCapable) {
        if (amp)
          return with_state<Plain<float>, Plain<float>, Plain<float>, void, true, kLowMem>(t, f);
      }
      return with_state<Plain<float>, ReadOnly<Plain<float>>, Plain<float>, void, false, kLowMem>(
          t, f);
    case DType::kFloat64:
      if (t.state != StateStore::kAsParam) refuse("float64 parameters keep float64 state");
      return f(Storage<Plain<double>, ReadOnly<Plain<double>>, Plain<double>>{});
    case DType::kBFloat16:
      if constexpr (kAmpCapable) {
        if (amp && master) {
          return with_state<Plain<float>, Bf16, Plain<float>, WriteOnly<Bf16>, true, kLowMem>(t, f);
        }
        if (amp) return with_state<Bf16, Bf16, Bf16, void, true, kLowMem>(t, f);
      }
      if (master) {
        return with_state<Plain<float>, ReadOnly<Bf16>, Plain<float>, WriteOnly<Bf16>, false,
                          kLowMem>(t, f);
      }
      if (t.rounding == Rounding::kStochastic) {
        return with_state<Bf16Stochastic, ReadOnly<Bf16>, Bf16, void, false, kLowMem>(t, f);
      }
      return with_state<Bf16, ReadOnly<Bf16>, Bf16, void, false, kLowMem>(t, f);
    case DType::kFloat16:
      if (t.rounding == Rounding::kStochastic) refuse("stochastic rounding is for bfloat16");
      if constexpr (kAmpCapable) {
        if (amp && master) {
          return with_state<Plain<float>, Fp16, Plain<float>, WriteOnly<Fp16>, true, kLowMem>(t, f);
        }
        if (amp) return with_state<Fp16, Fp16, Fp16, void, true, kLowMem>(t, f);
      }
      if (master) {
        return with_state<Plain<float>, ReadOnly<Fp16>, Plain<float>, WriteOnly<Fp16>, false,
                          kLowMem>(t, f);
      }
      return with_state<Fp16, ReadOnly<Fp16>, Fp16, void, false, kLowMem>(t, f);
  }
  refuse("unsupported dtype code");
}

// GradScaler found an inf or NaN: torch's fused step returns before touching anything.
inline bool skipped(const Table& t) { return t.found_inf != nullptr && *t.found_inf == 1.0f; }

// Defence in depth: step counters must be non-null and aligned (the Python layer checked them).
inline void check_steps(const Table& t) {
  const std::size_t step_align = t.step_f64 ? alignof(double) : alignof(float);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t s = cpu::row_aux(t, r);
    if (s == 0 || s % static_cast<int64_t>(step_align) != 0) {
      throw std::invalid_argument("pyfastopt: invalid step counter address");
    }
  }
}

// The rule as the traversal applies it: with the master copy's extra array, with GradScaler's
// unscaling.
template <class St, class R>
auto compose(const Table& t, R rule) {
  using C = typename St::compute;
  if constexpr (St::kCopy && St::kAmp) {
    return Unscaled<WithCopy<R>>{WithCopy<R>{rule}, static_cast<C>(*t.grad_scale)};
  } else if constexpr (St::kCopy) {
    return WithCopy<R>{rule};
  } else if constexpr (St::kAmp) {
    return Unscaled<R>{rule, static_cast<C>(*t.grad_scale)};
  } else {
    return rule;
  }
}

}  // namespace host
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
