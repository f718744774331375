"""Adamax: torch.optim.Adamax with a fused native step."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .. import _core
from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ._base import FastOptimizer, _Call


class Adamax(FastOptimizer, torch.optim.Adamax):
    __doc__ = "Adamax with a fused native step; a drop-in for :class:`torch.optim.Adamax`.\n\n" + (
        torch.optim.Adamax.__doc__ or ""
    )
    _torch_cls = torch.optim.Adamax

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        return ("exp_avg", "exp_inf")

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors (a scheduler's tensor lr) itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        beta1, beta2 = group["betas"]
        return _core.adamax_step(
            call.source,
            params,
            state,
            call.width,
            call.dtype,
            call.step_f64,
            group["lr"],
            beta1,
            beta2,
            group["eps"],
            group["weight_decay"],
            group["maximize"],
            threads,
            _PMIN,
            self._extra(call, group),
        )
