"""Adadelta: torch.optim.Adadelta with a fused native step."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ._base import FastOptimizer, _Call


class Adadelta(FastOptimizer, torch.optim.Adadelta):
    __doc__ = (
        "Adadelta with a fused native step; a drop-in for :class:`torch.optim.Adadelta`.\n\n"
        + (torch.optim.Adadelta.__doc__ or "")
    )
    _torch_cls = torch.optim.Adadelta
    _cuda_kernel = True

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        return ("square_avg", "acc_delta")

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        # torch hosts `step` on the parameter's device when capturable (CUDA parameters)
        device = p.device if group.get("capturable") else None
        state["step"] = torch.zeros((), dtype=_get_scalar_dtype(), device=device)
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors (a scheduler's tensor lr) itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        return call.backend.adadelta_step(  # _core, or _cuda for CUDA parameters
            call.source,
            params,
            state,
            call.width,
            call.dtype,
            call.step_f64,
            group["lr"],
            group["rho"],
            group["eps"],
            group["weight_decay"],
            group["maximize"],
            threads,
            _PMIN,
            self._extra(call, group),
        )
