"""The learning-rate sweep behind the method table's MNIST learning rates.

Each method is trained (pyfastopt only) at its table lr and at its neighbours on the half-decade
grid (..., 0.01, 0.03, 0.1, 0.3, ...); ``sweep.md`` lists the training loss after every epoch and
marks the lowest final loss, so anyone can re-check the reasons given in :mod:`.methods`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._progress import progress
from ..bench._args import atomic_write, write_json
from . import report
from .machine import machine, machine_lines
from .methods import Method
from .mnist_run import MnistData, RunConfig, RunResult, initial_weights, load_data, train


def half_decades(lr: float, k: int = 2) -> list[float]:
    """``lr`` and ``k`` neighbours each side on the grid 1, 3, 10, 30, ... x 10^n."""
    i = round(2 * math.log10(lr))
    grid = {float(f"{10 ** (j // 2) * (3 if j % 2 else 1):.0e}") for j in range(i - k, i + k + 1)}
    return sorted(grid | {lr})


@dataclass(frozen=True)
class SweepOptions:
    methods: Sequence[Method]
    out: Path
    data: str | None = None
    epochs: int = 5
    batch_size: int = 128
    hidden: int = 128
    seed: int = 0
    train_size: int | None = None
    threads: int = 1
    show_progress: bool = True
    command: str = ""


#: test images each trial is scored on
TEST_SIZE = 10000


def run(options: SweepOptions, data: MnistData | None = None) -> dict[str, list[RunResult]]:
    if data is None:
        data = load_data(options.data, options.train_size, TEST_SIZE)
    config = RunConfig(options.epochs, options.batch_size, options.hidden, options.seed)
    init = initial_weights(options.hidden, options.seed)
    jobs = [(m, lr) for m in options.methods for lr in half_decades(m.lr)]
    found: dict[str, list[RunResult]] = {m.name: [] for m in options.methods}
    previous = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        for method, lr in progress(
            jobs, total=len(jobs), desc="lr sweep", enabled=options.show_progress
        ):
            trial = dataclasses.replace(method, lr=lr)
            found[method.name].append(
                train(trial, data, init, config, ("pyfastopt",)).runs["pyfastopt"]
            )
    finally:
        torch.set_num_threads(previous)
    return found


def write(
    found: dict[str, list[RunResult]],
    options: SweepOptions,
    info: dict[str, Any] | None = None,
) -> list[Path]:
    """sweep.md and sweep.json in ``options.out``; ``info``: the machine record (default: this
    machine, without the MNIST directory)."""
    info = info if info is not None else machine(options.threads)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in options.methods:
        trials = found[method.name]
        best = min(trials, key=lambda r: r.train_loss[-1] if not r.diverged else math.inf)
        for r in trials:
            rows.append(
                [
                    method.label,
                    report.fmt(r.lr) + (" (table)" if r.lr == method.lr else ""),
                    " → ".join(f"{v:.3f}" for v in r.train_loss[1:]),
                    f"**{r.train_loss[-1]:.4f}**" if r is best else f"{r.train_loss[-1]:.4f}",
                    f"{100 * r.test_acc[-1]:.2f} %",
                ]
            )
    md = atomic_write(
        out / "sweep.md",
        "\n".join(
            [
                "# Learning-rate sweep (pyfastopt, MNIST)\n",
                f"Command: `{options.command}`\n",
                *machine_lines(info),
                "",
                f"784-{options.hidden}-10 MLP, batch {options.batch_size}, {options.epochs} "
                f"epochs, seed {options.seed}. Training loss on the whole training set after "
                "each epoch; the lowest final loss per method in bold.\n",
                report.table(
                    ["method", "lr", "training loss per epoch", "final", "test accuracy"], rows
                ),
            ]
        ),
    )
    raw = write_json(
        out / "sweep.json",
        {
            "command": options.command,
            "machine": info,
            "settings": {
                "epochs": options.epochs,
                "batch_size": options.batch_size,
                "model": f"784-{options.hidden}-10 MLP, ReLU, cross-entropy",
                "seed": options.seed,
                "train_size": options.train_size,
                "test_size": TEST_SIZE,
            },
            "runs": {
                name: [
                    {"lr": r.lr, "train_loss": r.train_loss, "test_acc": r.test_acc} for r in trials
                ]  # fmt: skip
                for name, trials in found.items()
            },
        },
    )
    return [md, raw]
