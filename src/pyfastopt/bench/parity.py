"""Correctness beside speed: a candidate's parameters after k steps against torch's.

float32/float64: within ``torch.testing.assert_close``'s rule of torch's for-loop result.
bfloat16/float16: against the 16-bit reference of the README (torch's fused kernel for Adam and
AdamW, otherwise torch's float32 for-loop on upcast values rounded once per step), bit for bit
except for at most :data:`ULP_SHARE` of the elements, each one unit in the last place off, and
values within :data:`LOWP_ATOL` of it (the float32 checks' absolute floor: tiny values where
the float32 reference and the 16-bit rule part by a few float32 ulps before rounding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..optim._state import SCALAR_KEYS


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


#: the share of 16-bit elements that may differ from the reference, by one unit in the last place
ULP_SHARE = 1e-3
#: differences this small are not counted (the float32 checks' atol)
LOWP_ATOL = 1e-6


def compare_lowp(
    reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor], *, steps: int
) -> Parity:
    """Compare 16-bit tensor lists by their bits (NaN equal to NaN): see the module's rule."""
    max_abs = max_rel = 0.0
    differ = total = 0
    for i, (ref_t, got_t) in enumerate(zip(reference, candidate, strict=True)):
        ref, got = ref_t.detach().reshape(-1), got_t.detach().reshape(-1)
        if ref.shape != got.shape or ref.dtype != got.dtype:
            msg = f"item {i}: {got.dtype} {tuple(got.shape)} vs {ref.dtype} {tuple(ref.shape)}"
            return Parity(False, steps, float("inf"), float("inf"), msg)
        a, b = got.view(torch.int16).int(), ref.view(torch.int16).int()
        af, bf = got.float(), ref.float()
        diff = (a != b) & ~(af.isnan() & bf.isnan()) & ~((af - bf).abs() <= LOWP_ATOL)
        total += a.numel()
        if not diff.any():
            continue
        err = (af - bf).abs()[diff]
        max_abs = max(max_abs, float(err.max()))
        max_rel = max(max_rel, float((err / bf.abs()[diff].clamp_min(1e-30)).max()))
        ulps = int((a[diff] - b[diff]).abs().max())
        differ += int(diff.sum())
        if ulps > 1:
            msg = f"item {i}: {int(diff.sum())} elements differ, by up to {ulps} units"
            return Parity(False, steps, max_abs, max_rel, msg)
    if total and differ / total > ULP_SHARE:
        msg = f"{differ} of {total} elements differ by one unit (more than {ULP_SHARE:.0e})"
        return Parity(False, steps, max_abs, max_rel, msg)
    return Parity(True, steps, max_abs, max_rel)


def upcast_hparams(cls_name: str, hparams: Mapping[str, Any], dtype: torch.dtype) -> dict:
    """The hyper-parameters of the float32 (or float64) reference of a ``dtype`` run: as given,
    except where torch derives a value from the parameter's dtype: Adafactor's
    ``eps=(None, eps2)`` means ``finfo(dtype).eps``, which the reference is given explicitly, and
    Rprop's lr, whose only use is the initial step size, is stored in the parameter's dtype."""
    out = dict(hparams)
    if cls_name == "Adafactor" and out.get("eps", (None, 1e-3))[0] is None:
        out["eps"] = (torch.finfo(dtype).eps, out.get("eps", (None, 1e-3))[1])
    if cls_name == "Rprop" and "lr" in out:
        out["lr"] = float(torch.tensor(float(out["lr"])).to(dtype))
    return out


def round_state(opt: torch.optim.Optimizer, dtype: torch.dtype) -> None:
    """Round a float32 optimizer's parameters and state to ``dtype`` and back, in place (the
    16-bit reference stores every value once per step in the 16-bit type). 0-d state scalars
    (the step counter, NAdam's mu_product, ASGD's eta and mu) stay float32, as torch creates
    them for 16-bit parameters too."""
    with torch.no_grad():
        for group in opt.param_groups:
            for p in group["params"]:
                p.copy_(p.to(dtype).float())
        for st in opt.state.values():
            for k, v in st.items():
                if k not in SCALAR_KEYS and torch.is_tensor(v) and v.is_floating_point():
                    v.copy_(v.to(dtype).float())


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies of ``params`` (to compare later, after more steps were taken)."""
    return [p.detach().clone() for p in params]
