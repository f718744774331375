"""ASGD (averaged SGD: lambd, alpha, t0): torch.optim.ASGD with a fused native step."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .. import _core
from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ._base import FastOptimizer, _Call
from ._layout import NATIVE_DTYPES
from ._state import to_scalar


class ASGD(FastOptimizer, torch.optim.ASGD):
    __doc__ = "ASGD with a fused native step; a drop-in for :class:`torch.optim.ASGD`.\n\n" + (
        torch.optim.ASGD.__doc__ or ""
    )
    _torch_cls = torch.optim.ASGD
    # the step reads eta and mu (this step's) and writes the next step's, as torch does
    _scalar_keys = ("eta", "mu")

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        return ("ax",)

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        state["step"] = torch.zeros((), device=p.device, dtype=_get_scalar_dtype())
        state["eta"] = (
            torch.as_tensor(to_scalar(group["lr"]), device=p.device, dtype=_get_scalar_dtype())
            .clone()
            .detach()
        )
        state["mu"] = torch.ones((), device=p.device, dtype=_get_scalar_dtype())
        state["ax"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors (a scheduler's tensor lr) itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        return _core.asgd_step(
            call.source,
            params,
            state,
            call.width,
            call.dtype,
            call.step_f64,
            group["lr"],
            group["lambd"],
            group["alpha"],
            group["t0"],
            group["weight_decay"],
            group["maximize"],
            # torch.as_tensor gives the next eta and mu the default dtype before they are copied
            NATIVE_DTYPES[torch.get_default_dtype()][0],
            threads,
            _PMIN,
            self._extra(call, group),
        )
