// The host side every step function shares, on the CPU (cpu/kernels.cpp and cpu/adafactor.cpp,
// one build per ISA) and in the CUDA module (cuda/launch.cuh): the storage policies of a call,
// chosen at compile time from its dtype, rounding mode, GradScaler use and state store
// (storage.h); the checks of its table (row width, addresses, step counters); and the rule
// wrappers those options add (rules.h). Host code, except compose_rule(), which the CUDA kernel
// also runs on the device: it decides which kernel runs, never what a kernel computes. Included
// into each build's namespace PFO_ISA_NS (see rules.h).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "pyfastopt/dispatch.h"
#include "pyfastopt/macros.h"
#include "pyfastopt/rules.h"
#include "pyfastopt/storage.h"

#ifndef PFO_ISA_NS
#define PFO_ISA_NS generic
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {  // see rules.h: one copy per build
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
// S for the state buffers (a policy, or Quantised), O for the parameter itself beside a float32
// master (Rounding::kMaster: read, compared with the master, written as it rounded; void
// otherwise). AMP: GradScaler unscales the gradient in the step.
template <class P, class G, class S, class O = void, bool AMP = false>
struct Storage {
  using param = P;
  using grad = G;
  using state = S;
  using out = O;
  using compute = typename P::compute;
  static constexpr bool kCopy = !std::is_void_v<O>;
  static constexpr bool kAmp = AMP;
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

// The largest block of the 8-bit state (cpu/multi_tensor.h keeps a stack buffer of this size).
constexpr int64_t kMaxStateBlock = 4096;

// The state stores (state_dtype) a step function instantiates: torch's layout only (the
// algorithms without low-memory state); also the 16-bit ones (the CUDA module, which has no
// 8-bit block traversal); every one, the 8-bit block state included (the CPU's elementwise
// kernels).
enum class StateStores { kTorchLayout, k16Bit, kAll };

// Calls f(Storage<P, G, ...>) with the call's state store: S (torch's layout, or float32 beside a
// master copy) or a low-memory one (state_dtype), as far as kStores allows.
template <class P, class G, class S, class O = void, bool AMP = false,
          StateStores kStores = StateStores::kAll, class F>
void with_state(const Table& t, F&& f) {
  if constexpr (kStores == StateStores::kTorchLayout) {
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
        if constexpr (kStores == StateStores::kAll) {
          return f(Storage<P, G, Quantised, O, AMP>{});
        } else {
          refuse("8-bit state (state_dtype='8bit') is not supported by this backend");
        }
    }
    refuse("unsupported state store code");
  }
}

// Calls f(Storage<...>{}) for the call's dtype, rounding, GradScaler use and state store. Only
// the algorithms torch lets GradScaler hand its scale to (fused SGD, Adagrad, Adam, AdamW)
// instantiate AMP; only the stores kStores names are instantiated.
template <bool kAmpCapable, StateStores kStores = StateStores::kAll, class F>
void with_storage(const Table& t, DType dtype, F&& f) {
  const bool amp = t.grad_scale != nullptr;
  if (amp && !kAmpCapable) refuse("this optimizer takes no GradScaler scale in its step");
  if (t.rounding != Rounding::kNearest && (dtype == DType::kFloat32 || dtype == DType::kFloat64)) {
    refuse("stochastic rounding and master weights apply to bfloat16/float16 parameters");
  }
  if (t.state == StateStore::kBlock8 &&
      (t.block < 16 || t.block > kMaxStateBlock || t.block % 16 != 0)) {
    refuse("the 8-bit state's block size must be a multiple of 16 between 16 and 4096");
  }
  constexpr StateStores S = kStores;
  // The CPU kernels (every store) also unscale float64 gradients, and bfloat16 ones under
  // stochastic rounding, in the step; the CUDA module's Python side divides float64 gradients
  // before its call (_cuda_rows.amp_scalars), and it refuses the other.
  constexpr bool kCpuAmp = kAmpCapable && kStores == StateStores::kAll;
  const bool master = t.rounding == Rounding::kMaster;
  switch (dtype) {
    case DType::kFloat32:
      if constexpr (kAmpCapable) {
        if (amp) return with_state<Plain<float>, Plain<float>, Plain<float>, void, true, S>(t, f);
      }
      return with_state<Plain<float>, ReadOnly<Plain<float>>, Plain<float>, void, false, S>(t, f);
    case DType::kFloat64:
      if (t.state != StateStore::kAsParam) refuse("float64 parameters keep float64 state");
      if constexpr (kCpuAmp) {  // unscaled in float64, as torch's fused float64 step
        if (amp) return f(Storage<Plain<double>, Plain<double>, Plain<double>, void, true>{});
      }
      if (amp) refuse("float64 gradients are unscaled before the call");
      return f(Storage<Plain<double>, ReadOnly<Plain<double>>, Plain<double>>{});
    case DType::kBFloat16:
      if constexpr (kAmpCapable) {
        if (amp && master) {
          return with_state<Plain<float>, Bf16, Plain<float>, Bf16, true, S>(t, f);
        }
        if (amp && t.rounding == Rounding::kStochastic) {
          if constexpr (kCpuAmp) return with_state<Bf16Stochastic, Bf16, Bf16, void, true, S>(t, f);
          refuse("stochastic rounding with GradScaler's scalars in the step: CPU parameters only");
        }
        if (amp) return with_state<Bf16, Bf16, Bf16, void, true, S>(t, f);
      }
      if (master) {
        return with_state<Plain<float>, ReadOnly<Bf16>, Plain<float>, Bf16, false, S>(t, f);
      }
      if (t.rounding == Rounding::kStochastic) {
        return with_state<Bf16Stochastic, ReadOnly<Bf16>, Bf16, void, false, S>(t, f);
      }
      return with_state<Bf16, ReadOnly<Bf16>, Bf16, void, false, S>(t, f);
    case DType::kFloat16:
      if (t.rounding == Rounding::kStochastic) refuse("stochastic rounding is for bfloat16");
      if constexpr (kAmpCapable) {
        if (amp && master) {
          return with_state<Plain<float>, Fp16, Plain<float>, Fp16, true, S>(t, f);
        }
        if (amp) return with_state<Fp16, Fp16, Fp16, void, true, S>(t, f);
      }
      if (master) {
        return with_state<Plain<float>, ReadOnly<Fp16>, Plain<float>, Fp16, false, S>(t, f);
      }
      return with_state<Fp16, ReadOnly<Fp16>, Fp16, void, false, S>(t, f);
  }
  refuse("unsupported dtype code");
}

// ---- the rule of a call ---------------------------------------------------------------------

// The rule as the traversal applies it: with the master copy's extra array, with GradScaler's
// unscaling by `scale` (read only when the call unscales). Host and device.
template <class St, class R>
PFO_HD auto compose_rule(R rule, typename St::compute scale) {
  if constexpr (St::kCopy && St::kAmp) {
    using Copy = WithCopy<R, typename St::out>;
    return Unscaled<Copy>{Copy{rule}, scale};
  } else if constexpr (St::kCopy) {
    return WithCopy<R, typename St::out>{rule};
  } else if constexpr (St::kAmp) {
    return Unscaled<R>{rule, scale};
  } else {
    static_cast<void>(scale);
    return rule;
  }
}

// The same with GradScaler's scale read from the table: CPU tables only (the CUDA module's
// grad_scale is a device address, which its kernel reads).
template <class St, class R>
auto compose(const Table& t, R rule) {
  using C = typename St::compute;
  return compose_rule<St>(rule, St::kAmp ? static_cast<C>(*t.grad_scale) : C(1));
}

// GradScaler found an inf or NaN: torch's fused step returns before touching anything. CPU
// tables only (the CUDA kernel reads its found_inf on the device).
inline bool skipped(const Table& t) { return t.found_inf != nullptr && *t.found_inf == 1.0f; }

// ---- checks of a table ----------------------------------------------------------------------

// Defence in depth: the Python layer validated every extent; here we still refuse a table whose
// shape does not fit the chosen rule, and null or misaligned addresses (host or device: only the
// integers are looked at). Step counters must be non-null and aligned.
inline void check_steps(const Table& t) {
  const std::size_t step_align = t.step_f64 ? alignof(double) : alignof(float);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t s = t.data[r * t.width + 1];
    if (s == 0 || s % static_cast<int64_t>(step_align) != 0) {
      throw std::invalid_argument("pyfastopt: invalid step counter address");
    }
  }
}

// Rows `[numel, aux, the K arrays of R, Q scale vectors (8-bit state), scalars]`: `scalars` 0-d
// state scalars and their flag word end each row when it is not 0 (cpu/row_scalars.h checks
// those).
template <class St, class R, std::size_t Q>
void check_table(const Table& t, bool has_step, int scalars = 0) {
  constexpr std::size_t K = R::kArrays;
  const int64_t tail = scalars > 0 ? scalars + 1 : 0;
  if (t.width != 2 + static_cast<int64_t>(K + Q) + tail) {
    throw std::invalid_argument("pyfastopt: table row width does not match the update rule");
  }
  constexpr auto align = alignments<St, R>(std::make_index_sequence<K>{});
  if (has_step) check_steps(t);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t* row = t.data + r * t.width;
    const int64_t n = row[0];
    if (n < 0) throw std::invalid_argument("pyfastopt: negative element count");
    if (n == 0) continue;
    for (std::size_t k = 0; k < K; ++k) {
      const int64_t a = row[2 + k];
      if (a == 0 || a % static_cast<int64_t>(align[k]) != 0) {
        throw std::invalid_argument("pyfastopt: null or misaligned tensor address");
      }
    }
    if constexpr (Q > 0) {
      for (std::size_t q = 0; q < Q; ++q) {
        const int64_t a = row[2 + K + q];
        if (a == 0 || a % static_cast<int64_t>(alignof(float)) != 0) {
          throw std::invalid_argument("pyfastopt: null or misaligned scale address");
        }
      }
    }
  }
}

}  // namespace host
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
