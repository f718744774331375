"""What low-memory optimizer state costs in training: ``python -m pyfastopt.study state``.

One MNIST MLP (784-512-256-10 by default, float32 weights) is trained with Adam, AdamW, SGD with
momentum and RMSprop, each with its state kept three ways (``state_dtype``):

- ``float32``: torch's layout (``state_dtype=None``), the baseline;
- ``bf16``: every state buffer in bfloat16 (``state_dtype=torch.bfloat16``);
- ``8bit``: block-wise 8-bit state (``state_dtype="8bit"``; tensors under ``min_8bit_size``
  elements keep float32 state).

Per seed, every variant of every family starts from the same weights (``torch.manual_seed``) and
sees the same batches, in lockstep (:mod:`.lockstep`). With the control on, a fourth float32 run
per family starts from those weights moved one ulp (:func:`.mnist_run.nudge`): how far rounding
alone moves the result, the yardstick for the others.

The check the low-memory state has to pass: the final training loss within
:data:`LOSS_RTOL` (relative) and the test accuracy within :data:`ACC_POINTS` percentage points of
the float32 run's, comparing the means over seeds of the per-seed (paired) differences.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._progress import progress
from ..bench._args import atomic_write, write_json
from ..optim._lowmem import DEFAULTS as LOWMEM_DEFAULTS
from ..optim._lowmem import state_bytes
from .lockstep import Trainee, VariantResult, make_mlp, train_lockstep
from .machine import machine, machine_lines
from .methods import Method
from .mnist_run import MnistData, load_data, nudge
from .plots import MissingDependencyError, _figure, _save
from .report import fmt, table

#: The optimizer families, their learning rates and why (not tuned on this network or for the
#: check: common defaults, next to what the method table's sweep found on 784-128-10).
FAMILIES: tuple[Method, ...] = (
    Method(
        "adam",
        "Adam",
        "Adam",
        1e-3,
        "torch's default; the method table's sweep found 1e-3 and 3e-3 tied on 784-128-10",
    ),
    Method(
        "adamw",
        "AdamW",
        "AdamW",
        1e-3,
        "Adam's lr with torch's default decoupled weight decay",
        kwargs={"weight_decay": 1e-2},
    ),
    Method(
        "sgd",
        "SGD + momentum",
        "SGD",
        0.05,
        "lr/(1 - momentum) = 0.5, between the sweep's 0.03 (best) and 0.1 on 784-128-10",
        kwargs={"momentum": 0.9},
    ),
    Method(
        "rmsprop",
        "RMSprop",
        "RMSprop",
        1e-3,
        "best of the method table's sweep; torch's default 0.01 is too large for these nets",
    ),
)
BY_NAME: Mapping[str, Method] = {m.name: m for m in FAMILIES}

#: state variant -> ``state_dtype``
STATES: Mapping[str, Any] = {"float32": None, "bf16": torch.bfloat16, "8bit": "8bit"}
BASELINE = "float32"
CONTROL = "float32 +1 ulp"
LABELS = {
    "float32": "float32",
    "bf16": "bfloat16",
    "8bit": "8-bit",
    CONTROL: "float32, weights +1 ulp (control)",
}

#: The check: the final training loss within 1 % (relative) of float32's and the test accuracy
#: within 0.3 percentage points, both ways.
LOSS_RTOL = 0.01
ACC_POINTS = 0.3
_SLACK = 1e-9  # a difference equal to a tolerance passes, whatever the last bit says

#: What ``--quick`` changes, unless given explicitly.
QUICK = {"train_size": 10000, "test_size": 2000}


@dataclass(frozen=True)
class StateOptions:
    out: Path
    data: str | None = None
    hidden: tuple[int, ...] = (512, 256)
    epochs: int = 1
    batch_size: int = 128
    seeds: tuple[int, ...] = (0,)
    train_size: int | None = None
    test_size: int | None = None
    threads: int = 1
    families: tuple[Method, ...] = FAMILIES
    control: bool = True
    show_progress: bool = True
    command: str = ""

    @property
    def variants(self) -> tuple[str, ...]:
        return (*STATES, CONTROL) if self.control else tuple(STATES)


@dataclass
class Cell:
    """One (family, state variant): a run per seed, in the order of ``options.seeds``."""

    family: Method
    state: str
    runs: list[VariantResult] = field(default_factory=list)
    state_bytes: int = 0  # after training (every buffer allocated); the same for every seed
    params: int = 0

    @property
    def bytes_per_param(self) -> float:
        return self.state_bytes / self.params

    def final_loss(self) -> list[float]:
        return [r.train_loss[-1] for r in self.runs]

    def final_accuracy(self) -> list[float]:
        return [r.test_accuracy[-1] for r in self.runs]


@dataclass(frozen=True)
class Check:
    """A variant against float32 on the same seeds: per-seed (paired) differences."""

    loss_rel: tuple[float, ...]  # (loss - float32 loss) / float32 loss
    acc_points: tuple[float, ...]  # 100 * (accuracy - float32 accuracy)

    @property
    def mean_loss_rel(self) -> float:
        return statistics.fmean(self.loss_rel)

    @property
    def mean_acc_points(self) -> float:
        return statistics.fmean(self.acc_points)

    @staticmethod
    def _ok(loss_rel: float, acc_points: float) -> bool:
        # written so that NaN (a diverged run) fails
        return abs(loss_rel) <= LOSS_RTOL + _SLACK and abs(acc_points) <= ACC_POINTS + _SLACK

    @property
    def passed(self) -> bool:
        return self._ok(self.mean_loss_rel, self.mean_acc_points)

    @property
    def seeds_passed(self) -> int:
        return sum(self._ok(lr, ap) for lr, ap in zip(self.loss_rel, self.acc_points))


def check(
    loss: Sequence[float],
    accuracy: Sequence[float],
    ref_loss: Sequence[float],
    ref_accuracy: Sequence[float],
) -> Check:
    """The check of final losses and accuracies (fractions) against float32's, seed by seed."""
    if not len(loss) == len(accuracy) == len(ref_loss) == len(ref_accuracy) > 0:
        raise ValueError("check needs one loss and one accuracy per seed, for both runs")
    return Check(
        tuple((a - b) / b for a, b in zip(loss, ref_loss)),
        tuple(100 * (a - b) for a, b in zip(accuracy, ref_accuracy)),
    )


@dataclass
class StateStudy:
    options: StateOptions
    cells: dict[tuple[str, str], Cell]  # (family name, state variant) -> cell
    sizes: dict[str, int]
    small_params: int  # parameters in tensors that keep float32 state under "8bit"
    machine: dict[str, Any]

    def check(self, family: str, state: str) -> Check | None:
        if state == BASELINE:
            return None
        cell, ref = self.cells[family, state], self.cells[family, BASELINE]
        return check(
            cell.final_loss(), cell.final_accuracy(), ref.final_loss(), ref.final_accuracy()
        )


def _trainees(
    options: StateOptions, base: Mapping[str, torch.Tensor]
) -> list[tuple[str, str, Trainee]]:
    out = []
    for family in options.families:
        for variant in options.variants:
            model = make_mlp(options.hidden)
            model.load_state_dict(nudge(base) if variant == CONTROL else base)
            state_dtype = STATES.get(variant)  # the control keeps float32 state
            # float32 is the optimizer as constructed by default (state_dtype left out)
            lowmem = {} if state_dtype is None else {"state_dtype": state_dtype}
            opt = family.build(model.parameters(), "pyfastopt", **lowmem)
            result = VariantResult(f"{family.label} {variant}")
            out.append((family.name, variant, Trainee(model, opt, torch.float32, result)))
    return out


def run(options: StateOptions, data: MnistData | None = None) -> StateStudy:
    if data is None:
        data = load_data(options.data, options.train_size, options.test_size)
    cells = {
        (f.name, v): Cell(f, v) for f in options.families for v in options.variants
    }  # fmt: skip
    previous = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        for seed in progress(
            options.seeds, desc="state study, seeds", enabled=options.show_progress
        ):
            torch.manual_seed(seed)
            base = make_mlp(options.hidden).state_dict()
            trainees = _trainees(options, base)
            train_lockstep(
                [t for _, _, t in trainees], data, options.epochs, options.batch_size, seed
            )
            for family, variant, t in trainees:
                cell = cells[family, variant]
                cell.runs.append(t.result)
                cell.state_bytes = state_bytes(t.opt.state)
                cell.params = sum(p.numel() for p in t.model.parameters())
    finally:
        torch.set_num_threads(previous)
    small = sum(
        p.numel()
        for p in make_mlp(options.hidden).parameters()
        if p.numel() < LOWMEM_DEFAULTS["min_8bit_size"]
    )
    sizes = {"train": int(data.x_train.shape[0]), "test": int(data.x_test.shape[0])}
    return StateStudy(options, cells, sizes, small, machine(options.threads, data.source))


# --- the report ---------------------------------------------------------------------------------


def spread(values: Sequence[float], form: str) -> str:
    """``values`` as their mean, with the range (min to max) when there are several."""
    text = format(statistics.fmean(values), form)
    if len(values) > 1:
        text += f" ({format(min(values), form)} to {format(max(values), form)})"
    return text


def verdict(c: Check | None, state: str) -> str:
    if c is None:
        return "baseline"
    word = "PASS" if c.passed else "FAIL"
    seeds = f" ({c.seeds_passed}/{len(c.loss_rel)} seeds)" if len(c.loss_rel) > 1 else ""
    return (f"**{word}**" if state != CONTROL else word) + seeds


def _rows(study: StateStudy) -> list[list[str]]:
    rows = []
    for family in study.options.families:
        ref = study.cells[family.name, BASELINE]
        for state in study.options.variants:
            cell = study.cells[family.name, state]
            c = study.check(family.name, state)
            rows.append(
                [
                    family.label,
                    LABELS[state],
                    spread(cell.final_loss(), ".4f"),
                    spread([100 * a for a in cell.final_accuracy()], ".2f"),
                    f"{cell.state_bytes:,}",
                    f"{cell.bytes_per_param:.2f}",
                    f"{cell.state_bytes / ref.state_bytes:.2f}",
                    "—" if c is None else spread([100 * v for v in c.loss_rel], "+.2f"),
                    "—" if c is None else spread(c.acc_points, "+.2f"),
                    verdict(c, state),
                    spread([r.train_seconds for r in cell.runs], ".1f"),
                    spread([r.step_seconds for r in cell.runs], ".2f"),
                ]
            )
    return rows


def _range(values: Sequence[float], form: str) -> str:
    low, high = format(min(values), form), format(max(values), form)
    return low if low == high else f"{low}–{high}"


def _checks(study: StateStudy, state: str) -> dict[str, Check]:
    """Each family's check of ``state`` (not the baseline), by family label."""
    out = {}
    for f in study.options.families:
        c = study.check(f.name, state)
        assert c is not None
        out[f.label] = c
    return out


def findings(study: StateStudy) -> list[str]:
    """Short statements read off the numbers."""
    opts = study.options
    out = []
    low = {state: _checks(study, state) for state in ("bf16", "8bit")}
    for state, checks in low.items():
        failed = [name for name, c in checks.items() if not c.passed]
        ratio = [
            study.cells[f.name, state].state_bytes / study.cells[f.name, BASELINE].state_bytes
            for f in opts.families
        ]
        out.append(
            f"{LABELS[state]} state: {len(checks) - len(failed)} of {len(checks)} optimizers "
            "pass the check"
            + (f" (fail: {', '.join(failed)})" if failed else "")
            + f"; it takes {_range(ratio, '.2f')}× the bytes of float32 state."
        )
    every = [c for checks in low.values() for c in checks.values()]
    worst_acc = max(abs(c.mean_acc_points) for c in every)
    acc_failed = sum(abs(c.mean_acc_points) > ACC_POINTS + _SLACK for c in every)
    loss_failed = sum(abs(c.mean_loss_rel) > LOSS_RTOL + _SLACK for c in every)
    out.append(
        f"Low-memory runs outside the training-loss tolerance: {loss_failed} of {len(every)}; "
        f"outside the accuracy tolerance: {acc_failed} of {len(every)} (the largest mean "
        f"accuracy difference is {worst_acc:.2f} points)."
    )
    if opts.control:
        controls = _checks(study, CONTROL)
        name, worst = max(controls.items(), key=lambda kv: abs(kv[1].mean_loss_rel))
        per_seed = [v for c in controls.values() for v in c.loss_rel]
        line = (
            "Rounding alone (the control: float32 from weights one ulp away) moves the final "
            f"training loss by {100 * min(per_seed):+.2f} to {100 * max(per_seed):+.2f} % on "
            f"single seeds, and by up to {100 * abs(worst.mean_loss_rel):.2f} % on the mean "
            f"over seeds ({name})."
        )
        noisy = [n for n, c in controls.items() if not c.passed]
        if noisy:
            line += (
                f" The control itself fails the check for {', '.join(noisy)}: the loss "
                "tolerance is below this setting's trajectory noise, so a FAIL of the "
                "low-memory state does not by itself show its precision at fault (nor a PASS "
                "its harmlessness)."
            )
        out.append(line)
    return out


def report(study: StateStudy, picture: str | None = None) -> str:
    opts = study.options
    hidden = "-".join(map(str, opts.hidden))
    seeds = ", ".join(map(str, opts.seeds))
    params = study.cells[opts.families[0].name, BASELINE].params
    parts = [
        f"# Optimizer state in float32, bfloat16 and 8 bits: MNIST 784-{hidden}-10\n",
        f"Command: `{opts.command}`\n",
        "## Setting\n",
        f"- Model: 784-{hidden}-10 MLP (ReLU), float32 weights, {params:,} parameters; "
        f"cross-entropy loss. {study.sizes['train']} training and {study.sizes['test']} test "
        f"images, {opts.epochs} epoch(s), batch {opts.batch_size}, seed(s) {seeds}.",
        "- Per seed every run starts from the same weights (`torch.manual_seed(seed)`) and sees "
        "the same batches (`torch.Generator().manual_seed(seed)`), all runs in lockstep, batch "
        "by batch.",
        "- State: `float32` is `state_dtype=None`, `bfloat16` is `state_dtype=torch.bfloat16`, "
        f'`8-bit` is `state_dtype="8bit"` (block {LOWMEM_DEFAULTS["block_size"]}; the '
        f"{study.small_params:,} parameters in tensors under "
        f"{LOWMEM_DEFAULTS['min_8bit_size']} elements keep float32 state). State bytes are "
        "counted after training by `pyfastopt.optim._lowmem.state_bytes` (codes, scales, the "
        "shared maps once, `step`).",
        "- Training loss: on the whole training set after the last epoch; test accuracy on the "
        "test set. Several seeds: mean (min to max).",
        (
            "- Control: a float32 run from the initial weights moved one ulp "
            "(`torch.nextafter`) shows how far rounding alone moves the result."
            if opts.control
            else "- No control run (`--no-control`)."
        ),
        "",
        "## Machine\n",
        *machine_lines(study.machine),
        "- Times are informational only: the machine is shared.",
        "",
        "## Optimizers\n",
        table(
            ["optimizer", "class and arguments", "lr", "why this lr"],
            [
                [m.label, f"`{m.optimizer}({m.options()})`", fmt(m.lr), m.reason]
                for m in opts.families
            ],
        ),
        "## Results\n",
        f"**The check**: final training loss within {100 * LOSS_RTOL:g} % (relative) and test "
        f"accuracy within {ACC_POINTS:g} points of the float32 run's, either way; the "
        "differences are taken seed by seed against float32 on the same seed and averaged; "
        "the verdict is on the averages (with several seeds, how many seeds pass on their "
        "own in brackets). The control row takes the same check for scale.\n",
        table(
            [
                "optimizer",
                "state",
                "final train loss",
                "test accuracy, %",
                "state bytes",
                "bytes / param",
                "× float32 state",
                "Δ train loss vs float32, %",
                "Δ test acc. vs float32, points",
                f"within {100 * LOSS_RTOL:g} % / {ACC_POINTS:g} pts",
                "train s",
                "step s",
            ],
            _rows(study),
        ),
        "## Findings\n",
        *[f"- {line}" for line in findings(study)],
        "",
    ]
    if picture:
        parts += ["## Picture\n", f"![loss per step]({picture})\n"]
    return "\n".join(parts)


# --- the picture and the files ------------------------------------------------------------------


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot(study: StateStudy, path: Path) -> Path | None:
    """Mini-batch loss per step (moving average, mean over seeds), and its relative difference
    to float32's, one column per family; None without matplotlib."""
    try:
        fig = _figure(3.2 * len(study.options.families) + 0.8, 6.0)
    except MissingDependencyError:
        return None
    axes = fig.subplots(2, len(study.options.families), squeeze=False, sharex=True)
    styles = {"float32": "-", "bf16": "--", "8bit": "-.", CONTROL: ":"}
    colors = {"float32": "C0", "bf16": "C1", "8bit": "C2", CONTROL: "0.5"}
    for col, family in enumerate(study.options.families):
        curves = {
            v: np.mean([r.batch_loss for r in study.cells[family.name, v].runs], axis=0)
            for v in study.options.variants
        }
        window = max(1, min(50, len(curves[BASELINE]) // 10))
        smooth = {v: _smooth(c, window) for v, c in curves.items()}
        steps = np.arange(window, len(curves[BASELINE]) + 1)
        top, bottom = axes[0][col], axes[1][col]
        for v, y in smooth.items():
            kw = {"ls": styles[v], "color": colors[v], "label": LABELS[v]}
            top.plot(steps, y, **kw)
            if v != BASELINE:
                bottom.plot(steps, 100 * (y / smooth[BASELINE] - 1), **kw)
        bottom.axhspan(-100 * LOSS_RTOL, 100 * LOSS_RTOL, color="0.9", zorder=0)
        bottom.axhline(0, color="C0", lw=0.8)
        top.set_yscale("log")
        top.set_title(family.label)
        bottom.set_xlabel("step")
        if col == 0:
            top.set_ylabel(f"batch loss ({window}-step mean)")
            bottom.set_ylabel("vs float32, %")
    axes[0][0].legend(fontsize="small")
    return _save(fig, path)


def payload(study: StateStudy) -> dict[str, Any]:
    opts = study.options
    cells = []
    for (family, state), cell in study.cells.items():
        c = study.check(family, state)
        cells.append(
            {
                "family": family,
                "state": state,
                "state_bytes": cell.state_bytes,
                "params": cell.params,
                "bytes_per_param": cell.bytes_per_param,
                "runs": [
                    {"seed": seed, **{k: v for k, v in r.__dict__.items() if k != "batch_loss"}}
                    for seed, r in zip(opts.seeds, cell.runs)
                ],
                "check": None
                if c is None
                else {
                    "loss_rel": list(c.loss_rel),
                    "acc_points": list(c.acc_points),
                    "mean_loss_rel": c.mean_loss_rel,
                    "mean_acc_points": c.mean_acc_points,
                    "seeds_passed": c.seeds_passed,
                    "passed": c.passed,
                },
            }
        )
    return {
        "command": opts.command,
        "settings": {
            "hidden": list(opts.hidden),
            "epochs": opts.epochs,
            "batch_size": opts.batch_size,
            "seeds": list(opts.seeds),
            "train_images": study.sizes["train"],
            "test_images": study.sizes["test"],
            "threads": opts.threads,
            "loss_rtol": LOSS_RTOL,
            "acc_points": ACC_POINTS,
            "families": {
                m.name: {"class": m.optimizer, "lr": m.lr, **m.kwargs} for m in opts.families
            },
            "lowmem_defaults": dict(LOWMEM_DEFAULTS),
        },
        "machine": study.machine,
        "cells": cells,
    }


def write(study: StateStudy) -> list[Path]:
    out = study.options.out
    out.mkdir(parents=True, exist_ok=True)
    png = plot(study, out / "state_loss.png")
    md = atomic_write(out / "state.md", report(study, png.name if png else None))
    js = write_json(out / "state.json", payload(study))
    return [md, js] + ([png] if png else [])
