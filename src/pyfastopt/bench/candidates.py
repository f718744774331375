"""Benchmark candidates: one implementation of one optimizer on one workload, built from the
same deterministic start as every other candidate of its group, and the cases of a matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .impls import IMPLS, REFERENCE, Impl
from .optimizers import OPTIMIZERS, OptimizerSpec, get_optimizer
from .parity import Parity, compare, snapshot
from .training import Batches, TrainStep, make_mlp, train_step
from .workloads import Workload, as_parameters, make_tensors, parse_workload


@dataclass
class Candidate:
    """A ready-to-time step (``step()``) and the parameters it updates."""

    impl: Impl
    step: Callable[[], object]
    params: Sequence[torch.Tensor]
    train: TrainStep | None = None

    def advance(self, steps: int) -> None:
        """Take ``steps`` steps on the workload's gradients (restored first where the
        implementation overwrites them; a training step computes its own)."""
        keep = self.impl.clobbers_grads and self.train is None
        saved = [p.grad.clone() for p in self.params if p.grad is not None] if keep else []
        for _ in range(steps):
            for p, g in zip(self.params, saved):
                p.grad.copy_(g)
            self.step()

    def check(self, reference: Sequence[torch.Tensor], steps: int) -> Parity:
        """Compare this candidate, after ``steps`` steps, with torch's result after as many."""
        return compare(
            reference, self.params, steps=steps, rtol=self.impl.rtol, atol=self.impl.atol
        )


def build_candidate(
    spec: OptimizerSpec,
    workload: Workload,
    impl: Impl,
    *,
    seed: int = 0,
    batches: Batches | None = None,
) -> Candidate:
    """``impl``'s optimizer on fresh parameters (and model, for training) from ``seed``."""
    if workload.train:
        if batches is None:
            raise ValueError(f"{workload.name} needs training batches")
        model = make_mlp(workload.hidden, seed)
        ts = train_step(model, batches.items, lambda ps: impl.build(spec, ps))
        return Candidate(impl, ts, ts.parameters(), ts)
    params = as_parameters(*make_tensors(workload, seed))
    return Candidate(impl, impl.build(spec, params).step, params)


def reference_run(
    spec: OptimizerSpec,
    workload: Workload,
    *,
    seed: int = 0,
    batches: Batches | None = None,
) -> tuple[Candidate, list[torch.Tensor]]:
    """torch's for-loop candidate after ``workload.parity_steps`` steps from the common start,
    and a copy of its parameters then (what every other candidate is compared with)."""
    ref = build_candidate(spec, workload, IMPLS[REFERENCE], seed=seed, batches=batches)
    ref.advance(workload.parity_steps)
    return ref, snapshot(ref.params)


@dataclass(frozen=True)
class Case:
    """One optimizer × workload × implementation of a benchmark matrix."""

    workload: str
    optimizer: str
    impl: str

    @property
    def id(self) -> str:
        return f"{self.workload}-{self.optimizer}-{self.impl}"

    @property
    def group(self) -> str:
        """The benchmark group: every implementation of one optimizer on one workload."""
        return f"{self.optimizer} {self.workload}"

    @property
    def spec(self) -> OptimizerSpec:
        return get_optimizer(self.optimizer)

    @property
    def model(self) -> Workload:
        return parse_workload(self.workload)


def cases(
    workloads: Iterable[str],
    optimizers: Iterable[str] = tuple(OPTIMIZERS),
    impls: Iterable[str] = tuple(IMPLS),
) -> list[Case]:
    """Every applicable case, grouped by workload then optimizer (torch's for-loop first)."""
    impl_names = list(impls)
    return [
        Case(w, o, i)
        for w in workloads
        for o in optimizers
        for i in impl_names
        if IMPLS[i].applies(get_optimizer(o))
    ]
