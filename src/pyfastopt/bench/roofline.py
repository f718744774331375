"""A streaming roofline: torch's in-place ``a.add_(b, alpha=k)`` over the same bytes as a step.

``add_`` reads a and b and writes a: 3 arrays of n float32. Sized so that 3·n·4 equals the
bytes an optimizer step moves and timed interleaved with the candidates, it gives the rate a
plain streaming kernel reaches here and now; ``roofline time / step time`` is then the share of
that rate a step achieves (1.0 = as fast as streaming the same bytes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

STREAMS = 3  # a.add_(b): read a, read b, write a


def stream_elements(nbytes: int, itemsize: int = 4) -> int:
    """Elements per array so that ``a.add_(b)`` moves ``nbytes``."""
    return max(1, round(nbytes / (STREAMS * itemsize)))


def streaming_kernel(nbytes: int, device: str = "cpu") -> Callable[[], object]:
    """A callable running ``a.add_(b, alpha=k)`` over arrays that move ``nbytes`` in all."""
    n = stream_elements(nbytes)
    a = torch.ones(n, device=device)
    b = torch.full((n,), 0.5, device=device)

    def run() -> torch.Tensor:
        return a.add_(b, alpha=1e-7)

    return run
