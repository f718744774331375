"""Benchmark records and the numbers derived from them (speedups, GB/s, roofline share).

All ratios are computed from medians of the same interleaved run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .impls import IMPLS, REFERENCE

#: the pseudo-implementation of a training workload that runs forward+backward but no step
FWD_BWD_ONLY = "fwd-bwd-only"


@dataclass
class Record:
    """One optimizer × model × implementation of one run."""

    optimizer: str
    model: str
    params: int
    tensors: int
    impl: str
    median_us: float
    iqr_us: float
    min_us: float
    rounds: int
    calls_per_sample: int
    train: bool = False
    bytes_per_step: int | None = None
    gbps: float | None = None
    roofline_us: float | None = None
    roofline_share: float | None = None
    speedup_vs_torch: float | None = None
    speedup_vs_best_torch: float | None = None
    best_torch_impl: str | None = None
    fwd_bwd_us: float | None = None
    parity_ok: bool | None = None
    parity_steps: int | None = None
    parity_max_abs: float | None = None
    parity_max_rel: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    """An implementation that could not run in a group, and why."""

    optimizer: str
    model: str
    impl: str
    reason: str


def derive(group: list[Record]) -> None:
    """Fill in speedups, GB/s and roofline share for the records of one group, in place."""
    timed = {r.impl: r for r in group if r.impl != FWD_BWD_ONLY}
    torch_impls = [r for name, r in timed.items() if IMPLS[name].is_torch]
    base = timed.get(REFERENCE)
    best = min(torch_impls, key=lambda r: r.median_us) if torch_impls else None
    for r in timed.values():
        if base is not None:
            r.speedup_vs_torch = base.median_us / r.median_us
        if best is not None:
            r.speedup_vs_best_torch = best.median_us / r.median_us
            r.best_torch_impl = best.impl
        if r.bytes_per_step is not None:
            r.gbps = r.bytes_per_step / (r.median_us * 1e3)
        if r.roofline_us is not None:
            r.roofline_share = r.roofline_us / r.median_us
