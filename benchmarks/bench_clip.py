"""``clip_grad_norm_`` on the gradients of the MNIST MLPs: pyfastopt's fused call beside torch's
(``foreach=True`` and ``foreach=False``).

Two modes: ``clips`` (max_norm is half the norm, so every gradient is rewritten; the gradients
are restored before each timed call, outside the timing) and ``no-clip`` (max_norm far above the
norm: torch still multiplies by 1, pyfastopt skips that pass). Each case first checks its result
against torch's for-loop.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.nn.utils import clip_grad_norm_ as torch_clip

import pyfastopt
from pyfastopt.bench.workloads import mlp_shapes

WORKLOADS = {"mlp-128": (128,), "mlp-512-256": (512, 256)}
IMPLS: dict[str, Callable[[list[torch.Tensor], float], torch.Tensor]] = {
    "torch-for-loop": lambda ps, m: torch_clip(ps, m, foreach=False),
    "torch-foreach": lambda ps, m: torch_clip(ps, m, foreach=True),
    "pyfastopt": lambda ps, m: pyfastopt.clip_grad_norm_(ps, m),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("clips", "no-clip")


def _params(shapes, dtype: torch.dtype) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    grads = [(torch.randn(s, generator=gen) * 0.01).to(dtype) for s in shapes]
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=dtype))
        p.grad = g.clone()
        params.append(p)
    return params, grads


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_clip_grad_norm(benchmark, workload, impl, dtype, mode):
    shapes = mlp_shapes(WORKLOADS[workload])
    dt = DTYPES[dtype]
    params, grads = _params(shapes, dt)
    norm = torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])).item()
    max_norm = norm / 2 if mode == "clips" else norm * 1e6
    clip = IMPLS[impl]

    # parity with torch's for-loop, on copies, before anything is timed
    ref_params, _ = _params(shapes, dt)
    expected = torch_clip(ref_params, max_norm, foreach=False)
    total = clip(params, max_norm)
    rtol = 1e-4 if dt == torch.float32 else 1e-2
    assert total.dtype == expected.dtype
    torch.testing.assert_close(total, expected, rtol=rtol, atol=0)
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p.grad, r.grad, rtol=rtol, atol=1e-7)

    benchmark.group = f"clip_grad_norm_ {workload} {dtype} {mode}"
    benchmark.extra_info.update(params=sum(g.numel() for g in grads), tensors=len(grads))
    if mode == "clips":

        def restore() -> None:
            for p, g in zip(params, grads):
                p.grad.copy_(g)

        benchmark.pedantic(lambda: clip(params, max_norm), setup=restore, rounds=300)
    else:
        benchmark(clip, params, max_norm)
