"""The optimizers the benchmarks compare: hyper-parameters and the bytes one step moves.

One table (:data:`OPTIMIZERS`) drives the CLI and the pytest-benchmark suite alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ._args import lookup

#: State buffers a step reads and writes beside the parameter, per optimizer ...
_BASE_BUFFERS: Mapping[str, tuple[str, ...]] = {
    "SGD": (),
    "Adagrad": ("sum",),
    "Adadelta": ("square_avg", "acc_delta"),
    "RMSprop": ("square_avg",),
    "Adam": ("exp_avg", "exp_avg_sq"),
    "AdamW": ("exp_avg", "exp_avg_sq"),
    "NAdam": ("exp_avg", "exp_avg_sq"),
    "RAdam": ("exp_avg", "exp_avg_sq"),
    "Adamax": ("exp_avg", "exp_inf"),
    "ASGD": ("ax",),
    "Rprop": ("prev", "step_size"),
    "Adafactor": (),  # its factored state of a matrix holds rows + cols values: not counted
    "SparseAdam": ("exp_avg", "exp_avg_sq"),  # at the elements the sparse gradient lists
}
#: optimizers that step on sparse gradients (embed-* workloads) and only on them
SPARSE_GRADIENTS = frozenset({"SparseAdam"})
#: optimizers checked against torch's for-loop in float64 (rounded to the workload's dtype every
#: step) rather than in the workload's dtype: torch sums Adafactor's norms in float32, which on
#: tensors of millions of elements parts from the exact rule by more than the parity tolerance
#: (flat-32M after one step: 1.1e-6, where pyfastopt's double sums stay at 1.2e-8)
EXACT_REFERENCE = frozenset({"Adafactor"})
#: ... and the buffers an option adds when it is set (non-zero / True).
_OPTION_BUFFERS: Mapping[tuple[str, str], str] = {
    ("SGD", "momentum"): "momentum_buffer",
    ("RMSprop", "momentum"): "momentum_buffer",
    ("RMSprop", "centered"): "grad_avg",
    ("Adam", "amsgrad"): "max_exp_avg_sq",
    ("AdamW", "amsgrad"): "max_exp_avg_sq",
}


def state_buffers(cls_name: str, hparams: Mapping[str, Any]) -> tuple[str, ...]:
    """The per-parameter state buffers torch's ``cls_name`` keeps with these hyper-parameters."""
    extra = tuple(
        key
        for (name, option), key in _OPTION_BUFFERS.items()
        if name == cls_name and hparams.get(option)
    )
    return _BASE_BUFFERS[cls_name] + extra


def streams(cls_name: str, hparams: Mapping[str, Any]) -> int:
    """Arrays of ``numel`` elements one step moves: read p and g, write p, read+write each buffer.

    Adam: reads p, g, m, v and writes p, m, v, so 7. Weight decay, Nesterov and the like
    reuse values already read, so they add nothing. ASGD's ``ax`` counts as read and written
    although torch only writes it while ``mu`` is 1 (a copy of the parameter): the fused step
    reads it either way.
    Adafactor: 3, the least any implementation
    must move (pyfastopt's passes read the gradient three times and the parameter twice);
    SparseAdam: 7 over the elements its gradient lists (``Workload.step_numel``).
    """
    return 3 + 2 * len(state_buffers(cls_name, hparams))


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer as benchmarked: torch class name and the hyper-parameters used."""

    name: str
    cls_name: str
    hparams: Mapping[str, Any] = field(default_factory=dict)

    @property
    def torch_cls(self) -> type[torch.optim.Optimizer]:
        return getattr(torch.optim, self.cls_name)

    @property
    def pyfastopt_cls(self) -> type[torch.optim.Optimizer]:
        import pyfastopt

        return getattr(pyfastopt, self.cls_name)

    @property
    def buffers(self) -> tuple[str, ...]:
        return state_buffers(self.cls_name, self.hparams)

    @property
    def exact_reference(self) -> bool:
        """Whether its parity reference is torch's for-loop in float64 (EXACT_REFERENCE)."""
        return self.cls_name in EXACT_REFERENCE

    @property
    def sparse(self) -> bool:
        """Whether it steps on sparse gradients (embed-* workloads) rather than dense ones."""
        return self.cls_name in SPARSE_GRADIENTS

    def bytes_per_step(self, numel: int, itemsize: int = 4) -> int:
        """Bytes one step moves over parameters of ``numel`` elements in all."""
        return streams(self.cls_name, self.hparams) * numel * itemsize


def _spec(name: str, cls_name: str, **hparams: Any) -> OptimizerSpec:
    return OptimizerSpec(name, cls_name, MappingProxyType(hparams))


OPTIMIZERS: Mapping[str, OptimizerSpec] = MappingProxyType(
    {
        "sgd": _spec("sgd", "SGD", lr=0.01, momentum=0.9),
        "adagrad": _spec("adagrad", "Adagrad", lr=0.01),
        "adadelta": _spec("adadelta", "Adadelta", lr=1.0),
        "rmsprop": _spec("rmsprop", "RMSprop", lr=0.01),
        "adam": _spec("adam", "Adam", lr=1e-3),
        "adamw": _spec("adamw", "AdamW", lr=1e-3, weight_decay=0.01),
        "nadam": _spec("nadam", "NAdam", lr=2e-3),
        "radam": _spec("radam", "RAdam", lr=1e-3),
        "adamax": _spec("adamax", "Adamax", lr=2e-3),
        "asgd": _spec("asgd", "ASGD", lr=0.01),
        "rprop": _spec("rprop", "Rprop", lr=0.01),
        "adafactor": _spec("adafactor", "Adafactor", lr=1e-2),
        "sparseadam": _spec("sparseadam", "SparseAdam", lr=1e-3),
    }
)


def get_optimizer(name: str) -> OptimizerSpec:
    """The spec named ``name`` (case-insensitive), or ValueError listing the known names."""
    return OPTIMIZERS[lookup(name, OPTIMIZERS, "optimizer")]
