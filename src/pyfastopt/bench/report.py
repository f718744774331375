"""The JSON report: a machine record, the settings, one record per optimizer × model × impl."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from . import _args
from .results import Record, Skipped

SCHEMA = "pyfastopt-bench/1"


def report_dict(
    machine: dict[str, Any],
    settings: dict[str, Any],
    records: Sequence[Record],
    skipped: Sequence[Skipped] = (),
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "machine": machine,
        "settings": settings,
        "results": [r.to_dict() for r in records],
        "skipped": [asdict(s) for s in skipped],
    }


def write_json(path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    """Strict JSON (non-finite numbers as null), written atomically."""
    _args.write_json(path, report, indent=2)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    _args.atomic_write(path, text)
