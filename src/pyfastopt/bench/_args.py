"""What the command-line tools share, one copy of each rule: ``python -m pyfastopt.bench`` (and
its sub-benchmarks ``lowp``, ``lowmem``, ``lbfgs``, ``breakdown``) and ``python -m
pyfastopt.study`` alike.

- argparse types that refuse bad input with argparse's one-line message and exit status 2
  before any work starts: thread counts, positive and bounded integers, finite floats, seeds,
  comma-separated name lists (any case, duplicates dropped, an empty list refused), output
  files and folders (checked writable up front), input folders;
- :func:`atomic_write`: outputs written to a temporary file and renamed into place, so an
  interrupted run never leaves a half-written file that a later run would trust;
- :func:`dumps_json`: strict JSON, non-finite numbers written as ``null``;
- :func:`guarded`: runs a command, turning Ctrl-C into ``<prog>: interrupted`` (exit 130), a
  closed stdout pipe (``| head``) into a quiet exit 141, and the expected errors it is given,
  and a failed allocation (a workload larger than the memory), into ``<prog>: error:
  <message>`` (exit 2), each one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import _interrupt
from .._config import MAX_THREADS
from ..data.mnist import check_directory

#: exit statuses: bad input (argparse's), Ctrl-C (128 + SIGINT), a closed pipe (128 + SIGPIPE)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: the largest seed torch takes as a signed 64-bit integer
MAX_SEED = 2**63 - 1


# --- numbers -------------------------------------------------------------------------------------


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    return parse


#: at least 1 (rounds, epochs, sizes, counts)
positive_int = bounded_int(1)


def add_rounds(parser: argparse.ArgumentParser, default: int = 15) -> None:
    """The sub-benchmarks' ``--rounds``: timed rounds per candidate, at least 1."""
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=default,
        help="timed rounds per candidate (default: %(default)s)",
    )


def add_optimizers(parser: argparse.ArgumentParser, names: Iterable[str], default: str) -> None:
    """The sub-benchmarks' ``--optimizers``: a comma-separated list, any case, from ``names``."""
    names = list(names)
    parser.add_argument(
        "--optimizers",
        type=name_list(names, "optimizer"),
        default=default,
        help=f"comma-separated, any case, from {', '.join(names)} (default: %(default)s)",
    )


#: at least 0 (warm-up rounds)
non_negative_int = bounded_int(0)
#: a thread count: 1 to pyfastopt.set_num_threads' limit (more would abort or crash the process)
threads = bounded_int(1, MAX_THREADS)
#: a seed torch takes: 0 to 2**63 - 1
seed = bounded_int(0, MAX_SEED)


def int_list(
    low: int, high: int | None = None, *, unique: bool = False, example: str = "1,2,3"
) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated integers in [low, high], at least one; with ``unique``
    repeats are dropped (first-seen order kept)."""
    one = bounded_int(low, high)

    def parse(text: str) -> tuple[int, ...]:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts) or not all(parts):
            raise argparse.ArgumentTypeError(f"expected a list like {example}, got {text!r}")
        values = tuple(one(p) for p in parts)
        return tuple(dict.fromkeys(values)) if unique else values

    return parse


def finite_float(low: float, *, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite float at least ``low`` (above it unless ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if value < low or (value == low and not inclusive):
            word = "at least" if inclusive else "above"
            raise argparse.ArgumentTypeError(f"must be {word} {low:g}, got {text!r}")
        return value

    return parse


# --- names ---------------------------------------------------------------------------------------


def lookup(name: str, choices: Iterable[str], what: str) -> str:
    """The entry of ``choices`` spelled ``name`` in any case (surrounding spaces ignored), or
    ValueError listing the choices: the one name lookup every tool uses."""
    options = list(choices)
    key = name.strip().lower()
    for choice in options:
        if choice.lower() == key:
            return choice
    raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(options)}")


def name_list(
    choices: Iterable[str], what: str, *, allow_empty: bool = False
) -> Callable[[str], list[str]]:
    """An argparse type: comma-separated names from ``choices`` in any case, returned in their
    canonical spelling, duplicates dropped (first-seen order kept); an empty list is refused
    unless ``allow_empty`` (then ``''`` means none)."""
    options = list(choices)

    def parse(text: str) -> list[str]:
        given = [t.strip() for t in text.split(",") if t.strip()]
        if not given and not allow_empty:
            raise argparse.ArgumentTypeError(
                f"no {what} named in {text!r}; choose from {', '.join(options)}"
            )
        try:
            return list(dict.fromkeys(lookup(n, options, what) for n in given))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def one_name(choices: Iterable[str], what: str) -> Callable[[str], str]:
    """An argparse type: one name from ``choices``, in any case."""
    options = list(choices)

    def parse(text: str) -> str:
        try:
            return lookup(text, options, what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


# --- paths ---------------------------------------------------------------------------------------


def _named(text: str, what: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"empty {what}: name one")
    if text == "-":
        raise argparse.ArgumentTypeError(f"'-' (stdout) is not supported: name a {what}")
    return Path(text).expanduser()


def _writable_folder(folder: Path, shown: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {shown}: {folder} is not writable")


def output_file(text: str) -> Path:
    """An argparse type: a file the tool may write: not empty, not '-', not a folder, in an
    existing, writable folder. Checked when the command line is read, before any work."""
    path = _named(text, "file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory, not a file")
    parent = path.parent
    if not parent.exists():
        raise argparse.ArgumentTypeError(f"cannot write {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {path}: {parent} is not a folder")
    _writable_folder(parent, path)
    return path


def output_dir(text: str) -> Path:
    """An argparse type: an output folder that exists or can be created (the tool creates it
    when it writes): not empty, not a file, not below a file, writable. Checked when the
    command line is read, before any work; nothing is created here."""
    path = _named(text, "folder")
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    existing = path
    while not existing.exists():  # the nearest existing ancestor (a relative path ends in ".")
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"cannot create {path}: {existing} is a file")
    _writable_folder(existing, path)
    return path


def input_dir(text: str) -> str:
    """An argparse type: an existing folder (MNIST's ``--data``): not empty, not a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty folder: name one")
    try:
        check_directory(text, "")
    except FileNotFoundError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def distinct_outputs(paths: Mapping[str, Path | None]) -> None:
    """ValueError when two output options name the same file (the later would overwrite)."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = Path(os.path.abspath(path))
        if key in seen:
            raise ValueError(f"{seen[key]} and {option} name the same file {path}")
        seen[key] = option


# --- writing -------------------------------------------------------------------------------------


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file in the same folder
    renamed over it: readers see the old file or the whole new one, never a part (also when
    the run is interrupted, which removes the temporary file). A symbolic link is followed (its
    target is replaced, the link kept); something that is not a regular file (``/dev/null``, a
    FIFO, a terminal) is written in place, never renamed over."""
    target = Path(os.path.realpath(path))
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        st_mode: int | None = target.stat().st_mode
    except OSError:
        st_mode = None
    if st_mode is not None and not stat.S_ISREG(st_mode):
        with open(target, "wb") as f:  # (write errors, /dev/full's say, go to the caller)
            f.write(payload)
        return Path(path)
    mode = st_mode & 0o777 if st_mode is not None else _new_file_mode()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(path)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps_json(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``obj``: NaN and infinities become ``null`` (bare ``NaN`` is not
    JSON); objects JSON has no form for are written as their ``str``."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False, default=str) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> Path:
    """:func:`dumps_json` of ``obj`` written atomically to ``path``."""
    return atomic_write(path, dumps_json(obj, indent))


def command_line(module: str, argv: Sequence[str]) -> str:
    """How the run was started, as a shell command (``python -m <module> <argv>``)."""
    return f"python -m {module} {shlex.join(argv)}".rstrip()


# --- running -------------------------------------------------------------------------------------


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of a closed pipe does
    not print another error."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the OS tells (else None)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def guarded(
    prog: str,
    body: Callable[[], int],
    expected: tuple[type[BaseException], ...] = (),
) -> int:
    """``body()``'s exit status; an ``expected`` error is ``<prog>: error: <message>`` and 2,
    Ctrl-C ``<prog>: interrupted`` and 130, a closed stdout (``| head``) a quiet 141."""
    try:
        with _interrupt.latched():  # a Ctrl-C that something swallows is raised again
            return body()
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _interrupt.forget()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except expected as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, RuntimeError) as exc:  # a workload larger than this machine's memory
        if not isinstance(exc, MemoryError) and "allocate memory" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: error: not enough memory for this workload ({first})", file=sys.stderr)
        return EXIT_USAGE
