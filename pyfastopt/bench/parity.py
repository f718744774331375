"""Correctness beside speed: a candidate's parameters after k steps against torch's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Parity:
    """The outcome of one comparison (``ok`` within tolerance; the largest deviations)."""

    ok: bool
    steps: int
    max_abs: float
    max_rel: float
    message: str = ""


def compare(
    reference: Sequence[torch.Tensor],
    candidate: Sequence[torch.Tensor],
    *,
    steps: int,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> Parity:
    """Compare tensor lists as ``torch.testing.assert_close(candidate, reference)`` would."""
    max_abs = max_rel = 0.0
    for ref, got in zip(reference, candidate, strict=True):
        diff = (got.detach().double() - ref.detach().double()).abs()
        if diff.numel():
            max_abs = max(max_abs, float(diff.max()))
            rel = diff / ref.detach().double().abs().clamp_min(1e-30)
            max_rel = max(max_rel, float(rel.max()))
    try:
        torch.testing.assert_close(
            [t.detach() for t in candidate], [t.detach() for t in reference], rtol=rtol, atol=atol
        )
    except AssertionError as exc:
        return Parity(False, steps, max_abs, max_rel, str(exc))
    return Parity(True, steps, max_abs, max_rel)


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of ``params`` (to compare later, after more steps were taken)."""
    return [p.detach().clone() for p in params]
