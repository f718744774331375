"""A small progress bar for long runs (tqdm when installed, a plain stderr bar otherwise)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """Yield ``items`` while drawing a progress bar on stderr (silent if not ``enabled``)."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=desc, leave=False, file=sys.stderr)
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    start = time.perf_counter()
    for i, item in enumerate(items):
        yield item
        done = i + 1
        elapsed = time.perf_counter() - start
        if total:
            width = 30
            fill = int(width * done / total)
            bar = "#" * fill + "-" * (width - fill)
            sys.stderr.write(f"\r{desc} [{bar}] {done}/{total} {elapsed:6.1f}s")
        else:
            sys.stderr.write(f"\r{desc} {done} {elapsed:6.1f}s")
        sys.stderr.flush()
    sys.stderr.write("\r" + " " * 70 + "\r")
    sys.stderr.flush()
