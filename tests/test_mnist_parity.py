"""A real MNIST training run: pyfastopt and torch.optim reach the same losses."""

from __future__ import annotations

import pytest
import torch

import pyfastopt
from pyfastopt.data import load_mnist

RUNS = [
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("Adagrad", {"lr": 0.02}),
    ("Adadelta", {"lr": 1.0}),
    ("RMSprop", {"lr": 1e-3, "centered": True}),
    ("Adam", {"lr": 1e-3, "amsgrad": True}),
    ("AdamW", {"lr": 1e-3, "weight_decay": 0.05}),
]


def _train(opt_cls, kw, x, y, foreach_false: bool) -> list[float]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = opt_cls(model.parameters(), **kw, **({"foreach": False} if foreach_false else {}))
    losses = []
    gen = torch.Generator().manual_seed(1)
    for _epoch in range(2):
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
        losses.append(total / x.shape[0])
    return losses


@pytest.mark.parametrize("name,kw", RUNS, ids=[r[0] for r in RUNS])
def test_mnist_training_matches_torch(mnist_dir, name, kw):
    x, y = load_mnist(mnist_dir, "train")
    x, y = x[:3000], y[:3000]
    ref = _train(getattr(torch.optim, name), kw, x, y, True)
    fast = _train(getattr(pyfastopt, name), kw, x, y, False)
    assert ref[-1] < ref[0]  # it learned something
    for r, f in zip(ref, fast):
        assert abs(r - f) <= 1e-4 * max(1.0, abs(r)), (ref, fast)
