"""Adagrad: torch.optim.Adagrad with a fused native step."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ._base import FastOptimizer, _Call


class Adagrad(FastOptimizer, torch.optim.Adagrad):
    __doc__ = (
        "Adagrad with a fused native step; a drop-in for :class:`torch.optim.Adagrad`.\n\n"
        + (torch.optim.Adagrad.__doc__ or "")
    )
    _torch_cls = torch.optim.Adagrad
    _amp_in_kernel = True
    _cuda_kernel = True

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        return ("sum",)

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        fused = group.get("fused")
        state["step"] = (
            torch.zeros((), dtype=_get_scalar_dtype(is_fused=fused), device=p.device)
            if fused
            else torch.tensor(0.0, dtype=_get_scalar_dtype())
        )
        # torch starts every lazily created sum (add_param_group included) from the
        # constructor's value, not from the group's own key
        init = self.defaults["initial_accumulator_value"]
        init_value = complex(init, init) if torch.is_complex(p) else init
        state["sum"] = torch.full_like(p, init_value, memory_format=torch.preserve_format)

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors (a scheduler's tensor lr) itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        return call.backend.adagrad_step(  # _core, or _cuda for CUDA parameters
            call.source,
            params,
            state,
            call.width,
            call.dtype,
            call.step_f64,
            group["lr"],
            group["lr_decay"],
            group["weight_decay"],
            group["eps"],
            group["maximize"],
            threads,
            _PMIN,
            self._extra(call, group),
        )
