"""A PNG bar chart of speedups over torch's for-loop step (matplotlib, optional)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import Any

from . import _args
from .impls import REFERENCE
from .results import Record


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> Any:
    """The ``matplotlib.pyplot`` module on the Agg backend, or PlotUnavailable saying how to fix."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib: pip install matplotlib (or pyfastopt[bench])"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speedups(records: Sequence[Record], path: str | os.PathLike[str], title: str = "") -> None:
    """One panel per optimizer: per model, one bar per implementation (× torch for-loop)."""
    plt = require_matplotlib()
    rows = [r for r in records if r.speedup_vs_torch is not None]
    optimizers = list(dict.fromkeys(r.optimizer for r in rows))
    impls = [i for i in dict.fromkeys(r.impl for r in rows) if i != REFERENCE]
    if not optimizers:
        raise ValueError("no timed results to plot")
    fig, axes = plt.subplots(len(optimizers), 1, figsize=(10, 2.8 * len(optimizers)), squeeze=False)
    width = 0.8 / max(1, len(impls))
    for ax, opt in zip(axes[:, 0], optimizers):
        models = list(dict.fromkeys(r.model for r in rows if r.optimizer == opt))
        value = {(r.model, r.impl): r.speedup_vs_torch for r in rows if r.optimizer == opt}
        for k, impl in enumerate(impls):
            xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(models))]
            ys = [value.get((m, impl), math.nan) for m in models]
            ax.bar(xs, ys, width, label=impl)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(models)), models)
        ax.set_yscale("log")
        ax.set_ylabel("× torch for-loop")
        ax.set_title(opt, loc="left", fontsize=10)
        ax.legend(fontsize=8, ncols=min(4, len(impls)), loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    _args.atomic_write(path, buffer.getvalue())
