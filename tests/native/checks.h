// CHECK and the failure count shared by the host checks of the CUDA module
// (check_cuda_traversal.cpp, check_cuda_emulated.cpp): the first 20 failures are printed.
#pragma once

#include <cstdint>
#include <cstdio>

inline int failures = 0;
inline int64_t checks = 0;

#define CHECK(cond, ...)                                            \
  do {                                                              \
    ++checks;                                                       \
    if (!(cond)) {                                                  \
      if (++failures <= 20) {                                       \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                   \
        std::printf("\n");                                          \
      }                                                             \
    }                                                               \
  } while (0)

// Prints the failure count, and "ok" where there is none; the process's exit status.
inline int report_failures() {
  std::printf("%d failures\n", failures);
  if (failures == 0) std::printf("ok\n");
  return failures == 0 ? 0 : 1;
}
