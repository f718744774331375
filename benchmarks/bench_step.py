"""``optimizer.step()`` alone on fixed gradients: MNIST MLPs (float32 and bfloat16), many small
tensors, one huge one, and an embedding table with a sparse gradient (SparseAdam)."""

from __future__ import annotations

import pytest

from pyfastopt.bench.candidates import cases
from pyfastopt.bench.workloads import DEFAULT_WORKLOADS, parse_workload

STEP_WORKLOADS = [w for w in DEFAULT_WORKLOADS if not parse_workload(w).train]
#: from this many elements on, a fixed small number of rounds (each step takes milliseconds+)
LARGE = 1 << 22


@pytest.mark.parametrize("case", cases(STEP_WORKLOADS), ids=lambda c: c.id)
def test_step(benchmark, case, checked):
    candidate = checked(case)
    workload = case.model
    benchmark.group = case.group
    benchmark.extra_info.update(
        params=workload.numel,
        tensors=workload.tensors,
        bytes_per_step=case.spec.bytes_per_step(workload.step_numel, workload.itemsize),
    )
    if workload.numel >= LARGE:
        benchmark.pedantic(candidate.step, rounds=7, warmup_rounds=1)
    else:
        benchmark(candidate.step)
