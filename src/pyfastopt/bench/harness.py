"""Interleaved timing: candidates run round-robin (A B C D A B C D ...) in one process.

Warm-up first (which also sizes each candidate's batch of calls so that one sample lasts at
least ``min_sample_ns``), then ``rounds`` rounds; each sample is the mean time of one call in
its batch, measured with ``time.perf_counter_ns`` (on a GPU: with CUDA events around the batch,
``device.cuda_timer``). Interleaving spreads the machine's slow
moments over all candidates alike, so ratios of medians from the same run are fair even on a
noisy machine; absolute times are not comparable across runs.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import _interrupt

_MAX_BATCH = 10_000


@dataclass(frozen=True)
class Timing:
    """Per-call times (ns) of one candidate, one sample per round."""

    samples_ns: tuple[float, ...]
    calls_per_sample: int

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples_ns)

    @property
    def min_ns(self) -> float:
        return min(self.samples_ns)

    @property
    def iqr_ns(self) -> float:
        if len(self.samples_ns) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples_ns, n=4, method="inclusive")
        return q3 - q1


def _time_batch(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - t0) / calls


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 1,
    min_sample_ns: float = 1e6,
    on_round: Callable[[int], None] | None = None,
    timer: Callable[[Callable[[], object], int], float] | None = None,
) -> dict[str, Timing]:
    """Time every candidate ``rounds`` times, round-robin, after ``warmup`` warm-up rounds.
    ``timer(fn, calls)``: ns per call of a batch (default: the host clock)."""
    time_batch = timer if timer is not None else _time_batch
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    names = list(candidates)
    batch = dict.fromkeys(names, 1)
    for _ in range(max(1, warmup)):
        for name in names:
            per_call = time_batch(candidates[name], batch[name])
            batch[name] = max(1, min(_MAX_BATCH, math.ceil(min_sample_ns / max(per_call, 1.0))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            _interrupt.check()
            for name in names:
                samples[name].append(time_batch(candidates[name], batch[name]))
            if on_round is not None:
                on_round(r)
    finally:
        if was_enabled:
            gc.enable()
    return {name: Timing(tuple(samples[name]), batch[name]) for name in names}
