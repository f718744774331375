"""pytest-benchmark suite: every implementation of an optimizer shares one benchmark group.

Run ``pytest benchmarks`` for timings, ``pytest benchmarks --benchmark-disable`` (CI) to run
each benchmark once and only check it still works and still matches torch. The workloads,
optimizers and implementations come from :mod:`pyfastopt.bench`, as for the CLI.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from pyfastopt.bench.candidates import (
    Candidate,
    Case,
    build_candidate,
    is_checked,
    reference_run,
)
from pyfastopt.bench.impls import IMPLS, REFERENCE, unavailable
from pyfastopt.bench.machine import header_lines, machine_record
from pyfastopt.bench.training import Batches, load_batches
from pyfastopt.data import ENV_VAR, find_mnist


def _data_line() -> str:
    try:
        return f"MNIST: {find_mnist(split='train')} (train-* benchmarks use real batches)"
    except FileNotFoundError:
        return f"MNIST: not found ({ENV_VAR}); train-* benchmarks use synthetic MNIST-shaped data"


def pytest_report_header(config: pytest.Config) -> list[str]:
    machine = machine_record(_data_line(), None)
    return ["pyfastopt benchmarks: " + line for line in header_lines(machine)]


@pytest.fixture(scope="session")
def batches() -> Batches:
    """Fixed MNIST training batches of 128 (synthetic ones, said so, when there is no data)."""
    return load_batches()


class _References:
    """torch's for-loop result for the latest (optimizer, workload) only (memory), and the
    for-loop candidate that produced it, handed once to that group's own ``torch`` case."""

    def __init__(self) -> None:
        self._key: tuple[str, str] | None = None
        self._params: list[torch.Tensor] | None = []
        self._candidate: Candidate | None = None

    def get(
        self, case: Case, data: Batches | None
    ) -> tuple[list[torch.Tensor] | None, Candidate | None]:
        key = (case.optimizer, case.workload)
        if key != self._key:
            self._key, self._params, self._candidate = None, [], None
            self._candidate, self._params = reference_run(case.spec, case.model, batches=data)
            self._key = key
        candidate = None
        if case.impl == REFERENCE:
            candidate, self._candidate = self._candidate, None
        return self._params, candidate


@pytest.fixture(scope="session")
def references() -> _References:
    return _References()


@pytest.fixture
def checked(request: pytest.FixtureRequest, references: _References) -> Callable[[Case], Candidate]:
    """Build a case's candidate, step it as often as the reference and assert they agree.

    The check runs before and outside the timed function; the candidate then goes on stepping
    from there when it is timed.
    """

    def build(case: Case) -> Candidate:
        workload = case.model
        reason = unavailable(case.impl, case.optimizer, workload.lowp)
        if reason:
            pytest.skip(reason)
        data = request.getfixturevalue("batches") if workload.train else None
        reference, candidate = references.get(case, data)
        if candidate is not None:  # torch's for-loop itself: it *is* the reference
            return candidate
        candidate = build_candidate(case.spec, workload, IMPLS[case.impl], batches=data)
        candidate.advance(workload.parity_steps)
        if reference is not None and is_checked(candidate.impl, workload, case.spec):
            parity = candidate.check(reference, workload.parity_steps)
            assert parity.ok, (
                f"{case.id}: result differs from the reference after {parity.steps} steps: "
                f"{parity.message}"
            )
        return candidate

    return build
