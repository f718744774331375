"""Thread count, size thresholds, SIMD path selection and ``show_config``."""

from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import Any, TextIO

import torch

from . import _core, _cuda_backend

_num_threads: int | None = None
_source = "torch"
_forked = False  # this process is a fork() child (see _reset_after_fork)

#: Calls that update fewer elements than this run on the calling thread only: waking a second
#: thread costs more than it saves on small steps.
PARALLEL_MIN_ELEMENTS = 1 << 15

#: The most threads set_num_threads takes.
MAX_THREADS = 4096


def set_num_threads(n: int | None) -> None:
    """Set the threads pyfastopt's kernels use; ``None`` follows ``torch.get_num_threads()``.

    In a child made by ``fork()`` the kernels stay on one thread: ``None`` keeps that, and more
    than one thread raises ``RuntimeError`` (GNU OpenMP's pool does not survive ``fork()``; a
    parallel region there would wait forever).
    """
    global _num_threads, _source
    if n is None:
        if not _forked:
            _num_threads, _source = None, "torch"
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive int or None, got {n!r}")
    if n > MAX_THREADS:  # GNU OpenMP would abort the process creating that many
        raise ValueError(f"num_threads must be at most {MAX_THREADS}, got {n}")
    if n > 1 and _forked:
        raise RuntimeError(
            "pyfastopt: this process was made by fork(), after which GNU OpenMP's thread pool "
            "does not work (a parallel region waits forever, torch's own ops included); its "
            "steps stay on one thread. Start workers that train with threads with the 'spawn' "
            "or 'forkserver' method."
        )
    _num_threads, _source = n, "set_num_threads"


def get_num_threads() -> int:
    """Threads the next step will use (``torch.get_num_threads()`` unless overridden)."""
    return _num_threads if _num_threads is not None else torch.get_num_threads()


def set_simd(name: str) -> str:
    """Force a SIMD path ('avx512', 'avx2', 'baseline') or go back to 'auto'; returns the path."""
    return _core.select_simd(name)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config() -> dict[str, Any]:
    """The configuration ``show_config`` prints, as a dict (benchmarks record it)."""
    from . import __version__

    info = dict(_core.build_info())
    return {
        "pyfastopt": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "simd_path": _core.simd_path(),
        "simd_supported": list(_core.supported_simd()),
        "num_threads": get_num_threads(),
        "num_threads_source": _source,
        "parallel_min_elements": PARALLEL_MIN_ELEMENTS,
        "openmp": info.get("openmp"),
        "compiler": info.get("compiler"),
        "cuda": _cuda_backend.describe(),  # the optional module pyfastopt._cuda
        "fp_contract": info.get("fp_contract"),
    }


def show_config(file: TextIO | None = None) -> None:
    """Print the SIMD path, thread count, versions and build options in use, and whether the
    optional CUDA module is built and usable here (and why not)."""
    out = file if file is not None else sys.stdout
    for key, value in config().items():
        print(f"{key:>22}: {value}", file=out)


def _reset_after_fork() -> None:
    # GNU OpenMP's thread pool does not survive fork(): in a child (DataLoader workers,
    # multiprocessing), a parallel region sized for the parent's pool waits forever for threads
    # that do not exist. So a forked child steps on its own thread, whatever the parent chose
    # and whatever torch says there (set_num_threads refuses more: see there).
    global _num_threads, _source, _forked
    _num_threads, _forked = 1, True
    _source = "fork (one thread after fork: GNU OpenMP's pool is gone)"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

_env_simd = os.environ.get("PYFASTOPT_SIMD")
if _env_simd:
    try:
        set_simd(_env_simd)
    except ValueError as exc:  # a bad setting must not make the package unimportable
        warnings.warn(f"PYFASTOPT_SIMD ignored: {exc}", RuntimeWarning, stacklevel=2)
