// The CPU step functions. This file is compiled once per ISA (see CMakeLists.txt), each time into
// its own namespace PFO_ISA_NS, with that ISA's code-generation flags; dispatch.cpp picks one at
// run time. Here the host side of each algorithm lives: pick the storage policies of the call,
// check the table, advance step counters, build one rule per tensor, and hand them to the
// traversal.
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "adafactor.h"
#include "multi_tensor.h"
#include "pyfastopt/call_storage.h"
#include "pyfastopt/dispatch.h"
#include "pyfastopt/rules.h"
#include "pyfastopt/storage.h"
#include "row_scalars.h"

#ifndef PFO_ISA_NS
#error "PFO_ISA_NS must name the ISA namespace of this build"
#endif
#ifndef PFO_ISA_NAME
#error "PFO_ISA_NAME must name the ISA of this build"
#endif
#define PFO_STR2(x) #x
#define PFO_STR(x) PFO_STR2(x)

namespace pyfastopt {
namespace PFO_ISA_NS {
namespace {

using cpu::row_aux;
using cpu::row_numel;
using cpu::row_ptrs;
using namespace host;  // NOLINT: the shared host side (pyfastopt/call_storage.h)

static_assert(cpu::kMaxBlock == kMaxStateBlock, "one limit for the 8-bit state's block size");

// Builds the rule for a step count, reusing the previous one when the count repeats (the usual
// case: every tensor of a group is at the same step), so pow() runs once per call.
template <class Rule, class Params>
struct RuleForStep {
  // built for the step row 0 is about to take, so the common case computes pow() once; the
  // table's step counters must have been checked (check_steps)
  RuleForStep(const Params& p, const Table& t)
      : hp(p), rule(p, t.rows > 0 ? cpu::next_step(t, 0) : 1.0), last(rule_step(t)) {}
  static double rule_step(const Table& t) { return t.rows > 0 ? cpu::next_step(t, 0) : 1.0; }
  const Params& hp;
  Rule rule;
  double last;
  const Rule& operator()(double step) {
    if (step != last) {
      rule = Rule(hp, step);
      last = step;
    }
    return rule;
  }
};

// The last value made for a key, made again only when the key changes (the usual case: every
// tensor of a group at the same step), so pow() runs about once per call.
template <class Key, class Value>
class Memo {
 public:
  template <class Make>
  const Value& operator()(const Key& key, Make&& make) {
    if (!value_ || !(key == key_)) {
      value_.emplace(make());
      key_ = key;
    }
    return *value_;
  }

 private:
  Key key_{};
  std::optional<Value> value_;
};

// `check(step, row)` for the step each row is about to take, before any counter or tensor is
// written: it throws where torch's step would raise.
template <class Check>
void check_next_steps(const Table& t, Check&& check) {
  check_steps(t);
  for (int64_t r = 0; r < t.rows; ++r) check(cpu::next_step(t, r), r);
}

// The hyper-parameters with the call's `lr_f32` (params.h: a 0-d float32 tensor lr).
template <class P>
P with_lr_of(const P& hp, const Table& t) {
  P h = hp;
  h.lr_f32 = t.lr_f32;
  return h;
}

// Where torch's step divides a Python float by zero it raises ZeroDivisionError; so does this
// step, before any counter or tensor is written. `divisor(step)` is the host scalar torch divides
// by at the step a row is about to take.
template <class Divisor>
void refuse_zero_division(const Table& t, Divisor&& divisor) {
  check_steps(t);
  for (int64_t r = 0; r < t.rows; ++r) {
    if (divisor(cpu::next_step(t, r)) == 0.0) throw ZeroDivision("float division by zero");
  }
}

template <class St, class R, class Make>
void run(const Table& t, bool has_step, int num_threads, Make&& make, int scalars = 0) {
  using Full = decltype(compose<St>(t, std::declval<R>()));
  check_table<St, Full, cpu::BlockArrays<Policies<St, Full>>::kCount>(t, has_step, scalars);
  if (has_step) cpu::check_step_values(t);
  if (scalars > 0) cpu::check_scalars(t, scalars);
  std::vector<Full> rules;
  rules.reserve(static_cast<std::size_t>(t.rows));
  for (int64_t r = 0; r < t.rows; ++r) rules.push_back(compose<St>(t, make(r)));
  cpu::multi_tensor_apply<Policies<St, Full>>(t, rules, num_threads);
}

void sgd(const Table& t, DType dtype, const SgdParams& hp, int nt) {
  if (skipped(t)) return;
  with_storage<true>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using C = typename St::compute;
    with_bool(hp.momentum != 0.0, [&](auto mom) {
      using R = SgdRule<C, decltype(mom)::value>;
      run<St, R>(t, false, nt, [&](int64_t r) { return R(hp, (row_aux(t, r) & 1) != 0); });
    });
  });
}

void adagrad(const Table& t, DType dtype, const AdagradParams& hp_in, int nt) {
  if (skipped(t)) return;
  const AdagradParams hp = with_lr_of(hp_in, t);
  refuse_zero_division(t, [&](double step) { return 1.0 + (step - 1.0) * hp.lr_decay; });
  with_storage<true>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using R = AdagradRule<typename St::compute>;
    RuleForStep<R, AdagradParams> rule(hp, t);
    run<St, R>(t, true, nt, [&](int64_t r) { return rule(cpu::advance_step(t, r)); });
  });
}

void adadelta(const Table& t, DType dtype, const AdadeltaParams& hp, int nt) {
  with_storage<false>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using R = AdadeltaRule<typename St::compute>;
    run<St, R>(t, true, nt, [&](int64_t r) {
      cpu::advance_step(t, r);
      return R(hp);
    });
  });
}

void rmsprop(const Table& t, DType dtype, const RmspropParams& hp, int nt) {
  with_storage<false>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using C = typename St::compute;
    with_bool(hp.centered, [&](auto cen) {
      with_bool(hp.momentum > 0.0, [&](auto mom) {
        using R = RmspropRule<C, decltype(cen)::value, decltype(mom)::value>;
        run<St, R>(t, true, nt, [&](int64_t r) {
          cpu::advance_step(t, r);
          return R(hp);
        });
      });
    });
  });
}

[[noreturn]] void complex_scalar(const char* what) {
  throw std::runtime_error(std::string("pyfastopt: ") + what +
                           " would be complex at this step (torch.optim's step raises or discards "
                           "the imaginary part); use hyper-parameters in torch's documented range");
}

void adam(const Table& t, DType dtype, const AdamParams& hp_in, int nt) {
  if (skipped(t)) return;
  AdamParams hp = with_lr_of(hp_in, t);
  // 16-bit parameters follow torch's fused kernel, which reads a tensor lr as a double
  hp.lr_f32 = hp.lr_f32 && (dtype == DType::kFloat32 || dtype == DType::kFloat64);
  check_steps(t);                             // before RuleForStep reads row 0's counter
  if (hp.beta1 == 1.0 || hp.beta1 == -1.0) {  // the only betas whose powers can reach 1 exactly
    refuse_zero_division(t, [&](double step) { return 1.0 - std::pow(hp.beta1, step); });
  }
  if (std::fabs(hp.beta2) > 1.0) {  // torch's `(1 - beta2 ** step) ** 0.5` is then complex
    check_next_steps(t, [&](double step, int64_t) {
      if (1.0 - std::pow(hp.beta2, step) < 0.0) complex_scalar("Adam's (1 - beta2 ** step) ** 0.5");
    });
  }
  with_storage<true>(t, dtype, [&](auto st) {
    using St = decltype(st);
    with_bool(hp.amsgrad, [&](auto ams) {
      using R = AdamRule<typename St::compute, decltype(ams)::value>;
      RuleForStep<R, AdamParams> rule(hp, t);
      run<St, R>(t, true, nt, [&](int64_t r) { return rule(cpu::advance_step(t, r)); });
    });
  });
}

// ---- NAdam, RAdam, Adamax, ASGD, Rprop --------------------------------------------------------

void nadam(const Table& t, DType dtype, const NadamParams& hp_in, int nt) {
  const NadamParams hp = with_lr_of(hp_in, t);
  cpu::check_scalars(t, 1);  // mu_product
  Memo<double, NadamMomenta> momenta;
  auto momenta_at = [&](double step) {
    return momenta(step, [&] { return nadam_momenta(hp, step); });
  };
  // torch divides Python floats by 1 - mu_product and by 1 - mu_product * mu_next
  check_next_steps(t, [&](double step, int64_t r) {
    const NadamMomenta m = momenta_at(step);
    const double product = cpu::row_scalar(t, r, 1, 0).times(m.mu);
    if (1.0 - product == 0.0 || 1.0 - product * m.mu_next == 0.0) {
      throw ZeroDivision("float division by zero");
    }
  });
  with_storage<false>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using R = NadamRule<typename St::compute>;
    Memo<std::pair<double, double>, R> rules;
    run<St, R>(
        t, true, nt,
        [&](int64_t r) {
          const double step = cpu::advance_step(t, r);
          const cpu::RowScalar mu_product = cpu::row_scalar(t, r, 1, 0);
          const double product = mu_product.times(momenta_at(step).mu);  // mu_product *= mu
          mu_product.set(product);
          return rules({step, product}, [&] { return R(hp, step, product); });
        },
        1);
  });
}

void radam(const Table& t, DType dtype, const RadamParams& hp_in, int nt) {
  const RadamParams hp = with_lr_of(hp_in, t);
  check_steps(t);                              // before RuleForStep reads row 0's counter
  if (!(hp.beta2 >= 0.0 && hp.beta2 < 1.0)) {  // only then a divisor or a root can go wrong
    check_next_steps(t, [&](double step, int64_t) {
      if (hp.beta2 == 1.0 || 1.0 - std::pow(hp.beta2, step) == 0.0) {
        throw ZeroDivision("float division by zero");
      }
      const RadamRectification r = radam_rectification(hp, step);
      if (r.on && (r.bc2 < 0.0 || r.rect_squared < 0.0)) complex_scalar("RAdam's rectification");
    });
  }
  with_storage<false>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using R = RadamRule<typename St::compute>;
    RuleForStep<R, RadamParams> rule(hp, t);
    run<St, R>(t, true, nt, [&](int64_t r) { return rule(cpu::advance_step(t, r)); });
  });
}

void adamax(const Table& t, DType dtype, const AdamaxParams& hp_in, int nt) {
  const AdamaxParams hp = with_lr_of(hp_in, t);
  check_steps(t);                             // before RuleForStep reads row 0's counter
  if (hp.beta1 == 1.0 || hp.beta1 == -1.0) {  // the only betas whose powers can reach 1 exactly
    refuse_zero_division(t, [&](double step) { return 1.0 - std::pow(hp.beta1, step); });
  }
  with_storage<false>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using R = AdamaxRule<typename St::compute>;
    RuleForStep<R, AdamaxParams> rule(hp, t);
    run<St, R>(t, true, nt, [&](int64_t r) { return rule(cpu::advance_step(t, r)); });
  });
}

void asgd(const Table& t, DType dtype, const AsgdParams& hp, int nt) {
  if (hp.default_dtype < 0 || hp.default_dtype > 3) refuse("invalid default dtype code");
  const auto as_tensor = static_cast<DType>(hp.default_dtype);
  cpu::check_scalars(t, 2);  // eta, mu
  // (eta, mu) after a step, as torch stores them. The next eta is lr / base ** alpha: Python
  // raises for a zero divisor (or 0.0 to a negative power) and makes a complex number of a
  // negative base to a non-integer power.
  Memo<double, std::pair<double, double>> next;
  auto next_at = [&](double step) {
    return next(step, [&] {
      const double base = asgd_eta_base(hp, step);
      if (base < 0.0 && std::trunc(hp.alpha) != hp.alpha && !std::isnan(hp.alpha)) {
        complex_scalar("ASGD's eta");
      }
      if (base == 0.0 && hp.alpha < 0.0) {
        throw ZeroDivision("0.0 cannot be raised to a negative power");
      }
      if (std::pow(base, hp.alpha) == 0.0) throw ZeroDivision("float division by zero");
      return std::make_pair(cpu::as_tensor_value(asgd_eta(hp, step), as_tensor),
                            cpu::as_tensor_value(asgd_mu(hp, step), as_tensor));
    });
  };
  check_next_steps(t, [&](double step, int64_t) { next_at(step); });
  with_storage<false>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using R = AsgdRule<typename St::compute>;
    run<St, R>(
        t, true, nt,
        [&](int64_t r) {
          const double step = cpu::advance_step(t, r);
          const cpu::RowScalar eta = cpu::row_scalar(t, r, 2, 0), mu = cpu::row_scalar(t, r, 2, 1);
          const R rule(hp, eta.get(), mu.get());  // this step uses the previous eta and mu
          const std::pair<double, double> n = next_at(step);
          eta.set(n.first);
          mu.set(n.second);
          return rule;
        },
        2);
  });
}

void rprop(const Table& t, DType dtype, const RpropParams& hp, int nt) {
  with_storage<false>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using R = RpropRule<typename St::compute>;
    run<St, R>(t, true, nt, [&](int64_t r) {
      cpu::advance_step(t, r);
      return R(hp);
    });
  });
}

// Whole buffers of 8-bit state, block by block: the block functions a step runs.
void quantize(const float* x, uint8_t* c, float* s, int64_t n, int64_t block, bool is_unsigned) {
  for (int64_t b = 0; b * block < n; ++b) {
    const int64_t o = b * block, len = n - o < block ? n - o : block;
    s[b] = is_unsigned ? quantize_block<true>(x + o, len, c + o, q8_map<true>())
                       : quantize_block<false>(x + o, len, c + o, q8_map<false>());
  }
}

void dequantize(const uint8_t* c, const float* s, float* x, int64_t n, int64_t block,
                bool is_unsigned) {
  const bool vbmi = (lanes_mode() & kLanesVbmi) != 0;
  const quant::Map& map = is_unsigned ? q8_map<true>() : q8_map<false>();
  for (int64_t b = 0; b * block < n; ++b) {
    const int64_t o = b * block, len = n - o < block ? n - o : block;
    dequantize_block(c + o, s[b], map, x + o, len, vbmi);
  }
}

// SparseAdam. Gathered rows (multi_tensor.h) `[n, step size, p, g, exp_avg, exp_avg_sq, offsets,
// width, numel]`: the bits of the float64 `-step_size` torch computes from lr and the row's step
// count (its bias corrections; the caller computes it as torch does), the parameter and its
// state (numel elements each, dense, in the layout the offsets index), the gradient's values
// (n elements). Every block is checked to lie inside the arrays and the offsets to increase
// strictly (no two blocks share an element), before any write.
void sparse_adam(const Table& t, DType dtype, const SparseAdamParams& hp, int nt) {
  with_storage<false, StateStores::kTorchLayout>(t, dtype, [&](auto st) {
    using St = decltype(st);
    using R = SparseAdamRule<typename St::compute>;
    constexpr int K = R::kArrays;
    if (t.width != 2 + K + 3) throw std::invalid_argument("pyfastopt: bad sparse table width");
    constexpr auto align = alignments<St, R>(std::make_index_sequence<K>{});
    for (int64_t r = 0; r < t.rows; ++r) {
      const int64_t n = row_numel(t, r);
      const int64_t* ptrs = row_ptrs(t, r);
      const int64_t w = ptrs[K + 1], numel = ptrs[K + 2];
      if (n < 0 || w < 1 || n % w != 0 || numel < w) {
        if (n == 0 && w >= 1 && numel >= 0) continue;
        throw std::invalid_argument("pyfastopt: invalid sparse row extents");
      }
      for (int k = 0; k <= K; ++k) {
        const int64_t al = k < K ? static_cast<int64_t>(align[k]) : int64_t{alignof(int64_t)};
        if (ptrs[k] == 0 || ptrs[k] % al != 0) {
          throw std::invalid_argument("pyfastopt: null or misaligned tensor address");
        }
      }
      const int64_t* at = reinterpret_cast<const int64_t*>(ptrs[K]);
      int64_t next = 0;  // the first element the next block may start at
      for (int64_t k = 0; k < n / w; ++k) {
        if (at[k] < next || at[k] > numel - w) {
          throw std::invalid_argument(
              "pyfastopt: sparse gradient positions out of range or not unique (a gradient "
              "marked coalesced must not repeat an index)");
        }
        next = at[k] + w;
      }
    }
    std::vector<R> rules;
    rules.reserve(static_cast<std::size_t>(t.rows));
    for (int64_t r = 0; r < t.rows; ++r) {
      const int64_t bits = row_aux(t, r);
      double neg_step = 0.0;
      std::memcpy(&neg_step, &bits, sizeof neg_step);
      rules.emplace_back(hp, neg_step);
    }
    cpu::multi_tensor_apply_gathered<Policies<St, R>>(t, rules, nt);
  });
}

}  // namespace
}  // namespace PFO_ISA_NS

#define PFO_CAT2(a, b) a##b
#define PFO_CAT(a, b) PFO_CAT2(a, b)
extern const KernelSet PFO_CAT(kernels_, PFO_ISA_NAME) = {
    PFO_STR(PFO_ISA_NAME),   PFO_ISA_NS::sgd,      PFO_ISA_NS::adagrad,   PFO_ISA_NS::adadelta,
    PFO_ISA_NS::rmsprop,     PFO_ISA_NS::adam,     PFO_ISA_NS::nadam,     PFO_ISA_NS::radam,
    PFO_ISA_NS::adamax,      PFO_ISA_NS::asgd,     PFO_ISA_NS::rprop,     PFO_ISA_NS::adafactor,
    PFO_ISA_NS::sparse_adam, PFO_ISA_NS::quantize, PFO_ISA_NS::dequantize};

}  // namespace pyfastopt
