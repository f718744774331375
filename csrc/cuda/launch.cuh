// The kernel and the host side of every CUDA step: included by one .cu file per algorithm
// (cuda/sgd.cu, adam.cu, ...), which picks the rule for the call's storage and options exactly
// as cpu/kernels.cpp does and hands it to run<St, R, Maker>() here.
//
// Per call, on torch's current stream of the parameters' device:
//   1. the step counters advance: on the host (torch's default layout: 0-d CPU tensors; their
//      new values then travel in each row's aux word), or by a small kernel on the device
//      (capturable/fused: 0-d device tensors; skipped when GradScaler's found_inf is 1);
//   2. one launch per Launch the planner (traversal.h) makes: each block builds the rule on the
//      device through the rule's own constructor (Maker), from the step its tensor is about to
//      take and, for a tensor learning rate, the lr on the device, so nothing waits for the
//      device and a capturable step can be captured in a CUDA graph; then its threads run
//      the rule over their element groups through the storage policies.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pyfastopt/call_storage.h"
#include "pyfastopt/dispatch.h"
#include "pyfastopt/rules.h"
#include "pyfastopt/storage.h"
#include "runtime.h"
#include "steps.h"
#include "traversal.h"

namespace pyfastopt {
inline namespace PFO_ISA_NS {
namespace gpu {

using namespace host;  // NOLINT: the host side shared with the CPU kernels (call_storage.h)

// How a kernel reads the step its row is about to take from the row's aux word.
enum StepSource : int { kNoStep = 0, kStepValue = 1, kStepF32 = 2, kStepF64 = 3 };

// What every block of a call reads besides its Launch: device scalars (null when absent) and
// the stochastic-rounding seed.
struct Scalars {
  const float* lr;
  const float* grad_scale;
  const float* found_inf;
  uint64_t seed;
  int step_source;
};

// The step a row is about to take: the value the host wrote (its bits), or the device counter
// the step-advance kernel has already advanced.
__device__ __forceinline__ double step_of(int source, int64_t aux) {
  switch (source) {
    case kStepValue:
      return __longlong_as_double(static_cast<long long>(aux));
    case kStepF32:
      return static_cast<double>(*reinterpret_cast<const float*>(aux));
    case kStepF64:
      return *reinterpret_cast<const double*>(aux);
    default:
      return 1.0;
  }
}

// The step of one call: St the storage, R the rule, Maker builds R on the device, P its params.
template <class St, class R, class Maker, class P, int K>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const __grid_constant__ Launch<K> launch, const P hp, const Scalars s) {
  // GradScaler found an inf or NaN: torch's fused step returns before touching anything
  if (s.found_inf != nullptr && *s.found_inf == 1.0f) return;
  using Full = decltype(compose_rule<St>(std::declval<R>(), typename St::compute(1)));
  using Pols = Policies<St, Full>;
  static_assert(Full::kArrays == K, "one address per array of the rule");
  constexpr ElementBytes<Pols> bytes{};
  const Work w = block_work(launch, static_cast<int>(blockIdx.x), kChunk, bytes.value);
  int64_t ptrs[K];  // (a constant trip count: unrolled into registers)
  for (int k = 0; k < K; ++k) ptrs[k] = launch.ptr[w.slot][k];
  const int64_t aux = launch.aux[w.slot];
  P h = hp;
  if (s.lr != nullptr) h.lr = static_cast<double>(*s.lr);
  using C = typename St::compute;
  const C scale = s.grad_scale != nullptr ? static_cast<C>(*s.grad_scale) : C(1);
  const Full rule =
      compose_rule<St>(Maker::template make<R>(h, step_of(s.step_source, aux), aux), scale);
  const uint64_t salt = row_salt(s.seed, launch.row[w.slot]);
  for_each_group(w, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x),
                 [&](const Group& g) {
                   apply_group<Pols>(rule, ptrs, g, salt, std::make_index_sequence<K>{});
                 });
}

// Advances the step counters of rows [0, rows) of `table` (aux words: device addresses of
// float32 or float64 counters) by one on `stream`, unless found_inf is 1 (counters.cu).
void advance_device_steps(const int64_t* table, int64_t rows, int64_t width, bool f64,
                          const float* found_inf, cudaStream_t stream);

[[noreturn]] inline void fail(const char* what, cudaError_t e) {
  throw std::runtime_error(std::string("pyfastopt._cuda: ") + what + ": " + cudaGetErrorName(e) +
                           " (" + cudaGetErrorString(e) + ")");
}

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(what, e);
}

// Makes the call's device current for the calling thread and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "no usable CUDA device");
    if (previous_ != device) check(cudaSetDevice(device), "cannot select the device");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// The host's step counter of row r: the value it is about to take, and its advance.
inline double next_host_step(const Table& t, int64_t r) {
  const int64_t a = t.data[r * t.width + 1];
  if (t.step_f64) return *reinterpret_cast<const double*>(a) + 1.0;
  return static_cast<double>(*reinterpret_cast<const float*>(a) + 1.0f);
}

inline double advance_host_step(const Table& t, int64_t r) {
  const int64_t a = t.data[r * t.width + 1];
  if (t.step_f64) return *reinterpret_cast<double*>(a) += 1.0;
  return static_cast<double>(*reinterpret_cast<float*>(a) += 1.0f);
}

// Where torch's step would divide by zero, before anything is written: with host counters
// exactly as the CPU backend (ZeroDivisionError when `divisor(step)` is 0 for some row); with
// device counters, which the host does not read, `possible` (a hyper-parameter torch's
// constructor refuses, set by hand) is refused outright.
template <class Divisor>
void refuse_zero_division(const Call& c, bool possible, Divisor&& divisor) {
  if (!possible || c.steps == Steps::kNone) return;
  if (c.steps == Steps::kDevice) {
    refuse(
        "with step counters on the device (capturable/fused) the CUDA step cannot check for a "
        "division by zero; this hyper-parameter is outside what torch's constructor accepts");
  }
  check_steps(c.table);
  for (int64_t r = 0; r < c.table.rows; ++r) {
    if (divisor(next_host_step(c.table, r)) == 0.0) throw ZeroDivision("float division by zero");
  }
}

// The whole call: checks, step counters, launches.
template <class St, class R, class Maker, class P>
void run(const Call& c, const P& hp) {
  using Full = decltype(compose_rule<St>(std::declval<R>(), typename St::compute(1)));
  constexpr int K = Full::kArrays;
  const Table& t = c.table;
  const bool has_step = c.steps != Steps::kNone;
  check_table<St, Full, 0>(t, has_step);
  if (t.found_inf != nullptr && c.steps == Steps::kHost) {
    refuse("GradScaler's found_inf in the step needs the step counters on the device");
  }
  DeviceGuard guard(c.device);
  const auto stream = reinterpret_cast<cudaStream_t>(c.stream);
  Scalars s{c.lr, St::kAmp ? t.grad_scale : nullptr, t.found_inf, t.seed, kNoStep};
  std::vector<int64_t> rows(t.data, t.data + t.rows * t.width);
  if (c.steps == Steps::kHost) {  // advance here; each row's aux carries its new value
    for (int64_t r = 0; r < t.rows; ++r) {
      const double v = advance_host_step(t, r);
      std::memcpy(&rows[static_cast<std::size_t>(r * t.width + 1)], &v, sizeof v);
    }
    s.step_source = kStepValue;
  } else if (c.steps == Steps::kDevice) {
    advance_device_steps(rows.data(), t.rows, t.width, t.step_f64, t.found_inf, stream);
    s.step_source = t.step_f64 ? kStepF64 : kStepF32;
  }
  auto launch = std::make_unique<Launch<K>>();
  plan<K>(rows.data(), t.rows, t.width, kChunk, *launch, [&](const Launch<K>& l) {
    PFO_LAUNCH((step_kernel<St, R, Maker, P, K>), static_cast<unsigned>(l.blocks), kThreads, stream,
               l, hp, s);
    check(cudaGetLastError(), "step launch failed");
  });
}

// Rule makers: how a kernel builds a rule from (hyper-parameters, step, aux word).
struct WithStep {  // AdamRule(hp, step), AdagradRule(hp, step)
  template <class R, class P>
  static __device__ __forceinline__ R make(const P& hp, double step, int64_t) {
    return R(hp, step);
  }
};
struct WithoutStep {  // AdadeltaRule(hp), RmspropRule(hp)
  template <class R, class P>
  static __device__ __forceinline__ R make(const P& hp, double, int64_t) {
    return R(hp);
  }
};
struct WithFirstFlag {  // SgdRule(hp, first): bit 0 of the aux word
  template <class R, class P>
  static __device__ __forceinline__ R make(const P& hp, double, int64_t aux) {
    return R(hp, (aux & 1) != 0);
  }
};

}  // namespace gpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
