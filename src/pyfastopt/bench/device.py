"""Benchmarks on a GPU (``--device cuda``): whether one is here, and the timer.

Timing is interleaved exactly as on the CPU (``harness.interleaved``); only the clock differs:
a batch of calls is bracketed by two CUDA events on the current stream and the time between
them, once the second has completed, is divided by the number of calls. A step whose host side
is slower than its kernels leaves the GPU idle between launches, and that idle time is counted
too: it is what a training loop waits for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import _cuda_backend


def no_gpu_reason() -> str | None:
    """None when torch has a CUDA device here, else a plain sentence saying why not."""
    if torch.cuda.is_available():
        return None
    built = torch.version.cuda
    return (
        f"no CUDA device here: torch {torch.__version__} "
        f"({'built with CUDA ' + built if built else 'a CPU-only build'}) reports "
        "torch.cuda.is_available() == False; nothing was run"
    )


def gpu_lines() -> list[str]:
    """The GPU and pyfastopt's CUDA module, for the report's header."""
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    return [
        f"GPU: {props.name} (cuda:{dev}, sm_{props.major}{props.minor}, "
        f"{props.total_memory / 2**30:.0f} GiB), torch CUDA {torch.version.cuda}",
        f"pyfastopt CUDA module: {_cuda_backend.describe()}",
    ]


def cuda_timer(fn: Callable[[], object], calls: int) -> float:
    """ns per call of ``fn`` over a batch of ``calls``, between two CUDA events."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e6 / calls
