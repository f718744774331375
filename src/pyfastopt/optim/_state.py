"""Validation of per-parameter optimizer state: the trust boundary in front of the native core.

Every tensor whose address reaches C++ passes through here first (on the first step, after
``load_state_dict`` and whenever a step finds that something changed), so a truncated, mis-shaped,
mis-typed or misplaced state tensor raises :class:`~pyfastopt.StateError` instead of being read
or written out of bounds.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from ..errors import StateError

STEP_DTYPES = (torch.float32, torch.float64)
#: 0-d state scalars the native step reads and writes through their addresses, in their own dtype
#: (float32 or float64): the step counter, NAdam's mu_product, ASGD's eta and mu. They are not
#: buffers: ``state_dtype`` and 16-bit parameters leave them as torch creates them.
SCALAR_KEYS = frozenset({"step", "mu_product", "eta", "mu"})


def describe(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return (
            f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device}, layout={t.layout})"
        )
    return f"{type(t).__name__} {t!r}"[:120]


def check_buffer(
    p: torch.Tensor, state: dict, key: str, where: str, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Return ``state[key]`` if it is a strided tensor with ``p``'s shape and device, and
    ``dtype`` (default: ``p``'s)."""
    dtype = p.dtype if dtype is None else dtype
    if key not in state:
        raise StateError(f"{where}: state has no {key!r} entry (keys: {sorted(map(str, state))})")
    t = state[key]
    if (
        not isinstance(t, torch.Tensor)
        or t.layout != torch.strided
        or t.dtype != dtype
        or t.device != p.device
        or t.shape != p.shape
    ):
        raise StateError(
            f"{where}: state[{key!r}] must be a dense tensor like the parameter "
            f"(shape={tuple(p.shape)}, dtype={dtype}, device={p.device}); got {describe(t)}"
        )
    return t


def check_step(state: dict, where: str) -> torch.Tensor:
    """Return ``state['step']`` as a 1-element float32/float64 CPU tensor.

    Plain numbers and 1-element tensors of another dtype (older or foreign checkpoints) are
    converted in place, keeping their value; anything else raises.
    """
    if "step" not in state:
        raise StateError(f"{where}: state has no 'step' entry (keys: {sorted(map(str, state))})")
    s = state["step"]
    if isinstance(s, torch.Tensor):
        if s.numel() != 1 or s.layout != torch.strided or s.is_complex():
            raise StateError(f"{where}: state['step'] must hold one number; got {describe(s)}")
        try:
            value = float(s.detach().to("cpu", torch.float64).item())
        except (RuntimeError, NotImplementedError) as exc:  # a meta tensor has no value
            raise StateError(f"{where}: state['step'] cannot be read: {describe(s)}") from exc
        plain = type(s) is torch.Tensor and not s.is_neg()  # memory holds the value as read
        if plain and s.device.type == "cpu" and s.dtype in STEP_DTYPES and _valid_count(value):
            return s
    elif isinstance(s, (int, float)) and not isinstance(s, bool):
        value = float(s)
    else:
        raise StateError(f"{where}: state['step'] must be a number or tensor; got {describe(s)}")
    if not _valid_count(value):
        raise StateError(f"{where}: state['step'] must be a finite count >= 0, got {value}")
    step = torch.tensor(value, dtype=_get_scalar_dtype())
    state["step"] = step
    return step


def check_scalar(state: dict, key: str, where: str) -> torch.Tensor:
    """Return ``state[key]``, a 0-d state scalar other than the step counter, as a 1-element
    float32/float64 CPU tensor.

    Plain numbers and real 1-element tensors of another dtype or kind (a checkpoint loaded for a
    16-bit parameter, a negative view) are converted in place, keeping their value; anything
    else raises. Any value is allowed: torch computes with whatever the state holds.
    """
    if key not in state:
        raise StateError(f"{where}: state has no {key!r} entry (keys: {sorted(map(str, state))})")
    s = state[key]
    if isinstance(s, torch.Tensor):
        if s.numel() != 1 or s.layout != torch.strided or s.is_complex():
            raise StateError(f"{where}: state[{key!r}] must hold one number; got {describe(s)}")
        plain = type(s) is torch.Tensor and not s.is_neg() and s.device.type == "cpu"
        if plain and s.dtype in STEP_DTYPES:
            return s
        try:
            value = float(s.detach().to("cpu", torch.float64).item())
        except (RuntimeError, NotImplementedError) as exc:  # a meta tensor has no value
            raise StateError(f"{where}: state[{key!r}] cannot be read: {describe(s)}") from exc
        dtype = s.dtype if s.dtype in STEP_DTYPES else _get_scalar_dtype()
    elif isinstance(s, (int, float)) and not isinstance(s, bool):
        value, dtype = float(s), _get_scalar_dtype()
    else:
        raise StateError(f"{where}: state[{key!r}] must be a number or tensor; got {describe(s)}")
    t = torch.tensor(value, dtype=dtype)
    state[key] = t
    return t


def to_scalar(x: Any) -> Any:
    """torch's ``_to_scalar`` (not in every torch this supports): a 1-element tensor
    hyper-parameter as a 0-d tensor, anything else as it is."""
    if isinstance(x, torch.Tensor) and x.dim() != 0:
        return x.squeeze()
    return x


def _valid_count(value: float) -> bool:
    return math.isfinite(value) and value >= 0
