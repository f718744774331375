"""The method table: every optimizer the study compares, with its learning rate and why.

One table drives the pyfastopt runs, the ``torch.optim`` comparison runs and the 2-D paths: a
method names an optimizer class that exists under the same name in both :mod:`pyfastopt` and
:mod:`torch.optim`, the keyword arguments it gets besides ``lr``, and whether it steps on the
whole training set (full-batch gradient descent) or on mini-batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

import pyfastopt

Impl = Literal["pyfastopt", "torch"]
IMPLS: tuple[Impl, ...] = ("pyfastopt", "torch")

#: What the torch.optim comparison runs get on top of a method's own arguments: the default
#: single-tensor for-loop (torch's CPU default, named explicitly so the baseline cannot move).
TORCH_EXTRA: Mapping[str, Any] = {"foreach": False}


@dataclass(frozen=True)
class Method:
    """One optimizer configuration of the study."""

    name: str  # short key used on the command line, in results.json and in file names
    label: str  # what plots and tables show
    optimizer: str  # class name, the same in pyfastopt and torch.optim
    lr: float  # learning rate on MNIST
    reason: str  # why that learning rate
    batch: Literal["full", "mini"] = "mini"
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # besides lr

    def options(self) -> str:
        """The constructor arguments besides ``lr``, as text (``momentum=0.9, nesterov=True``)."""
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items()) or "defaults"

    def build(
        self,
        params: Iterable[torch.Tensor],
        impl: Impl,
        lr: float | None = None,
        **options: Any,
    ) -> torch.optim.Optimizer:
        """The optimizer for ``params``: pyfastopt's class, or torch.optim's for-loop class;
        ``options`` are passed on (pyfastopt's ``state_dtype``, for one)."""
        module: Any = pyfastopt if impl == "pyfastopt" else torch.optim
        extra = TORCH_EXTRA if impl == "torch" else {}
        cls = getattr(module, self.optimizer)
        return cls(params, lr=self.lr if lr is None else lr, **self.kwargs, **extra, **options)


#: How the MNIST learning rates were chosen (the reasons below quote its final training losses):
#: each method ran 5 epochs on the full training set (784-128-10, batch 128, seed 0) at the
#: learning rates of the half-decade grid (..., 0.01, 0.03, 0.1, 0.3, ...) around its usual value,
#: and the lr with the lowest final training loss was kept. GD was judged over 10 epochs.
LR_SWEEP = (
    "each lr is the best of a half-decade grid (..., 1e-3, 3e-3, 0.01, 0.03, ...) by final "
    "training loss after 5 epochs on the full training set (784-128-10, batch 128, seed 0); "
    "GD, which takes one step per epoch, was judged over 10 epochs"
)

METHODS: tuple[Method, ...] = (
    Method(
        "gd",
        "GD (full batch)",
        "SGD",
        0.2,
        "one step per epoch, so few steps: the largest lr whose loss still falls every epoch "
        "(10 epochs: 0.1 -> 0.98, 0.2 -> 0.64; 0.3 and 0.5 overshoot and the loss climbs back)",
        batch="full",
    ),
    Method(
        "sgd",
        "SGD",
        "SGD",
        0.3,
        "best of the sweep (5 epochs: 0.03 -> 0.147, 0.1 -> 0.059, 0.3 -> 0.033, 0.5 -> 0.038)",
    ),
    Method(
        "momentum",
        "SGD + momentum",
        "SGD",
        0.03,
        "best of the sweep (0.01 -> 0.062, 0.03 -> 0.033, 0.1 -> 0.050); lr/(1-momentum) = 0.3, "
        "the same effective step as plain SGD's best",
        kwargs={"momentum": 0.9},
    ),
    Method(
        "nesterov",
        "Nesterov",
        "SGD",
        0.03,
        "best of the sweep (0.01 -> 0.062, 0.03 -> 0.034, 0.1 -> 0.071); kept equal to "
        "momentum's so the two differ only in the look-ahead",
        kwargs={"momentum": 0.9, "nesterov": True},
    ),
    Method(
        "adagrad",
        "Adagrad",
        "Adagrad",
        0.03,
        "best of the sweep (0.01 (torch default) -> 0.082, 0.03 -> 0.057, 0.1 -> 0.068, "
        "0.3 -> 0.176): its step only shrinks, so it wants a larger start than the default",
    ),
    Method(
        "adadelta",
        "Adadelta",
        "Adadelta",
        1.0,
        "torch's default and best of the sweep (0.3 -> 0.054, 1 -> 0.024, 3 -> 0.042, "
        "10 -> 0.125); Adadelta sizes its own steps, lr only scales them",
    ),
    Method(
        "rmsprop",
        "RMSprop",
        "RMSprop",
        1e-3,
        "best of the sweep (3e-4 -> 0.081, 1e-3 -> 0.039, 3e-3 -> 0.046); torch's default "
        "0.01 is too large for this net (0.182, the loss goes up and down)",
    ),
    Method(
        "adam",
        "Adam",
        "Adam",
        3e-3,
        "best of the sweep (1e-3 (default) -> 0.046, 3e-3 -> 0.045, 1e-2 -> 0.114): a tie "
        "with the default, 1e-2 is clearly too large",
    ),
    Method(
        "adamw",
        "AdamW",
        "AdamW",
        3e-3,
        "best of the sweep (1e-3 -> 0.048, 3e-3 -> 0.044) with torch's default weight_decay; "
        "same lr as Adam so the two differ only in the decoupled decay",
        kwargs={"weight_decay": 0.01},
    ),
)

BY_NAME: Mapping[str, Method] = {m.name: m for m in METHODS}


def select(names: Sequence[str] | None) -> list[Method]:
    """The methods named (all of them for ``None``), in table order; ValueError for unknown ones."""
    if not names:
        return list(METHODS)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}"
        )
    wanted = set(names)
    return [m for m in METHODS if m.name in wanted]
