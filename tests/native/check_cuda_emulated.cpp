// The CUDA module's host side and kernels (csrc/cuda/launch.cuh, counters.cu) run end to end on
// the host, with the CUDA runtime emulated (emulated_cuda.h): a call's checks, its step counters
// (on the host, or on the "device" in float32 or float64), a tensor learning rate read on the
// device, GradScaler's scale and found_inf, the planner's launches and every block and thread of
// the step kernel, against a plain loop that builds each row's rule through the same
// constructor with the step that row takes. Bit for bit. Also: nothing is written when a step
// would divide by zero, or when there is no device.
// Build: g++ -std=c++17 -O1 -DPFO_CUDA_EMULATION -DPFO_ISA_NS=cuda
//        -I csrc/include -I csrc/cuda -I tests/native tests/native/check_cuda_emulated.cpp
// (tests/test_cuda_planner.py does). The kernel and the plain loop share rules.h's fmadd, so
// they agree bit for bit with or without FMA instructions.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "checks.h"
#include "counters.cu"  // the step-counter kernel, as the module compiles it
#include "launch.cuh"

using namespace pyfastopt;
using namespace pyfastopt::gpu;

namespace {

// One row's arrays as raw bytes, 64-byte aligned, filled with values in (0, 1] (the gradient
// of both signs).
struct Arrays {
  std::vector<std::vector<unsigned char>> mem;
  std::vector<int64_t> ptr;
};

template <class Pols>
Arrays make_arrays(int64_t n, std::mt19937_64& rng) {
  constexpr ElementBytes<Pols> eb{};
  Arrays a;
  for (std::size_t k = 0; k < ElementBytes<Pols>::K; ++k) {
    const std::size_t b = static_cast<std::size_t>(eb.value[k]);
    a.mem.emplace_back(static_cast<std::size_t>(n) * b + 64, 0);
    auto& v = a.mem.back();
    const std::size_t at = reinterpret_cast<std::uintptr_t>(v.data());
    unsigned char* p = v.data() + (64 - at % 64) % 64;
    for (int64_t i = 0; i < n; ++i) {
      double d = static_cast<double>(1 + rng() % 1000) / 1000.0;
      if (k == 1 && rng() % 2) d = -d;
      if (b == 2) {
        const uint16_t h = f32_to_bf16(static_cast<float>(d));
        std::memcpy(p + i * b, &h, 2);
      } else if (b == 4) {
        const float f = static_cast<float>(d);
        std::memcpy(p + i * b, &f, 4);
      } else {
        std::memcpy(p + i * b, &d, 8);
      }
    }
    a.ptr.push_back(reinterpret_cast<int64_t>(p));
  }
  return a;
}

template <class P, class C>
void store_one(int64_t address, int64_t i, C value, uint32_t random) {
  if constexpr (!IsReadOnly<P>::value) {
    P::store(reinterpret_cast<typename P::storage*>(address) + i, value, random);
  }
}

// The plain loop: row r's rule, built with the step it takes, over its elements.
template <class Pols, class Full, std::size_t... I>
void reference_row(const Full& rule, const int64_t* ptrs, int64_t n, uint64_t salt,
                   std::index_sequence<I...>) {
  using C = typename Full::value_type;
  for (int64_t i = 0; i < n; ++i) {
    C v[sizeof...(I)] = {static_cast<C>(PolicyAt<Pols, I>::load(
        reinterpret_cast<const typename PolicyAt<Pols, I>::storage*>(ptrs[I]) + i))...};
    rule(v[I]...);
    const uint32_t r = element_random(salt, i);
    (store_one<PolicyAt<Pols, I>>(ptrs[I], i, v[I], rotate_bits(r, rotation_of(I))), ...);
  }
}

bool same_bytes(const Arrays& a, const Arrays& b, int64_t n, const int* bytes, std::size_t k) {
  for (std::size_t j = 0; j < k; ++j) {
    if (std::memcmp(reinterpret_cast<const void*>(a.ptr[j]),
                    reinterpret_cast<const void*>(b.ptr[j]),
                    static_cast<std::size_t>(n * bytes[j])) != 0) {
      return false;
    }
  }
  return true;
}

// How a case's step counters live.
enum class Counters { kNone, kHost, kDevice32, kDevice64 };

struct Options {
  Counters counters = Counters::kHost;
  const float* lr = nullptr;          // a tensor learning rate "on the device"
  const float* grad_scale = nullptr;  // GradScaler (AMP storages)
  const float* found_inf = nullptr;
  uint64_t seed = 0;
  int calls = 3;
};

// Runs `calls` steps of rule R over tables of `numels` through run<St, R, Maker>() and through
// the plain loop, and compares every array, the step counters and the launch count.
template <class St, class R, class Maker, class P>
void check_case(const char* name, const P& hp, const std::vector<int64_t>& numels, const Options& o,
                std::mt19937_64& rng, int64_t min_launches = 1) {
  using Full = decltype(compose_rule<St>(std::declval<R>(), typename St::compute(1)));
  using Pols = Policies<St, Full>;
  constexpr int K = Full::kArrays;
  constexpr ElementBytes<Pols> eb{};
  std::vector<Arrays> ours, ref;
  std::vector<float> c32(numels.size()), r32(numels.size());
  std::vector<double> c64(numels.size()), r64(numels.size());
  std::vector<int64_t> table;
  for (std::size_t r = 0; r < numels.size(); ++r) {
    std::mt19937_64 fill(rng());
    ours.push_back(make_arrays<Pols>(numels[r], fill));
    ref.push_back(ours.back());  // copies the bytes; fix up the addresses below
    for (std::size_t k = 0; k < ref.back().mem.size(); ++k) {
      const int64_t off = ours.back().ptr[k] - reinterpret_cast<int64_t>(ours.back().mem[k].data());
      ref.back().ptr[k] = reinterpret_cast<int64_t>(ref.back().mem[k].data()) + off;
    }
    c32[r] = r32[r] = static_cast<float>(r % 3 == 0 ? 0 : 4 + r % 2);  // counters differ
    c64[r] = r64[r] = c32[r];
    int64_t aux = 0;
    if (o.counters == Counters::kHost || o.counters == Counters::kDevice32) {
      aux = reinterpret_cast<int64_t>(&c32[r]);
    } else if (o.counters == Counters::kDevice64) {
      aux = reinterpret_cast<int64_t>(&c64[r]);
    } else {
      aux = r % 2;  // SGD: the first-step flag
    }
    table.push_back(numels[r]);
    table.push_back(aux);
    for (int k = 0; k < K; ++k) table.push_back(numels[r] ? ours.back().ptr[k] : 0);
  }
  const bool f64 = o.counters == Counters::kDevice64;
  Table t{table.data(),
          static_cast<int64_t>(numels.size()),
          2 + K,
          f64,
          0,
          St::kCopy ? Rounding::kMaster : Rounding::kNearest,
          o.seed,
          o.grad_scale,
          o.found_inf,
          StateStore::kAsParam,
          0};
  const Steps steps = o.counters == Counters::kNone   ? Steps::kNone
                      : o.counters == Counters::kHost ? Steps::kHost
                                                      : Steps::kDevice;
  const Call call{t, 0, 0, steps, o.lr};
  const int64_t launches0 = pfo_emulation::launches;
  for (int c = 0; c < o.calls; ++c) {
    run<St, R, Maker>(call, hp);
    const bool skip = o.found_inf != nullptr && *o.found_inf == 1.0f;
    for (std::size_t r = 0; r < numels.size(); ++r) {
      double step = 1.0;
      if (o.counters != Counters::kNone && !skip) {
        r32[r] += 1.0f;
        r64[r] += 1.0;
      }
      step = f64 ? r64[r] : static_cast<double>(r32[r]);
      if (skip) continue;
      P h = hp;
      if (o.lr != nullptr) h.lr = static_cast<double>(*o.lr);
      using C = typename St::compute;
      const C scale = o.grad_scale != nullptr ? static_cast<C>(*o.grad_scale) : C(1);
      const int64_t aux = table[r * (2 + K) + 1];
      const Full rule = compose_rule<St>(Maker::template make<R>(h, step, aux), scale);
      reference_row<Pols>(rule, ref[r].ptr.data(), numels[r], row_salt(o.seed, r),
                          std::make_index_sequence<K>{});
    }
  }
  for (std::size_t r = 0; r < numels.size(); ++r) {
    CHECK(same_bytes(ours[r], ref[r], numels[r], eb.value, K), "%s: row %zu differs", name, r);
    if (o.counters != Counters::kNone) {
      const double got = f64 ? c64[r] : c32[r], want = f64 ? r64[r] : r32[r];
      CHECK(got == want, "%s: row %zu's step counter %g, not %g", name, r, got, want);
    }
  }
  const int64_t launches = pfo_emulation::launches - launches0;
  CHECK(launches >= min_launches * o.calls, "%s: %" PRId64 " launches", name, launches);
}

using F32 = Storage<Plain<float>, ReadOnly<Plain<float>>, Plain<float>>;
using F64 = Storage<Plain<double>, ReadOnly<Plain<double>>, Plain<double>>;

}  // namespace

int main() {
  std::mt19937_64 rng(7);
  const std::vector<int64_t> sizes = {5, 0, 1, 131077, 64, 3};
  AdamParams adam{1e-2, 0.9, 0.99, 1e-8, 0.1, true, false, true};
  for (Counters c : {Counters::kHost, Counters::kDevice32, Counters::kDevice64}) {
    Options o;
    o.counters = c;
    check_case<F32, AdamRule<float, true>, WithStep>("adam f32", adam, sizes, o, rng);
    check_case<F64, AdamRule<double, false>, WithStep>("adam f64", adam, sizes, o, rng);
  }
  {
    Options o;
    const float lr = 0.003f;
    o.lr = &lr;  // a tensor learning rate on the device
    check_case<F32, AdamRule<float, false>, WithStep>("adam tensor lr", adam, sizes, o, rng);
    AdagradParams ada{0.1, 0.01, 0.0, 1e-10, false};
    check_case<F32, AdagradRule<float>, WithStep>("adagrad tensor lr", ada, sizes, o, rng);
  }
  {
    using Amp = Storage<Plain<float>, Plain<float>, Plain<float>, void, true>;
    using AmpMaster = Storage<Plain<float>, Bf16, Plain<float>, Bf16, true>;
    Options o;
    o.counters = Counters::kDevice32;
    const float scale = 512.0f, no_inf = 0.0f, inf = 1.0f;
    o.grad_scale = &scale;
    o.found_inf = &no_inf;
    check_case<Amp, AdamRule<float, false>, WithStep>("adam GradScaler", adam, sizes, o, rng);
    check_case<AmpMaster, AdamRule<float, true>, WithStep>("adam bf16 master GradScaler", adam,
                                                           sizes, o, rng);
    o.found_inf = &inf;  // everything skipped: arrays and counters as they were
    check_case<Amp, AdamRule<float, false>, WithStep>("adam found_inf", adam, sizes, o, rng);
  }
  {
    Options o;
    o.counters = Counters::kNone;
    SgdParams sgd{0.05, 0.9, 0.1, 0.01, true, true};
    check_case<F32, SgdRule<float, true>, WithFirstFlag>("sgd momentum", sgd, sizes, o, rng);
    RmspropParams rms{0.01, 0.9, 1e-6, 0.05, 0.3, true, true};
    o.counters = Counters::kHost;
    o.seed = 12345;
    using SR = Storage<Bf16Stochastic, ReadOnly<Bf16>, Bf16>;
    check_case<SR, RmspropRule<float, true, true>, WithoutStep>("rmsprop bf16 stochastic", rms,
                                                                sizes, o, rng);
    // more tensors than a launch holds: several launches, same bits
    std::vector<int64_t> many(Launch<3>::kMaxTensors * 2 + 5, 7);
    o.counters = Counters::kNone;
    o.calls = 2;
    pfo_emulation::max_threads = 32;
    check_case<F32, SgdRule<float, true>, WithFirstFlag>("sgd many tensors", sgd, many, o, rng, 3);
    pfo_emulation::max_threads = 0;
  }
  {  // a division by zero is refused before anything is written (host counters)
    float counter = 2.0f;
    std::vector<float> p(4, 1.0f), g(4, 1.0f), m(4, 0.0f), v(4, 0.0f);
    std::vector<int64_t> row = {4,
                                reinterpret_cast<int64_t>(&counter),
                                reinterpret_cast<int64_t>(p.data()),
                                reinterpret_cast<int64_t>(g.data()),
                                reinterpret_cast<int64_t>(m.data()),
                                reinterpret_cast<int64_t>(v.data())};
    Table t{row.data(),           1, 6, false, 0, Rounding::kNearest, 0, nullptr, nullptr,
            StateStore::kAsParam, 0};
    AdamParams bad = adam;
    bad.beta1 = 1.0;
    bool raised = false;
    try {
      refuse_zero_division(Call{t, 0, 0, Steps::kHost, nullptr}, true,
                           [&](double s) { return 1.0 - std::pow(bad.beta1, s); });
    } catch (const ZeroDivision&) {
      raised = true;
    }
    CHECK(raised && counter == 2.0f && p[0] == 1.0f, "division by zero not refused cleanly");
    // no device: an error, nothing written, counters untouched
    pfo_emulation::no_device = true;
    bool no_device = false;
    try {
      run<F32, AdamRule<float, false>, WithStep>(Call{t, 0, 0, Steps::kHost, nullptr}, adam);
    } catch (const std::runtime_error& e) {
      no_device = std::string(e.what()).find("no usable CUDA device") != std::string::npos;
    }
    pfo_emulation::no_device = false;
    CHECK(no_device && counter == 2.0f && p[0] == 1.0f, "no device: not refused cleanly");
  }
  std::printf("checked: %" PRId64 " checks, %" PRId64 " launches, %" PRId64 " blocks emulated\n",
              checks, pfo_emulation::launches, pfo_emulation::blocks);
  return report_failures();
}
