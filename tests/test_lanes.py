"""The AVX-512 build's 16-lane loop for bfloat16/float16 storage gives the bits of the
compiler-vectorised loop it replaces: every optimizer and option, every storage mode (torch's
layout, master weights, stochastic rounding, GradScaler in the kernel), tails that are not a
multiple of 16, and the values where the CPU's conversion instructions differ from c10's
(subnormals, NaN payloads, infinities, signed zeros). The conversions themselves are compared
with the scalar ones by tests/native/check_lanes.cpp."""

from __future__ import annotations

import pytest
import torch
from helpers import require_amp_scaling, run_native_check
from optim_db import NAMES, case_id, cases, require_torch_options

import pyfastopt
from pyfastopt import _core

LOWP = [torch.bfloat16, torch.float16]
SHAPES = ((1023,), (7, 33), (1,), (16,), (48,), (5000,))
STEPS = 5

needs_avx512 = pytest.mark.skipif(
    "avx512" not in _core.supported_simd(), reason="this CPU has no AVX-512 (no 16-lane loop)"
)


@pytest.fixture
def lanes_and_simd():
    """Leaves the lanes switched on and the SIMD path automatic, whatever a test did."""
    yield
    _core.use_lanes(True)
    _core.select_simd("auto")


def _specials(t: torch.Tensor, seed: int) -> torch.Tensor:
    """A float32 copy of ``t`` with planted values where conversions are delicate: float32
    subnormals (flushed by the bf16 instruction), float16 subnormals, NaN with payloads,
    infinities, signed zeros."""
    assert t.dtype == torch.float32
    flat = t.reshape(-1).clone()
    g = torch.Generator().manual_seed(seed)
    n = flat.numel()
    picks = torch.randint(0, n, (max(1, n // 20),), generator=g)
    values = torch.tensor(
        [1e-39, -3e-41, 1e-45, 6e-8, -3e-6, 0.0, -0.0, float("inf"), float("-inf"), 1e-20]
    )
    flat[picks] = values[torch.arange(picks.numel()) % values.numel()].to(t.dtype)
    if n > 3:  # NaNs with payloads, both signs
        nan = torch.tensor([0x7FC00001, 0x7F800123, -0x00400001], dtype=torch.int32)
        flat[1:4] = nan.view(torch.float32)
    return flat.reshape(t.shape)


def _run(name: str, kw: dict, dtype: torch.dtype, lanes: bool, specials: bool, **extra):
    _core.use_lanes(lanes)
    torch.manual_seed(0)  # stochastic rounding draws its seed from torch's generator
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]
    if specials:
        with torch.no_grad():
            for i, p in enumerate(ps):
                p.copy_(_specials(p.float(), i).to(dtype))
    opt = getattr(pyfastopt, name)(ps, **kw, **extra)
    for step in range(STEPS):
        for i, p in enumerate(ps):
            grad = torch.randn(p.shape, generator=g) * 0.5
            if specials:
                grad = _specials(grad * 1e-3 ** (step % 3), 100 * step + i)
            p.grad = grad.to(dtype)
        opt.step()
    state = [
        v.clone() for p in ps for k, v in opt.state[p].items() if torch.is_tensor(v) and k != "step"
    ]
    return [p.detach().clone() for p in ps] + state


def _bits(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.reshape(-1).view(torch.int16 if t.element_size() == 2 else torch.int32) for t in ts]


def _assert_same_bits(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(_bits(a), _bits(b)):
        assert torch.equal(x, y), f"{int((x != y).sum())} of {x.numel()} elements differ"


@needs_avx512
@pytest.mark.parametrize("specials", [False, True], ids=["random", "specials"])
@pytest.mark.parametrize("dtype", LOWP, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_lanes_give_the_bits_of_the_vectorised_loop(case, dtype, specials, lanes_and_simd):
    name, kw = case
    require_torch_options(name, kw)
    _core.select_simd("avx512")
    got = _run(name, kw, dtype, True, specials)
    want = _run(name, kw, dtype, False, specials)
    _assert_same_bits(got, want)


@needs_avx512
@pytest.mark.parametrize(
    "mode",
    [
        ("bf16-master", torch.bfloat16, {"master_weights": True}),
        ("fp16-master", torch.float16, {"master_weights": True}),
        ("bf16-stochastic", torch.bfloat16, {"stochastic_rounding": True}),
    ],
    ids=lambda m: m[0],
)
@pytest.mark.parametrize("name", NAMES)
def test_lanes_in_every_storage_mode(name, mode, lanes_and_simd):
    _, dtype, extra = mode
    kw = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    _core.select_simd("avx512")
    for specials in (False, True):
        got = _run(name, kw, dtype, True, specials, **extra)
        want = _run(name, kw, dtype, False, specials, **extra)
        _assert_same_bits(got, want)


@needs_avx512
@pytest.mark.parametrize("dtype", LOWP, ids=["bf16", "fp16"])
@pytest.mark.parametrize("master", [False, True], ids=["plain", "master"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad"])
def test_lanes_with_grad_scaler_in_the_kernel(name, dtype, master, lanes_and_simd):
    require_amp_scaling(name)
    kw = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    _core.select_simd("avx512")
    results = []
    for lanes in (True, False):
        _core.use_lanes(lanes)
        g = torch.Generator().manual_seed(4)
        p = torch.nn.Parameter(torch.randn(1000, generator=g).to(dtype))
        opt = getattr(pyfastopt, name)([p], fused=True, master_weights=master, **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
        grads = []
        for step in range(5):
            scaler.scale(torch.ones(()))
            magnitude = 10 ** torch.empty(1000).uniform_(-8, -2, generator=g)
            raw = torch.randn(1000, generator=g) * magnitude
            if step == 2:
                raw[7] = float("inf")
            p.grad = (raw * scaler.get_scale()).to(dtype)
            scaler.step(opt)
            scaler.update()
            grads.append(p.grad.clone())
        results.append([p.detach().clone(), *grads])
    _assert_same_bits(results[0], results[1])


@needs_avx512
def test_lanes_mode_reports_the_switch_and_the_cpu(lanes_and_simd):
    cpu_bits = _core.lanes_mode() & (2 | 4)  # AVX512-BF16, AVX512-VBMI
    assert _core.use_lanes(False) == 0
    assert _core.use_lanes(True) == 1 | cpu_bits


@needs_avx512
def test_lane_conversions_match_the_scalar_ones_bit_for_bit(tmp_path):
    """Every bfloat16/float16 word on load; one float32 pattern in 61, every subnormal edge and
    every NaN/Inf boundary on store (`check_lanes 1` covers all 2^32 patterns)."""
    out = run_native_check(tmp_path, "check_lanes.cpp", ["61"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 mismatches" in out.stdout
