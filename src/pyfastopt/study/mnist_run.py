"""Training one method on MNIST: the data, the model, and a timed, interleaved training loop.

A method is trained with pyfastopt and with torch.optim *in lockstep*: both models start from
the same weights, every batch is drawn once (a ``torch.Generator`` seeded with the study's seed,
one permutation per epoch) and fed to each implementation in turn, alternating which goes first.
Both trajectories then see the same batches, and a noisy neighbour on the machine slows both
alike instead of whichever happened to run during the disturbance.

Time is measured per step with ``time.perf_counter``: *train time* runs from ``zero_grad`` to
the end of ``optimizer.step()`` (forward, backward and step); *step time* is the part inside
``optimizer.step()``. For a method that steps with a closure (L-BFGS), ``step()`` runs the
closure itself, once or several times: its train time is the whole ``step()`` call, and its step
time is the part of that call outside the closure (the optimizer's own work). Drawing the batch
and the evaluation after each epoch (loss on the whole training set, accuracy on the test set)
are not counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data import find_mnist, load_mnist
from .methods import IMPLS, Impl, Method

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class MnistData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    #: where it was read from (the MNIST directory); empty for data made up in memory
    source: str = ""


def load_data(
    root: str | None, train_size: int | None = None, test_size: int | None = None
) -> MnistData:
    """MNIST from ``root`` (or ``$PYFASTOPT_MNIST``), cut to the first ``*_size`` examples."""
    train_dir, test_dir = find_mnist(root, "train"), find_mnist(root, "test")
    x_train, y_train = load_mnist(train_dir, "train")
    x_test, y_test = load_mnist(test_dir, "test")
    train_at, test_at = train_dir.absolute(), test_dir.absolute()
    source = str(train_at) if train_at == test_at else f"train {train_at}, test {test_at}"
    return MnistData(
        x_train[:train_size], y_train[:train_size], x_test[:test_size], y_test[:test_size], source
    )


def make_model(hidden: int) -> nn.Module:
    """784-``hidden``-10 MLP with ReLU (initialised from torch's global generator)."""
    return nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def initial_weights(hidden: int, seed: int) -> dict[str, torch.Tensor]:
    """The one set of starting weights every run of a study loads."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return {k: v.detach().clone() for k, v in make_model(hidden).state_dict().items()}


def nudge(weights: StateDict) -> dict[str, torch.Tensor]:
    """``weights`` with every element moved one float step (ulp) up: a rounding-size change."""
    return {k: torch.nextafter(v, torch.full_like(v, math.inf)) for k, v in weights.items()}


@dataclass(frozen=True)
class RunConfig:
    epochs: int
    batch_size: int
    hidden: int
    seed: int


@dataclass
class RunResult:
    """What one (method, implementation) run recorded; lists are indexed by epoch (0 = start)."""

    method: str
    impl: Impl
    lr: float
    train_loss: list[float] = field(default_factory=list)  # on the whole training set
    test_acc: list[float] = field(default_factory=list)
    train_time: list[float] = field(default_factory=list)  # cumulative seconds
    step_time: list[float] = field(default_factory=list)  # cumulative seconds in step()
    batch_loss: list[float] = field(default_factory=list)  # loss of every step's batch
    steps: int = 0
    evaluations: int = 0  # forward and backward passes (more than steps with a closure)
    diverged: bool = False

    @property
    def total_time(self) -> float:
        return self.train_time[-1]

    @property
    def total_step_time(self) -> float:
        return self.step_time[-1]

    def time_to_target(self, target: float) -> tuple[int, float] | None:
        """(epoch, cumulative train time) at the first epoch end with training loss <= target."""
        for epoch, loss in enumerate(self.train_loss):
            if loss <= target:
                return epoch, self.train_time[epoch]
        return None


@dataclass
class MethodRuns:
    """A method's runs, one per implementation, trained in lockstep."""

    runs: dict[Impl, RunResult]
    #: torch.optim started from weights one ulp away (:func:`nudge`): how far rounding alone
    #: moves a trajectory, the yardstick for the pyfastopt/torch difference
    control: RunResult | None = None
    #: max |weight difference| between the implementations after their first step, and after
    #: every epoch; empty with a single implementation
    first_step_weight_diff: float | None = None
    epoch_weight_diff: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``x``, ``y``."""
    logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, acc


def batches(
    method: Method, data: MnistData, batch_size: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (inputs, labels): the whole training set for a full-batch method (GD once,
    full-batch Rprop ``steps_per_epoch`` times), else shuffled batches."""
    x, y = data.x_train, data.y_train
    if method.batch == "full":
        for _ in range(method.steps_per_epoch):
            yield x, y
        return
    for idx in torch.randperm(len(x), generator=gen).split(method.batch_size or batch_size):
        yield x[idx], y[idx]


class _Trainee:
    """One implementation's model, optimizer, clocks and record."""

    def __init__(self, method: Method, impl: Impl, init: StateDict, hidden: int) -> None:
        self.model = make_model(hidden)
        self.model.load_state_dict(init)
        self.opt = method.build(self.model.parameters(), impl)
        self.closure = method.closure
        self.result = RunResult(method.name, impl, method.lr)
        self.train_s = 0.0
        self.step_s = 0.0

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        if self.result.diverged:
            return
        if self.closure:
            loss = self._closure_step(xb, yb)
        else:
            t0 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(xb), yb)
            loss.backward()
            t1 = time.perf_counter()
            self.opt.step()
            t2 = time.perf_counter()
            self.train_s += t2 - t0
            self.step_s += t2 - t1
            self.result.evaluations += 1
        value = loss.item()
        self.result.steps += 1
        self.result.batch_loss.append(value)
        self.result.diverged = not math.isfinite(value)

    def _closure_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One ``step(closure)``; returns the loss at its start (what ``step`` returns)."""
        inside = 0.0

        def closure() -> torch.Tensor:
            nonlocal inside
            c0 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(xb), yb)
            loss.backward()
            inside += time.perf_counter() - c0
            self.result.evaluations += 1
            return loss

        t0 = time.perf_counter()
        loss = self.opt.step(closure)
        t1 = time.perf_counter()
        self.train_s += t1 - t0
        self.step_s += t1 - t0 - inside
        return loss

    def record(self, data: MnistData) -> None:
        loss, _ = evaluate(self.model, data.x_train, data.y_train)
        _, acc = evaluate(self.model, data.x_test, data.y_test)
        self.result.train_loss.append(loss)
        self.result.test_acc.append(acc)
        self.result.train_time.append(self.train_s)
        self.result.step_time.append(self.step_s)


@torch.no_grad()
def _weight_diff(trainees: Sequence[_Trainee]) -> float:
    first, *others = (list(t.model.parameters()) for t in trainees)
    return max(
        ((a - b).abs().max().item() for ps in others for a, b in zip(first, ps)), default=0.0
    )


def train(
    method: Method,
    data: MnistData,
    init: StateDict,
    config: RunConfig,
    impls: Sequence[Impl] = IMPLS,
    wrap: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
    control: bool = False,
) -> MethodRuns:
    """Train ``method`` with each of ``impls`` in lockstep for ``config.epochs`` epochs.

    With ``control``, a torch.optim run from :func:`nudge`-ed weights goes along (after the
    timed runs of each step). ``wrap`` wraps the epoch loop (a progress bar). A run whose batch
    loss turns non-finite stops there, marked ``diverged``; the others go on.
    """
    trainees = [_Trainee(method, impl, init, config.hidden) for impl in impls]
    extra = [_Trainee(method, "torch", nudge(init), config.hidden)] if control else []
    out = MethodRuns(
        {t.result.impl: t.result for t in trainees}, extra[0].result if extra else None
    )
    gen = torch.Generator().manual_seed(config.seed)
    for t in trainees + extra:
        t.record(data)
    step = 0
    for _epoch in wrap(range(config.epochs)):
        for xb, yb in batches(method, data, config.batch_size, gen):
            for t in (trainees if step % 2 == 0 else trainees[::-1]) + extra:
                t.step(xb, yb)
            if step == 0 and len(trainees) > 1:
                out.first_step_weight_diff = _weight_diff(trainees)
            step += 1
        for t in trainees + extra:
            t.record(data)
        if len(trainees) > 1:
            out.epoch_weight_diff.append(_weight_diff(trainees))
        if all(t.result.diverged for t in trainees + extra):
            break
    return out


def warm_up(methods: Iterable[Method], data: MnistData, hidden: int) -> None:
    """A few untimed steps per (method, implementation), so no timed run pays first-call costs."""
    model = make_model(hidden)
    xb, yb = data.x_train[:64], data.y_train[:64]
    for method in methods:
        for impl in IMPLS:
            # lr 0 leaves the weights alone; L-BFGS's line search cannot start from a zero step
            opt = method.build(model.parameters(), impl, lr=None if method.closure else 0.0)

            def closure(opt: torch.optim.Optimizer = opt) -> torch.Tensor:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                return loss

            for _ in range(3):
                if method.closure:
                    opt.step(closure)
                else:
                    closure()
                    opt.step()
