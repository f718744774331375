// The CPU step functions. This file is compiled once per ISA (see CMakeLists.txt), each time into
// its own namespace PFO_ISA_NS, with that ISA's code-generation flags; dispatch.cpp picks one at
// run time. Here the host side of each algorithm lives: check the table, advance step counters,
// build one rule per tensor, and hand them to the traversal.
#include <cmath>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "multi_tensor.h"
#include "pyfastopt/dispatch.h"
#include "pyfastopt/rules.h"

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

template <class F>
void with_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

template <class F>
void with_type(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      f(float{});
      return;
    case DType::kFloat64:
      f(double{});
      return;
  }
  throw std::invalid_argument("pyfastopt: unsupported dtype code");
}

// Defence in depth: the Python layer validated every extent; here we still refuse a table whose
// shape does not fit the chosen rule, and null or misaligned addresses.
void check_steps(const Table& t) {
  const std::size_t step_align = t.step_f64 ? alignof(double) : alignof(float);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t s = row_aux(t, r);
    if (s == 0 || s % static_cast<int64_t>(step_align) != 0) {
      throw std::invalid_argument("pyfastopt: invalid step counter address");
    }
  }
}

template <typename T>
void check_table(const Table& t, int64_t arrays, bool has_step) {
  if (t.width != 2 + arrays) {
    throw std::invalid_argument("pyfastopt: table row width does not match the update rule");
  }
  if (has_step) check_steps(t);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t n = row_numel(t, r);
    if (n < 0) throw std::invalid_argument("pyfastopt: negative element count");
    if (n == 0) continue;
    for (int64_t k = 0; k < arrays; ++k) {
      const int64_t a = row_ptrs(t, r)[k];
      if (a == 0 || a % static_cast<int64_t>(alignof(T)) != 0) {
        throw std::invalid_argument("pyfastopt: null or misaligned tensor address");
      }
    }
  }
}

// Builds the rule for a step count, reusing the previous one when the count repeats (the usual
// case: every tensor of a group is at the same step), so pow() runs once per call.
template <class Rule, class Params>
struct RuleForStep {
  const Params& hp;
  double last = -1.0;
  std::optional<Rule> rule;
  const Rule& operator()(double step) {
    if (!rule || step != last) {
      rule.emplace(hp, step);
      last = step;
    }
    return *rule;
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

template <typename T, class Rule, class Make>
void run(const Table& t, bool has_step, int num_threads, Make&& make) {
  check_table<T>(t, Rule::kArrays, has_step);
  std::vector<Rule> rules;
  rules.reserve(static_cast<std::size_t>(t.rows));
  for (int64_t r = 0; r < t.rows; ++r) rules.push_back(make(r));
  cpu::multi_tensor_apply<T>(t, rules, num_threads);
}

void sgd(const Table& t, DType dtype, const SgdParams& hp, int nt) {
  with_type(dtype, [&](auto tv) {
    using T = decltype(tv);
    with_bool(hp.maximize, [&](auto mx) {
      with_bool(hp.weight_decay != 0.0, [&](auto l2) {
        with_bool(hp.momentum != 0.0, [&](auto mom) {
          with_bool(hp.nesterov, [&](auto nes) {
            using R = SgdRule<T, decltype(mx)::value, decltype(l2)::value, decltype(mom)::value,
                              decltype(nes)::value>;
            run<T, R>(t, false, nt, [&](int64_t r) { return R(hp, (row_aux(t, r) & 1) != 0); });
          });
        });
      });
    });
  });
}

void adagrad(const Table& t, DType dtype, const AdagradParams& hp, int nt) {
  refuse_zero_division(t, [&](double step) { return 1.0 + (step - 1.0) * hp.lr_decay; });
  with_type(dtype, [&](auto tv) {
    using T = decltype(tv);
    with_bool(hp.maximize, [&](auto mx) {
      with_bool(hp.weight_decay != 0.0, [&](auto l2) {
        using R = AdagradRule<T, decltype(mx)::value, decltype(l2)::value>;
        RuleForStep<R, AdagradParams> rule{hp};
        run<T, R>(t, true, nt, [&](int64_t r) { return rule(cpu::advance_step(t, r)); });
      });
    });
  });
}

void adadelta(const Table& t, DType dtype, const AdadeltaParams& hp, int nt) {
  with_type(dtype, [&](auto tv) {
    using T = decltype(tv);
    with_bool(hp.maximize, [&](auto mx) {
      with_bool(hp.weight_decay != 0.0, [&](auto l2) {
        using R = AdadeltaRule<T, decltype(mx)::value, decltype(l2)::value>;
        run<T, R>(t, true, nt, [&](int64_t r) {
          cpu::advance_step(t, r);
          return R(hp);
        });
      });
    });
  });
}

void rmsprop(const Table& t, DType dtype, const RmspropParams& hp, int nt) {
  with_type(dtype, [&](auto tv) {
    using T = decltype(tv);
    with_bool(hp.maximize, [&](auto mx) {
      with_bool(hp.weight_decay != 0.0, [&](auto l2) {
        with_bool(hp.centered, [&](auto cen) {
          with_bool(hp.momentum > 0.0, [&](auto mom) {
            using R = RmspropRule<T, decltype(mx)::value, decltype(l2)::value, decltype(cen)::value,
                                  decltype(mom)::value>;
            run<T, R>(t, true, nt, [&](int64_t r) {
              cpu::advance_step(t, r);
              return R(hp);
            });
          });
        });
      });
    });
  });
}

template <Decay D>
using DecayTag = std::integral_constant<Decay, D>;

void adam(const Table& t, DType dtype, const AdamParams& hp, int nt) {
  if (hp.beta1 == 1.0 || hp.beta1 == -1.0) {  // the only betas whose powers can reach 1 exactly
    refuse_zero_division(t, [&](double step) { return 1.0 - std::pow(hp.beta1, step); });
  }
  const Decay decay =
      hp.weight_decay == 0.0 ? Decay::kNone : (hp.decoupled ? Decay::kDecoupled : Decay::kL2);
  auto with_decay = [&](auto&& f) {
    switch (decay) {
      case Decay::kNone:
        f(DecayTag<Decay::kNone>{});
        return;
      case Decay::kL2:
        f(DecayTag<Decay::kL2>{});
        return;
      case Decay::kDecoupled:
        f(DecayTag<Decay::kDecoupled>{});
        return;
    }
  };
  with_type(dtype, [&](auto tv) {
    using T = decltype(tv);
    with_bool(hp.maximize, [&](auto mx) {
      with_decay([&](auto dec) {
        with_bool(hp.amsgrad, [&](auto ams) {
          using R = AdamRule<T, decltype(mx)::value, decltype(dec)::value, decltype(ams)::value>;
          RuleForStep<R, AdamParams> rule{hp};
          run<T, R>(t, true, nt, [&](int64_t r) { return rule(cpu::advance_step(t, r)); });
        });
      });
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
