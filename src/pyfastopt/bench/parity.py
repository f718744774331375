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


def _mismatches(got: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> int:
    """Elements ``torch.testing.assert_close`` would reject (|got-ref| > atol + rtol·|ref|,
    NaN anywhere but equal infinities fine), counted with few full-size temporaries."""
    diff = (got - ref).abs_()
    bound = ref.abs().mul_(rtol).add_(atol)
    close = diff.le_(bound).logical_or_(got == ref)
    return int(close.numel() - close.count_nonzero())


def compare(
    reference: Sequence[torch.Tensor],
    candidate: Sequence[torch.Tensor],
    *,
    steps: int,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> Parity:
    """Compare tensor lists by ``torch.testing.assert_close``'s rule (and with its message on a
    mismatch); the full ``assert_close`` only runs then, as it is slow on huge tensors."""
    max_abs = max_rel = 0.0
    for i, (ref_t, got_t) in enumerate(zip(reference, candidate, strict=True)):
        ref, got = ref_t.detach(), got_t.detach()
        if ref.shape != got.shape or ref.dtype != got.dtype:
            msg = f"item {i}: {got.dtype} {tuple(got.shape)} vs {ref.dtype} {tuple(ref.shape)}"
            return Parity(False, steps, float("inf"), float("inf"), msg)
        if ref.numel() == 0:
            continue
        diff = (got - ref).abs_()
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.div_(ref.abs().clamp_min_(1e-30)).max()))
        if _mismatches(got, ref, rtol, atol):
            try:
                torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
            except AssertionError as exc:
                return Parity(False, steps, max_abs, max_rel, f"item {i}: {exc}")
    return Parity(True, steps, max_abs, max_rel)


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of ``params`` (to compare later, after more steps were taken)."""
    return [p.detach().clone() for p in params]
