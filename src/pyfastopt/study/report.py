"""The Markdown reports: the MNIST study's tables and findings, and the surfaces' end points."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .machine import machine_lines
from .methods import LR_SWEEP, TORCH_EXTRA, Method
from .mnist_run import RunResult
from .surfaces import Path, Surface

if TYPE_CHECKING:
    from .mnist_study import MnistStudy


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, '—' for missing, 'nan'/'inf' as such."""
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run_line(method: Method, r: RunResult) -> str:
    """One line per finished run for the console."""
    return (
        f"{method.name:<9} {r.impl:<9} loss {r.train_loss[-1]:.4f}  acc {r.test_acc[-1]:.4f}  "
        f"train {r.total_time:6.2f} s  step {r.total_step_time:6.3f} s"
        + ("  DIVERGED" if r.diverged else "")
    )


def _target(r: RunResult, target: float) -> str:
    hit = r.time_to_target(target)
    return f"epoch {hit[0]}, {hit[1]:.2f} s" if hit else "not reached"


def _us_per_step(r: RunResult) -> float:
    return 1e6 * r.total_step_time / max(r.steps, 1)


def _results_table(study: MnistStudy) -> str:
    target = study.options.target_loss
    rows = []
    for m in study.options.methods:
        r = study.runs[m.name]["pyfastopt"]
        rows.append(
            [
                m.label,
                fmt(m.lr),
                fmt(r.train_loss[-1]) + (" (diverged)" if r.diverged else ""),
                f"{100 * r.test_acc[-1]:.2f} %",
                f"{r.total_time:.2f}",
                f"{r.total_step_time:.3f}",
                f"{_us_per_step(r):.0f}",
                r.steps,
                r.evaluations,
                _target(r, target),
            ]
        )
    return table(
        [
            "method",
            "lr",
            "final train loss",
            "test accuracy",
            "train time, s",
            "in step(), s",
            "µs per step()",
            "steps",
            "loss evaluations",
            f"loss ≤ {fmt(target)} at",
        ],
        rows,
    )


def _comparison_table(study: MnistStudy) -> str:
    rows = []
    for m in study.options.methods:
        c = study.comparisons.get(m.name)
        if c is None:
            continue
        fast, ref = study.runs[m.name]["pyfastopt"], study.runs[m.name]["torch"]
        rows.append(
            [
                m.label,
                f"{c.first_step_weight_diff:.1e}",
                f"{c.max_epoch_loss_diff:.1e}",
                f"{c.max_batch_loss_diff:.1e}",
                "—" if c.control_epoch_loss_diff is None else f"{c.control_epoch_loss_diff:.1e}",
                f"{ref.total_time:.2f}",
                f"{fast.total_time:.2f}",
                f"**{c.time_ratio:.2f}×**",
                f"{_us_per_step(ref):.0f}",
                f"{_us_per_step(fast):.0f}",
                f"**{c.step_time_ratio:.2f}×**",
                f"{ref.total_time - ref.total_step_time:.2f} / "
                f"{fast.total_time - fast.total_step_time:.2f}",
                _target(ref, study.options.target_loss),
            ]
        )
    return table(
        [
            "method",
            "max \\|Δw\\| after step 1",
            "max \\|Δloss\\| (epoch ends)",
            "max \\|Δloss\\| (every batch)",
            "control: torch vs torch 1 ulp away",
            "torch train, s",
            "pyfastopt train, s",
            "train-time ratio",
            "torch µs/step()",
            "pyfastopt µs/step()",
            "step-time ratio",
            "outside step(), s (torch / pyfastopt)",
            "torch: loss ≤ target at",
        ],
        rows,
    )


def _lr_table(methods: Sequence[Method]) -> str:
    return table(
        ["method", "class and arguments", "batches", "lr", "why this lr"],
        [
            [m.label, f"`{m.optimizer}({m.options()})`", m.batches, fmt(m.lr), m.reason]
            for m in methods
        ],
    )


def findings(study: MnistStudy) -> list[str]:
    """Short statements read off the numbers (the discussion's data-driven half)."""
    opts = study.options
    fast = {m.name: study.runs[m.name]["pyfastopt"] for m in opts.methods}
    label = {m.name: m.label for m in opts.methods}
    out: list[str] = []
    by_loss = sorted(fast, key=lambda n: fast[n].train_loss[-1])
    out.append(
        "Lowest final training loss: "
        + ", ".join(f"{label[n]} {fast[n].train_loss[-1]:.4f}" for n in by_loss[:3])
        + f"; highest: {label[by_loss[-1]]} {fast[by_loss[-1]].train_loss[-1]:.4f}."
    )
    best_acc = max(fast, key=lambda n: fast[n].test_acc[-1])
    out.append(f"Best test accuracy: {label[best_acc]} {100 * fast[best_acc].test_acc[-1]:.2f} %.")
    hits = {n: r.time_to_target(opts.target_loss) for n, r in fast.items()}
    reached = sorted((h[1], n) for n, h in hits.items() if h)
    missed = [label[n] for n, h in hits.items() if not h]
    if reached:
        out.append(
            f"Fastest to a training loss of {fmt(opts.target_loss)}: "
            + ", ".join(
                f"{label[n]} ({t:.2f} s, epoch {hits[n][0]})"  # type: ignore[index]
                for t, n in reached[:3]
            )
            + (f"; never reached it: {', '.join(missed)}." if missed else ".")
        )
    closure = [m.name for m in opts.methods if m.closure]
    full = [m for m in opts.methods if m.batch == "full" and not m.closure]
    mini = [n for n in by_loss if n not in {m.name for m in full} and n not in closure]
    once = [m.name for m in full if m.steps_per_epoch == 1]
    if once and mini:
        g, best = fast[once[0]], fast[mini[0]]
        out.append(
            f"{label[once[0]]} takes one step per epoch: after {len(g.train_loss) - 1} epochs "
            f"({g.steps} steps, {g.total_time:.2f} s) its loss is {g.train_loss[-1]:.3f}, while "
            f"{label[best.method]} took {best.steps} steps in {best.total_time:.2f} s to reach "
            f"{best.train_loss[-1]:.4f} with the same number of passes over the data."
        )
    for m in full:
        if m.steps_per_epoch > 1:
            r = fast[m.name]
            out.append(
                f"{m.label} steps {m.steps_per_epoch} times per epoch on the whole training "
                f"set: {r.steps} steps in {r.total_time:.2f} s, final loss "
                f"{r.train_loss[-1]:.4f}, test accuracy {100 * r.test_acc[-1]:.2f} %."
            )
    if closure:
        out.append(
            "L-BFGS evaluates the loss and its gradient several times per step (its line "
            "search): "
            + "; ".join(
                f"{label[n]} made {fast[n].steps} steps with {fast[n].evaluations} evaluations "
                f"({fast[n].evaluations / max(len(fast[n].train_loss) - 1, 1):.1f} per epoch, "
                f"each on its batch) in {fast[n].total_time:.2f} s, final loss "
                f"{fast[n].train_loss[-1]:.4f}"
                for n in closure
            )
            + ". Its step() time is its own work only (the closure's forward and backward "
            "excluded)."
        )
    if study.comparisons:
        comps = study.comparisons
        worst = max(comps, key=lambda n: comps[n].max_epoch_loss_diff)
        first = max(c.first_step_weight_diff for c in comps.values())
        controls = [c.control_epoch_loss_diff for c in comps.values()]
        yardstick = (
            " For scale, torch.optim against itself started from weights one ulp apart (the "
            f"control) differs by up to {max(controls):.1e}: rounding alone moves these "
            "trajectories that much."
            if all(v is not None for v in controls)
            else ""
        )
        out.append(
            "pyfastopt and torch.optim do the same computation: after the first step the "
            f"weights differ by at most {first:.1e} (rounding). Training amplifies such "
            "differences, more for some methods than others; the largest |loss difference| at "
            f"an epoch end is {comps[worst].max_epoch_loss_diff:.1e} ({label[worst]})."
            + yardstick
            + " Both take the same steps on the same batches, so their times compare the "
            "same work."
        )
        step = [c.step_time_ratio for c in comps.values()]
        whole = [c.time_ratio for c in comps.values()]
        share_fast = statistics.median(
            fast[n].total_step_time / fast[n].total_time for n in comps if fast[n].total_time
        )
        share_ref = statistics.median(
            study.runs[n]["torch"].total_step_time / study.runs[n]["torch"].total_time
            for n in comps
            if study.runs[n]["torch"].total_time
        )
        out.append(
            f"optimizer.step() is {min(step):.1f}–{max(step):.1f}× faster with pyfastopt "
            f"(median {statistics.median(step):.1f}×); whole training is "
            f"{min(whole):.2f}–{max(whole):.2f}× faster (median {statistics.median(whole):.2f}×): "
            f"step() is a median {100 * share_ref:.0f} % of torch.optim's training time "
            f"({100 * share_fast:.0f} % of pyfastopt's), so forward and backward, the same for "
            "both, bound the gain."
        )
    return out


def mnist_report(study: MnistStudy, pictures: Sequence[str]) -> str:
    opts = study.options
    sizes = study.data_sizes
    parts = [
        "# Optimizer study on MNIST\n",
        f"Command: `{opts.command}`\n",
        "## Setting\n",
        f"- Model: 784-{opts.hidden}-10 MLP (ReLU), cross-entropy loss; the same initial weights "
        f"(seed {opts.seed}) for every run.",
        f"- Data: {sizes['train']} training and {sizes['test']} test images of real MNIST, "
        f"{opts.epochs} epochs, mini-batches of {opts.batch_size} in an order drawn from "
        f"`torch.Generator().manual_seed({opts.seed})` (a method with a batch size of its own "
        "uses that); GD steps on the whole training set once per epoch, full-batch Rprop "
        "`steps_per_epoch` times, full-batch L-BFGS once (one `step(closure)`, up to `max_iter` "
        "iterations, each evaluating the closure on the whole training set once or more). Each "
        "method is trained with pyfastopt and "
        "torch.optim *in lockstep*: every batch is fed to both, alternating which goes first, "
        "so both see the same batches and the same disturbances from other work on the machine "
        "(interleaved timing).",
        "- Training loss is measured on the whole training set after each epoch, test accuracy "
        "on the test set; neither counts as training time. *Train time* runs from `zero_grad()` "
        "to the end of `optimizer.step()` (forward, backward, step); *step()* time is the part "
        "inside `optimizer.step()` (for L-BFGS, whose step() runs the closure, the part outside "
        "the closure's forward and backward).",
        "- torch.optim runs use the same class and arguments plus "
        + ", ".join(f"`{k}={v!r}`" for k, v in TORCH_EXTRA.items())
        + " (the default single-tensor for-loop on CPU)."
        if opts.torch_runs
        else "- torch.optim comparison runs were skipped (`--no-torch`).",
        "",
        "## Machine\n",
        *machine_lines(study.machine),
        "- One run per (method, implementation), interleaved step by step with its twin; "
        "wall-clock times on a shared machine are noisy: read ratios, not the third digit.",
        "",
        "## Results (pyfastopt)\n",
        _results_table(study),
    ]
    if study.comparisons:
        parts += [
            "## pyfastopt against torch.optim on the same trajectory\n",
            "Ratios are torch.optim time ÷ pyfastopt time (above 1: pyfastopt is faster). "
            "Δ columns: pyfastopt against torch.optim; the *control* column is torch.optim "
            "against torch.optim started from weights moved by one ulp (untimed), the size of "
            "difference rounding alone makes in this training.\n",
            _comparison_table(study),
        ]
    parts += [
        "## Learning rates and why\n",
        f"How they were chosen: {LR_SWEEP}.\n",
        _lr_table(opts.methods),
        "## Findings\n",
        *[f"- {line}" for line in findings(study)],
        "",
        "## Pictures\n",
        *[f"![{name}]({name})\n" for name in pictures],
    ]
    return "\n".join(parts)


#: the distance to the minimum (or saddle point) at which a path counts as having reached it
REACHED = 1e-3


def _or_dash(value: int | None) -> Any:
    return "—" if value is None else value


def _surface_rows(surface: Surface, paths: Sequence[Path]) -> list[list[Any]]:
    rows = []
    for p in paths:
        x, y = p.end
        rows.append(
            [
                p.label,
                fmt(p.lr),
                f"({x:.4g}, {y:.4g})",
                fmt(p.values[-1]),
                fmt(p.distance(surface.target)),
                _or_dash(p.reached(surface.target, REACHED)),
                p.left_at if p.left_at is not None else "—",
            ]
        )
    return rows


def surfaces_report(
    results: Sequence[tuple[Surface, Sequence[Path]]],
    steps: int,
    command: str,
    info: dict[str, Any],
    pictures: Sequence[str],
) -> str:
    parts = [
        "# Optimizer paths on 2-D test functions\n",
        f"Command: `{command}`\n",
        *machine_lines(info),
        "",
        f"Each path: up to {steps} steps of a pyfastopt optimizer on one two-element float64 "
        "parameter (f, `backward()`, `step()`), from the marked start. Mini-batch SGD is the "
        "same as GD here (there is no data to sample), so GD stands for both; so is mini-batch "
        "L-BFGS for L-BFGS. L-BFGS and BFGS (`step(closure)`) take one iteration per step, "
        "with the function evaluations their line search needs. A path that leaves the plotted "
        "area by more than half its width is stopped (*left at step*); *within "
        f"{REACHED:g} at step* is the first step that ends that close to the marked point, "
        "how fast a method gets there.\n",
    ]
    for (surface, paths), picture in zip(results, pictures):
        parts += [
            f"## {surface.title}: f = {surface.formula}\n",
            f"Start {surface.start}; {surface.target_label}. Learning rates: {surface.lr_reason}\n",
            table(
                [
                    "method",
                    "lr",
                    "final point",
                    "f there",
                    f"distance to the {surface.target_label.split(' (')[0]}",
                    f"within {REACHED:g} at step",
                    "left at step",
                ],
                _surface_rows(surface, paths),
            ),
            f"![{surface.title}]({picture})\n",
        ]
    return "\n".join(parts)
