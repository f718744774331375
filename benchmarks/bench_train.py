"""A whole training step (forward, backward, step) of the 784-512-256-10 MLP on MNIST batches
of 128, beside forward+backward alone (pyfastopt must not slow torch's own compute)."""

from __future__ import annotations

import statistics

import pytest

from pyfastopt.bench.candidates import Case, cases
from pyfastopt.bench.optimizers import OPTIMIZERS
from pyfastopt.bench.training import make_mlp, train_step
from pyfastopt.bench.workloads import DEFAULT_WORKLOADS, parse_workload

TRAIN_WORKLOADS = [w for w in DEFAULT_WORKLOADS if parse_workload(w).train]


def _describe(benchmark, case: Case, batches) -> None:
    benchmark.group = case.group
    benchmark.extra_info.update(
        params=case.model.numel, batch_size=len(batches.items[0][1]), data=batches.source
    )


@pytest.mark.parametrize("case", cases(TRAIN_WORKLOADS), ids=lambda c: c.id)
def test_train(benchmark, case, checked, batches):
    candidate = checked(case)
    assert candidate.train is not None
    _describe(benchmark, case, batches)
    candidate.train.fwd_bwd_ns.clear()
    benchmark(candidate.step)
    benchmark.extra_info["fwd_bwd_us"] = statistics.median(candidate.train.fwd_bwd_ns) / 1e3


@pytest.mark.parametrize(
    "case",
    [
        Case(w, o, "fwd-bwd-only")
        for w in TRAIN_WORKLOADS
        for o, spec in OPTIMIZERS.items()
        if not spec.sparse  # the MLPs have dense gradients
    ],
    ids=lambda c: c.id,
)
def test_forward_backward_only(benchmark, case, batches):
    step = train_step(make_mlp(case.model.hidden), batches.items)
    _describe(benchmark, case, batches)
    benchmark(step)
