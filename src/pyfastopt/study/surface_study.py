"""The surfaces study: every method's path on every test function, drawn and tabulated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath

from .._progress import progress
from ..bench._args import atomic_write
from . import plots, report
from .machine import machine
from .surfaces import Path, Surface, surface_methods, trace


@dataclass(frozen=True)
class SurfaceOptions:
    surfaces: Sequence[Surface]
    out: FilePath
    steps: int = 2000
    show_progress: bool = True
    command: str = ""


Results = list[tuple[Surface, list[Path]]]


def run(options: SurfaceOptions) -> Results:
    methods = surface_methods()
    jobs = [(s, m) for s in options.surfaces for m in methods]
    paths: dict[str, list[Path]] = {s.name: [] for s in options.surfaces}
    for surface, method in progress(
        jobs, total=len(jobs), desc="paths", enabled=options.show_progress
    ):
        paths[surface.name].append(trace(surface, method, options.steps))
    return [(s, paths[s.name]) for s in options.surfaces]


def write(results: Results, options: SurfaceOptions) -> list[FilePath]:
    """One PNG per function and report.md in ``options.out``; returns the paths written."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    pictures = [plots.surface_plot(s, paths, out / f"{s.name}.png") for s, paths in results]
    md = atomic_write(
        out / "report.md",
        report.surfaces_report(
            results,
            options.steps,
            options.command,
            machine(),
            [p.name for p in pictures],
        ),
    )
    return [md, *pictures]
