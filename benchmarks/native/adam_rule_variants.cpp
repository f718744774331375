// Where Adam's time goes at MNIST sizes: the exact rule against variants with fewer divisions.
// A stand-alone loop over 101,770 float32 elements (the 784-128-10 MLP), one thread, data in
// cache, median of 300 runs. Not part of the build; compile and run by hand:
//
//   g++ -O3 -fno-math-errno -ffp-contract=off -fopenmp-simd -mavx512f -mavx512vl -mfma
//       -mprefer-vector-width=512 benchmarks/native/adam_rule_variants.cpp -o /tmp/variants
//   (one line)
//   /tmp/variants
//
// variant 0: torch's operations (sqrt, two divisions) as pyfastopt's rule does them
// variant 1: the division by bias_correction2_sqrt replaced by a multiplication (not exact)
// variant 2: no division and no square root (not Adam; the cost of the rest)
// variant 3: p += a*g (the memory traffic floor of a trivial rule)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

template <int Variant>
void step(float* __restrict P, const float* __restrict G, float* __restrict M, float* __restrict V,
          int n) {
  const float b1 = 0.1f, b2 = 0.999f, ob2 = 0.001f, c = 0.3f, eps = 1e-8f, ss = -1e-3f;
  const float ic = 1.f / c;
#pragma omp simd
  for (int i = 0; i < n; ++i) {
    const float gg = G[i];
    if (Variant == 3) {
      P[i] = P[i] + ss * gg;
    } else {
      const float mm = std::fma(b1, gg - M[i], M[i]);
      M[i] = mm;
      const float s = std::fma(ob2 * gg, gg, V[i] * b2);
      V[i] = s;
      if (Variant == 0) P[i] = P[i] + (ss * mm) / (std::sqrt(s) / c + eps);
      if (Variant == 1) P[i] = P[i] + (ss * mm) / (std::sqrt(s) * ic + eps);
      if (Variant == 2) P[i] = P[i] + ss * mm * s;
    }
  }
}

template <int Variant>
void time_variant(std::vector<float>& p, std::vector<float>& g, std::vector<float>& m,
                  std::vector<float>& v) {
  std::vector<double> ts;
  for (int r = 0; r < 300; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    step<Variant>(p.data(), g.data(), m.data(), v.data(), static_cast<int>(p.size()));
    const auto t1 = std::chrono::steady_clock::now();
    ts.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  std::printf("variant %d: median %.1f us, min %.1f us\n", Variant, ts[150], ts[0]);
}

int main() {
  const int n = 101770;
  std::vector<float> p(n, 1.f), g(n, 0.5f), m(n, 0.1f), v(n, 0.2f);
  time_variant<0>(p, g, m, v);
  time_variant<1>(p, g, m, v);
  time_variant<2>(p, g, m, v);
  time_variant<3>(p, g, m, v);
}
