"""SGD (momentum, dampening, Nesterov): torch.optim.SGD with a fused native step."""

from __future__ import annotations

from typing import Any

import torch

from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ._base import FastOptimizer, _Call


class SGD(FastOptimizer, torch.optim.SGD):
    __doc__ = "SGD with a fused native step; a drop-in for :class:`torch.optim.SGD`.\n\n" + (
        torch.optim.SGD.__doc__ or ""
    )
    _torch_cls = torch.optim.SGD
    _amp_in_kernel = True
    _cuda_kernel = True
    _has_step = False
    _lazy_buffers = ("momentum_buffer",)

    def _uses_state(self, group: dict) -> bool:
        # torch keeps no state at all without momentum
        return group["momentum"] != 0

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _takes(self, p: torch.Tensor) -> bool:
        # torch's SGD computes complex parameters in complex arithmetic (no real view), whose
        # add(alpha=) is not fused: its own step keeps them bit for bit
        return not p.is_complex()

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        # torch clones the first gradient into the buffer; the kernel does that (aux flag 1)
        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _row_aux(self, state: dict | None, first: bool) -> int:
        return 1 if first else 0

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors (a scheduler's tensor lr) itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        return call.backend.sgd_step(  # _core, or _cuda for CUDA parameters
            call.source,
            params,
            state,
            call.width,
            call.dtype,
            group["lr"],
            group["momentum"],
            group["dampening"],
            group["weight_decay"],
            group["nesterov"],
            group["maximize"],
            threads,
            _PMIN,
            self._extra(call, group),
        )
