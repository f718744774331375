"""The implementations compared in every benchmark group: torch's three code paths, pyfastopt
and (when importable) DeepSpeed. :data:`IMPLS` drives the CLI and the pytest-benchmark suite.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from . import _deepspeed
from ._args import lookup
from .optimizers import OptimizerSpec

Builder = Callable[[OptimizerSpec, Sequence[torch.Tensor]], torch.optim.Optimizer]

#: the reference every implementation is checked against and speedups are measured from
REFERENCE = "torch"


@dataclass(frozen=True)
class Impl:
    """One way of running an optimizer's step."""

    name: str
    description: str
    build: Builder
    applies: Callable[[OptimizerSpec], bool]
    is_torch: bool = False
    #: may be missing here (skipped with the reason); a failure of any other is an error
    optional: bool = False
    #: overwrites ``p.grad`` in its step (DeepSpeedCPUAdagrad does): harmless when training,
    #: but fixed-gradient checks must put the gradients back before each step
    clobbers_grads: bool = False
    #: tolerance of the parity check against torch's for-loop result
    rtol: float = 1e-5
    atol: float = 1e-6


def _accepts(spec: OptimizerSpec, flag: str) -> bool:
    return flag in inspect.signature(spec.torch_cls.__init__).parameters


def for_loop_flags(spec: OptimizerSpec) -> dict[str, bool]:
    """The keyword that selects torch's for-loop (none for a class that has only that path)."""
    return {"foreach": False} if _accepts(spec, "foreach") else {}


def _torch(**flags: bool) -> Builder:
    def build(spec: OptimizerSpec, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        # a class without the flag has that path only (SparseAdam: a for-loop, no foreach)
        given = {k: v for k, v in flags.items() if _accepts(spec, k)}
        return spec.torch_cls(list(params), **spec.hparams, **given)

    return build


def _pyfastopt(spec: OptimizerSpec, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    return spec.pyfastopt_cls(list(params), **spec.hparams)


def _has_fused(spec: OptimizerSpec) -> bool:
    return _accepts(spec, "fused")


def _has_foreach(spec: OptimizerSpec) -> bool:
    return _accepts(spec, "foreach")


def _always(spec: OptimizerSpec) -> bool:
    return True


IMPLS: Mapping[str, Impl] = MappingProxyType(
    {
        "torch": Impl(
            "torch",
            "torch.optim, for-loop (foreach=False)",
            _torch(foreach=False),
            _always,
            is_torch=True,
        ),
        "torch-foreach": Impl(
            "torch-foreach",
            "torch.optim, foreach=True",
            _torch(foreach=True),
            _has_foreach,
            is_torch=True,
        ),
        "torch-fused": Impl(
            "torch-fused",
            "torch.optim, fused=True",
            _torch(fused=True),
            _has_fused,
            is_torch=True,
            optional=True,
        ),
        "pyfastopt": Impl("pyfastopt", "pyfastopt", _pyfastopt, _always),
        "deepspeed": Impl(
            "deepspeed",
            "DeepSpeedCPUAdam / DeepSpeedCPUAdagrad",
            _deepspeed.build,
            _deepspeed.supports,
            optional=True,
            clobbers_grads=True,
        ),
    }
)


def get_impl(name: str) -> Impl:
    """The implementation named ``name`` (case-insensitive), or ValueError listing the known
    names."""
    return IMPLS[lookup(name, IMPLS, "implementation")]


@functools.cache
def unavailable(
    impl_name: str, opt_name: str, lowp: bool = False, device: str = "cpu"
) -> str | None:
    """None when implementation ``impl_name`` can step optimizer ``opt_name`` here (on
    bfloat16 parameters with ``lowp``; on ``device``), else why not.

    Optional implementations are probed once per pair with one step on a tiny tensor on the
    device; the others (torch's for-loop and foreach paths, pyfastopt) are never skipped, so
    that a broken one fails loudly instead; except pyfastopt on a GPU where its CUDA module is
    not usable or has no kernel for the optimizer (it would silently time torch's own step).
    """
    from .optimizers import get_optimizer

    impl, spec = IMPLS[impl_name], get_optimizer(opt_name)
    reason = _deepspeed.unavailable() if impl.name == "deepspeed" else None
    if reason:
        return reason
    if not impl.applies(spec):
        return f"{impl.name} has no {spec.cls_name}"
    if device != "cpu" and impl.name == "deepspeed":
        return "DeepSpeed's CPU optimizers run on the CPU only"
    if device != "cpu" and impl.name == "pyfastopt":
        if not getattr(spec.pyfastopt_cls, "_cuda_kernel", False):
            return (
                f"pyfastopt's CUDA module has no {spec.cls_name}: its CUDA parameters take "
                "torch's own step"
            )
        from .. import _cuda_backend

        why = _cuda_backend.reason()
        return f"pyfastopt's CUDA module is not used: {why}" if why else None
    if lowp and device == "cpu" and impl.name == "torch-fused" and spec.cls_name == "SGD":
        return "torch's fused SGD does not update bfloat16/float16 parameters (pytorch #191763)"
    if lowp and impl.name == "deepspeed":
        return "not benchmarked on 16-bit parameters"
    if not impl.optional:
        return None
    dtype = torch.bfloat16 if lowp else torch.float32
    param = torch.nn.Parameter(torch.ones(8, dtype=dtype, device=device))
    param.grad = torch.full((8,), 0.5, dtype=dtype, device=device)
    try:
        impl.build(spec, [param]).step()
    except Exception as exc:  # a probe: whatever fails here means "cannot run it"
        where = "on CPU" if device == "cpu" else f"on {device}"
        return f"{impl.name} {spec.cls_name} cannot step {where}: {type(exc).__name__}: {exc}"
    return None
