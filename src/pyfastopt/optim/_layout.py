"""Memory-layout facts about tensors: what the native core may treat as one flat array."""

from __future__ import annotations

from typing import Any

import torch

#: dtype -> (native dtype code, element multiplier). Complex tensors are updated through their
#: real view, exactly as torch's for-loop does with ``view_as_real``. bfloat16 and float16 are
#: computed in float32 and rounded once per stored value (csrc/include/pyfastopt/storage.h).
NATIVE_DTYPES: dict[torch.dtype, tuple[int, int]] = {
    torch.float32: (0, 1),
    torch.float64: (1, 1),
    torch.complex64: (0, 2),
    torch.complex128: (1, 2),
    torch.bfloat16: (2, 1),
    torch.float16: (3, 1),
}

#: the 16-bit floating dtypes: float32 compute, one rounding per stored value.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def is_plain(t: Any, device_type: str) -> bool:
    """A plain strided tensor (``torch.Tensor`` or ``Parameter``, no subclass) on
    ``device_type``, of a dtype the native cores take, whose memory holds its values as they
    read (no neg/conj bit)."""
    tp = type(t)
    return (
        (tp is torch.Tensor or tp is torch.nn.Parameter)
        and t.device.type == device_type
        and t.layout == torch.strided
        and t.dtype in NATIVE_DTYPES
        and not t.is_neg()
        and not t.is_conj()
    )


def is_f32_scalar(t: Any, device_type: str) -> bool:
    """GradScaler's ``grad_scale`` or ``found_inf`` as a kernel reads it: a plain one-element
    float32 tensor on ``device_type``."""
    return (
        type(t) is torch.Tensor
        and t.device.type == device_type
        and t.dtype == torch.float32
        and t.numel() == 1
        and t.layout == torch.strided
        and not t.is_neg()
    )


def is_dense(t: torch.Tensor) -> bool:
    """True if ``t`` covers one gap-free block of memory, in any dimension order."""
    if t.is_contiguous():
        return True
    dims = sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def may_overlap_itself(t: torch.Tensor) -> bool:
    """True unless ``t``'s strides prove no two of its elements share memory (each stride, in
    increasing order, steps past everything the smaller ones reach). ``as_strided`` views such
    as ``(5, 4)`` with strides ``(1, 1)``: torch's in-place ops write them element after element,
    which a staged copy cannot reproduce."""
    if t.numel() <= 1 or is_dense(t):
        return False
    reach = 0
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def fits_storage(t: torch.Tensor) -> bool:
    """Whether a strided tensor's elements lie inside its storage. A storage shrunk in place
    (``t.untyped_storage().resize_(n)``) keeps the tensor's sizes and strides, and a kernel
    trusting them would read and write past the allocation."""
    if t.numel() == 0:
        return True
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True))
    end = (t.storage_offset() + last + 1) * t.element_size()
    return end <= t.untyped_storage().nbytes()


def spans_overlap(spans: list[tuple[int, int]]) -> bool:
    """Whether two of the byte ranges ``[lo, hi)`` share a byte (empty ones never do)."""
    spans = sorted(s for s in spans if s[1] > s[0])
    return any(spans[i][0] < spans[i - 1][1] for i in range(1, len(spans)))


def check_storage(t: torch.Tensor, what: str, error: type[Exception], where: str) -> None:
    """Refuse a tensor whose storage was shrunk in place under it, before anything reads it:
    its sizes would send a kernel past the allocation (torch's own ops crash there)."""
    if t.layout == torch.strided and t.device.type == "cpu" and not fits_storage(t):
        raise error(
            f"{where}: {what} extends past its storage ({t.untyped_storage().nbytes()} bytes "
            f"for {tuple(t.shape)} elements of {t.dtype}; resized in place?)"
        )


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if element i of ``a``'s memory block is element i of ``b``'s (same shape assumed)."""
    if a.is_contiguous() and b.is_contiguous():
        return True
    return all(sa == sb for sa, sb, size in zip(a.stride(), b.stride(), a.shape) if size != 1)


def layout_key(t: torch.Tensor) -> tuple[int, ...] | None:
    """None for a contiguous tensor, else its strides: what a gradient must match each step."""
    return None if t.is_contiguous() else tuple(t.stride())
