// Hyper-parameters handed from Python to the native step functions, one struct per algorithm.
// Everything is double on the host; the rules cast to the tensor's precision once per tensor,
// exactly as torch casts a Python scalar to the tensor's dtype. `lr_f32` (set from the call's
// Table): lr is a 0-d float32 tensor, which torch's for-loop combines with Python floats in
// float32 arithmetic (rules.h: lr_quotient, lr_decay_factor).
#pragma once

namespace pyfastopt {

struct SgdParams {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

struct AdagradParams {
  double lr, lr_decay, weight_decay, eps;
  bool maximize;
  bool lr_f32 = false;
};

struct AdadeltaParams {
  double lr, rho, eps, weight_decay;
  bool maximize;
};

struct RmspropParams {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, maximize;
};

struct AdamParams {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled;
  bool lr_f32 = false;
};

struct NadamParams {
  double lr, beta1, beta2, eps, weight_decay, momentum_decay;
  bool maximize, decoupled;
  bool lr_f32 = false;
};

struct RadamParams {
  double lr, beta1, beta2, eps, weight_decay;
  bool maximize, decoupled;
  bool lr_f32 = false;
};

struct AdamaxParams {
  double lr, beta1, beta2, eps, weight_decay;
  bool maximize;
  bool lr_f32 = false;
};

// default_dtype: the DType code of torch.get_default_dtype(), which torch.as_tensor(float) gives
// the new eta and mu before they are copied into their tensors.
struct AsgdParams {
  double lr, lambd, alpha, t0, weight_decay;
  int default_dtype;
  bool maximize;
};

// lr only sets the initial step_size (in Python); the step reads the etas and step_sizes.
struct RpropParams {
  double etaminus, etaplus, step_size_min, step_size_max;
  bool maximize;
};

// eps1: torch's eps[0], resolved (None is finfo(dtype).eps, chosen in Python).
struct AdafactorParams {
  double lr, beta2_decay, eps1, eps2, d, weight_decay;
  bool maximize;
};

// lr and the step count enter through each row's step size (cpu/kernels.cpp: sparse_adam).
struct SparseAdamParams {
  double beta1, beta2, eps;
  bool maximize;
};

}  // namespace pyfastopt
