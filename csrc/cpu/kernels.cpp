// The CPU step functions. This file is compiled once per ISA (see CMakeLists.txt), each time into
// its own namespace PFO_ISA_NS, with that ISA's code-generation flags; dispatch.cpp picks one at
// run time. Here the host side of each algorithm lives: pick the storage policies of the call,
// check the table, advance step counters, build one rule per tensor, and hand them to the
// traversal.
#include <array>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "multi_tensor.h"
#include "pyfastopt/call_storage.h"
#include "pyfastopt/dispatch.h"
#include "pyfastopt/rules.h"
#include "pyfastopt/storage.h"

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

// GradScaler found an inf or NaN: torch's fused step returns before touching anything.
bool skipped(const Table& t) { return t.found_inf != nullptr && *t.found_inf == 1.0f; }

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

// The rule as the traversal applies it (call_storage.h), with GradScaler's scale read here.
template <class St, class R>
auto compose(const Table& t, R rule) {
  using C = typename St::compute;
  return compose_rule<St>(rule, St::kAmp ? static_cast<C>(*t.grad_scale) : C(1));
}

template <class St, class R, class Make>
void run(const Table& t, bool has_step, int num_threads, Make&& make) {
  using Full = decltype(compose<St>(t, std::declval<R>()));
  check_table<St, Full, cpu::BlockArrays<Policies<St, Full>>::kCount>(t, has_step);
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

void adagrad(const Table& t, DType dtype, const AdagradParams& hp, int nt) {
  if (skipped(t)) return;
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

void adam(const Table& t, DType dtype, const AdamParams& hp, int nt) {
  if (skipped(t)) return;
  check_steps(t);                             // before RuleForStep reads row 0's counter
  if (hp.beta1 == 1.0 || hp.beta1 == -1.0) {  // the only betas whose powers can reach 1 exactly
    refuse_zero_division(t, [&](double step) { return 1.0 - std::pow(hp.beta1, step); });
  }
  with_storage<true>(t, dtype, [&](auto st) {
    using St = decltype(st);
    with_bool(hp.amsgrad, [&](auto ams) {
      using R = AdamRule<typename St::compute, decltype(ams)::value, St::kLowPrecision>;
      RuleForStep<R, AdamParams> rule(hp, t);
      run<St, R>(t, true, nt, [&](int64_t r) { return rule(cpu::advance_step(t, r)); });
    });
  });
}

}  // namespace
}  // namespace PFO_ISA_NS

#define PFO_CAT2(a, b) a##b
#define PFO_CAT(a, b) PFO_CAT2(a, b)
extern const KernelSet PFO_CAT(kernels_, PFO_ISA_NAME) = {
    PFO_STR(PFO_ISA_NAME), PFO_ISA_NS::sgd,     PFO_ISA_NS::adagrad,
    PFO_ISA_NS::adadelta,  PFO_ISA_NS::rmsprop, PFO_ISA_NS::adam};

}  // namespace pyfastopt
