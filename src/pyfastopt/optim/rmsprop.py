"""RMSprop (centered, momentum): torch.optim.RMSprop with a fused native step."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ..errors import UnsupportedError
from ._base import FastOptimizer, _Call


class RMSprop(FastOptimizer, torch.optim.RMSprop):
    __doc__ = (
        "RMSprop with a fused native step; a drop-in for :class:`torch.optim.RMSprop`.\n\n"
        + (torch.optim.RMSprop.__doc__ or "")
    )
    _torch_cls = torch.optim.RMSprop
    _cuda_kernel = True

    def _check_options(self, group: dict) -> None:
        if group.get("centered") and group.get("state_dtype") == "8bit":
            raise UnsupportedError(
                "RMSprop: centered=True with state_dtype='8bit' is not supported: square_avg and "
                "grad_avg are quantised apart, so square_avg - grad_avg**2 goes negative and its "
                "square root NaN (within a few hundred steps of ordinary gradients; bitsandbytes' "
                "RMSprop8bit refuses it too); use state_dtype=torch.bfloat16 or torch's layout"
            )

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        # the native rule's order: square_avg[, grad_avg][, momentum_buffer]
        keys = ["square_avg"]
        if group["centered"]:
            keys.append("grad_avg")
        if group["momentum"] > 0:
            keys.append("momentum_buffer")
        return tuple(keys)

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        # torch hosts `step` on the parameter's device when capturable (CUDA parameters)
        device = p.device if group.get("capturable") else None
        state["step"] = torch.zeros((), dtype=_get_scalar_dtype(), device=device)
        state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors (a scheduler's tensor lr) itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        return call.backend.rmsprop_step(  # _core, or _cuda for CUDA parameters
            call.source,
            params,
            state,
            call.width,
            call.dtype,
            call.step_f64,
            group["lr"],
            group["alpha"],
            group["eps"],
            group["weight_decay"],
            group["momentum"],
            group["centered"],
            group["maximize"],
            threads,
            _PMIN,
            self._extra(call, group),
        )
