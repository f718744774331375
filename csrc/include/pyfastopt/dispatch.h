// The interface between the bindings and the per-ISA kernel builds.
//
// Python hands each step function a flat table of int64: one row per tensor,
// `[numel, aux, ptr_0, ..., ptr_{K-1}]`, where aux is the address of the tensor's step counter
// (algorithms with a step) or a flag word (SGD: bit 0 = first step of the momentum buffer), and
// ptr_k are the data addresses of the param, its gradient and its state buffers, all dense with
// the same layout. The kernel builds check the row width, null and misaligned addresses; the
// Python layer has already checked every extent.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "pyfastopt/params.h"

namespace pyfastopt {

// Thrown before anything is written where torch's step divides a Python float by zero (Adam with
// beta1 == 1, Adagrad with 1 + (step - 1) * lr_decay == 0); the bindings raise ZeroDivisionError.
struct ZeroDivision : std::domain_error {
  using std::domain_error::domain_error;
};

enum class DType : int { kFloat32 = 0, kFloat64 = 1 };

struct Table {
  const int64_t* data;
  int64_t rows;
  int64_t width;
  bool step_f64;         // step counters are float64 (torch's default dtype was float64)
  int64_t parallel_min;  // fewer elements than this in a call run on the calling thread
};  // a plain aggregate: no inline code that the per-ISA builds could emit differently

struct KernelSet {
  const char* name;
  void (*sgd)(const Table&, DType, const SgdParams&, int num_threads);
  void (*adagrad)(const Table&, DType, const AdagradParams&, int num_threads);
  void (*adadelta)(const Table&, DType, const AdadeltaParams&, int num_threads);
  void (*rmsprop)(const Table&, DType, const RmspropParams&, int num_threads);
  void (*adam)(const Table&, DType, const AdamParams&, int num_threads);
};

// Defined by the three builds of cpu/kernels.cpp.
extern const KernelSet kernels_avx512;
extern const KernelSet kernels_avx2;
extern const KernelSet kernels_baseline;

// The best kernel set this CPU supports, or the one named by select_kernels().
const KernelSet& active_kernels();
// Selects "avx512", "avx2", "baseline" or "auto"; returns false if the CPU lacks that ISA.
bool select_kernels(const char* name);
// Names of the kernel sets this CPU can run, best first.
const char* const* supported_kernel_names(int* count);

}  // namespace pyfastopt
