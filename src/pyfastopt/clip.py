"""``clip_grad_norm_``: torch's gradient-norm clipping as one fused native call.

``pyfastopt.clip_grad_norm_`` takes the arguments of ``torch.nn.utils.clip_grad_norm_`` and
returns what it returns. On CPU gradients it makes one native call: a first pass reduces every
gradient to its norm (a reduction order that does not depend on the thread count) and combines
the norms as torch does, a second pass scales every gradient by torch's clamped coefficient.
Whatever that call does not take (other devices, sparse or non-dense gradients, subclasses,
neg views, overlapping gradients, ...) goes to torch's own function, which computes or raises
exactly as torch does.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterable
from functools import reduce

import torch
from torch.nn.utils import clip_grad_norm_ as _torch_clip_grad_norm_

from . import _config, _core
from .errors import OperandError
from .optim._base import _bump_versions
from .optim._layout import check_storage, is_dense

__all__ = ["clip_grad_norm_"]

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter

#: gradient dtype -> dtype code of the native norm table (csrc/include/pyfastopt/norms.h)
_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float64: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
}
_DONE, _ALIASED, _NONFINITE = 0, 1, 2
_INF = float("inf")
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def clip_grad_norm_(
    parameters: _Tensor | Iterable[_Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> _Tensor:
    r"""Clip the gradient norm of an iterable of parameters, as
    :func:`torch.nn.utils.clip_grad_norm_` does, in one fused native call.

    The norm is computed over the norms of the individual gradients, as if they were
    concatenated into one vector, and every gradient is multiplied in place by
    ``clamp(max_norm / (total_norm + 1e-6), max=1)``.

    Args:
        parameters: a tensor or an iterable of tensors whose ``.grad`` is clipped
            (``grad is None`` is skipped).
        max_norm: max norm of the gradients.
        norm_type: the p of the p-norm: 2, 1, 0, ``inf``, ``-inf`` or any other float.
        error_if_nonfinite: raise torch's RuntimeError, before scaling anything, if the total
            norm is NaN or infinite.
        foreach: accepted for compatibility; it only matters where torch's own function runs
            (gradients the native core does not take).

    Returns:
        The total norm of the gradients, a 0-d tensor of their (promoted) dtype on the first
        gradient's device; ``tensor(0.)`` when no parameter has a gradient.
    """
    if _is_compiling():  # under torch.compile: torch's own function, which it can trace
        return _torch_clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
    if isinstance(parameters, _Tensor):
        params: list = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        params = list(parameters)
        if is_generator and len(params) == 0:
            warnings.warn(
                "`parameters` is an empty generator, no gradient clipping will occur.",
                stacklevel=2,
            )
    grads = [p.grad for p in params if p.grad is not None]
    p = float(norm_type)
    if len(grads) == 0:
        float(max_norm)  # as torch's _clip_grads_with_norm_, before its own early return
        return torch.tensor(0.0)
    table = _table(grads, p)
    if table is None:
        return _torch_clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
    try:
        max_norm_f = float(max_norm)
    except (TypeError, ValueError, RuntimeError):  # torch raises it after the norm's own checks
        return _torch_clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
    dtypes = {g.dtype for g in grads}
    out_dtype = dtypes.pop() if len(dtypes) == 1 else reduce(torch.promote_types, dtypes)
    total_norm = torch.empty((), dtype=out_dtype)
    status, _coef, _scaled = _core.clip_grad_norm(
        table,
        p,
        max_norm_f,
        _CODES[out_dtype],
        total_norm.data_ptr(),
        True,
        bool(error_if_nonfinite),
        _config.get_num_threads(),
        _config.PARALLEL_MIN_ELEMENTS,
    )
    if status == _ALIASED:  # gradients share memory: torch scales shared elements twice
        return _torch_clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
    if status == _NONFINITE:
        raise RuntimeError(
            f"The total norm of order {p} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable "
            "this error and scale the gradients by the non-finite norm anyway, "
            "set `error_if_nonfinite=False`"
        )
    # torch's mul_ advances every gradient's version counter (also by a coefficient of 1)
    _bump_versions(grads)
    return total_norm


def _table(grads: list[_Tensor], p: float) -> list[int] | None:
    """The native table ``[numel, dtype code, address]`` per gradient, or None where torch's own
    function must run: a gradient the core does not take, or a norm torch refuses to compute."""
    if p != p:  # NaN
        return None
    no_identity = p == _INF or p < 0.0  # torch raises on an empty tensor for these
    table: list[int] = []
    for g in grads:
        tp = type(g)
        code = _CODES.get(g.dtype)
        if (
            code is None
            or (tp is not _Tensor and tp is not _Parameter)
            or not g.is_cpu
            or g.layout != torch.strided
            or g.is_neg()
            or g.is_inference()
            or not (g.is_contiguous() or is_dense(g))
        ):
            return None
        check_storage(g, "a gradient", OperandError, "clip_grad_norm_")
        n = g.numel()
        if n == 0 and no_identity:
            return None
        table += (n, code, g.data_ptr())
    return table
