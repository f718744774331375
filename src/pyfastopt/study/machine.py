"""What a report says about where and how it was made: machine, versions, command line."""

from __future__ import annotations

import datetime as _dt
import shlex
from collections.abc import Sequence
from typing import Any

from .._config import config


def machine(threads: int | None = None) -> dict[str, Any]:
    """pyfastopt's configuration (CPU, versions, SIMD path) plus the study's thread setting."""
    info = dict(config())
    info["study_threads"] = threads
    info["date"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return info


def command_line(argv: Sequence[str]) -> str:
    return "python -m pyfastopt.study " + shlex.join(argv)


def machine_lines(info: dict[str, Any]) -> list[str]:
    """Markdown bullet lines describing the machine and versions."""
    threads = info.get("study_threads")
    return [
        f"- CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs)"
        + (f", torch and pyfastopt threads: {threads}" if threads else ""),
        f"- pyfastopt {info['pyfastopt']} (SIMD path {info['simd_path']}, "
        f"{info['compiler']}), torch {info['torch']}, Python {info['python']}",
        f"- date: {info['date']}",
    ]
