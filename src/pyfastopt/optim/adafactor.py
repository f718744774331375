"""Adafactor: torch.optim.Adafactor with a fused native step.

A parameter with two or more dims keeps torch's factored second moment, ``row_var`` (its shape
with the last dim 1) and ``col_var`` (the second-to-last dim 1): the native step reduces the
gradient's rows and columns in a pass of its own (csrc/cpu/adafactor.cpp), in an order that does
not depend on the thread count. Vectors and scalars keep ``variance``. The parameter, gradient and
state are read in their logical (row-major) order: a parameter or gradient of another layout is
stepped through contiguous copies.

``eps=(None, eps2)`` resolves eps1 as torch's for-loop does, to ``finfo(dtype).eps`` of the first
parameter of the group with a gradient, whose dtype is float32 for a 16-bit parameter with
``master_weights=True`` (the dtype its master copy is updated in). ``state_dtype`` (low-memory
state) is refused: the factored state is already small, and torch's layout keeps checkpoints
interchangeable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .. import _core
from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ..errors import StateError, UnsupportedError
from . import _lowmem, _precision
from ._base import FastOptimizer, _Call, _Item
from ._layout import LOW_PRECISION
from ._precision import MASTER, MASTER_KEY
from ._state import describe

_Tensor = torch.Tensor
FACTORED_KEYS = ("row_var", "col_var")
VECTOR_KEYS = ("variance",)


def _factor_shapes(p: _Tensor) -> dict[str, tuple[int, ...]]:
    """torch's state shapes of a parameter like ``p``."""
    if p.dim() > 1:
        rows, cols = list(p.shape), list(p.shape)
        rows[-1] = 1
        cols[-2] = 1
        return {"row_var": tuple(rows), "col_var": tuple(cols)}
    return {"variance": tuple(p.shape)}


class Adafactor(FastOptimizer, torch.optim.Adafactor):
    __doc__ = (
        "Adafactor with a fused native step; a drop-in for :class:`torch.optim.Adafactor`.\n\n"
        + (torch.optim.Adafactor.__doc__ or "")
    )
    _torch_cls = torch.optim.Adafactor

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(params, *args, **kwargs)
        for group in self.param_groups:
            self._check_options(group)

    def _check_options(self, group: dict) -> None:
        if _lowmem.asks_low_memory(group):
            raise UnsupportedError(
                "Adafactor keeps torch's state layout: state_dtype is not supported (its "
                "factored second moment is already small)"
            )

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        return FACTORED_KEYS + VECTOR_KEYS  # what a group's states may hold (the plan key)

    def _buffer_keys_for(self, p: _Tensor, group: dict) -> tuple[str, ...]:
        return FACTORED_KEYS if p.dim() > 1 else VECTOR_KEYS

    def _takes(self, p: _Tensor) -> bool:
        # torch raises for complex parameters, and divides by zero for empty ones
        return not p.is_complex() and p.numel() > 0

    def _init_state(self, p: _Tensor, state: dict, group: dict) -> None:
        # torch: a float step on the CPU, the factors as new_zeros of the gradient (p's dtype
        # here: the native step takes gradients of the parameter's dtype; float32 beside a master)
        state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        for key, shape in _factor_shapes(p).items():
            state[key] = torch.zeros(shape, dtype=p.dtype, device=p.device)

    def _settle(
        self,
        p: _Tensor,
        st: dict,
        keys: tuple,
        mode: int,
        store: int,
        group: dict,
        where: str,
        first: bool = False,
    ) -> None:
        """Check (and cast, as the other optimizers' buffers are) the factored state."""
        if store != _lowmem.AS_PARAM:
            raise UnsupportedError(f"{where}: Adafactor keeps torch's state layout")
        self._settled_for(p, first, where)  # refuses a parameter whose dtype changed under it
        _precision.ensure_master(p, st, mode)
        want = _precision.state_dtype(p, mode)
        shapes = _factor_shapes(p)
        for k in keys:
            b = st.get(k)
            ok = isinstance(b, torch.Tensor) and b.layout == torch.strided
            formats = (torch.float32, *LOW_PRECISION)  # never to float64: see _lowmem.settle
            if ok and b.dtype != want and b.dtype in formats and want in formats:
                st[k] = b = b.detach().to(want)  # a checkpoint of another storage mode
            if not (
                ok and b.dtype == want and b.device == p.device and tuple(b.shape) == shapes[k]
            ):
                raise StateError(
                    f"{where}: state[{k!r}] must be a dense {want} tensor of shape {shapes[k]} "
                    f"on {p.device}; got {describe(b) if k in st else 'nothing'}"
                )
            if not b.is_contiguous():
                st[k] = b.contiguous()
        if mode == MASTER:
            m = st[MASTER_KEY]
            if isinstance(m, torch.Tensor) and m.layout == torch.strided and not m.is_contiguous():
                st[MASTER_KEY] = m.contiguous()
        self._made_for()[p] = (p.dtype, None)

    def _lay_out(
        self, it: _Item, keys: tuple[str, ...], copy_back: list[tuple[_Tensor, _Tensor]]
    ) -> tuple[list[int], tuple, _Tensor, bool]:
        """``[numel, step, p, g, s0, s1, (out), rows, cols]`` (csrc/cpu/adafactor.cpp): the
        parameter and gradient in their logical order, through contiguous copies otherwise."""
        p, g, st = it.p, it.g, it.st
        assert st is not None
        cacheable = True
        pt = p
        if not p.is_contiguous():
            pt = p.detach().contiguous()
            copy_back.append((p, pt))
            cacheable = False
        if not g.is_contiguous():
            g = g.contiguous()
            cacheable = False
        bufs = [st[k].data_ptr() for k in keys]
        factored = len(keys) == 2
        s1 = bufs[1] if factored else 0
        rows, cols = (p.shape[-2], p.shape[-1]) if factored else (0, 0)
        step = st["step"]
        held: tuple
        if it.mode == MASTER:
            master = st[MASTER_KEY]
            row = [p.numel(), step.data_ptr(), master.data_ptr(), g.data_ptr(), bufs[0], s1]
            row += [pt.data_ptr(), rows, cols]
            held = (pt, master, *(st[k] for k in keys), step)
        else:
            row = [p.numel(), step.data_ptr(), pt.data_ptr(), g.data_ptr(), bufs[0], s1]
            row += [rows, cols]
            held = (pt, *(st[k] for k in keys), step)
        return row, held, g, cacheable

    def _eps1(self, group: dict) -> float:
        """torch's eps1: eps[0], or finfo(dtype).eps of the group's first parameter with a
        gradient (float32 for a 16-bit parameter with master weights)."""
        eps1 = group["eps"][0]
        if eps1 is not None:
            return eps1
        for p in group["params"]:
            if p.grad is not None:
                dtype = p.dtype
                if dtype in LOW_PRECISION and group.get("master_weights"):
                    dtype = torch.float32
                return torch.finfo(dtype).eps
        return torch.finfo(torch.float32).eps  # unreachable: a call has a parameter

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors (a scheduler's tensor lr) itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        return _core.adafactor_step(
            call.source,
            params,
            state,
            call.width,
            call.dtype,
            call.step_f64,
            group["lr"],
            group["beta2_decay"],
            self._eps1(group),
            group["eps"][1],
            group["d"],
            group["weight_decay"],
            group["maximize"],
            threads,
            _PMIN,
            self._extra(call, group),
        )
