"""Variants of one MNIST MLP trained in lockstep: the loop behind ``precision`` and ``state``.

Every variant (a model, its optimizer and the dtype its forward pass computes in) starts from the
weights its caller loaded and sees the same mini-batches: one ``torch.randperm`` per epoch from
``torch.Generator().manual_seed(seed)``. The variants take turns batch by batch, so a noisy
machine slows all alike. *Train time* runs from ``zero_grad()`` to the end of ``step()``; *step
time* is the part inside ``step()``. The loss on the whole training set and the accuracy on the
test set are recorded at the start and after every epoch (untimed); every step's mini-batch loss
is kept too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .mnist_run import MnistData

_EVAL_CHUNK = 4096


def make_mlp(hidden: Sequence[int]) -> nn.Module:
    """784-``hidden``-10 MLP with ReLU between layers (initialised from torch's generator)."""
    sizes = [784, *hidden, 10]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@torch.no_grad()
def evaluate(model: nn.Module, dtype: torch.dtype, data: MnistData) -> tuple[float, float]:
    """(mean cross-entropy on the whole training set, test accuracy); logits taken in float32."""
    loss = 0.0
    n = data.x_train.shape[0]
    for i in range(0, n, _EVAL_CHUNK):
        out = model(data.x_train[i : i + _EVAL_CHUNK].to(dtype)).float()
        loss += F.cross_entropy(out, data.y_train[i : i + _EVAL_CHUNK], reduction="sum").item()
    pred = model(data.x_test.to(dtype)).float().argmax(1)
    return loss / n, (pred == data.y_test).float().mean().item()


@dataclass
class VariantResult:
    name: str
    train_loss: list[float] = field(default_factory=list)  # per epoch, 0 = start
    test_accuracy: list[float] = field(default_factory=list)
    step_seconds: float = 0.0  # inside optimizer.step()
    train_seconds: float = 0.0  # forward + backward + step
    batch_loss: list[float] = field(default_factory=list)  # every step's mini-batch loss


@dataclass
class Trainee:
    """One variant: its model, optimizer, compute dtype and record."""

    model: nn.Module
    opt: torch.optim.Optimizer
    dtype: torch.dtype
    result: VariantResult

    def record(self, data: MnistData) -> None:
        loss, acc = evaluate(self.model, self.dtype, data)
        self.result.train_loss.append(loss)
        self.result.test_accuracy.append(acc)


def train_lockstep(
    trainees: Sequence[Trainee],
    data: MnistData,
    epochs: int,
    batch_size: int,
    seed: int,
    wrap: Callable[[Iterable[int]], Iterable[int]] = lambda it: it,
) -> None:
    """Train every trainee for ``epochs`` epochs on the same batches, taking turns per batch.
    ``wrap`` wraps the epoch loop (a progress bar)."""
    for t in trainees:
        t.record(data)
    gen = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    for _epoch in wrap(range(epochs)):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = data.x_train[idx], data.y_train[idx]
            for t in trainees:
                t0 = time.perf_counter()
                t.opt.zero_grad()
                loss = F.cross_entropy(t.model(x.to(t.dtype)).float(), y)
                loss.backward()
                t1 = time.perf_counter()
                t.opt.step()
                t2 = time.perf_counter()
                t.result.step_seconds += t2 - t1
                t.result.train_seconds += t2 - t0
                t.result.batch_loss.append(loss.item())
        for t in trainees:
            t.record(data)
