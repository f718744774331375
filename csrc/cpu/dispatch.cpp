// Run-time choice of the SIMD build: AVX-512, AVX2+FMA or the x86-64 baseline, by cpuid.
#include "pyfastopt/dispatch.h"

#include <atomic>
#include <cstring>

namespace pyfastopt {
namespace {

bool cpu_has_avx512() {
#if defined(PFO_HAVE_X86_ISAS)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if defined(PFO_HAVE_X86_ISAS)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

#if defined(PFO_HAVE_X86_ISAS)
const KernelSet* const k_avx512 = &kernels_avx512;
const KernelSet* const k_avx2 = &kernels_avx2;
#else  // not built on this architecture; never selected because the cpu_has_* are false
const KernelSet* const k_avx512 = &kernels_baseline;
const KernelSet* const k_avx2 = &kernels_baseline;
#endif

const KernelSet* best() {
  if (cpu_has_avx512()) return k_avx512;
  if (cpu_has_avx2()) return k_avx2;
  return &kernels_baseline;
}

// Read by kernels running without the GIL, possibly on several Python threads at once, while
// set_simd() may write it: atomic (ThreadSanitizer found the plain pointer racing).
std::atomic<const KernelSet*> g_active{nullptr};

bool cpu_has_avx512bf16() {
#if defined(PFO_HAVE_X86_ISAS)
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool cpu_has_avx512vbmi() {
#if defined(PFO_HAVE_X86_ISAS)
  return __builtin_cpu_supports("avx512vbmi");
#else
  return false;
#endif
}

std::atomic<bool> g_lanes{true};

}  // namespace

int lanes_mode() {
  static const bool bf16 = cpu_has_avx512bf16();
  static const bool vbmi = cpu_has_avx512vbmi();
  if (!g_lanes.load(std::memory_order_relaxed)) return 0;
  return kLanesOn | (bf16 ? kLanesBf16 : 0) | (vbmi ? kLanesVbmi : 0);
}

void set_lanes(bool on) { g_lanes.store(on, std::memory_order_relaxed); }

const KernelSet& active_kernels() {
  const KernelSet* k = g_active.load(std::memory_order_acquire);
  if (k == nullptr) {
    const KernelSet* expected = nullptr;
    k = best();
    if (!g_active.compare_exchange_strong(expected, k, std::memory_order_acq_rel)) k = expected;
  }
  return *k;
}

bool select_kernels(const char* name) {
  const KernelSet* k = nullptr;
  if (std::strcmp(name, "auto") == 0) {
    k = best();
  } else if (std::strcmp(name, "avx512") == 0) {
    if (!cpu_has_avx512()) return false;
    k = k_avx512;
  } else if (std::strcmp(name, "avx2") == 0) {
    if (!cpu_has_avx2()) return false;
    k = k_avx2;
  } else if (std::strcmp(name, "baseline") == 0) {
    k = &kernels_baseline;
  } else {
    return false;
  }
  g_active.store(k, std::memory_order_release);
  return true;
}

const char* const* supported_kernel_names(int* count) {
  static const char* names[3];
  int n = 0;
  if (cpu_has_avx512()) names[n++] = "avx512";
  if (cpu_has_avx2()) names[n++] = "avx2";
  names[n++] = "baseline";
  *count = n;
  return names;
}

}  // namespace pyfastopt
