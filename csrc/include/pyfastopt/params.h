// Hyper-parameters handed from Python to the native step functions, one struct per algorithm.
// Everything is double on the host; the rules cast to the tensor's precision once per tensor,
// exactly as torch casts a Python scalar to the tensor's dtype.
#pragma once

namespace pyfastopt {

struct SgdParams {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

struct AdagradParams {
  double lr, lr_decay, weight_decay, eps;
  bool maximize;
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
