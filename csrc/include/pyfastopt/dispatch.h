// The interface between the bindings and the per-ISA kernel builds.
//
// Python hands each step function a flat table of int64: one row per tensor,
// `[numel, aux, ptr_0, ..., ptr_{K-1}]`, where aux is the address of the tensor's step counter
// (algorithms with a step) or a flag word (SGD: bit 0 = first step of the momentum buffer), and
// ptr_k are the data addresses of the param, its gradient and its state buffers, all dense with
// the same layout (and, with Rounding::kMaster, of the low-precision parameter last), followed by
// the scale vectors of 8-bit state (StateStore::kBlock8). Algorithms with 0-d state besides the
// step counter (NAdam: mu_product; ASGD: eta, mu) end each row with those scalars' addresses, in
// that order, and one word whose bit i marks scalar i as float64 (else float32): see
// cpu/row_scalars.h. The kernel builds check the row width, null and misaligned addresses; the
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

// Thrown before anything is written where a step counter holds no count (NaN, infinite or
// negative: set in place since the step that checked it); the bindings raise StateError.
struct BadStepCounter : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// The storage type of a call's parameters and gradients. bfloat16 and float16 are computed in
// float32 and rounded once per stored value (storage.h).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// How a bfloat16/float16 parameter is stored back.
//   kNearest: round to nearest even, state in the parameter's dtype (torch's layout);
//   kStochastic: stochastic rounding of the parameter (bfloat16 only), state as kNearest;
//   kMaster: array 0 is a float32 master copy, the state is float32, and each row has one more
//            array at its end, the parameter itself, written as the rounded master (and read
//            first: an element written since the last step re-seeds its master, rules.h WithCopy).
enum class Rounding : int { kNearest = 0, kStochastic = 1, kMaster = 2 };

// How the state buffers are stored (the low-memory state of `state_dtype`):
//   kAsParam: torch's layout (the parameter's dtype; float32 with Rounding::kMaster);
//   kBf16, kBf16Stochastic: bfloat16, rounded to nearest even or stochastically;
//   kBlock8: 8-bit codes with one float32 scale per `block` elements (quant.h); each row then
//            ends with one scale-vector address per quantised buffer, in buffer order.
enum class StateStore : int { kAsParam = 0, kBf16 = 1, kBf16Stochastic = 2, kBlock8 = 3 };

struct Table {
  const int64_t* data;
  int64_t rows;
  int64_t width;
  bool step_f64;         // step counters are float64 (torch's default dtype was float64)
  int64_t parallel_min;  // fewer elements than this in a call run on the calling thread
  Rounding rounding;     // bfloat16/float16 calls only
  uint64_t seed;         // stochastic rounding: mixes the user's seed, the group and the step
  // torch.amp.GradScaler (fused=True): float32 scalars, or null. found_inf == 1 skips the call;
  // grad_scale unscales each gradient in the compute type, writes it back rounded and updates
  // with the unrounded value (bfloat16/float16 calls; float32/float64 are unscaled in Python,
  // which is the same arithmetic).
  const float* grad_scale;
  const float* found_inf;
  StateStore state;     // how the state buffers are stored
  int64_t block;        // StateStore::kBlock8: elements per block (a multiple of 16, at most 4096)
  bool lr_f32 = false;  // lr is a 0-d float32 tensor (params.h)
};  // a plain aggregate: no inline code that the per-ISA builds could emit differently

struct KernelSet {
  const char* name;
  void (*sgd)(const Table&, DType, const SgdParams&, int num_threads);
  void (*adagrad)(const Table&, DType, const AdagradParams&, int num_threads);
  void (*adadelta)(const Table&, DType, const AdadeltaParams&, int num_threads);
  void (*rmsprop)(const Table&, DType, const RmspropParams&, int num_threads);
  void (*adam)(const Table&, DType, const AdamParams&, int num_threads);
  void (*nadam)(const Table&, DType, const NadamParams&, int num_threads);
  void (*radam)(const Table&, DType, const RadamParams&, int num_threads);
  void (*adamax)(const Table&, DType, const AdamaxParams&, int num_threads);
  void (*asgd)(const Table&, DType, const AsgdParams&, int num_threads);
  void (*rprop)(const Table&, DType, const RpropParams&, int num_threads);
  // Tables of their own row layouts (cpu/adafactor.cpp, cpu/kernels.cpp: sparse_adam).
  void (*adafactor)(const Table&, DType, const AdafactorParams&, int num_threads);
  void (*sparse_adam)(const Table&, DType, const SparseAdamParams&, int num_threads);
  // 8-bit state as a step stores it (quant.h): n float32 values <-> n codes and ceil(n / block)
  // scales, for the bindings' quantize_blockwise / dequantize_blockwise
  void (*quantize)(const float* src, uint8_t* codes, float* scales, int64_t n, int64_t block,
                   bool is_unsigned);
  void (*dequantize)(const uint8_t* codes, const float* scales, float* dst, int64_t n,
                     int64_t block, bool is_unsigned);
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

// The AVX-512 build's 16-lane loop for bfloat16/float16 storage (multi_tensor.h): kLanesOn while
// switched on (the default), kLanesBf16 where the CPU also has AVX512-BF16. Off, 16-bit steps
// take the compiler-vectorised loop, which gives the same bits.
constexpr int kLanesOn = 1;
constexpr int kLanesBf16 = 2;
constexpr int kLanesVbmi = 4;  // AVX512-VBMI: 8-bit state decodes with byte permutes (quant.h)
int lanes_mode();
void set_lanes(bool on);

}  // namespace pyfastopt
