"""Shared test helpers: identical parameter sets and gradient streams for two optimizers."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

SHAPES: tuple[tuple[int, ...], ...] = ((40, 30), (30,), (7, 3, 5), (1,), (0,), (33000,))


def make_params(
    dtype: torch.dtype, shapes: Sequence[tuple[int, ...]] = SHAPES, seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    a = [b.clone().requires_grad_() for b in base]
    c = [b.clone().requires_grad_() for b in base]
    return a, c


def grad_stream(params: Sequence[torch.Tensor], seed: int = 1) -> Callable[[], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)

    def next_grads() -> list[torch.Tensor]:
        return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]

    return next_grads


def sparse_grad_stream(
    params: Sequence[torch.Tensor], seed: int = 1, share: float = 0.4
) -> Callable[[], list[torch.Tensor]]:
    """Sparse COO gradients like an embedding's: about ``share`` of each parameter's rows (its
    first dim) drawn with repeats and left uncoalesced, so the step must sum the repeats."""
    gen = torch.Generator().manual_seed(seed)

    def next_grads() -> list[torch.Tensor]:
        out = []
        for p in params:
            rows = p.shape[0] if p.dim() else 1
            k = max(1, int(rows * share))
            idx = torch.randint(0, rows, (1, k), generator=gen)
            vals = torch.randn((k, *p.shape[1:]), generator=gen, dtype=p.dtype)
            out.append(torch.sparse_coo_tensor(idx, vals, p.shape, check_invariants=True))
        return out

    return next_grads


def run_steps(
    opts: Sequence[torch.optim.Optimizer],
    params: Sequence[Sequence[torch.Tensor]],
    steps: int,
    seed: int = 1,
    grads: Callable[[], list[torch.Tensor]] | None = None,
) -> None:
    """Step every optimizer ``steps`` times, each seeing the same gradients (from ``grads``,
    by default dense ones)."""
    grads = grad_stream(params[0], seed) if grads is None else grads
    for _ in range(steps):
        gs = grads()
        for opt, ps in zip(opts, params):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()


def assert_same_state(ref: torch.optim.Optimizer, fast: torch.optim.Optimizer, **tol) -> None:
    sr, sf = ref.state_dict(), fast.state_dict()
    assert sr["state"].keys() == sf["state"].keys()
    for k in sr["state"]:
        a, b = sr["state"][k], sf["state"][k]
        assert a.keys() == b.keys(), (k, a.keys(), b.keys())
        for key in a:
            ta, tb = a[key], b[key]
            assert ta.dtype == tb.dtype and ta.shape == tb.shape, (key, ta, tb)
            torch.testing.assert_close(tb, ta, **tol)
    for gr, gf in zip(sr["param_groups"], sf["param_groups"]):
        assert gr.keys() == gf.keys()
        # the reference runs with foreach=False; every other key must be identical
        assert {k: v for k, v in gr.items() if k != "foreach"} == {
            k: v for k, v in gf.items() if k != "foreach"
        }


@functools.cache
def set_grad_of_another_dtype(p: torch.Tensor, g: torch.Tensor) -> None:
    """``p.grad = g`` where ``g`` has another dtype than ``p``: torch 2.10+ allows it once
    ``p.grad_dtype`` is None; older torch refuses the assignment, and ``.data`` swaps it in."""
    if hasattr(p, "grad_dtype"):
        p.grad_dtype = None
        p.grad = g
    else:
        p.grad = torch.zeros_like(g, dtype=p.dtype)
        p.grad.data = g


def require_amp_scaling(name: str) -> None:
    """Skip (visibly) where this torch's ``name(fused=True)`` does not take GradScaler's scale
    in its step (torch 2.5's Adagrad): GradScaler then unscales itself, as for pyfastopt's."""
    import pytest

    opt = getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(1))], fused=True)
    if not getattr(opt, "_step_supports_amp_scaling", False):
        pytest.skip(f"torch {torch.__version__}'s {name}(fused=True) takes no GradScaler scale")


def torch_inits_added_adagrad_groups() -> bool:
    """Whether this torch's Adagrad can step a group added with ``add_param_group`` (torch 2.5
    cannot: its step raises KeyError('sum'), which pyfastopt does not copy)."""
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adagrad([p])
    opt.add_param_group({"params": [q]})
    q.grad = torch.ones(1)
    try:
        opt.step()
    except KeyError:
        return False
    return True


ROOT = Path(__file__).resolve().parent.parent
#: the AVX-512 build's flags (CMakeLists.txt), for the native checks in tests/native/
AVX512_FLAGS = ("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mfma", "-mf16c")


def run_native_check(
    tmp_path: Path,
    source: str,
    args: Sequence[str],
    extra: Sequence[str] = (),
    flags: Sequence[str] = AVX512_FLAGS,
):
    """Compile ``tests/native/<source>`` (plus ``extra`` sources of the tree) with the AVX-512
    build's flags (or ``flags``) and run it; skips (visibly) without the source tree, a compiler
    or x86-64."""
    import pytest

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 only")
    src = ROOT / "tests" / "native" / source
    include = ROOT / "csrc" / "include"
    sources = [src, *(ROOT / e for e in extra)]
    if not include.exists() or not all(p.exists() for p in sources):
        pytest.skip("needs the source tree (csrc/)")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / Path(source).stem
    subprocess.run(
        [cxx, "-O2", "-std=c++17", *flags, "-I", str(include), *map(str, sources)]
        + ["-o", str(exe)],
        check=True,
        capture_output=True,
    )
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)
