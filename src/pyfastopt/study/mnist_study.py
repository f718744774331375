"""The MNIST study: every method with pyfastopt and with torch.optim, compared and written out.

Writes ``results.json`` (raw numbers), ``report.md`` and the PNG plots into the output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._progress import progress
from ..bench._args import atomic_write, write_json
from . import plots, report
from .machine import machine
from .methods import IMPLS, TORCH_EXTRA, Impl, Method
from .mnist_run import (
    MethodRuns,
    MnistData,
    RunConfig,
    RunResult,
    initial_weights,
    load_data,
    train,
    warm_up,
)


@dataclass(frozen=True)
class MnistOptions:
    methods: Sequence[Method]
    out: Path
    data: str | None = None
    epochs: int = 10
    batch_size: int = 128
    hidden: int = 128
    seed: int = 0
    target_loss: float = 0.05
    train_size: int | None = None  # None: all 60000
    test_size: int | None = None  # None: all 10000
    torch_runs: bool = True
    control: bool = True  # also run torch.optim from weights nudged by one ulp (untimed)
    threads: int = 1
    show_progress: bool = True
    command: str = ""


@dataclass(frozen=True)
class Comparison:
    """How a pyfastopt run and its torch.optim twin relate."""

    first_step_weight_diff: float  # max |weight difference| after the first step
    final_weight_diff: float  # ... after the last epoch
    max_epoch_loss_diff: float  # max |loss difference| over the epoch-end training losses
    max_batch_loss_diff: float  # ... over every step's batch loss
    #: max |loss difference| at epoch ends between torch.optim and torch.optim started one ulp
    #: away: what rounding alone does to this training (None: no control run)
    control_epoch_loss_diff: float | None
    time_ratio: float  # torch total training time / pyfastopt's (> 1: pyfastopt faster)
    step_time_ratio: float  # the same for the time inside optimizer.step()


@dataclass
class MnistStudy:
    options: MnistOptions
    machine: dict[str, Any]
    data_sizes: dict[str, int]
    runs: dict[str, dict[Impl, RunResult]] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    controls: dict[str, RunResult] = field(default_factory=dict)  # torch.optim, nudged start


def _max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    n = min(len(a), len(b))
    return max((abs(x - y) for x, y in zip(a[:n], b[:n])), default=0.0)


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def compare(pair: MethodRuns) -> Comparison:
    fast, ref = pair.runs["pyfastopt"], pair.runs["torch"]
    return Comparison(
        first_step_weight_diff=pair.first_step_weight_diff or 0.0,
        final_weight_diff=pair.epoch_weight_diff[-1] if pair.epoch_weight_diff else 0.0,
        max_epoch_loss_diff=_max_diff(fast.train_loss, ref.train_loss),
        max_batch_loss_diff=_max_diff(fast.batch_loss, ref.batch_loss),
        control_epoch_loss_diff=(
            _max_diff(ref.train_loss, pair.control.train_loss) if pair.control else None
        ),
        time_ratio=_ratio(ref.total_time, fast.total_time),
        step_time_ratio=_ratio(ref.total_step_time, fast.total_step_time),
    )


def run(options: MnistOptions) -> MnistStudy:
    """Train every method with each implementation; the caller writes the results."""
    data: MnistData = load_data(options.data, options.train_size, options.test_size)
    config = RunConfig(options.epochs, options.batch_size, options.hidden, options.seed)
    init = initial_weights(options.hidden, options.seed)
    impls: tuple[Impl, ...] = IMPLS if options.torch_runs else ("pyfastopt",)
    study = MnistStudy(
        options,
        machine(options.threads, data.source),
        {"train": len(data.x_train), "test": len(data.x_test)},
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        warm_up(options.methods, data, options.hidden)
        count = len(options.methods)
        for i, method in enumerate(options.methods, 1):
            desc = f"[{i}/{count}] {method.name}"
            pair = train(
                method,
                data,
                init,
                config,
                impls,
                control=options.control and options.torch_runs,
                wrap=lambda epochs, d=desc: progress(
                    epochs, total=config.epochs, desc=d, enabled=options.show_progress
                ),
            )
            study.runs[method.name] = pair.runs
            if pair.control is not None:
                study.controls[method.name] = pair.control
            if len(impls) > 1:
                study.comparisons[method.name] = compare(pair)
            for result in pair.runs.values():
                print(report.run_line(method, result), flush=True)
    finally:
        torch.set_num_threads(previous_threads)
    return study


def to_json(study: MnistStudy) -> dict[str, Any]:
    """The raw numbers, in a form ``json`` can write."""
    opts = study.options
    target = opts.target_loss
    runs: dict[str, Any] = {}
    for method in opts.methods:
        entry: dict[str, Any] = {}
        for impl, r in study.runs[method.name].items():
            hit = r.time_to_target(target)
            entry[impl] = {
                "train_loss": r.train_loss,
                "test_acc": r.test_acc,
                "train_time_s": r.train_time,
                "step_time_s": r.step_time,
                "steps": r.steps,
                "evaluations": r.evaluations,
                "diverged": r.diverged,
                "final_train_loss": r.train_loss[-1],
                "final_test_acc": r.test_acc[-1],
                "total_time_s": r.total_time,
                "total_step_time_s": r.total_step_time,
                "target_epoch": hit[0] if hit else None,
                "target_time_s": hit[1] if hit else None,
            }
        if method.name in study.comparisons:
            entry["comparison"] = asdict(study.comparisons[method.name])
        if method.name in study.controls:
            control = study.controls[method.name]
            entry["torch_nudged_control"] = {
                "train_loss": control.train_loss,
                "test_acc": control.test_acc,
            }
        runs[method.name] = entry
    return {
        "command": opts.command,
        "machine": study.machine,
        "settings": {
            "epochs": opts.epochs,
            "batch_size": opts.batch_size,
            "model": f"784-{opts.hidden}-10 MLP, ReLU, cross-entropy",
            "seed": opts.seed,
            "target_loss": target,
            "train_examples": study.data_sizes["train"],
            "test_examples": study.data_sizes["test"],
            "torch_runs": opts.torch_runs,
            "torch_extra_kwargs": dict(TORCH_EXTRA),
            "control": opts.control and opts.torch_runs,
        },
        "methods": [
            {
                "name": m.name,
                "label": m.label,
                "optimizer": m.optimizer,
                "kwargs": dict(m.kwargs),
                "batch": m.batch,
                "batch_size": m.batch_size,
                "lr": m.lr,
                "lr_reason": m.reason,
            }
            for m in opts.methods
        ],
        "runs": runs,
    }


def write(study: MnistStudy) -> list[Path]:
    """results.json, the PNGs and report.md in ``options.out``; returns the paths written."""
    out = study.options.out
    out.mkdir(parents=True, exist_ok=True)
    results = write_json(out / "results.json", to_json(study))
    pictures = plots.mnist_plots(study.runs, study.options.methods, out)
    md = atomic_write(out / "report.md", report.mnist_report(study, [p.name for p in pictures]))
    return [results, md, *pictures]
