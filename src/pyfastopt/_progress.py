"""Progress of long runs on stderr: a live bar on a terminal, plain lines everywhere else.

On a terminal the bar is tqdm's when tqdm is installed, else a small built-in one; both redraw
with carriage returns. When stderr is not a terminal (a pipe, a file, a CI log), or when the
``CI`` environment variable is set, or ``TERM=dumb``, nothing is redrawn: each phase writes one
line when it starts and one when it ends, with its elapsed time, and never a carriage return.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from . import _interrupt

T = TypeVar("T")


def interactive(stream: TextIO) -> bool:
    """Whether a redrawn bar belongs on ``stream``: a terminal, outside CI."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _count(items: Iterable[T], total: int | None) -> int | None:
    if total is not None:
        return total
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator[T]:
    """Yield ``items`` while reporting progress on stderr (silent if not ``enabled``); a
    Ctrl-C that was lost on the way is raised again before each item (``_interrupt.check``)."""
    total = _count(items, total)
    items = _checked(items)
    if not enabled:
        yield from items
        return
    stream = sys.stderr
    if not interactive(stream):
        yield from _plain(items, total, desc, stream)
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, total=total, desc=desc, leave=False, file=stream)
        return
    yield from _bar(items, total, desc, stream)


def _checked(items: Iterable[T]) -> Iterator[T]:
    for item in items:
        _interrupt.check()
        yield item


def _plain(items: Iterable[T], total: int | None, desc: str, stream: TextIO) -> Iterator[T]:
    """One line at the start of the phase and one at its end."""
    name = desc or "progress"
    size = f" (0/{total})" if total is not None else ""
    stream.write(f"{name}: started{size}\n")
    stream.flush()
    start = time.perf_counter()
    done = 0
    finished = False
    try:
        for item in items:
            yield item
            done += 1
        finished = True
    finally:
        of = f"/{total}" if total is not None else ""
        state = "done" if finished else "stopped"
        stream.write(f"{name}: {state}, {done}{of} in {time.perf_counter() - start:.1f} s\n")
        stream.flush()


def _bar(items: Iterable[T], total: int | None, desc: str, stream: TextIO) -> Iterator[T]:
    """A bar redrawn in place (a terminal without tqdm)."""
    start = time.perf_counter()
    try:
        for i, item in enumerate(items):
            yield item
            done = i + 1
            elapsed = time.perf_counter() - start
            if total:
                width = 30
                fill = int(width * done / total)
                bar = "#" * fill + "-" * (width - fill)
                stream.write(f"\r{desc} [{bar}] {done}/{total} {elapsed:6.1f}s")
            else:
                stream.write(f"\r{desc} {done} {elapsed:6.1f}s")
            stream.flush()
    finally:
        stream.write("\r" + " " * 70 + "\r")
        stream.flush()
