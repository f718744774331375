"""Classic 2-D test functions and the path each optimizer takes on them.

A path is traced with pyfastopt's own optimizers on a two-element parameter
(``torch.nn.Parameter(torch.tensor([x0, y0]))``, float64 so rounding does not blur the end of
the path): evaluate f, ``backward()``, ``step()``. L-BFGS and BFGS step with a closure, one
iteration per step (``max_iter=1``), each with the evaluations its line search needs. Each
function is written with arithmetic operators only, so the same definition evaluates torch
tensors (for gradients) and numpy grids (for contours).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .methods import METHODS, SURFACE_ONLY, Method

Point = tuple[float, float]


def rosenbrock(x: Any, y: Any) -> Any:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def saddle(x: Any, y: Any) -> Any:
    return x**2 - y**2


def beale(x: Any, y: Any) -> Any:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


_LINE_SEARCH_EVALS = 25

_QUASI_NEWTON_LR = (
    "L-BFGS and BFGS take lr 1 with the strong-Wolfe line search, which starts from the "
    "quasi-Newton step and picks the step length itself (no sweep)."
)


@dataclass(frozen=True)
class Surface:
    """A test function, where paths start, what to mark, and each method's learning rate."""

    name: str
    title: str
    formula: str
    f: Callable[[Any, Any], Any]
    start: Point
    target: Point  # the global minimum, or the saddle point
    target_label: str
    xlim: Point
    ylim: Point
    lr: Mapping[str, float]  # method name -> learning rate
    lr_reason: str
    log_contours: bool = True


SURFACES: tuple[Surface, ...] = (
    Surface(
        "rosenbrock",
        "Rosenbrock valley",
        "(1 − x)² + 100 (y − x²)²",
        rosenbrock,
        start=(-1.5, 2.0),
        target=(1.0, 1.0),
        target_label="minimum (1, 1)",
        xlim=(-2.0, 2.0),
        ylim=(-1.0, 3.0),
        lr={
            "gd": 1e-3,
            "momentum": 1e-3,
            "nesterov": 1e-3,
            "adagrad": 1.0,
            "adadelta": 0.3,
            "rmsprop": 1e-2,
            "adam": 0.3,
            "adamw": 3e-2,
            "lbfgs": 1.0,
            "bfgs": 1.0,
        },
        lr_reason="each first-order method's best of the half-decade grid 1e-4, 3e-4, ..., 1, 3 "
        "(closest to the minimum after 2000 steps). GD, momentum and Nesterov land on the same "
        "1e-3: the valley's curvature near the start (about 1900) makes GD unstable above "
        "2/1900 ≈ 1e-3, so all three share it and differ only by their update rule. "
        + _QUASI_NEWTON_LR,
    ),
    Surface(
        "saddle",
        "Saddle",
        "x² − y²",
        saddle,
        start=(-1.0, 0.01),
        target=(0.0, 0.0),
        target_label="saddle point (0, 0)",
        xlim=(-1.5, 1.5),
        ylim=(-1.5, 1.5),
        lr={
            "gd": 1e-2,
            "momentum": 1e-2,
            "nesterov": 1e-2,
            "adagrad": 1e-2,
            "adadelta": 1e-2,
            "rmsprop": 1e-2,
            "adam": 1e-2,
            "adamw": 1e-2,
            "lbfgs": 1.0,
            "bfgs": 1.0,
        },
        lr_reason="one lr, 0.01, for every first-order method, so the paths differ only by the "
        "update rule; small enough that GD's slide towards the saddle, before it escapes along "
        "y, stays visible. *Left at step* is then the step at which a method escaped. "
        + _QUASI_NEWTON_LR,
        log_contours=False,
    ),
    Surface(
        "beale",
        "Beale's function",
        "(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²",
        beale,
        start=(1.0, 1.5),
        target=(3.0, 0.5),
        target_label="minimum (3, 0.5)",
        xlim=(-4.5, 4.5),
        ylim=(-4.5, 4.5),
        lr={
            "gd": 3e-2,
            "momentum": 3e-3,
            "nesterov": 3e-3,
            "adagrad": 1.0,
            "adadelta": 0.3,
            "rmsprop": 3e-3,
            "adam": 0.3,
            "adamw": 0.3,
            "lbfgs": 1.0,
            "bfgs": 1.0,
        },
        lr_reason="each first-order method's best of the half-decade grid 1e-4, 3e-4, ..., 1, 3 "
        "(closest to the minimum after 2000 steps; the next larger lr sends GD, momentum and "
        "Nesterov off the plot). " + _QUASI_NEWTON_LR,
    ),
)

BY_NAME: Mapping[str, Surface] = {s.name: s for s in SURFACES}


#: MNIST methods without 2-D paths: added to the MNIST table later (issue 12) and given no
#: per-function learning rates; eighteen paths would also bury each other in one picture.
MNIST_ONLY = frozenset({"nadam", "radam", "adamax", "adafactor", "asgd", "rprop", "rpropmini"})


def surface_methods() -> list[Method]:
    """The methods drawn in 2-D: those of the MNIST table (but :data:`MNIST_ONLY`) except a
    mini-batch method that a full-batch one with the same class and arguments stands for when
    there is no data to sample (SGD is GD, mini-batch L-BFGS is L-BFGS), then BFGS."""
    table = [m for m in METHODS if m.name not in MNIST_ONLY]
    full = {_drawn_as(m) for m in table if m.batch == "full"}
    drawn = [m for m in table if m.batch == "full" or _drawn_as(m) not in full]
    return drawn + list(SURFACE_ONLY)


def _drawn_as(method: Method) -> tuple:
    """What decides a method's path: its class and arguments (``max_iter``, ``max_eval``: see
    :func:`trace`)."""
    kwargs = {
        k: v
        for k, v in method.kwargs.items()
        if not (method.closure and k in ("max_iter", "max_eval"))
    }
    return method.optimizer, tuple(sorted(kwargs.items()))


def label(method: Method) -> str:
    if method.name == "gd":
        return "GD / SGD"
    return method.label.removesuffix(" (full batch)")


@dataclass
class Path:
    """Where one method went on one surface: ``points[0]`` is the start."""

    method: str
    label: str
    lr: float
    points: list[Point] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    left_at: int | None = None  # step at which it left the plotted area (or overflowed)

    @property
    def end(self) -> Point:
        return self.points[-1]

    def distance(self, to: Point) -> float:
        return math.dist(self.end, to)

    def reached(self, to: Point, within: float) -> int | None:
        """The first step after which the path is within ``within`` of ``to`` (None: never)."""
        return next((i for i, p in enumerate(self.points) if math.dist(p, to) < within), None)


def _inside(surface: Surface, point: Point) -> bool:
    # paths may wander a little past the plotted area; half its width past an edge, they are gone
    (x0, x1), (y0, y1) = surface.xlim, surface.ylim
    dx, dy = x1 - x0, y1 - y0
    x, y = point
    return (
        math.isfinite(x)
        and math.isfinite(y)
        and x0 - dx / 2 <= x <= x1 + dx / 2
        and y0 - dy / 2 <= y <= y1 + dy / 2
    )


def trace(surface: Surface, method: Method, steps: int, lr: float | None = None) -> Path:
    """Run ``method`` (pyfastopt) for ``steps`` steps from ``surface.start``."""
    lr = surface.lr[method.name] if lr is None else lr
    p = torch.nn.Parameter(torch.tensor(surface.start, dtype=torch.float64))
    if method.closure:  # one iteration per step (a point per iteration), with torch's default
        # line-search budget (25 evaluations; max_iter=1 alone would allow it one evaluation)
        kwargs = {**method.kwargs, "max_iter": 1, "max_eval": _LINE_SEARCH_EVALS}
        method = dataclasses.replace(method, kwargs=kwargs)
    opt = method.build([p], "pyfastopt", lr=lr)
    path = Path(method.name, label(method), lr, [surface.start])

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        value = surface.f(p[0], p[1])
        value.backward()
        return value

    for step in range(1, steps + 1):
        if method.closure:
            value = opt.step(closure)
        else:
            value = closure()
            opt.step()
        path.values.append(value.item())
        point = (p[0].item(), p[1].item())
        path.points.append(point)
        if not _inside(surface, point):
            path.left_at = step
            break
    path.values.append(float(surface.f(*path.end)))
    return path
