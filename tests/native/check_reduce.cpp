// Checks the unit plan and the passes of csrc/cpu/reduce.h: RowBlocks' blocks, rows and offsets,
// and run_passes with `rounds` (a run-time count, stopped early by the serial step) followed by
// a serial step and a pass, on 1, 2 and 3 OpenMP threads: every unit visited once per round that
// ran, each serial step once, in order. Built and run by tests/test_reduce.py:
//   g++ -O2 -std=c++17 -fopenmp -DPFO_ISA_NS=isa_check -I csrc/include -I csrc/cpu
//       tests/native/check_reduce.cpp
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "reduce.h"

using namespace pyfastopt::cpu;

namespace {

int64_t failures = 0;

void expect(bool ok, const char* what, int64_t a, int64_t b) {
  if (!ok && ++failures <= 10) std::printf("%s: %lld %lld\n", what, (long long)a, (long long)b);
}

void check_row_blocks() {
  const std::vector<int64_t> rows = {0, 1, 4096, 4097, 10000, 0, 33};
  const RowBlocks plan(static_cast<int64_t>(rows.size()),
                       [&](int64_t r) { return rows[static_cast<std::size_t>(r)]; });
  int64_t b = 0, total = 0;
  for (int64_t r = 0; r < static_cast<int64_t>(rows.size()); ++r) {
    expect(plan.first(r) == b, "first block of a row", r, plan.first(r));
    for (int64_t begin = 0; begin < rows[static_cast<std::size_t>(r)]; begin += kRowBlock, ++b) {
      const int64_t n = std::min(kRowBlock, rows[static_cast<std::size_t>(r)] - begin);
      expect(plan[b].row == r && plan[b].begin == begin && plan[b].n == n, "block", b, plan[b].n);
      total += n;
    }
  }
  expect(plan.size() == b && plan.first(static_cast<int64_t>(rows.size())) == b, "blocks", b,
         plan.size());
  expect(plan.split().units() == b && plan.split().total() == total, "split", total,
         plan.split().total());
}

// `count` rounds stopped after round `stop`, then a serial step and a pass.
void check_rounds(int threads, int64_t count, int64_t stop) {
  UnitSplit split;
  for (int64_t u = 0; u < 37; ++u) split.add(1 + u % 5);
  std::vector<int64_t> visits(static_cast<std::size_t>(split.units()), 0);
  std::vector<int64_t> log;  // serial steps in the order they ran: k, then -1 for the last one
  int64_t after = 0;
  run_passes(split, threads, 0,
             rounds(
                 count,
                 [&](int64_t k, int64_t u0, int64_t u1) {
                   for (int64_t u = u0; u < u1; ++u) {
                     // round k sees every unit visited k times
                     expect(visits[u] == k, "round order", u, visits[u]);
                     ++visits[u];
                   }
                 },
                 [&](int64_t k) {
                   log.push_back(k);
                   return k < stop;
                 }),
             serial([&] { log.push_back(-1); }), pass([&](int64_t u0, int64_t u1) {
#pragma omp atomic
               after += u1 - u0;
             }));
  const int64_t ran = count < stop + 1 ? count : stop + 1;
  for (int64_t v : visits) expect(v == ran, "rounds run", ran, v);
  expect(static_cast<int64_t>(log.size()) == ran + 1, "serial steps", ran + 1,
         static_cast<int64_t>(log.size()));
  for (std::size_t i = 0; i + 1 < log.size(); ++i) {
    expect(log[i] == static_cast<int64_t>(i), "serial step order", static_cast<int64_t>(i), log[i]);
  }
  expect(!log.empty() && log.back() == -1, "serial step after the rounds", -1,
         log.empty() ? 0 : log.back());
  expect(after == split.units(), "pass after the rounds", split.units(), after);
}

}  // namespace

int main() {
  check_row_blocks();
  for (int threads : {1, 2, 3}) {
    check_rounds(threads, 0, 5);
    check_rounds(threads, 4, 10);  // all rounds
    check_rounds(threads, 9, 2);   // stopped after round 2
    check_rounds(threads, 3, 0);   // stopped after the first
  }
  std::printf("%lld failures\n", (long long)failures);
  return failures == 0 ? 0 : 1;
}
