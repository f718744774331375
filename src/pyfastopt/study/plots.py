"""The study's pictures (PNG), drawn with matplotlib's object API (no pyplot, no global backend).

matplotlib is an optional dependency (``pip install 'pyfastopt[study]'``); it is imported only
when a picture is drawn, and its absence raises :class:`MissingDependencyError`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path as FilePath
from typing import Any

import numpy as np

from ..bench._args import atomic_write
from .methods import METHODS, SURFACE_ONLY, Impl, Method
from .mnist_run import RunResult
from .surfaces import Path, Surface

_DPI = 100


class MissingDependencyError(RuntimeError):
    """An optional dependency the study needs is not installed."""


def require_matplotlib() -> Any:
    """matplotlib's ``Figure`` class, or MissingDependencyError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "the study's plots need matplotlib: pip install 'pyfastopt[study]' "
            "(or pip install matplotlib)"
        ) from exc
    return Figure


def _figure(width: float, height: float) -> Any:
    return require_matplotlib()(figsize=(width, height), layout="constrained")


#: colours after matplotlib's ten-colour cycle (C0..C9); light enough for the black hatching
#: of the torch.optim bars to show
_MORE_COLORS = (
    "darkgoldenrod",
    "deeppink",
    "teal",
    "gold",
    "slateblue",
    "lightskyblue",
    "sandybrown",
    "navy",
    "plum",
)

#: the methods that take the first colours, in this order: those of the first study, so their
#: colours (and the pictures drawn with them) stay put when methods join the table
_FIRST_COLORS = (
    "gd",
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "adadelta",
    "rmsprop",
    "adam",
    "adamw",
    "lbfgs",
    "lbfgs4096",
    "bfgs",
)


def color(name: str) -> str:
    """The colour of a method, the same in every picture."""
    later = [m.name for m in (*METHODS, *SURFACE_ONLY) if m.name not in _FIRST_COLORS]
    index = [*_FIRST_COLORS, *later].index(name)
    return f"C{index}" if index < 10 else _MORE_COLORS[(index - 10) % len(_MORE_COLORS)]


def _save(fig: Any, path: FilePath) -> FilePath:
    """Write ``fig`` as a 256-colour PNG: line drawings lose nothing visible and shrink 2-3x."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    try:
        from PIL import Image  # installed with matplotlib
    except ImportError:
        return atomic_write(path, buffer.getvalue())
    buffer.seek(0)
    small = io.BytesIO()
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(small, format="png", optimize=True)
    return atomic_write(path, small.getvalue())


Runs = Mapping[str, Mapping[Impl, RunResult]]


def _lines(
    runs: Runs,
    methods: Sequence[Method],
    path: FilePath,
    *,
    x: str,
    y: str,
    xlabel: str,
    ylabel: str,
    title: str,
    log: bool,
    impls: Sequence[Impl] = ("pyfastopt",),
) -> FilePath:
    fig = _figure(9.5, 4.8)
    ax = fig.add_subplot()
    for method in methods:
        for impl in impls:
            run = runs[method.name].get(impl)
            if run is None:
                continue
            xs = getattr(run, x) if x != "epoch" else list(range(len(run.train_loss)))
            torch_run = impl == "torch"
            ax.plot(
                xs,
                getattr(run, y),
                color=color(method.name),
                linestyle=":" if torch_run else "-",
                linewidth=1.2 if torch_run else 1.8,
                marker=None if torch_run else "o",
                markersize=3,
                label=None if torch_run else method.label,
            )
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")  # beside the axes: many methods
    return _save(fig, path)


def mnist_plots(runs: Runs, methods: Sequence[Method], out: FilePath) -> list[FilePath]:
    """loss_per_epoch, loss_vs_time, test_accuracy and (with torch runs) step_time PNGs."""
    with_torch = any("torch" in runs[m.name] for m in methods)
    paths = [
        _lines(
            runs,
            methods,
            out / "loss_per_epoch.png",
            x="epoch",
            y="train_loss",
            xlabel="epoch",
            ylabel="training loss (whole training set)",
            title="MNIST MLP: training loss per epoch",
            log=True,
        ),
        _lines(
            runs,
            methods,
            out / "loss_vs_time.png",
            x="train_time",
            y="train_loss",
            xlabel="training time, s (evaluation excluded)",
            ylabel="training loss",
            title="Training loss against time"
            + (" (solid: pyfastopt, dotted: torch.optim)" if with_torch else ""),
            log=True,
            impls=("pyfastopt", "torch"),
        ),
        _lines(
            runs,
            methods,
            out / "test_accuracy.png",
            x="epoch",
            y="test_acc",
            xlabel="epoch",
            ylabel="test accuracy",
            title="Test accuracy per epoch",
            log=False,
        ),
    ]
    if with_torch:
        paths.append(step_time_plot(runs, methods, out / "step_time.png"))
    return paths


def step_time_plot(runs: Runs, methods: Sequence[Method], path: FilePath) -> FilePath:
    """Mean time per ``optimizer.step()``, pyfastopt beside torch.optim, per method."""
    fig = _figure(max(7.5, 1.5 + 0.5 * len(methods)), 4.2)
    ax = fig.add_subplot()
    pos = np.arange(len(methods))
    for offset, impl, hatch in ((-0.2, "pyfastopt", ""), (0.2, "torch", "//")):
        means = [
            1e6 * r.total_step_time / max(r.steps, 1) if (r := runs[m.name].get(impl)) else 0.0
            for m in methods
        ]
        ax.bar(
            pos + offset,
            means,
            width=0.4,
            color=[color(m.name) for m in methods],
            hatch=hatch,
            edgecolor="black",
            linewidth=0.5,
            label="pyfastopt" if impl == "pyfastopt" else "torch.optim (for-loop, foreach=False)",
        )
    ax.set_xticks(pos, [m.label for m in methods], rotation=30, ha="right", fontsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("µs per optimizer.step()")
    ax.set_title("Time inside optimizer.step()")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def surface_plot(surface: Surface, paths: Sequence[Path], path: FilePath) -> FilePath:
    """Contours of ``surface`` with every path, plus f along each path."""
    fig = _figure(12.5, 4.8)
    ax, ax_f = fig.subplots(1, 2, width_ratios=(1.25, 1))
    xs = np.linspace(*surface.xlim, 300)
    ys = np.linspace(*surface.ylim, 300)
    gx, gy = np.meshgrid(xs, ys)
    gz = surface.f(gx, gy)
    if surface.log_contours:
        levels = np.logspace(np.log10(max(gz.min(), 1e-3)), np.log10(gz.max()), 20)
        ax.contour(gx, gy, gz, levels=levels, cmap="Greys_r", linewidths=0.6, norm="log")
    else:
        ax.contour(gx, gy, gz, levels=20, cmap="Greys_r", linewidths=0.6)
    for i, p in enumerate(paths):
        pts = np.asarray(p.points)
        c = color(p.method)
        # later paths thinner, so a path that runs on top of another leaves it visible
        width = 3.2 - 2.2 * i / max(len(paths) - 1, 1)
        ax.plot(pts[:, 0], pts[:, 1], color=c, linewidth=width, label=f"{p.label} (lr {p.lr:g})")
        ax.plot(*pts[-1], marker="o", color=c, markersize=4)
        values = np.asarray(p.values)
        ax_f.plot(np.arange(len(values)), values, color=c, linewidth=width)
    ax.plot(*surface.start, marker="s", color="black", markersize=7, label="start", linestyle="")
    ax.plot(
        *surface.target,
        marker="*",
        color="white",
        markeredgecolor="black",
        markersize=15,
        label=surface.target_label,
        linestyle="",
    )
    ax.set_xlim(*surface.xlim)
    ax.set_ylim(*surface.ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"{surface.title}: f = {surface.formula}", fontsize="medium")
    fig.legend(loc="outside right upper", fontsize="small")
    ax_f.set_xlabel("step")
    ax_f.set_ylabel("f(x, y)")
    if surface.log_contours:
        ax_f.set_yscale("log")
    else:
        ax_f.set_yscale("symlog", linthresh=1e-2)
    ax_f.set_title("f along each path", fontsize="medium")
    ax_f.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
