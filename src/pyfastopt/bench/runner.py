"""Run one benchmark group (an optimizer on a workload): build every candidate from the same
start, check each against torch's for-loop result, then time them all interleaved with the
streaming roofline (step workloads) or forward+backward alone (training workloads).
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .candidates import (
    Candidate,
    build_candidate,
    exact_reference,
    is_checked,
    rounded_reference,
)
from .device import cuda_timer
from .harness import Timing, interleaved
from .impls import IMPLS, REFERENCE, unavailable
from .optimizers import OptimizerSpec
from .parity import Parity, snapshot
from .results import FWD_BWD_ONLY, Record, Skipped, derive
from .roofline import streaming_kernel
from .training import Batches, make_mlp, train_step
from .workloads import Workload

ROOFLINE = "roofline"


@dataclass(frozen=True)
class Settings:
    """How a group is measured."""

    rounds: int = 20
    warmup: int = 2
    min_sample_ns: float = 2e6
    check: bool = True
    seed: int = 0
    device: str = "cpu"  # "cuda": parameters on the current GPU, timed with CUDA events


@dataclass
class Group:
    """The outcome of one group."""

    records: list[Record] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _check(
    cands: dict[str, Candidate], spec: OptimizerSpec, workload: Workload, seed: int
) -> dict[str, Parity]:
    """Step every candidate as often as the reference takes from the same start; compare the
    checked ones with it (torch's for-loop, or the rounded reference)."""
    steps = workload.parity_steps
    for c in cands.values():
        c.advance(steps)
    if workload.lowp or exact_reference(spec, workload):
        ref = rounded_reference(spec, workload, seed=seed)
    else:
        ref = snapshot(cands[REFERENCE].params)
    if ref is None:
        return {}
    return {
        name: c.check(ref, steps) for name, c in cands.items() if is_checked(c.impl, workload, spec)
    }


def run_group(
    spec: OptimizerSpec,
    workload: Workload,
    impl_names: Sequence[str],
    settings: Settings,
    batches: Batches | None = None,
) -> Group:
    """Measure ``spec`` on ``workload`` for each available implementation (torch's always)."""
    group = Group()
    names = [REFERENCE] + [n for n in impl_names if n != REFERENCE]
    cands: dict[str, Candidate] = {}
    for name in names:
        reason = unavailable(name, spec.name, workload.lowp, settings.device)
        if reason:
            group.skipped.append(Skipped(spec.name, workload.name, name, reason))
        else:
            cands[name] = build_candidate(
                spec,
                workload,
                IMPLS[name],
                seed=settings.seed,
                batches=batches,
                device=settings.device,
            )
    parity = _check(cands, spec, workload, settings.seed) if settings.check else {}

    timed: dict[str, Callable[[], object]] = {n: c.step for n, c in cands.items()}
    nbytes = None
    if workload.train:
        assert batches is not None
        fwd_bwd = train_step(make_mlp(workload.hidden, settings.seed), batches.items)
        timed[FWD_BWD_ONLY] = fwd_bwd
        for c in cands.values():
            assert c.train is not None
            c.train.fwd_bwd_ns.clear()
    else:
        nbytes = spec.bytes_per_step(workload.step_numel, workload.itemsize)
        timed[ROOFLINE] = streaming_kernel(nbytes, settings.device)
    timings = interleaved(
        timed,
        rounds=settings.rounds,
        warmup=settings.warmup,
        min_sample_ns=settings.min_sample_ns,
        timer=cuda_timer if settings.device == "cuda" else None,
    )
    roof = timings.pop(ROOFLINE, None)
    for name, timing in timings.items():
        record = _record(spec, workload, name, timing)
        if name in cands:
            c = cands[name]
            record.bytes_per_step = nbytes
            record.roofline_us = roof.median_ns / 1e3 if roof is not None else None
            if c.train is not None and c.train.fwd_bwd_ns:
                record.fwd_bwd_us = statistics.median(c.train.fwd_bwd_ns) / 1e3
            if name in parity:
                p = parity[name]
                record.parity_ok, record.parity_steps = p.ok, p.steps
                record.parity_max_abs, record.parity_max_rel = p.max_abs, p.max_rel
        else:  # forward+backward alone
            record.fwd_bwd_us = record.median_us
        group.records.append(record)
    derive(group.records)
    del cands, timed
    gc.collect()
    return group


def _record(spec: OptimizerSpec, workload: Workload, impl: str, t: Timing) -> Record:
    return Record(
        optimizer=spec.name,
        model=workload.name,
        params=workload.numel,
        tensors=workload.tensors,
        impl=impl,
        median_us=t.median_ns / 1e3,
        iqr_us=t.iqr_ns / 1e3,
        min_us=t.min_ns / 1e3,
        rounds=len(t.samples_ns),
        calls_per_sample=t.calls_per_sample,
        train=workload.train,
    )
