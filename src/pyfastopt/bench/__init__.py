"""Benchmarks of pyfastopt's optimizer steps against torch.optim (and DeepSpeed when present).

The tables here drive both ``python -m pyfastopt.bench`` and the pytest-benchmark suite in
``benchmarks/``: :data:`~pyfastopt.bench.optimizers.OPTIMIZERS` (hyper-parameters and bytes
per step), :data:`~pyfastopt.bench.impls.IMPLS` (the implementations compared) and the workload
names of :mod:`pyfastopt.bench.workloads`.
"""

from .impls import IMPLS, REFERENCE, Impl, get_impl, unavailable
from .optimizers import OPTIMIZERS, OptimizerSpec, get_optimizer
from .workloads import DEFAULT_WORKLOADS, QUICK_WORKLOADS, Workload, parse_workload

__all__ = [
    "DEFAULT_WORKLOADS",
    "IMPLS",
    "OPTIMIZERS",
    "QUICK_WORKLOADS",
    "REFERENCE",
    "Impl",
    "OptimizerSpec",
    "Workload",
    "get_impl",
    "get_optimizer",
    "parse_workload",
    "unavailable",
]
