"""The JSON report: a machine record, the settings, one record per optimizer × model × impl."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

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
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
