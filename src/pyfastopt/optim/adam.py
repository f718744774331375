"""Adam and AdamW: torch.optim's classes with a fused native step."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from .._config import PARALLEL_MIN_ELEMENTS as _PMIN
from ._base import FastOptimizer, _Call


class _AdamStep(FastOptimizer):
    #: the decay a group without a ``decoupled_weight_decay`` key gets (Adam: L2, AdamW: decoupled)
    _decoupled_default = False
    #: whether the group key decides: torch >= 2.6 reads it at every step, also in AdamW (a
    #: subclass of Adam there, whose __setstate__ sets it True on load); torch 2.5's AdamW has no
    #: such key and always decays decoupled
    _decoupled_from_group = True
    _amp_in_kernel = True
    _cuda_kernel = True

    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        if group["amsgrad"]:
            return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return ("exp_avg", "exp_avg_sq")

    def _init_state(self, p: torch.Tensor, state: dict, group: dict) -> None:
        # torch hosts `step` on the parameter's device as float32 when fused or capturable.
        fused = group.get("fused")
        if group.get("capturable") or fused:
            state["step"] = torch.zeros(
                (), dtype=_get_scalar_dtype(is_fused=fused), device=p.device
            )
        else:
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # hyper-parameters go to the core as they are: pybind11 converts floats, ints, bools and
    # 1-element tensors (a scheduler's tensor lr) itself, and rejects anything else.
    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        beta1, beta2 = group["betas"]
        return call.backend.adam_step(  # _core, or _cuda for CUDA parameters
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
            group["amsgrad"],
            group["maximize"],
            group.get("decoupled_weight_decay", self._decoupled_default)
            if self._decoupled_from_group
            else self._decoupled_default,
            threads,
            _PMIN,
            self._extra(call, group),
        )


class Adam(_AdamStep, torch.optim.Adam):
    __doc__ = "Adam with a fused native step; a drop-in for :class:`torch.optim.Adam`.\n\n" + (
        torch.optim.Adam.__doc__ or ""
    )
    _torch_cls = torch.optim.Adam


class AdamW(_AdamStep, torch.optim.AdamW):
    __doc__ = "AdamW with a fused native step; a drop-in for :class:`torch.optim.AdamW`.\n\n" + (
        torch.optim.AdamW.__doc__ or ""
    )
    _torch_cls = torch.optim.AdamW
    _decoupled_default = True
    _decoupled_from_group = issubclass(torch.optim.AdamW, torch.optim.Adam)
