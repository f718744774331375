"""The training workload: an MNIST MLP, fixed batches, and one timed forward+backward+step.

Everything is deterministic: the initial weights come from a seeded generator and the batches
are the first ``n_batches × batch_size`` training images, so every candidate trains the same
model on the same data.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..data import ENV_VAR, find_mnist, load_mnist, synthetic_mnist
from .workloads import CLASSES, IN_FEATURES

BATCH_SIZE = 128
N_BATCHES = 16


@dataclass(frozen=True)
class Batches:
    """Fixed training batches and where they came from (``real`` is False for synthetic data)."""

    items: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    real: bool
    source: str


def load_batches(
    data: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    n_batches: int = N_BATCHES,
    fallback: bool = True,
) -> Batches:
    """MNIST training batches from ``data``, else ``$PYFASTOPT_MNIST``, else synthetic ones.

    A directory named (``data``, or the environment variable) must hold MNIST, else
    FileNotFoundError: synthetic batches only when nothing names one (and ``fallback``).
    """
    n = batch_size * n_batches
    if data is None and not os.environ.get(ENV_VAR) and fallback:
        x, y = synthetic_mnist(n)
        source = f"synthetic MNIST-shaped batches ({ENV_VAR} not set)"
        return Batches(_split(x, y, batch_size), False, source)
    directory = find_mnist(data, "train")
    x, y = load_mnist(directory, "train")
    if x.shape[0] < n:
        raise ValueError(f"{directory}: {x.shape[0]} training images, need {n}")
    return Batches(_split(x[:n], y[:n], batch_size), True, f"MNIST train from {directory}")


def _split(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    return tuple(
        (x[i : i + batch_size].contiguous(), y[i : i + batch_size].contiguous())
        for i in range(0, x.shape[0] - batch_size + 1, batch_size)
    )


def make_mlp(hidden: Sequence[int], seed: int = 0) -> nn.Sequential:
    """An MLP 784-hidden...-10 with ReLUs, initialised from ``seed`` (global RNG untouched)."""
    sizes = [IN_FEATURES, *hidden, CLASSES]
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            bound = 1.0 / (p.shape[-1] if p.dim() > 1 else p.shape[0]) ** 0.5
            p.uniform_(-bound, bound, generator=gen)
    return model


@dataclass
class TrainStep:
    """One training step per call; records how long forward+backward took, per call."""

    model: nn.Module
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    optimizer: torch.optim.Optimizer | None = None
    fwd_bwd_ns: list[int] = field(default_factory=list)
    calls: int = 0

    def __call__(self) -> None:
        x, y = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        t0 = time.perf_counter_ns()
        self.model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        t1 = time.perf_counter_ns()
        if self.optimizer is not None:
            self.optimizer.step()
        self.fwd_bwd_ns.append(t1 - t0)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.model.parameters())


def train_step(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
) -> TrainStep:
    """A :class:`TrainStep` on a private copy of ``model``, stepped by ``make_optimizer(params)``
    (forward and backward alone when it is None)."""
    own = copy.deepcopy(model)
    opt = make_optimizer(list(own.parameters())) if make_optimizer is not None else None
    return TrainStep(own, batches, opt)
