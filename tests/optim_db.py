"""The configuration table every parity test is driven by: optimizer x hyper-parameters.

Each entry covers one option of torch.optim's optimizer or a combination of them; `ids()` gives
readable pytest ids. Values are chosen so 100 steps on random gradients stay finite and move the
parameters noticeably (a no-op optimizer would fail every parity test).
"""

from __future__ import annotations

import math
from typing import Any

import torch

NAMES = (
    "SGD",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "Adamax",
    "ASGD",
    "Rprop",
    "Adafactor",
)
#: optimizers that step on sparse gradients only: their own parity tests (test_sparse_adam.py)
SPARSE_NAMES = ("SparseAdam",)

CONFIGS: dict[str, list[dict[str, Any]]] = {
    "SGD": [
        {"lr": 0.05},
        {"lr": 0.05, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        {"lr": 0.05, "weight_decay": 0.1},
        {"lr": 0.05, "maximize": True},
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05, "maximize": True},
        {"lr": 0.05, "momentum": 0.5, "dampening": 0.5, "weight_decay": 0.01, "maximize": True},
    ],
    "Adagrad": [
        {"lr": 0.1},
        {"lr": 0.1, "lr_decay": 0.05},
        {"lr": 0.1, "weight_decay": 0.1},
        {"lr": 0.1, "initial_accumulator_value": 0.5},
        {"lr": 0.1, "eps": 1e-3},
        {"lr": 0.1, "maximize": True},
        {
            "lr": 0.1,
            "lr_decay": 0.01,
            "weight_decay": 0.05,
            "initial_accumulator_value": 0.1,
            "eps": 1e-6,
            "maximize": True,
        },
    ],
    "Adadelta": [
        {},
        {"lr": 0.5},
        {"lr": 0.5, "rho": 0.5},
        {"lr": 0.5, "eps": 1e-3},
        {"lr": 0.5, "weight_decay": 0.1},
        {"lr": 0.5, "maximize": True},
        {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.05, "maximize": True},
    ],
    "RMSprop": [
        {"lr": 0.01},
        {"lr": 0.01, "alpha": 0.9},
        {"lr": 0.01, "eps": 1e-4},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "momentum": 0.9},
        {"lr": 0.01, "centered": True},
        {"lr": 0.01, "centered": True, "momentum": 0.5},
        {"lr": 0.01, "maximize": True},
        {
            "lr": 0.01,
            "alpha": 0.95,
            "eps": 1e-6,
            "weight_decay": 0.05,
            "momentum": 0.3,
            "centered": True,
            "maximize": True,
        },
    ],
    "Adam": [
        {"lr": 0.01},
        {"lr": 0.01, "betas": (0.8, 0.99)},
        {"lr": 0.01, "betas": (0.6, 0.9)},
        {"lr": 0.01, "eps": 1e-3},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "amsgrad": True},
        {"lr": 0.01, "maximize": True},
        {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": 0.01, "betas": (0.7, 0.95), "weight_decay": 0.05, "amsgrad": True, "maximize": True},
    ],
    "AdamW": [
        {"lr": 0.01},
        {"lr": 0.01, "weight_decay": 0.0},
        {"lr": 0.01, "weight_decay": 0.3},
        {"lr": 0.01, "amsgrad": True},
        {"lr": 0.01, "maximize": True},
        {"lr": 0.01, "betas": (0.6, 0.9), "eps": 1e-6, "amsgrad": True, "maximize": True},
    ],
    "NAdam": [
        {"lr": 0.01},
        {"lr": 0.01, "betas": (0.8, 0.99)},
        {"lr": 0.01, "eps": 1e-3},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": 0.01, "momentum_decay": 0.02},
        {"lr": 0.01, "momentum_decay": 0.0},
        {"lr": 0.01, "maximize": True},
        {
            "lr": 0.01,
            "betas": (0.7, 0.95),
            "weight_decay": 0.05,
            "momentum_decay": 0.01,
            "decoupled_weight_decay": True,
            "maximize": True,
        },
    ],
    "RAdam": [
        {"lr": 0.01},  # rectified from step 6 on
        {"lr": 0.01, "betas": (0.8, 0.9)},
        {"lr": 0.01, "betas": (0.9, 0.6)},  # rho_inf = 4: never rectified
        {"lr": 0.01, "eps": 1e-3},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"lr": 0.01, "maximize": True},
        {
            "lr": 0.01,
            "betas": (0.7, 0.95),
            "eps": 1e-6,
            "weight_decay": 0.05,
            "decoupled_weight_decay": True,
            "maximize": True,
        },
    ],
    "Adamax": [
        {"lr": 0.01},
        {"lr": 0.01, "betas": (0.8, 0.99)},
        {"lr": 0.01, "eps": 1e-3},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "maximize": True},
        {"lr": 0.01, "betas": (0.7, 0.95), "eps": 1e-6, "weight_decay": 0.05, "maximize": True},
    ],
    "ASGD": [
        {"lr": 0.01},  # t0 = 1e6: ax copies the parameter
        {"lr": 0.01, "t0": 10},  # averaging from step 13 on
        {"lr": 0.01, "lambd": 0.1},
        {"lr": 0.01, "alpha": 0.5, "lambd": 0.01},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.01, "maximize": True},
        {
            "lr": 0.02,
            "lambd": 0.01,
            "alpha": 0.9,
            "t0": 20,
            "weight_decay": 0.05,
            "maximize": True,
        },
    ],
    "Rprop": [
        {"lr": 0.01},
        {"lr": 0.01, "etas": (0.3, 1.5)},
        {"lr": 0.01, "step_sizes": (1e-3, 0.02)},  # both bounds reached
        {"lr": 0.01, "maximize": True},
        {"lr": 0.02, "etas": (0.4, 1.3), "step_sizes": (1e-4, 1.0), "maximize": True},
    ],
    "Adafactor": [
        {},
        {"lr": 0.05},
        {"beta2_decay": -0.5},
        {"eps": (1e-4, 1e-2)},
        {"d": 1.2},
        {"weight_decay": 0.1},
        {"maximize": True},
        {
            "lr": 0.05,
            "beta2_decay": -0.6,
            "eps": (1e-5, 1e-3),
            "d": 2.0,
            "weight_decay": 0.05,
            "maximize": True,
        },
    ],
    "SparseAdam": [
        {},
        {"lr": 0.01},
        {"lr": 0.01, "betas": (0.8, 0.99)},
        {"lr": 0.01, "eps": 1e-4},
        {"lr": 0.01, "maximize": True},
        {"lr": 0.01, "betas": (0.6, 0.9), "eps": 1e-6, "maximize": True},
    ],
}

#: optimizers torch refuses complex parameters for (pyfastopt raises the same error)
NO_COMPLEX = ("Adafactor",)


def cases() -> list[tuple[str, dict[str, Any]]]:
    return [(name, kw) for name in NAMES for kw in CONFIGS[name]]


def sparse_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(name, kw) for name in SPARSE_NAMES for kw in CONFIGS[name]]


def shapes_for(name: str, shapes: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """``shapes`` without the empty ones where torch's step divides by a tensor's size
    (Adafactor: ZeroDivisionError, which pyfastopt raises too)."""
    if name == "Adafactor":
        return tuple(s for s in shapes if math.prod(s) > 0)
    return shapes


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, kw = case
    opts = ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults"
    return f"{name}[{opts}]"


def require_torch_options(name: str, kw: dict[str, Any]) -> None:
    """Skip (visibly) a configuration whose options this torch version does not have."""
    import inspect

    import pytest

    accepted = inspect.signature(getattr(torch.optim, name).__init__).parameters
    missing = [k for k in kw if k not in accepted]
    if missing:
        pytest.skip(f"torch {torch.__version__} {name} has no {', '.join(missing)}")


def make_pair(
    name: str, kw: dict[str, Any], torch_params: list, fast_params: list
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    import pyfastopt

    require_torch_options(name, kw)
    ref = getattr(torch.optim, name)(torch_params, foreach=False, **kw)
    fast = getattr(pyfastopt, name)(fast_params, **kw)
    return ref, fast


# float32 within rtol 1e-5, float64 within 1e-11 (an absolute floor for elements near zero)
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-11, "atol": 1e-12}}
