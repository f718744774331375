"""Ctrl-C in the command-line tools: one that other code cannot lose, and an exit status that
is the tool's own.

Python turns SIGINT into a KeyboardInterrupt in whatever Python code runs at that moment. Code
that swallows exceptions (a C extension clearing the error of a Python call it made, an
``except:`` in a library, a lazy import that fails quietly) can then lose the interrupt, and a
tool with a long loop runs on as if nothing happened. While :func:`latched` is active, the
SIGINT handler also records the interrupt, and :func:`check`, called by the tools' loops at
safe points, raises it again if it was lost on the way.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_pending = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


@contextmanager
def latched() -> Iterator[None]:
    """Record every Ctrl-C while active (main thread, Python's default SIGINT handling only:
    a handler the program installed itself is left alone)."""
    global _pending
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    _pending = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _pending = False


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived under :func:`latched` (and was lost)."""
    if _pending:
        raise KeyboardInterrupt


def forget() -> None:
    """Makes a handled Ctrl-C exit with the status the tool returns.

    CPython marks a KeyboardInterrupt that ends an ``exec`` of source text as unhandled, and
    ``python -m`` then ends the process with SIGINT (status -2) whatever the program did with
    it. Such ``exec`` calls are common (dataclasses and namedtuples build their methods with
    them, so a Ctrl-C during torch's lazy imports lands in one), and each first clears the
    mark: an empty one forgets it.
    """
    exec("")
