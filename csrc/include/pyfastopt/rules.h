// The per-element update rules, one functor per algorithm, shared by every backend.
//
// Each rule mirrors torch 2.13's single-tensor (for-loop) implementation operation by operation:
// the same order, the same scalar casts (a Python scalar becomes the tensor's dtype before use)
// and fused multiply-adds exactly where ATen's vectorised kernels use them (`add(x, alpha=a)` and
// `lerp`). Step-dependent scalars are computed once per tensor on the host, in double, as torch
// computes them in Python. Variants that change the arrays (momentum, amsgrad, centered) are
// template parameters; the rest are chosen per tensor:
// `maximize` multiplies by -1 or 1, weight decay and Nesterov are selects (`choose`), Adam's
// decoupled decay multiplies by a factor that is exactly 1 when it is off (`times`). Element by
// element these are bit masks, without a branch; on 16 lanes, one branch per vector that goes
// the same way for the whole tensor. All exact, and they keep the number of instantiations (one
// per storage mode and ISA) small.
//
// A rule computes in one type T (`value_type`). How each array is stored (float32, float64,
// bfloat16, float16, a float32 master copy) is the traversal's business (storage.h). Its
// operator() takes the elements as V: T itself, or 16 lanes of T (lanes.h), where the traversal
// converts 16-bit storage with the CPU's own instructions; the operations are the same IEEE
// operations either way, so both give the same bits.
//
// The constructors are also device functions (PFO_HOST_DEVICE): the CUDA kernel builds each rule
// on the device, from the step counter there, with the same code (cuda/launch.cuh).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "pyfastopt/lanes.h"
#include "pyfastopt/macros.h"
#include "pyfastopt/params.h"

// Every build of the rules (one per CPU ISA, one for CUDA) lives in its own inline namespace:
// identical template names compiled with different -m flags must never be merged by the linker.
#ifndef PFO_ISA_NS
#define PFO_ISA_NS generic
#endif

namespace pyfastopt {
inline namespace PFO_ISA_NS {

// a*b + c, fused where torch's vectorised CPU kernels fuse it (AVX2/AVX-512 builds have FMA;
// the baseline build, like ATen's DEFAULT capability, multiplies then adds). ATen fuses
// `add(x, alpha=a)` as fma(a, x, self), `addcmul(t1, t2, value=v)` as fma(v*t1, t2, self) and
// lerp; `addcdiv` and scalar division are not fused.
template <typename T>
PFO_HD T fmadd(T a, T b, T c) {
#if defined(__CUDACC__) || defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// A choice made once per tensor (a flag of the rule), applied per element as bit masks: `a` where
// the mask is all ones, `b` where it is zero. Exact, and vectorisable whatever the storage type
// (GCC does not vectorise a select on a scalar flag once 16-bit arrays set the vector length).
template <typename T>
using MaskOf = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;

template <typename T>
PFO_HD MaskOf<T> mask_of(bool flag) {
  return flag ? ~MaskOf<T>(0) : MaskOf<T>(0);
}

template <typename T>
PFO_HD T pick(MaskOf<T> mask, T a, T b) {
  MaskOf<T> x, y;
  std::memcpy(&x, &a, sizeof x);
  std::memcpy(&y, &b, sizeof y);
  const MaskOf<T> r = (x & mask) | (y & ~mask);
  T out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

// A per-tensor choice, made where elements are computed: `a()` where the mask is all ones, else
// `b()`. Element by element both are computed and the mask selects (vectorisable); on 16 lanes
// one branch per vector, the same for every vector of the tensor, computes only the one taken.
template <typename T, typename V, typename A, typename B>
PFO_HD V choose(MaskOf<T> mask, A&& a, B&& b) {
  if constexpr (std::is_same_v<V, T>) {
    return pick(mask, a(), b());
  } else {
    return mask ? a() : b();
  }
}

// x * f for a per-tensor factor that is exactly 1 unless an option is on (maximize's sign,
// AdamW's decay): on 16 lanes the multiplication is skipped when f is 1. Multiplying by 1 only
// quiets a signalling NaN, which the rule's next operation quiets anyway (same bits).
template <typename T, typename V>
PFO_HD V times(V x, T f) {
  if constexpr (std::is_same_v<V, T>) {
    return x * f;
  } else {
    return f == T(1) ? x : x * f;
  }
}

// torch.maximum: NaN in either operand propagates.
template <typename T>
PFO_HD T max_nan(T a, T b) {
  return (a != a) ? a : ((a > b) ? a : b);
}

template <typename T>
PFO_HD T sqrt_of(T x) {
  return std::sqrt(x);
}

template <typename T>
PFO_HD T abs_of(T x) {
  return std::fabs(x);
}

// A per-tensor constant as the rule's element type: T itself, or 16 lanes of it (lanes.h).
template <typename V, typename T>
PFO_HD V splat(T x) {
  if constexpr (std::is_same_v<V, T>) {
    return x;
  } else {
    return broadcast(x);
  }
}

// Element-wise choices that depend on the data (Rprop's sign logic): `a` where the comparison
// holds, else `b`; a comparison with NaN does not hold. Selects, vectorised as blends; lanes.h
// has the same three for 16 lanes.
template <typename T>
PFO_HD T select_gt(T x, T y, T a, T b) {
  return x > y ? a : b;
}
template <typename T>
PFO_HD T select_lt(T x, T y, T a, T b) {
  return x < y ? a : b;
}
template <typename T>
PFO_HD T select_eq(T x, T y, T a, T b) {
  return x == y ? a : b;
}

// torch.sign: 1, -1, or 0 for zeros of either sign and NaN.
template <typename T, typename V>
PFO_HD V signum(V x) {
  const V zero = splat<V>(T(0)), one = splat<V>(T(1));
  return select_gt(x, zero, one, zero) - select_lt(x, zero, one, zero);
}

// x.clamp_(lo, hi) as ATen computes it, min(max(x, lo), hi): a NaN x stays NaN.
template <typename T, typename V>
PFO_HD V clamp_of(V x, T lo, T hi) {
  const V l = splat<V>(lo), h = splat<V>(hi);
  const V r = select_lt(x, l, l, x);
  return select_lt(h, r, h, r);
}

// torch.lerp(start, end, w) for a scalar weight, as ATen's vectorised CPU kernel computes it.
template <typename T>
struct Lerp {
  T coeff;
  MaskOf<T> small;
  PFO_HOST_DEVICE explicit Lerp(double weight) {
    const T w = static_cast<T>(weight);
    const bool is_small = std::fabs(w) < T(0.5);
    small = mask_of<T>(is_small);
    coeff = is_small ? w : w - T(1);
  }
  template <typename V>
  PFO_HD V operator()(V start, V end) const {
    return fmadd(coeff, end - start, pick(small, start, end));
  }
};

// torch: grad = -grad if maximize; grad = grad.add(param, alpha=weight_decay) if weight_decay != 0
// (an fma in the for-loop's vectorised add; torch's fused Adam writes `grad += param * wd`, which
// its FMA builds contract to the same fma). `l2` is all ones when the decay applies: a select,
// not a template flag, so each rule is built once per storage mode (the decayed value is computed
// either way; the choice is exact).
template <typename T, typename V>
PFO_HD V prepare_grad(V g, V p, T wd, T sign, MaskOf<T> l2) {
  g = times(g, sign);
  return choose<T, V>(l2, [&] { return fmadd(wd, p, g); }, [&] { return g; });
}

// torch's for-loop where lr is a 0-d float32 tensor (`f32`): `lr / d` and `1 - lr * wd` are
// float32 tensor operations, each Python float cast to float32 first; the result reaches the
// update as a Python number (`value=-step_size`) or a 0-d tensor, exactly. Otherwise (a float lr,
// or a float64 tensor) double arithmetic, as Python's.
PFO_HOST_DEVICE inline double lr_quotient(double lr, double d, bool f32) {
  if (!f32) return lr / d;
  const float q = static_cast<float>(lr) / static_cast<float>(d);
  return static_cast<double>(q);
}
PFO_HOST_DEVICE inline double lr_decay_factor(double lr, double wd, bool f32) {
  if (!f32) return 1.0 - lr * wd;
  const float decay = static_cast<float>(lr) * static_cast<float>(wd);
  const float factor = 1.0f - decay;
  return static_cast<double>(factor);
}

template <typename T>
PFO_HD T sign_of(bool maximize) {
  return maximize ? T(-1) : T(1);
}

// SGD. Arrays: p, g[, momentum_buffer]. `first` marks a tensor whose buffer torch would create by
// cloning the gradient (the state held no momentum_buffer before this step).
template <typename T, bool MOMENTUM>
struct SgdRule {
  using value_type = T;
  static constexpr int kArrays = MOMENTUM ? 3 : 2;
  static constexpr unsigned kUnsignedBuffers = 0;  // momentum_buffer is signed
  T sign, neg_lr, wd, momentum, one_minus_dampening;
  MaskOf<T> first, nesterov, l2;

  PFO_HOST_DEVICE SgdRule(const SgdParams& hp, bool first_step)
      : sign(sign_of<T>(hp.maximize)),
        neg_lr(static_cast<T>(-hp.lr)),
        wd(static_cast<T>(hp.weight_decay)),
        momentum(static_cast<T>(hp.momentum)),
        one_minus_dampening(static_cast<T>(1.0 - hp.dampening)),
        first(mask_of<T>(first_step)),
        nesterov(mask_of<T>(hp.nesterov)),
        l2(mask_of<T>(hp.weight_decay != 0.0)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0) const {
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    p = fmadd(neg_lr, g, p);
  }

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& buf) const {
    V g = prepare_grad<T>(g0, p, wd, sign, l2);
    const V b = choose<T, V>(
        first, [&] { return g; }, [&] { return fmadd(one_minus_dampening, g, buf * momentum); });
    buf = b;
    g = choose<T, V>(nesterov, [&] { return fmadd(momentum, b, g); }, [&] { return b; });
    p = fmadd(neg_lr, g, p);
  }
};

// Adagrad. Arrays: p, g, sum. clr = lr / (1 + (step - 1) * lr_decay), in double.
template <typename T>
struct AdagradRule {
  using value_type = T;
  static constexpr int kArrays = 3;
  static constexpr unsigned kUnsignedBuffers = 1;  // sum
  T sign, neg_clr, wd, eps;
  MaskOf<T> l2;

  PFO_HOST_DEVICE AdagradRule(const AdagradParams& hp, double step)
      : sign(sign_of<T>(hp.maximize)),
        neg_clr(static_cast<T>(-lr_quotient(hp.lr, 1.0 + (step - 1.0) * hp.lr_decay, hp.lr_f32))),
        wd(static_cast<T>(hp.weight_decay)),
        eps(static_cast<T>(hp.eps)),
        l2(mask_of<T>(hp.weight_decay != 0.0)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& sum) const {
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    const V s = fmadd(g, g, sum);  // state_sum.addcmul_(grad, grad, value=1)
    sum = s;
    const V std_ = sqrt_of(s) + eps;
    p = p + (neg_clr * g) / std_;  // param.addcdiv_(grad, std, value=-clr)
  }
};

// Adadelta. Arrays: p, g, square_avg, acc_delta.
template <typename T>
struct AdadeltaRule {
  using value_type = T;
  static constexpr int kArrays = 4;
  static constexpr unsigned kUnsignedBuffers = 3;  // square_avg, acc_delta
  T sign, neg_lr, wd, rho, one_minus_rho, eps;
  MaskOf<T> l2;

  PFO_HOST_DEVICE explicit AdadeltaRule(const AdadeltaParams& hp)
      : sign(sign_of<T>(hp.maximize)),
        neg_lr(static_cast<T>(-hp.lr)),
        wd(static_cast<T>(hp.weight_decay)),
        rho(static_cast<T>(hp.rho)),
        one_minus_rho(static_cast<T>(1.0 - hp.rho)),
        eps(static_cast<T>(hp.eps)),
        l2(mask_of<T>(hp.weight_decay != 0.0)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& sq, V& acc) const {
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    const V s = fmadd(one_minus_rho * g, g, sq * rho);
    sq = s;
    const V std_ = sqrt_of(s + eps);
    const V delta = (sqrt_of(acc + eps) / std_) * g;
    acc = fmadd(one_minus_rho * delta, delta, acc * rho);
    p = fmadd(neg_lr, delta, p);
  }
};

// RMSprop. Arrays: p, g, square_avg[, grad_avg][, momentum_buffer].
template <typename T, bool CENTERED, bool MOMENTUM>
struct RmspropRule {
  using value_type = T;
  static constexpr int kArrays = 3 + (CENTERED ? 1 : 0) + (MOMENTUM ? 1 : 0);
  static constexpr unsigned kUnsignedBuffers = 1;  // square_avg (grad_avg, momentum: signed)
  T sign, neg_lr, wd, alpha, one_minus_alpha, eps, momentum;
  Lerp<T> lerp;
  MaskOf<T> l2;

  PFO_HOST_DEVICE explicit RmspropRule(const RmspropParams& hp)
      : sign(sign_of<T>(hp.maximize)),
        neg_lr(static_cast<T>(-hp.lr)),
        wd(static_cast<T>(hp.weight_decay)),
        alpha(static_cast<T>(hp.alpha)),
        one_minus_alpha(static_cast<T>(1.0 - hp.alpha)),
        eps(static_cast<T>(hp.eps)),
        momentum(static_cast<T>(hp.momentum)),
        lerp(1.0 - hp.alpha),
        l2(mask_of<T>(hp.weight_decay != 0.0)) {}

  // Shared by every arity: returns the new square_avg-based denominator pieces.
  template <typename V>
  PFO_HD V square(V& sq, V g) const {
    const V s = fmadd(one_minus_alpha * g, g, sq * alpha);
    sq = s;
    return s;
  }
  template <typename V>
  PFO_HD V centered_avg(V s, V& ga, V g) const {
    const V a = lerp(ga, g);
    ga = a;
    return sqrt_of(fmadd(-a, a, s)) + eps;
  }
  template <typename V>
  PFO_HD void plain_update(V& p, V g, V avg) const {
    p = p + (neg_lr * g) / avg;
  }
  template <typename V>
  PFO_HD void momentum_update(V& p, V& buf, V g, V avg) const {
    const V b = buf * momentum + g / avg;
    buf = b;
    p = fmadd(neg_lr, b, p);
  }

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& sq) const {
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    plain_update(p, g, sqrt_of(square(sq, g)) + eps);
  }
  // centered xor momentum
  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& sq, V& extra) const {
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    const V s = square(sq, g);
    if constexpr (CENTERED) {
      plain_update(p, g, centered_avg(s, extra, g));
    } else {
      momentum_update(p, extra, g, sqrt_of(s) + eps);
    }
  }
  // centered and momentum
  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& sq, V& ga, V& buf) const {
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    momentum_update(p, buf, g, centered_avg(square(sq, g), ga, g));
  }
};

// The first half of the Adam family's step (Adam, AdamW, NAdam, RAdam), as torch's
// single-tensor functions compute it: the decoupled decay, the gradient (maximize's sign, the L2
// term), both moments. The decay is chosen per tensor, not per template: L2 through `l2` (see
// prepare_grad), the decoupled decay as a multiplication of the parameter by `decay_factor`,
// which is exactly 1 (an exact identity) when it does not apply. The second moment is
// fma((1 - beta2) * g, g, v * beta2) in torch's for-loop (`mul_` then `addcmul_`) and in its fused
// kernel alike: the fused kernel's `v * beta2 + (1 - beta2) * g * g` is contracted to that fma in
// ATen's AVX2 and AVX-512 builds, and computed unfused in its DEFAULT build, as `fmadd` is here.
template <typename T>
struct AdamMoments {
  T sign, wd, decay_factor, beta2, one_minus_beta2;
  Lerp<T> lerp;
  MaskOf<T> l2;

  // P: AdamParams, NadamParams or RadamParams (lr, beta1, beta2, weight_decay, maximize,
  // decoupled)
  template <class P>
  PFO_HOST_DEVICE explicit AdamMoments(const P& hp)
      : sign(sign_of<T>(hp.maximize)),
        wd(static_cast<T>(hp.weight_decay)),
        decay_factor(hp.decoupled && hp.weight_decay != 0.0
                         ? static_cast<T>(lr_decay_factor(hp.lr, hp.weight_decay, hp.lr_f32))
                         : T(1)),
        beta2(static_cast<T>(hp.beta2)),
        one_minus_beta2(static_cast<T>(1.0 - hp.beta2)),
        lerp(1.0 - hp.beta1),
        l2(mask_of<T>(!hp.decoupled && hp.weight_decay != 0.0)) {}

  // decays p, updates m (exp_avg) and v (exp_avg_sq); returns the gradient used
  template <typename V>
  PFO_HD V operator()(V& p, V g0, V& m, V& v) const {
    p = times(p, decay_factor);
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    m = lerp(m, g);
    v = fmadd(one_minus_beta2 * g, g, v * beta2);
    return g;
  }
};

// Adam and AdamW. Arrays: p, g, exp_avg, exp_avg_sq[, max_exp_avg_sq]. The same operations as
// torch's for-loop and as its fused CPU kernel (`_fused_adam`, the reference for bfloat16/float16
// storage, which computes in float32 and rounds once per store).
template <typename T, bool AMSGRAD>
struct AdamRule {
  using value_type = T;
  static constexpr int kArrays = AMSGRAD ? 5 : 4;
  static constexpr unsigned kUnsignedBuffers = AMSGRAD ? 6 : 2;  // exp_avg_sq, max_exp_avg_sq
  AdamMoments<T> moments;
  T bc2_sqrt, eps, neg_step_size;

  PFO_HOST_DEVICE AdamRule(const AdamParams& hp, double step)
      : moments(hp),
        bc2_sqrt(static_cast<T>(std::pow(1.0 - std::pow(hp.beta2, step), 0.5))),
        eps(static_cast<T>(hp.eps)),
        neg_step_size(
            static_cast<T>(-lr_quotient(hp.lr, 1.0 - std::pow(hp.beta1, step), hp.lr_f32))) {}

  template <typename V>
  PFO_HD void update(V& p, V m, V s) const {
    const V denom = sqrt_of(s) / bc2_sqrt + eps;
    p = p + (neg_step_size * m) / denom;
  }

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& m, V& v) const {
    moments(p, g0, m, v);
    update(p, m, v);
  }
  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& m, V& v, V& vmax) const {
    moments(p, g0, m, v);
    const V s = max_nan(vmax, v);
    vmax = s;
    update(p, m, s);
  }
};

// NAdam. Arrays: p, g, exp_avg, exp_avg_sq. The momentum cache mu_t and the running product
// mu_product (a 0-d state tensor the host advances before the rule is built: `mu_product *= mu`
// in its own dtype) give the values of torch's two addcdiv_ calls, computed in double.

// mu at `step` and at the next step: beta1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
struct NadamMomenta {
  double mu, mu_next;
};
inline NadamMomenta nadam_momenta(const NadamParams& hp, double step) {
  return {hp.beta1 * (1.0 - 0.5 * std::pow(0.96, step * hp.momentum_decay)),
          hp.beta1 * (1.0 - 0.5 * std::pow(0.96, (step + 1.0) * hp.momentum_decay))};
}

// torch's addcdiv_ values. Their divisors are Python floats: the caller refuses a zero one
// (ZeroDivisionError) before the rule is built. A float32 tensor lr: `-lr * x` is a float32
// product, then a float32 quotient (lr_quotient).
struct NadamCoefficients {
  double grad, avg;
};
inline NadamCoefficients nadam_coefficients(const NadamParams& hp, double step, double mu_product) {
  const NadamMomenta m = nadam_momenta(hp, step);
  if (hp.lr_f32) {
    const float grad = static_cast<float>(-hp.lr) * static_cast<float>(1.0 - m.mu);
    const float avg = static_cast<float>(-hp.lr) * static_cast<float>(m.mu_next);
    return {lr_quotient(grad, 1.0 - mu_product, true),
            lr_quotient(avg, 1.0 - mu_product * m.mu_next, true)};
  }
  return {-hp.lr * (1.0 - m.mu) / (1.0 - mu_product),
          (-hp.lr * m.mu_next) / (1.0 - mu_product * m.mu_next)};
}

template <typename T>
struct NadamRule {
  using value_type = T;
  static constexpr int kArrays = 4;
  static constexpr unsigned kUnsignedBuffers = 2;  // exp_avg_sq
  AdamMoments<T> moments;
  T bc2, eps, grad_coeff, avg_coeff;

  // mu_product: its value after this step's update, as torch reads it (`.item()`)
  NadamRule(const NadamParams& hp, double step, double mu_product)
      : NadamRule(hp, step, nadam_coefficients(hp, step, mu_product)) {}
  NadamRule(const NadamParams& hp, double step, const NadamCoefficients& c)
      : moments(hp),
        bc2(static_cast<T>(1.0 - std::pow(hp.beta2, step))),
        eps(static_cast<T>(hp.eps)),
        grad_coeff(static_cast<T>(c.grad)),
        avg_coeff(static_cast<T>(c.avg)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& m, V& v) const {
    const V g = moments(p, g0, m, v);
    const V denom = sqrt_of(v / bc2) + eps;
    p = p + (grad_coeff * g) / denom;  // param.addcdiv_(grad, denom, value=...)
    p = p + (avg_coeff * m) / denom;   // param.addcdiv_(exp_avg, denom, value=...)
  }
};

// RAdam. Arrays: p, g, exp_avg, exp_avg_sq. Whether the variance is rectified (rho_t > 5)
// depends on the step only: a per-tensor choice, not a per-element branch.

// torch's host scalars at `step`, Python floats. Where torch would divide by zero (beta2 = 1) or
// take `** 0.5` of a negative number (betas outside [0, 1)) the caller refuses the step first.
struct RadamRectification {
  double bc2, rect_squared;
  bool on;  // rho_t > 5
};
inline RadamRectification radam_rectification(const RadamParams& hp, double step) {
  const double bc2 = 1.0 - std::pow(hp.beta2, step);
  const double rho_inf = 2.0 / (1.0 - hp.beta2) - 1.0;
  const double rho_t = rho_inf - 2.0 * step * std::pow(hp.beta2, step) / bc2;
  const bool on = rho_t > 5.0;
  const double sq =
      on ? (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
         : 0.0;
  return {bc2, sq, on};
}

template <typename T>
struct RadamRule {
  using value_type = T;
  static constexpr int kArrays = 4;
  static constexpr unsigned kUnsignedBuffers = 2;  // exp_avg_sq
  AdamMoments<T> moments;
  T bc1, lr, bc2_sqrt, eps, rect;
  MaskOf<T> rectified;

  RadamRule(const RadamParams& hp, double step)
      : RadamRule(hp, step, radam_rectification(hp, step)) {}
  RadamRule(const RadamParams& hp, double step, const RadamRectification& r)
      : moments(hp),
        bc1(static_cast<T>(1.0 - std::pow(hp.beta1, step))),
        lr(static_cast<T>(hp.lr)),
        bc2_sqrt(static_cast<T>(r.on ? std::pow(r.bc2, 0.5) : 0.0)),
        eps(static_cast<T>(hp.eps)),
        rect(static_cast<T>(r.on ? std::pow(r.rect_squared, 0.5) : 0.0)),
        rectified(mask_of<T>(r.on)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& m, V& v) const {
    moments(p, g0, m, v);
    const V s = v;
    const V scaled = (m / bc1) * lr;  // bias_corrected_exp_avg * lr
    // * (bias_correction2 ** 0.5 / (sqrt(v) + eps)), which torch computes as a reciprocal
    // times the scalar, * rect; then param.add_(update, alpha=-1)
    const V update = choose<T, V>(
        rectified, [&] { return (scaled * ((T(1) / (sqrt_of(s) + eps)) * bc2_sqrt)) * rect; },
        [&] { return scaled; });
    p = p - update;
  }
};

// Adamax. Arrays: p, g, exp_avg, exp_inf. clr = lr / (1 - beta1^step), in double.
template <typename T>
struct AdamaxRule {
  using value_type = T;
  static constexpr int kArrays = 4;
  static constexpr unsigned kUnsignedBuffers = 2;  // exp_inf
  T sign, wd, beta2, eps, neg_clr;
  Lerp<T> lerp;
  MaskOf<T> l2;

  AdamaxRule(const AdamaxParams& hp, double step)
      : sign(sign_of<T>(hp.maximize)),
        wd(static_cast<T>(hp.weight_decay)),
        beta2(static_cast<T>(hp.beta2)),
        eps(static_cast<T>(hp.eps)),
        neg_clr(static_cast<T>(-lr_quotient(hp.lr, 1.0 - std::pow(hp.beta1, step), hp.lr_f32))),
        lerp(1.0 - hp.beta1),
        l2(mask_of<T>(hp.weight_decay != 0.0)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& m, V& u) const {
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    const V avg = lerp(m, g);
    m = avg;
    // torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
    const V inf_norm = max_nan(u * beta2, abs_of(g) + eps);
    u = inf_norm;
    p = p + (neg_clr * avg) / inf_norm;  // param.addcdiv_(exp_avg, exp_inf, value=-clr)
  }
};

// ASGD. Arrays: p, g, ax. eta and mu are 0-d state tensors whose values before this step the
// host reads (and then replaces with the next step's); mu != 1 averages, else ax copies p.

// The values torch gives eta and mu after `step`, in double (before torch.as_tensor rounds them
// to the default dtype): lr / (1 + lambd * lr * step) ** alpha and 1 / max(1, step - t0).
// The caller refuses the step where Python would raise (a zero divisor) or compute a complex eta
// (a negative base to a non-integer alpha).
inline double asgd_eta_base(const AsgdParams& hp, double step) {
  return 1.0 + hp.lambd * hp.lr * step;
}
inline double asgd_eta(const AsgdParams& hp, double step) {
  return hp.lr / std::pow(asgd_eta_base(hp, step), hp.alpha);
}
inline double asgd_mu(const AsgdParams& hp, double step) {
  return step - hp.t0 > 1.0 ? 1.0 / (step - hp.t0) : 1.0;
}

template <typename T>
struct AsgdRule {
  using value_type = T;
  static constexpr int kArrays = 3;
  static constexpr unsigned kUnsignedBuffers = 0;  // ax is signed
  T sign, wd, decay, neg_eta, mu;
  MaskOf<T> l2, average;

  AsgdRule(const AsgdParams& hp, double eta, double mu_value)
      : sign(sign_of<T>(hp.maximize)),
        wd(static_cast<T>(hp.weight_decay)),
        decay(static_cast<T>(1.0 - hp.lambd * eta)),
        neg_eta(static_cast<T>(-eta)),
        mu(static_cast<T>(mu_value)),
        l2(mask_of<T>(hp.weight_decay != 0.0)),
        average(mask_of<T>(mu_value != 1.0)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& ax) const {
    const V g = prepare_grad<T>(g0, p, wd, sign, l2);
    const V q = fmadd(neg_eta, g, p * decay);  // param.mul_(1 - lambd * eta).add_(grad, -eta)
    p = q;
    ax = choose<T, V>(average, [&] { return ax + (q - ax) * mu; }, [&] { return q; });
  }
};

// Rprop. Arrays: p, g, prev, step_size. The sign logic is element-wise (selects): torch's
// sign[sign > 0] = etaplus; sign[sign < 0] = etaminus; sign[sign == 0] = 1, in that order.
template <typename T>
struct RpropRule {
  using value_type = T;
  static constexpr int kArrays = 4;
  static constexpr unsigned kUnsignedBuffers = 2;  // step_size (prev is signed)
  T sign, etaminus, etaplus, step_size_min, step_size_max;

  explicit RpropRule(const RpropParams& hp)
      : sign(sign_of<T>(hp.maximize)),
        etaminus(static_cast<T>(hp.etaminus)),
        etaplus(static_cast<T>(hp.etaplus)),
        step_size_min(static_cast<T>(hp.step_size_min)),
        step_size_max(static_cast<T>(hp.step_size_max)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& prev, V& step_size) const {
    const V g = times(g0, sign);
    const V zero = splat<V>(T(0));
    V f = signum<T>(g * prev);
    f = select_gt(f, zero, splat<V>(etaplus), f);
    f = select_lt(f, zero, splat<V>(etaminus), f);
    f = select_eq(f, zero, splat<V>(T(1)), f);
    const V size = clamp_of(step_size * f, step_size_min, step_size_max);
    step_size = size;
    const V kept = select_eq(f, splat<V>(etaminus), zero, g);  // grad[sign == etaminus] = 0
    p = fmadd(T(-1) * signum<T>(kept), size, p);  // param.addcmul_(grad.sign(), step_size, -1)
    prev = kept;
  }
};

// Adafactor (torch's variant, torch.optim.Adafactor): the element-wise part of a step. The
// reductions it needs (the parameter's norm, the row and column means of g*g, the update's norm)
// are the reduction passes' (cpu/adafactor.cpp), which set `coef`, torch's `alpha=` of the final
// add (-alpha / denom). Array 2 is `variance` for vectors (read and written); for a factored
// tensor it holds the variance estimate `factored(row, col, rmean)` of each element (read only),
// which those passes compute from the new row and column factors:
//   v = lerp(variance, g*g, 1 - beta2_t)   or   v = (row * col) / rmean
//   u = rsqrt(max(v, eps1^2)) * g          (ATen's rsqrt: 1 / sqrt)
//   p = p * (1 - lr*wd);  p = p + coef*u   (the decay only when wd != 0: factor exactly 1)
template <typename T, bool FACTORED>
struct AdafactorRule {
  using value_type = T;
  static constexpr int kArrays = 3;
  static constexpr unsigned kUnsignedBuffers = 1;  // variance
  T sign, decay_factor, eps_sq, coef;
  Lerp<T> lerp;

  AdafactorRule(const AdafactorParams& hp, double one_minus_beta2_t)
      : sign(sign_of<T>(hp.maximize)),
        decay_factor(hp.weight_decay != 0.0 ? static_cast<T>(1.0 - hp.lr * hp.weight_decay) : T(1)),
        eps_sq(static_cast<T>(hp.eps1 * hp.eps1)),
        coef(0),
        lerp(one_minus_beta2_t) {}

  // torch: (row_var @ col_var).div_(row_var.mean(dim=-2).clamp_(min=eps1)), one element
  PFO_HD static T factored(T row, T col, T rmean) { return (row * col) / rmean; }

  template <typename V>
  PFO_HD V grad(V g0) const {
    return times(g0, sign);
  }
  // the variance estimate from array 2's value `s`
  template <typename V>
  PFO_HD V estimate(V s, V g) const {
    if constexpr (FACTORED) {
      return s;
    } else {
      return lerp(s, g * g);
    }
  }
  template <typename V>
  PFO_HD V update(V v, V g) const {
    return (T(1) / sqrt_of(max_nan(v, eps_sq))) * g;
  }

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& s) const {
    const V g = grad(g0);
    const V v = estimate(s, g);
    if constexpr (!FACTORED) s = v;
    p = fmadd(coef, update(v, g), times(p, decay_factor));
  }
};

// SparseAdam (torch.optim.SparseAdam): Adam at the positions a coalesced sparse gradient lists,
// as torch.optim._functional.sparse_adam computes it. Arrays: p, g (the gradient's value at the
// position), exp_avg, exp_avg_sq. `neg_step_size` is torch's `-step_size`, computed by the caller
// as torch computes it (in the type of a tensor lr, if lr is one).
template <typename T>
struct SparseAdamRule {
  using value_type = T;
  static constexpr int kArrays = 4;
  static constexpr unsigned kUnsignedBuffers = 2;  // exp_avg_sq
  T sign, one_minus_beta1, one_minus_beta2, eps, neg_step_size;

  SparseAdamRule(const SparseAdamParams& hp, double neg_step)
      : sign(sign_of<T>(hp.maximize)),
        one_minus_beta1(static_cast<T>(1.0 - hp.beta1)),
        one_minus_beta2(static_cast<T>(1.0 - hp.beta2)),
        eps(static_cast<T>(hp.eps)),
        neg_step_size(static_cast<T>(neg_step)) {}

  template <typename V>
  PFO_HD void operator()(V& p, const V& g0, V& m, V& v) const {
    const V g = times(g0, sign);
    const V m_old = m, v_old = v;
    const V dm = (g - m_old) * one_minus_beta1;  // grad.sub(old).mul_(1 - beta1)
    const V dv = (g * g - v_old) * one_minus_beta2;
    m = m_old + dm;  // exp_avg.add_(sparse(dm))
    v = v_old + dv;
    const V numer = dm + m_old;
    const V denom = sqrt_of(dv + v_old) + eps;
    p = p + (numer / denom) * neg_step_size;  // param.add_(sparse(-step_size * numer / denom))
  }
};

// ---- wrappers the traversal composes with any rule -------------------------------------------

// torch.amp.GradScaler inside the step, as torch's fused kernels do it: the gradient (array 1) is
// divided by the scale in the compute type, the rule uses that unrounded value, and the traversal
// stores it back to the gradient rounded once.
template <class Rule>
struct Unscaled {
  using value_type = typename Rule::value_type;
  static constexpr int kArrays = Rule::kArrays;
  static constexpr unsigned kUnsignedBuffers = Rule::kUnsignedBuffers;
  Rule rule;
  value_type scale;

  template <class V, class... S>
  PFO_HD void operator()(V& p, V& g, S&... s) const {
    g = g / scale;
    rule(p, g, s...);
  }
};

// One more array after the rule's own: the parameter, written as a copy of array 0 (the float32
// master weight) that the traversal rounds to the parameter's dtype through its policy `Out`.
// Before the rule, an element of the parameter that is not its master rounded was written by
// something else since the last step (`p.data.clamp_()`, `p.data.copy_()`: writes that autograd's
// version counter does not see) and re-seeds its master, so the step continues from what was
// written. Undisturbed elements always equal their master rounded (the last step wrote them).
// The value a parameter element continues from beside its master copy: the master, unless the
// parameter element (`copy`, as stored through `Out`) is no longer the master rounded, that is,
// it was written since the last step.
template <class Out, class V>
PFO_HD V continued_master(V master, V copy) {
  return select_eq(Out::rounded(master), copy, master, copy);
}

template <class Rule, class Out>
struct WithCopy {
  using value_type = typename Rule::value_type;
  static constexpr int kArrays = Rule::kArrays + 1;
  static constexpr unsigned kUnsignedBuffers = Rule::kUnsignedBuffers;
  Rule rule;

  template <class... A>
  PFO_HD void operator()(A&... a) const {
    static_assert(sizeof...(A) == kArrays, "one copy array after the rule's arrays");
    auto refs = std::tie(a...);
    auto& master = std::get<0>(refs);
    auto& copy = std::get<sizeof...(A) - 1>(refs);
    master = continued_master<Out>(master, copy);
    apply(refs, std::make_index_sequence<sizeof...(A) - 1>{});
    copy = master;
  }

 private:
  template <class Tuple, std::size_t... I>
  PFO_HD void apply(Tuple& refs, std::index_sequence<I...>) const {
    rule(std::get<I>(refs)...);
  }
};

}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
