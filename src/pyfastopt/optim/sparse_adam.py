"""SparseAdam: torch.optim.SparseAdam with a native step that updates only the elements a
sparse gradient lists.

Each gradient is coalesced (as torch's step does), its indices turned into element offsets of
the (contiguous) parameter and checked here: int64, every index inside its dim, the values
shaped ``(nnz, *param.shape[sparse_dim:])`` and of the parameter's dtype. The native step then
updates ``param``, ``exp_avg`` and ``exp_avg_sq`` in place at those offsets, in parallel over
the nonzeros, and refuses offsets that are out of range or repeat (a gradient marked coalesced
that is not). State as torch's: an int ``step``, dense ``exp_avg`` and ``exp_avg_sq``.
Parameters the native step does not take (other devices, non-contiguous layouts, a gradient of
another dtype) go through torch's own step.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import torch

from .. import _config, _core
from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ..errors import StateError, UnsupportedError
from . import _lowmem
from ._base import (
    FastOptimizer,
    _bump_versions,
    _check_group_options,
    _group_index,
    _native_tensor,
    _waves,
)
from ._layout import NATIVE_DTYPES
from ._state import check_buffer, describe, to_scalar

KEYS = ("exp_avg", "exp_avg_sq")
WIDTH = 9  # [n, step size, p, values, exp_avg, exp_avg_sq, offsets, width, numel]
DENSE_ERROR = "SparseAdam does not support dense gradients, please consider Adam instead"


def _check_step(st: dict, where: str) -> None:
    """torch's SparseAdam counts steps in a Python int: keep one (an integral float or
    1-element tensor from elsewhere becomes one); anything else raises."""
    s = st.get("step")
    if isinstance(s, torch.Tensor) and s.numel() == 1 and not s.is_complex():
        s = s.item()
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise StateError(f"{where}: state['step'] must be an int step count; got {describe(s)}")
    if isinstance(s, float) and not (math.isfinite(s) and s.is_integer()):
        raise StateError(f"{where}: state['step'] must be a whole step count, got {s}")
    if s < 0:
        raise StateError(f"{where}: state['step'] must be >= 0, got {s}")
    st["step"] = int(s)


class SparseAdam(FastOptimizer, torch.optim.SparseAdam):
    __doc__ = (
        "SparseAdam with a native step; a drop-in for :class:`torch.optim.SparseAdam`.\n\n"
        + (torch.optim.SparseAdam.__doc__ or "")
    )
    _torch_cls = torch.optim.SparseAdam

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        for group in self.param_groups:
            self._check_options(group)

    def _check_options(self, group: dict) -> None:
        for key in ("master_weights", "stochastic_rounding"):
            if group.get(key):
                raise UnsupportedError(f"SparseAdam: {key} is not supported")
        if _lowmem.asks_low_memory(group):
            raise UnsupportedError("SparseAdam keeps torch's state layout: no state_dtype")

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        return KEYS

    def _takes(self, p: torch.Tensor) -> bool:
        return _native_tensor(p) and not p.is_complex() and p.is_contiguous()

    def _check_state(self, p: torch.Tensor, st: dict, where: str) -> None:
        _check_step(st, where)
        for k in KEYS:
            b = check_buffer(p, st, k, where)
            if not _native_tensor(b) or not b.is_contiguous():  # the offsets index p's layout
                st[k] = torch.empty_like(p, memory_format=torch.contiguous_format).copy_(b)

    def _validate_loaded(self, group: dict) -> None:
        gi = _group_index(self, group)
        for i, p in enumerate(group["params"]):
            st = self.state.get(p)
            where = f"param {i} of group {gi}"
            if st is not None and not isinstance(st, dict):
                raise StateError(f"{where}: state must be a dict, got {describe(st)}")
            if st and self._takes(p):
                self._check_state(p, st, where)

    def _step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        threads = _config.get_num_threads()
        for group in self.param_groups:
            self._step_group(group, threads)
        return loss

    def _step_group(self, group: dict, threads: int) -> None:
        gi = _group_index(self, group)
        _check_group_options(self, group)
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:  # torch raises at the first dense gradient; here before any change
            if not p.grad.is_sparse:
                raise RuntimeError(DENSE_ERROR)
        native = [
            p
            for p in params
            if self._takes(p)
            and p.grad.device == p.device
            and p.grad.dtype == p.dtype
            and p.grad.shape == p.shape
        ]
        taken = {id(p) for p in native}
        fallback = [p for p in params if id(p) not in taken]
        if fallback:
            self._torch_step(group, fallback)
        index = {id(p): i for i, p in enumerate(group["params"])}
        grads = []
        for p in native:  # check everything before anything changes
            where = f"param {index[id(p)]} of group {gi}"
            st = self.state[p]
            if not isinstance(st, dict):
                raise StateError(f"{where}: state must be a dict, got {describe(st)}")
            if len(st) == 0:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self._check_state(p, st, where)
            grads.append(_positions(p, p.grad, where))
        beta1, beta2 = group["betas"]
        lr = to_scalar(group["lr"])
        # the steps and step sizes, as torch computes them (raising where torch raises: a
        # division by zero, a negative square root) before anything changes
        counts: dict[int, int] = {}
        steps, sizes = [], []
        for p in native:
            counts[id(p)] = counts.get(id(p), self.state[p]["step"]) + 1
            steps.append(counts[id(p)])
            sizes.append(_neg_step_size(lr, beta1, beta2, steps[-1]))
        # parameters sharing memory or state: one after another, as torch steps them
        for wave in _waves(native, [self.state[p] for p in native]):
            calls: dict[int, list[int]] = {}
            held: list[torch.Tensor] = []
            for j in wave:
                p = native[j]
                st = self.state[p]
                offsets, values, width = grads[j]
                if values.numel() == 0:  # torch skips an empty gradient (its step still counts)
                    continue
                row = [values.numel(), sizes[j], p.data_ptr(), values.data_ptr()]
                row += [st["exp_avg"].data_ptr(), st["exp_avg_sq"].data_ptr()]
                row += [offsets.data_ptr(), width, p.numel()]
                calls.setdefault(NATIVE_DTYPES[p.dtype][0], []).extend(row)
                held += [p, st["exp_avg"], st["exp_avg_sq"], offsets, values]
            for code, table in calls.items():
                _core.sparse_adam_step(
                    table,
                    WIDTH,
                    code,
                    beta1,
                    beta2,
                    group["eps"],
                    group.get("maximize", False),
                    threads,
                    _PMIN,
                )
            for j in wave:  # counted once the wave's calls went through (they may refuse)
                self.state[native[j]]["step"] = steps[j]
            written = [t for i, t in enumerate(held) if i % 5 < 3]
            if written:
                _bump_versions(written)
            del held


def _check_indices(indices: torch.Tensor, p: torch.Tensor, where: str) -> None:
    """IndexError for a sparse index outside ``p``'s sparse dimensions (rows: dimensions)."""
    if indices.numel() == 0:
        return
    sizes = torch.tensor(p.shape[: indices.shape[0]], dtype=torch.int64).unsqueeze(1)
    if bool((indices < 0).any()) or bool((indices >= sizes).any()):
        raise IndexError(f"{where}: sparse gradient index out of range for shape {tuple(p.shape)}")


def _neg_step_size(lr: Any, beta1: float, beta2: float, step: int) -> int:
    """The bits of torch's ``-step_size`` as a float64 (a tensor lr: its dtype's arithmetic)."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    return int(_F64_AS_I64.unpack(_F64.pack(float(-step_size)))[0])


_F64, _F64_AS_I64 = struct.Struct("<d"), struct.Struct("<q")


def _positions(
    p: torch.Tensor, grad: torch.Tensor, where: str
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(element offsets, packed values, elements per offset) of a coalesced sparse gradient of
    the contiguous parameter ``p``: every address the native step will touch, checked here."""
    raw = grad._indices()
    if raw.dtype == torch.int64 and raw.dim() == 2 and raw.shape[0] == grad.sparse_dim():
        _check_indices(raw, p, where)  # before coalesce(), which crashes on negative ones
    g = grad.coalesce()
    indices, values = g._indices(), g._values()
    sparse_dim = g.sparse_dim()
    dense_shape = tuple(p.shape[sparse_dim:])
    nnz = indices.shape[1] if indices.dim() == 2 else -1
    if (
        indices.dtype != torch.int64
        or indices.dim() != 2
        or indices.shape[0] != sparse_dim
        or tuple(values.shape) != (nnz, *dense_shape)
        or values.dtype != p.dtype
        or values.device != p.device
        or values.layout != torch.strided
    ):
        raise RuntimeError(
            f"{where}: malformed sparse gradient (indices {describe(indices)}, values "
            f"{describe(values)}) for a parameter of shape {tuple(p.shape)}"
        )
    width = math.prod(dense_shape)
    if nnz == 0 or width == 0:
        return torch.empty(0, dtype=torch.int64), values.new_empty(0), max(width, 1)
    _check_indices(indices, p, where)
    strides = torch.tensor(p.stride()[:sparse_dim], dtype=torch.int64).unsqueeze(1)
    offsets = (indices * strides).sum(0) if sparse_dim else torch.zeros(nnz, dtype=torch.int64)
    if nnz > 1 and not bool((offsets[1:] > offsets[:-1]).all()):
        # marked coalesced but not sorted (coalesce() then returns it as it is): sorted here
        # when every index is distinct, which changes nothing; repeated ones the step refuses
        offsets, order = offsets.sort()
        if bool((offsets[1:] > offsets[:-1]).all()):
            values = values[order]
    values = values.contiguous()
    if values.is_neg() or values.is_conj():
        values = values.resolve_neg().resolve_conj()
    return offsets.contiguous(), values, width
