"""Rprop (etas, step_sizes): torch.optim.Rprop with a fused native step."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .. import _core
from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ._base import FastOptimizer, _Call
from ._state import to_scalar


class Rprop(FastOptimizer, torch.optim.Rprop):
    __doc__ = "Rprop with a fused native step; a drop-in for :class:`torch.optim.Rprop`.\n\n" + (
        torch.optim.Rprop.__doc__ or ""
    )
    _torch_cls = torch.optim.Rprop

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        return ("prev", "step_size")

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        state["step"] = torch.zeros((), dtype=_get_scalar_dtype())
        state["prev"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # the group's lr at the first step; after that the step sizes adapt by themselves
        if p.dtype.is_complex:  # real and imaginary parts as independent numbers
            fill = complex(group["lr"], group["lr"])
            state["step_size"] = torch.full_like(p, fill, memory_format=torch.preserve_format)
        else:
            lr = to_scalar(group["lr"])
            state["step_size"] = torch.full_like(p, lr, memory_format=torch.preserve_format)

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        return _core.rprop_step(
            call.source,
            params,
            state,
            call.width,
            call.dtype,
            call.step_f64,
            etaminus,
            etaplus,
            step_size_min,
            step_size_max,
            group["maximize"],
            threads,
            _PMIN,
            self._extra(call, group),
        )
