"""DeepSpeed's CPU optimizers as benchmark candidates, when DeepSpeed is importable.

DeepSpeed is never a requirement: :func:`unavailable` says why it cannot be used (not
installed, import failed, its C++ op failed to build) and the candidate is skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .optimizers import OptimizerSpec

#: torch class name -> (module, DeepSpeed class, extra constructor arguments)
_CLASSES: Mapping[str, tuple[str, str, Mapping[str, Any]]] = {
    "Adam": ("deepspeed.ops.adam", "DeepSpeedCPUAdam", {"adamw_mode": False}),
    "AdamW": ("deepspeed.ops.adam", "DeepSpeedCPUAdam", {"adamw_mode": True}),
    "Adagrad": ("deepspeed.ops.adagrad", "DeepSpeedCPUAdagrad", {}),
}
#: the hyper-parameters both sides share (others keep torch's defaults, which DeepSpeed matches)
_SHARED = ("lr", "betas", "eps", "weight_decay")


def supports(spec: OptimizerSpec) -> bool:
    """Whether DeepSpeed has a CPU counterpart of this optimizer."""
    return spec.cls_name in _CLASSES


def build(spec: OptimizerSpec, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    """DeepSpeed's CPU optimizer with the same hyper-parameters torch would use for ``spec``."""
    module_name, cls_name, extra = _CLASSES[spec.cls_name]
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    cls = getattr(importlib.import_module(module_name), cls_name)
    probe = torch.zeros(1, requires_grad=True)
    defaults = spec.torch_cls([probe], **spec.hparams).defaults
    kwargs = {key: defaults[key] for key in _SHARED if key in defaults}
    return cls(list(params), **kwargs, **extra)


def unavailable() -> str | None:
    """None when DeepSpeed can be imported, else the reason it cannot."""
    if importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        importlib.import_module("deepspeed")
    except Exception as exc:  # any failure of a third-party import means "skip"
        return f"DeepSpeed failed to import: {type(exc).__name__}: {exc}"
    return None
