"""Which reader the fast path uses for tensor metadata (``csrc/bindings/torch_abi.h``).

The native core reads each tensor's address, dtype, sizes, strides and neg/conj bits once per
step. It can do that through torch's Python accessors (about 270 ns per tensor) or through
torch's C entry points, looked up by name in the libtorch that ``import torch`` loaded (about
25 ns). The C reader is switched on only if a probe on the sample tensors below gets the same
answer from both readers for every field; otherwise, and with ``PYFASTOPT_TORCH_ABI=0`` in the
environment, the Python accessors are used. Both readers answer the same questions.
"""

from __future__ import annotations

import os

import torch

from . import _core


def _samples() -> list[torch.Tensor]:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    z = torch.complex(base[:2, :3], base[1:, 1:])
    out = [
        base,
        base.t(),
        base[:, 1:3],
        torch.tensor(1.5, dtype=torch.float64),
        torch.empty(0),
        torch.zeros(2, 1, dtype=torch.int64),
        torch.nn.Parameter(torch.ones(5, dtype=torch.float64)),
        z.conj(),
        z.conj().imag,  # a negative view
    ]
    neg_view = getattr(torch, "_neg_view", None)
    if neg_view is not None:
        out.append(neg_view(base))
    return out


def use_torch_abi(on: bool = True) -> bool:
    """Switch the C reader on (if its probe passes) or off; returns whether it is on."""
    return _core.use_torch_abi(_samples(), on)


def torch_abi_enabled() -> bool:
    """Whether the fast path reads tensor metadata through torch's C entry points."""
    return _core.torch_abi_enabled()


use_torch_abi(os.environ.get("PYFASTOPT_TORCH_ABI", "1") != "0")
