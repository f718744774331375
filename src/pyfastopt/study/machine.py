"""What a report says about where and how it was made: machine, versions, command line."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from .._config import config
from ..bench import _args


def machine(threads: int | None = None, data: str | None = None) -> dict[str, Any]:
    """pyfastopt's configuration (CPU, versions, SIMD path) plus the study's thread setting and
    the MNIST directory read (``data``; left out when there is none)."""
    info = dict(config())
    info["study_threads"] = threads
    if data:
        info["mnist"] = data
    info["date"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return info


def command_line(argv: Sequence[str]) -> str:
    return _args.command_line("pyfastopt.study", argv)


def machine_lines(info: dict[str, Any]) -> list[str]:
    """Markdown bullet lines describing the machine and versions."""
    threads = info.get("study_threads")
    return [
        f"- CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs)"
        + (f", torch and pyfastopt threads: {threads}" if threads else ""),
        f"- pyfastopt {info['pyfastopt']} (SIMD path {info['simd_path']}, "
        f"{info['compiler']}), torch {info['torch']}, Python {info['python']}",
        *([f"- MNIST: {info['mnist']}"] if info.get("mnist") else []),
        f"- date: {info['date']}",
    ]
