"""The method table: every optimizer the study compares, with its learning rate and why.

One table drives the pyfastopt runs, the ``torch.optim`` comparison runs and the 2-D paths: a
method names an optimizer class that exists under the same name in both :mod:`pyfastopt` and
:mod:`torch.optim`, the keyword arguments it gets besides ``lr``, and whether it steps on the
whole training set (full-batch gradient descent) or on mini-batches.
"""

from __future__ import annotations

import inspect
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

#: Optimizers whose ``step`` takes a closure that re-evaluates the loss, possibly several times.
CLOSURE_OPTIMIZERS = frozenset({"LBFGS", "BFGS"})


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
    batch_size: int | None = None  # mini-batches of its own size (None: the study's)
    steps_per_epoch: int = 1  # full batch only: steps on the whole training set per epoch

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1 or (self.steps_per_epoch > 1 and self.batch != "full"):
            raise ValueError(
                f"{self.name}: steps_per_epoch must be 1, or more for a full-batch method"
            )

    @property
    def closure(self) -> bool:
        """Whether ``step`` takes a closure that re-evaluates the loss (L-BFGS, BFGS)."""
        return self.optimizer in CLOSURE_OPTIMIZERS

    @property
    def batches(self) -> str:
        """How it draws its data, for tables: ``full``, ``full (10 per epoch)``, ``mini`` or
        ``mini (4096)``."""
        if self.steps_per_epoch > 1:
            return f"{self.batch} ({self.steps_per_epoch} per epoch)"
        return self.batch if self.batch_size is None else f"{self.batch} ({self.batch_size})"

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
        ``options`` are passed on (pyfastopt's ``state_dtype``, for one) and override the
        method's own keyword arguments."""
        module: Any = pyfastopt if impl == "pyfastopt" else torch.optim
        cls = getattr(module, self.optimizer)
        extra = TORCH_EXTRA if impl == "torch" and "foreach" in _parameters(cls) else {}
        kwargs = {**self.kwargs, **extra, **options}
        return cls(params, lr=self.lr if lr is None else lr, **kwargs)


def _parameters(cls: type) -> Mapping[str, Any]:
    return inspect.signature(cls.__init__).parameters


#: How the MNIST learning rates were chosen (the reasons below quote its final training losses):
#: each method ran 5 epochs on the full training set (784-128-10, batch 128, seed 0) at the
#: learning rates of the half-decade grid (..., 0.01, 0.03, 0.1, 0.3, ...) around its usual value,
#: and the lr with the lowest final training loss was kept (the grid was widened where the best
#: lr lay on its edge). GD and full-batch Rprop, one step per epoch, were judged over 10 epochs.
LR_SWEEP = (
    "each lr is the best of a half-decade grid (..., 1e-3, 3e-3, 0.01, 0.03, ...) by final "
    "training loss after 5 epochs on the full training set (784-128-10, batch 128, seed 0), "
    "the grid widened where the best lr lay on its edge; GD and full-batch Rprop, which take "
    "one step per epoch, were judged over 10 epochs; L-BFGS has no lr to sweep (see its rows)"
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
    Method(
        "nadam",
        "NAdam",
        "NAdam",
        3e-3,
        "best of the sweep (3e-4 -> 0.098, 1e-3 -> 0.043, 2e-3 (torch default) -> 0.036, "
        "3e-3 -> 0.034, 1e-2 -> 0.115, 3e-2 -> 0.279): a near-tie with the default, as for "
        "Adam, whose lr it shares",
    ),
    Method(
        "radam",
        "RAdam",
        "RAdam",
        3e-3,
        "best of the sweep (1e-4 -> 0.244, 3e-4 -> 0.139, 1e-3 (torch default) -> 0.067, "
        "3e-3 -> 0.050, 1e-2 -> 0.141): three times the default, like Adam's best",
    ),
    Method(
        "adamax",
        "Adamax",
        "Adamax",
        1e-2,
        "best of the sweep (3e-4 -> 0.187, 1e-3 -> 0.092, 2e-3 (torch default) -> 0.061, "
        "3e-3 -> 0.048, 1e-2 -> 0.043, 3e-2 -> 0.081): its denominator, the decayed max |g|, "
        "is at least Adam's root mean square, so the same lr makes smaller steps",
    ),
    Method(
        "adafactor",
        "Adafactor",
        "Adafactor",
        0.1,
        "best of the sweep (1e-3 -> 0.305, 3e-3 -> 0.192, 1e-2 (torch default) -> 0.077, "
        "3e-2 -> 0.035, 0.1 -> 0.028, 0.3 -> 0.040, 1 -> 0.050, 3 -> 0.050): torch's "
        "Adafactor scales a step by RMS(weights) * min(lr, 1/sqrt(step)), so lr only caps the "
        "relative step size, here during the first 1/lr^2 = 100 steps (lr 1 and 3 give the "
        "same run)",
    ),
    Method(
        "asgd",
        "ASGD",
        "ASGD",
        0.3,
        "best of the sweep (0.01 (torch default) -> 0.250, 0.03 -> 0.148, 0.1 -> 0.060, "
        "0.3 -> 0.034, 1 -> 0.168): plain SGD's best too. With torch's defaults (lambd 1e-4, "
        "t0 1e6) the step decays as lr / (1 + lambd lr t)^0.75, to 0.27 after 10 epochs, and "
        "averaging (kept in state['ax'], not in the weights the study evaluates) never starts",
    ),
    Method(
        "rprop",
        "Rprop (full batch)",
        "Rprop",
        1e-2,
        "Rprop steps by the gradient's sign alone, each weight with its own step size grown by "
        "1.2 while the sign holds and halved when it flips: a full-batch method. 10 steps per "
        "epoch on the whole training set, 100 evaluations in 10 epochs (full-batch L-BFGS "
        "makes about 114); at GD's one step per epoch 10 steps reach only 0.355 (lr 1e-2; "
        "1e-3 -> 0.419, 3e-2 -> 0.636). lr is the initial step size: torch's default and best "
        "of the sweep over 10 epochs of 10 steps (1e-3 -> 0.0068, 3e-3 -> 0.0059, "
        "1e-2 -> 0.0029, 3e-2 -> 0.0038, 0.1 -> 0.0080)",
        batch="full",
        steps_per_epoch=10,
    ),
    Method(
        "rpropmini",
        "Rprop (mini-batch)",
        "Rprop",
        3e-3,
        "kept to show why Rprop is a full-batch method: on mini-batches a weight's gradient "
        "sign flips from batch to batch for reasons of sampling, not of curvature. After one "
        "epoch (a trial at this lr) the median step size sat at step_sizes' minimum 1e-6, while "
        "the few weights whose sign held had grown to its maximum 50: the output layer's weight "
        "norm went from 1.8 to 5900, the logits to about 700. Every lr of the sweep ends above "
        "chance's loss of 2.30 (1e-4 -> 4.31, 3e-4 -> 4.02, 1e-3 -> 3.78, 3e-3 -> 3.55, "
        "1e-2 (torch default) -> 13.0) with about 90 % of the test images right: confident "
        "mistakes cost a large loss. 3e-3 is the least bad",
    ),
    Method(
        "lbfgs",
        "L-BFGS (full batch)",
        "LBFGS",
        1.0,
        "torch's default: the strong-Wolfe line search starts from the quasi-Newton step and "
        "picks the length itself, so there is no lr to sweep. One step(closure) per epoch, "
        "max_iter=10 (at most 12 loss evaluations on the whole training set), history 10: in a "
        "trial (10 epochs, this study's loop and seed) max_iter=5 ended at loss 0.104 after 61 "
        "evaluations, max_iter=10 at 0.0047 after 114",
        batch="full",
        kwargs={"max_iter": 10, "history_size": 10, "line_search_fn": "strong_wolfe"},
    ),
    Method(
        "lbfgs4096",
        "L-BFGS (batch 4096)",
        "LBFGS",
        1.0,
        "as full-batch L-BFGS (the line search picks the length); large batches so that the "
        "difference of two gradients reflects curvature more than sampling noise, max_iter=5 "
        "per batch: in a trial (10 epochs) max_iter=1 ended at loss 0.060 after 300 "
        "evaluations, max_iter=5 at 0.017 after 902; without a line search (lr 0.1, max_iter=1) "
        "the loss jumped between 0.3 and 6.9",
        kwargs={"max_iter": 5, "history_size": 10, "line_search_fn": "strong_wolfe"},
        batch_size=4096,
    ),
)

#: Methods drawn on the 2-D surfaces only: BFGS's dense inverse Hessian refuses the MNIST MLP
#: (pyfastopt.optim.bfgs.MAX_NUMEL), and torch.optim has no BFGS to compare with.
SURFACE_ONLY: tuple[Method, ...] = (
    Method(
        "bfgs",
        "BFGS",
        "BFGS",
        1.0,
        "the strong-Wolfe line search starts from the quasi-Newton step and picks the length",
        batch="full",
        kwargs={"line_search_fn": "strong_wolfe"},
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
