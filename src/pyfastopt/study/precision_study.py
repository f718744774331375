"""What 16-bit training costs and what each remedy buys: ``python -m pyfastopt.study precision``.

One MNIST MLP (784-512-256-10 by default) is trained from the same float32 initial weights and
the same batches in five ways, and the final training loss, test accuracy and time are set side
by side:

- ``float32``: weights, gradients and Adam's state in float32 (the baseline);
- ``bf16``: weights, gradients and state in bfloat16, each stored value rounded to nearest
  (torch's layout, pyfastopt's default);
- ``bf16+sr``: as ``bf16``, with the weights rounded stochastically (``stochastic_rounding``);
- ``bf16+master``: bfloat16 weights and gradients, a float32 master copy and float32 state in
  the optimizer (``master_weights``);
- ``torch bf16 fused``: ``torch.optim.Adam(fused=True)`` on the bfloat16 model, for reference.

The forward and backward passes of the bfloat16 runs compute in bfloat16 (torch's CPU kernels);
the loss is taken in float32. Runs are interleaved batch by batch, so a noisy machine slows all
alike.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import pyfastopt

from .._progress import progress
from ..bench._args import atomic_write, write_json
from .lockstep import Trainee, VariantResult, make_mlp, train_lockstep
from .machine import machine, machine_lines
from .mnist_run import MnistData, load_data
from .report import table

VARIANTS = ("float32", "bf16", "bf16+sr", "bf16+master", "torch bf16 fused")


@dataclass(frozen=True)
class PrecisionOptions:
    out: Path
    data: str | None = None
    hidden: tuple[int, ...] = (512, 256)
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    train_size: int | None = None
    test_size: int | None = None
    threads: int = 1
    variants: tuple[str, ...] = VARIANTS
    show_progress: bool = True
    command: str = ""


def _optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "bf16+sr":
        return pyfastopt.Adam(params, lr=lr, stochastic_rounding=True)
    if name == "bf16+master":
        return pyfastopt.Adam(params, lr=lr, master_weights=True)
    if name == "torch bf16 fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return pyfastopt.Adam(params, lr=lr)


def run(options: PrecisionOptions, data: MnistData | None = None) -> list[VariantResult]:
    if data is None:
        data = load_data(options.data, options.train_size, options.test_size)
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    base = make_mlp(options.hidden).state_dict()
    trainees = []
    for name in options.variants:
        dtype = torch.float32 if name == "float32" else torch.bfloat16
        model = make_mlp(options.hidden)
        model.load_state_dict(base)
        model.to(dtype)
        torch.manual_seed(options.seed)  # stochastic rounding's seed is drawn here
        opt = _optimizer(name, list(model.parameters()), options.lr)
        trainees.append(Trainee(model, opt, dtype, VariantResult(name)))
    train_lockstep(
        trainees,
        data,
        options.epochs,
        options.batch_size,
        options.seed,
        wrap=lambda epochs: progress(
            epochs, total=options.epochs, desc="precision, epochs", enabled=options.show_progress
        ),
    )
    return [t.result for t in trainees]


def report(
    options: PrecisionOptions,
    results: Sequence[VariantResult],
    info: dict[str, Any] | None = None,
) -> str:
    """precision.md; ``info``: the machine record, listed when given."""
    hidden = "-".join(map(str, options.hidden))
    rows = [
        [
            r.name,
            f"{r.train_loss[-1]:.4f}",
            f"{100 * r.test_accuracy[-1]:.2f}%",
            f"{r.train_seconds:.1f}",
            f"{r.step_seconds:.2f}",
        ]
        for r in results
    ]
    head = [
        f"# Adam on MNIST 784-{hidden}-10: float32, bfloat16 and the remedies",
        "",
        f"{options.epochs} epochs, batch {options.batch_size}, lr {options.lr}, seed "
        f"{options.seed}, {options.threads} thread(s); command: `{options.command}`",
        "",
        *([*machine_lines(info), ""] if info is not None else []),
    ]
    body = table(
        ["variant", "final train loss", "test accuracy", "train s", "step s"],
        rows,
    )
    return "\n".join(head) + body + "\n"


def plot(results: Sequence[VariantResult], path: Path) -> Path | None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.subplots()
    for r in results:
        ax.plot(range(len(r.train_loss)), r.train_loss, marker="o", label=r.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write(path, buffer.getvalue())


def write(
    options: PrecisionOptions,
    results: Sequence[VariantResult],
    info: dict[str, Any] | None = None,
) -> list[Path]:
    """precision.md, precision.json and the picture in ``options.out``; ``info``: the machine
    record (default: this machine, without the MNIST directory)."""
    info = info if info is not None else machine(options.threads)
    options.out.mkdir(parents=True, exist_ok=True)
    md = atomic_write(options.out / "precision.md", report(options, results, info))
    payload: dict[str, Any] = {
        "command": options.command,
        "machine": info,
        "hidden": list(options.hidden),
        "epochs": options.epochs,
        "lr": options.lr,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "train_size": options.train_size,
        "test_size": options.test_size,
        "results": [{k: v for k, v in r.__dict__.items() if k != "batch_loss"} for r in results],
    }
    js = write_json(options.out / "precision.json", payload)
    written = [md, js]
    png = plot(results, options.out / "precision_loss.png")
    if png is not None:
        written.append(png)
    return written
