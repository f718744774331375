// The 0-d state scalars a row carries besides its step counter (NAdam's mu_product, ASGD's eta
// and mu): torch keeps them in 0-d tensors that its step reads with `.item()` and updates in
// place, in the tensor's own dtype. A row of an algorithm with `count` of them ends with their
// addresses, in order, then one word whose bit i marks scalar i as float64 (else float32).
// Python validated each one (a plain 1-element CPU float32/float64 tensor, _state.check_scalar)
// and holds it for the call; check_scalars() still refuses a malformed tail.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "pyfastopt/dispatch.h"
#include "pyfastopt/storage.h"

namespace pyfastopt {
inline namespace PFO_ISA_NS {  // see rules.h: one copy per ISA build
namespace cpu {

// One scalar of one row: its address and whether it is a float64.
class RowScalar {
 public:
  RowScalar(int64_t addr, bool f64) : addr_(addr), f64_(f64) {}

  double get() const {
    return f64_ ? *reinterpret_cast<const double*>(addr_)
                : static_cast<double>(*reinterpret_cast<const float*>(addr_));
  }
  // tensor.copy_(value): the value rounded to the scalar's dtype
  void set(double value) const {
    if (f64_) {
      *reinterpret_cast<double*>(addr_) = value;
    } else {
      *reinterpret_cast<float*>(addr_) = static_cast<float>(value);
    }
  }
  // `tensor * factor` for a Python float factor, computed in the tensor's dtype (ATen casts the
  // scalar to it first), without writing
  double times(double factor) const {
    if (f64_) return get() * factor;
    return static_cast<double>(*reinterpret_cast<const float*>(addr_) * static_cast<float>(factor));
  }

 private:
  int64_t addr_;
  bool f64_;
};

// torch.as_tensor(value) for a Python float: a tensor of the default dtype (c10 converts a double
// to bfloat16 or float16 through float).
inline double as_tensor_value(double value, DType default_dtype) {
  const float f = static_cast<float>(value);
  switch (default_dtype) {
    case DType::kFloat64:
      return value;
    case DType::kBFloat16:
      return static_cast<double>(bf16_to_f32(f32_to_bf16(f)));
    case DType::kFloat16:
      return static_cast<double>(fp16_to_f32(f32_to_fp16(f)));
    case DType::kFloat32:
      break;
  }
  return static_cast<double>(f);
}

// Scalar i of row r, for rows that end with `count` scalars and their flag word.
inline RowScalar row_scalar(const Table& t, int64_t r, int count, int i) {
  const int64_t* row = t.data + r * t.width;
  const int64_t flags = row[t.width - 1];
  return RowScalar(row[t.width - 1 - count + i], ((flags >> i) & 1) != 0);
}

// Refuses a table whose rows cannot end with `count` scalars and their flags: too short a row
// (at least the parameter and its gradient come first), unknown flag bits, null or misaligned
// addresses.
inline void check_scalars(const Table& t, int count) {
  if (t.width < 2 + 2 + count + 1) {
    throw std::invalid_argument("pyfastopt: table row too short for its state scalars");
  }
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t* row = t.data + r * t.width;
    const int64_t flags = row[t.width - 1];
    if (flags < 0 || flags >= (int64_t{1} << count)) {
      throw std::invalid_argument("pyfastopt: invalid state scalar flags");
    }
    for (int i = 0; i < count; ++i) {
      const int64_t a = row[t.width - 1 - count + i];
      const int64_t align = ((flags >> i) & 1) != 0 ? alignof(double) : alignof(float);
      if (a == 0 || a % align != 0) {
        throw std::invalid_argument("pyfastopt: invalid state scalar address");
      }
    }
  }
}

}  // namespace cpu
}  // namespace PFO_ISA_NS
}  // namespace pyfastopt
