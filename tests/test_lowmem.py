"""Low-memory state (``state_dtype``): the 8-bit block-wise format, bfloat16 state, checkpoints.

References are written here in plain torch: a quantiser by exact nearest-code search over the
map (float64 midpoints), and torch.optim's for-loop step on the dequantised state. pyfastopt's
8-bit step is "dequantise, the float32 rule, requantise", so after every step its parameters
must equal torch's for-loop step on the dequantised state bit for bit, and its codes and scales
must equal the reference quantiser applied to torch's new state.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from helpers import run_native_check
from torch.utils._python_dispatch import TorchDispatchMode

import pyfastopt
from pyfastopt import StateError, UnsupportedError, _core
from pyfastopt.bench.parity import upcast_hparams
from pyfastopt.optim import _lowmem
from pyfastopt.optim._state import SCALAR_KEYS

UNSIGNED = _lowmem.UNSIGNED_KEYS


# ---- reference quantiser ----


def dynamic_map(signed: bool) -> torch.Tensor:
    """bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)."""
    data: list[float] = []
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-6 + i)) * means).tolist()
    data += [0.0, 1.0]
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def ref_quantize(x: torch.Tensor, unsigned: bool, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    nb = -(-n // block)
    pad = torch.zeros(nb * block, dtype=torch.float32)
    pad[:n] = flat
    blocks = pad.view(nb, block)
    scale = blocks.abs().amax(1)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    norm = (blocks / safe[:, None]).reshape(-1)[:n].to(torch.float64)
    m = dynamic_map(not unsigned).to(torch.float64)
    pos = m[m >= 0]
    mids = (pos[:-1] + pos[1:]) / 2
    j = torch.searchsorted(mids, norm.abs(), right=False)  # thresholds strictly below |n|
    if unsigned:
        codes = torch.where(norm < 0, torch.zeros_like(j), j)
    else:
        codes = torch.where(norm < 0, 127 - j.clamp(max=127), 127 + j)
    return codes.to(torch.uint8).view(x.shape), scale


def ref_dequantize(codes: torch.Tensor, scale: torch.Tensor, unsigned: bool, block: int):
    m = dynamic_map(not unsigned)
    vals = m[codes.reshape(-1).long()]
    idx = torch.arange(vals.numel()) // block
    return (vals * scale[idx]).view(codes.shape)


# ---- the format ----


@pytest.mark.parametrize("unsigned", [False, True])
def test_maps_are_bitsandbytes_dynamic_maps(unsigned):
    got = torch.tensor(_core.quant_map(unsigned), dtype=torch.float32)
    want = dynamic_map(not unsigned)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert (got == 0).sum() == 1 and got[-1] == 1.0 and bool((got[1:] > got[:-1]).all())
    assert torch.equal(_lowmem.qmap(unsigned), got)
    assert _core.quant_tables_ok()


def test_maps_match_installed_bitsandbytes():
    bnb_f = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes not installed")
    for signed in (True, False):
        ref = bnb_f.create_dynamic_map(signed=signed).float()
        assert torch.equal(torch.tensor(_core.quant_map(not signed)), ref)


def _wide(n: int, seed: int, unsigned: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 5)
    x[::13] = 0.0
    x[5::101] = -0.0
    x[7::211] *= 1e-30  # far below the map's smallest value
    return x.abs() if unsigned else x


@pytest.mark.parametrize("unsigned", [False, True])
@pytest.mark.parametrize("block", [256, 2048, 16, 4096])
@pytest.mark.parametrize("n", [1, 255, 256, 257, 70001])
def test_codes_are_exact_nearest(unsigned, block, n):
    x = _wide(n, n + block, unsigned)
    codes, scales = _lowmem.quantize(x, unsigned, block)
    rc, rs = ref_quantize(x, unsigned, block)
    assert torch.equal(scales, rs)
    assert torch.equal(codes, rc)
    back = _lowmem.dequantize(codes, scales, unsigned, block)
    assert torch.equal(back, ref_dequantize(rc, rs, unsigned, block))
    assert bool((back[x == 0] == 0).all())  # an exact zero stays zero


@pytest.mark.parametrize("unsigned", [False, True])
def test_every_map_value_and_midpoint_neighbour(unsigned):
    """Each map value encodes as itself; the floats next to each midpoint fall on either side."""
    m = dynamic_map(not unsigned).to(torch.float64)
    vals = [float(v) for v in m]
    for a, b in zip(m[:-1], m[1:]):
        mid = torch.tensor((float(a) + float(b)) / 2, dtype=torch.float32)
        for d in (-2, -1, 0, 1, 2):
            v = mid.view(torch.int32) + d
            vals.append(float(v.view(torch.float32)))
    x = torch.tensor([1.0] + vals, dtype=torch.float32)  # 1.0 first: every block's scale is 1
    x = x[(x.abs() <= 1) & ((x >= 0) | (not unsigned))]
    codes, scales = _lowmem.quantize(x, unsigned, 4096)
    rc, _ = ref_quantize(x, unsigned, 4096)
    assert torch.equal(codes, rc)


def test_arithmetic_encoder_is_exact_over_the_float_range(tmp_path):
    """The AVX-512 build encodes by arithmetic on x * (1 / scale) and re-encodes flagged vectors
    exactly (quant.h); tests/native/check_quant.cpp proves an unflagged code exact for one float32
    in 61 of [0, 2) and every value near a threshold (`check_quant 1`: every pattern)."""
    out = run_native_check(tmp_path, "check_quant.cpp", ["61"], ["csrc/cpu/quant_maps.cpp"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 mismatches" in out.stdout


@pytest.mark.parametrize("unsigned", [False, True])
def test_every_simd_build_and_decoder_gives_the_same_codes(unsigned):
    """The arithmetic encoder and the byte-permute decoder (AVX-512, VBMI) give the bits of the
    table encoder and the 16-lane permute decoder, and of the AVX2 and baseline builds."""
    x = _wide(70001, 7, unsigned)
    results = []
    try:
        for simd in _core.supported_simd():
            for lanes in (True, False):
                _core.select_simd(simd)
                _core.use_lanes(lanes)
                codes, scales = _lowmem.quantize(x, unsigned, 256)
                results.append((codes, scales, _lowmem.dequantize(codes, scales, unsigned, 256)))
    finally:
        _core.select_simd("auto")
        _core.use_lanes(True)
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert torch.equal(a, b)


def test_nonfinite_block_scale_is_nan_and_contained():
    x = torch.randn(512)
    x[3] = float("nan")
    codes, scales = _lowmem.quantize(x, False, 256)
    assert math.isnan(scales[0]) and math.isfinite(scales[1])
    back = _lowmem.dequantize(codes, scales, False, 256)
    assert bool(back[:256].isnan().all()) and bool(back[256:].isfinite().all())


# ---- steps: the float32 rule on the dequantised state ----

CASES = [
    ("Adam", torch.optim.Adam, {"lr": 1e-2}),
    ("Adam", torch.optim.Adam, {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", torch.optim.AdamW, {"lr": 1e-2, "maximize": True}),
    ("SGD", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    ("SGD", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}),
    ("RMSprop", torch.optim.RMSprop, {"lr": 1e-2}),
    ("RMSprop", torch.optim.RMSprop, {"lr": 1e-2, "centered": True, "momentum": 0.9}),
    ("Adagrad", torch.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.1}),
    ("Adadelta", torch.optim.Adadelta, {"lr": 1.0, "weight_decay": 0.01}),
    ("NAdam", torch.optim.NAdam, {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("RAdam", torch.optim.RAdam, {"lr": 1e-2, "weight_decay": 0.1}),  # rectified at step 6
    ("Adamax", torch.optim.Adamax, {"lr": 1e-2, "maximize": True}),
    ("ASGD", torch.optim.ASGD, {"lr": 1e-2, "t0": 2, "lambd": 0.01}),  # averages from step 5
    ("Rprop", torch.optim.Rprop, {"lr": 1e-2, "etas": (0.4, 1.3)}),
]
SHAPES = [(64, 80), (5000,), (300,), (4097,), (0,)]


def _for_8bit(kw: dict) -> dict:
    """A case's options as 8-bit state takes them: centered RMSprop is refused there."""
    return {k: v for k, v in kw.items() if k != "centered"}


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]


def _round_torch_state(opt: torch.optim.Optimizer, block: int, minimum: int) -> None:
    for p in (p for grp in opt.param_groups for p in grp["params"]):
        st = opt.state.get(p, {})
        if p.numel() < minimum:
            continue
        for k, v in list(st.items()):
            if k in SCALAR_KEYS or not isinstance(v, torch.Tensor):
                continue
            c, s = ref_quantize(v, k in UNSIGNED, block)
            st[k] = ref_dequantize(c, s, k in UNSIGNED, block).to(v.dtype)


@pytest.mark.parametrize("block", [256, 2048])
@pytest.mark.parametrize("name,cls,kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_8bit_step_is_float32_step_on_dequantised_state(name, cls, kw, block):
    """Bit for bit: the 8-bit step equals the float32 step (pyfastopt's, whose float32 parity
    with torch the rest of the suite checks) on the dequantised state, requantised by the
    reference quantiser; and it stays within the float32 tolerance of torch's for-loop."""
    kw = _for_8bit(kw)
    ref_p, fast_p, torch_p = _params(), _params(), _params()
    ref = getattr(pyfastopt, name)(ref_p, **kw)
    fast = getattr(pyfastopt, name)(fast_p, state_dtype="8bit", block_size=block, **kw)
    loop = cls(torch_p, foreach=False, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        grads = [torch.randn(p.shape, generator=g) for p in ref_p]
        grads[2].zero_()  # a tensor whose gradient is always zero
        for a, b, c, gr in zip(ref_p, fast_p, torch_p, grads):
            a.grad, b.grad, c.grad = gr.clone(), gr.clone(), gr.clone()
        ref.step()
        fast.step()
        loop.step()
        for a, b, c in zip(ref_p, fast_p, torch_p):
            assert torch.equal(a, b)
            torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)
            c.data.copy_(b.data)
        for a, b in zip(ref_p, fast_p):
            sr, sf = ref.state.get(a, {}), fast.state.get(b, {})
            for k, v in sr.items():
                if k in SCALAR_KEYS:  # 0-d: never quantised
                    assert torch.equal(sf[k], v), k
                    continue
                if a.numel() >= 4096:
                    c, s = ref_quantize(v, k in UNSIGNED, block)
                    assert torch.equal(sf[k], c), k
                    assert torch.equal(sf[k + "_absmax"], s), k
                else:  # small tensors keep float32 state
                    assert sf[k].dtype == torch.float32 and torch.equal(sf[k], v), k
        _round_torch_state(ref, block, 4096)  # what the 8-bit state reads back next step
        for a, c in zip(ref_p, torch_p):  # torch's for-loop continues from the same state
            for k, v in ref.state.get(a, {}).items():
                if k != "step":
                    loop.state[c][k] = v.clone()


def test_zero_gradient_weights_stay_bit_exact():
    n = 8192
    mask = torch.zeros(n, dtype=torch.bool)
    mask[::2] = True
    p = torch.nn.Parameter(torch.randn(n))
    start = p.detach().clone()
    opt = pyfastopt.AdamW([p], lr=1e-3, weight_decay=0, state_dtype="8bit")
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        gr = torch.randn(n, generator=g)
        gr[mask] = 0
        p.grad = gr
        opt.step()
    assert torch.equal(p.detach()[mask], start[mask])
    assert bool((p.detach()[~mask] != start[~mask]).all())
    st = opt.state[p]
    assert bool((st["exp_avg"][mask] == 127).all()) and bool((st["exp_avg_sq"][mask] == 0).all())


@pytest.mark.parametrize(
    "kw",
    [
        {"state_dtype": "8bit"},
        {"state_dtype": "8bit", "block_size": 2048},
        {"state_dtype": torch.bfloat16, "state_stochastic_rounding": True},
    ],
)
def test_results_independent_of_thread_count(kw):
    out = []
    for threads in (1, 2, 3):
        pyfastopt.set_num_threads(threads)
        ps = [torch.randn(300_007, generator=torch.Generator().manual_seed(0)).requires_grad_()]
        torch.manual_seed(0)  # the stochastic-rounding seed
        opt = pyfastopt.Adam(ps, lr=1e-2, **kw)
        g = torch.Generator().manual_seed(3)
        for _ in range(3):
            ps[0].grad = torch.randn(ps[0].shape, generator=g)
            opt.step()
        out.append((ps[0].detach().clone(), {k: v.clone() for k, v in opt.state[ps[0]].items()}))
    for p, st in out[1:]:
        assert torch.equal(p, out[0][0])
        for k in st:
            assert torch.equal(st[k], out[0][1][k]), k


def test_state_bytes_per_parameter():
    p = torch.nn.Parameter(torch.randn(1 << 20))
    for kind, want in (("8bit", 2.03125), (torch.bfloat16, 4.0), (None, 8.0)):
        opt = pyfastopt.Adam([p], lr=1e-3, state_dtype=kind)
        p.grad = torch.randn_like(p)
        opt.step()
        steps = 4  # the 0-d step counter
        shared = 2 * 256 * 4 if kind == "8bit" else 0
        got = (_lowmem.state_bytes(opt.state) - steps - shared) / p.numel()
        assert got == pytest.approx(want)


class _LargestTensorMade(TorchDispatchMode):
    """The largest new storage (bytes) a torch op makes while active (not views or detached
    aliases of its inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        given = {
            a.untyped_storage().data_ptr()
            for a in (*args, *(kwargs or {}).values())
            if isinstance(a, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["8bit", torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,cls,kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_first_step_makes_no_state_buffer_at_full_width(name, cls, kw, kind, dtype):
    """A fresh low-memory state is made at its final size: the first step never makes one of
    torch's float buffers of the parameter's size on the way (for a float32 parameter with
    8-bit Adam state that was 8 bytes per element beside the 2 it keeps), and its state equals
    torch's initial state converted (the later steps' tests compare it with that)."""
    kw = _for_8bit(kw) if kind == "8bit" else kw
    master = dtype == torch.bfloat16
    p = torch.nn.Parameter(torch.randn(1 << 16).to(dtype))
    p.grad = torch.randn_like(p)
    opt = getattr(pyfastopt, name)([p], **kw, state_dtype=kind, master_weights=master)
    with _LargestTensorMade() as seen:
        opt.step()
    buffer = p.numel() * (1 if kind == "8bit" else 2)
    master_copy = 4 * p.numel() if master else 0
    assert seen.largest <= max(buffer, master_copy)
    held = [v for k, v in opt.state[p].items() if k != "master_weight" and v.numel() > 1 << 10]
    assert held and all(v.untyped_storage().nbytes() == buffer for v in held)


def test_momentum_switched_on_makes_its_8bit_buffer_at_final_size():
    p = torch.nn.Parameter(torch.randn(1 << 16))
    p.grad = torch.randn_like(p)
    ref = torch.nn.Parameter(p.detach().clone())
    ref.grad = p.grad.clone()
    opt = pyfastopt.SGD([p], lr=0.1, state_dtype="8bit")
    opt.step()
    opt.param_groups[0]["momentum"] = 0.9
    with _LargestTensorMade() as seen:
        opt.step()
    assert seen.largest <= p.numel()
    assert opt.state[p]["momentum_buffer"].dtype == torch.uint8
    # torch clones the gradient into a new buffer: the same step as a fresh SGD with momentum
    torch.optim.SGD([ref], lr=0.1).step()
    fresh = pyfastopt.SGD([ref], lr=0.1, momentum=0.9, state_dtype="8bit")
    fresh.step()
    assert torch.equal(p, ref)
    for k in ("momentum_buffer", "momentum_buffer_absmax"):
        assert torch.equal(opt.state[p][k], fresh.state[ref][k])


def test_small_tensors_keep_float32_state_and_threshold_is_a_knob():
    ps = [torch.nn.Parameter(torch.randn(4095)), torch.nn.Parameter(torch.randn(4096))]
    opt = pyfastopt.Adam(ps, state_dtype="8bit")
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[ps[0]]["exp_avg"].dtype == torch.float32
    assert opt.state[ps[1]]["exp_avg"].dtype == torch.uint8
    opt2 = pyfastopt.Adam(ps, state_dtype="8bit", min_8bit_size=0)
    opt2.step()
    assert opt2.state[ps[0]]["exp_avg"].dtype == torch.uint8


# ---- bfloat16 state ----


@pytest.mark.parametrize("name,cls,kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bf16_state_is_torch_step_on_upcast_state_rounded_once(name, cls, kw):
    ref_p, fast_p = _params(), _params()
    # float32 state (torch parity: test_parity); Rprop's initial step size is lr in bfloat16
    ref = getattr(pyfastopt, name)(ref_p, **upcast_hparams(name, kw, torch.bfloat16))
    fast = getattr(pyfastopt, name)(fast_p, state_dtype=torch.bfloat16, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in ref_p]
        for a, b, gr in zip(ref_p, fast_p, grads):
            a.grad, b.grad = gr.clone(), gr.clone()
        for a in ref_p:  # the state as bfloat16 holds it (Adagrad's initial value too)
            for k, v in ref.state.get(a, {}).items():
                if k not in SCALAR_KEYS:
                    ref.state[a][k] = v.to(torch.bfloat16).float()
        ref.step()
        fast.step()
        for a, b in zip(ref_p, fast_p):
            assert torch.equal(a, b)
            for k, v in ref.state.get(a, {}).items():
                if k in SCALAR_KEYS:  # 0-d scalars keep their float32
                    assert torch.equal(fast.state[b][k], v), k
                else:  # rounded once per step
                    assert fast.state[b][k].dtype == torch.bfloat16
                    assert torch.equal(fast.state[b][k], v.to(torch.bfloat16)), k


def test_bf16_state_stochastic_rounding_is_unbiased_and_seeded():
    n = 1 << 16
    value = 1.0 + 2.0**-10  # a quarter of a bfloat16 ulp above 1
    results = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        p = torch.nn.Parameter(torch.zeros(n))
        opt = pyfastopt.SGD(
            [p], lr=0.0, momentum=0.5, state_dtype=torch.bfloat16, state_stochastic_rounding=True
        )
        p.grad = torch.full((n,), value)
        opt.step()  # the buffer is the gradient, rounded stochastically
        results.append(opt.state[p]["momentum_buffer"].float())
    buf = results[0]
    assert set(buf.unique().tolist()) == {1.0, 1.0078125}
    assert buf.mean().item() == pytest.approx(value, abs=2e-4)  # unbiased
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])


# ---- checkpoints ----


def _train(opt, ps, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("kind", ["8bit", torch.bfloat16])
def test_checkpoint_round_trip_is_exact(kind):
    a = _params()
    opt = pyfastopt.AdamW(a, lr=1e-2, state_dtype=kind)
    _train(opt, a, 3, 1)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    b = [p.detach().clone().requires_grad_() for p in a]
    opt2 = pyfastopt.AdamW(b, lr=1e-2, state_dtype=kind)
    opt2.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for p, q in zip(a, b):
        for k, v in opt.state[p].items():
            assert opt2.state[q][k].dtype == v.dtype and torch.equal(opt2.state[q][k], v), k
    _train(opt, a, 3, 2)
    _train(opt2, b, 3, 2)
    for p, q in zip(a, b):
        assert torch.equal(p, q)


@pytest.mark.parametrize("master", [False, True])
@pytest.mark.parametrize("kind", ["8bit", torch.bfloat16], ids=str)
def test_loading_a_checkpoint_makes_no_cast_copies(kind, master):
    """torch's loader casts every floating state tensor to its parameter's dtype; the tensors
    pyfastopt takes from the checkpoint as saved (8-bit codes, bfloat16 state of a float32
    parameter, master copies) are never cast (8-bit codes cast to float32 were four times the
    state they carry), and the state shares them with the checkpoint, as torch's loader shares a
    tensor it need not cast."""
    dtype = torch.bfloat16 if master else torch.float32
    p = torch.nn.Parameter(torch.randn(1 << 16).to(dtype))
    p.grad = torch.randn_like(p)
    opt = pyfastopt.Adam([p], state_dtype=kind, master_weights=master)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    opt2 = pyfastopt.Adam([p], state_dtype=kind, master_weights=master)
    with _LargestTensorMade() as seen:
        opt2.load_state_dict(sd)
    assert seen.largest < 1 << 12  # the scalars and the map only
    saved = sd["state"][0]
    for k, v in opt2.state[p].items():
        assert torch.equal(v, saved[k]), k
        if v.dim() > 0 and k != "exp_avg_qmap" and k != "exp_avg_sq_qmap":
            assert v.data_ptr() == saved[k].data_ptr(), k


def test_load_pre_hook_returning_a_new_state_dict_is_what_loads():
    """A load_state_dict pre-hook may return the state_dict to load (torch's API): the 8-bit
    codes and master copies come from that one, not from the argument."""
    p = torch.nn.Parameter(torch.randn(1 << 14).to(torch.bfloat16))
    p.grad = torch.randn_like(p)
    opt = pyfastopt.Adam([p], state_dtype="8bit", master_weights=True)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    edited = copy.deepcopy(sd)
    edited["state"][0]["exp_avg"] = edited["state"][0]["exp_avg"].flip(0)
    edited["state"][0]["master_weight"] = edited["state"][0]["master_weight"] + 1
    opt2 = pyfastopt.Adam([p], state_dtype="8bit", master_weights=True)
    opt2.register_load_state_dict_pre_hook(lambda o, s: edited)
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.state[p]["exp_avg"], edited["state"][0]["exp_avg"])
    assert torch.equal(opt2.state[p]["master_weight"], edited["state"][0]["master_weight"])
    assert len(opt2._optimizer_load_state_dict_pre_hooks) == 1  # ours is gone again


def test_torch_state_dict_loads_into_8bit_and_back():
    a = _params()
    ref = torch.optim.AdamW(a, lr=1e-2)
    _train(ref, a, 3, 1)
    b = [p.detach().clone().requires_grad_() for p in a]
    opt = pyfastopt.AdamW(b, lr=1e-2, state_dtype="8bit")
    opt.load_state_dict(ref.state_dict())  # quantised on load
    for p, q in zip(a, b):
        for k, v in ref.state[p].items():
            got = opt.state[q][k]
            if k != "step" and p.numel() >= 4096:
                c, s = ref_quantize(v, k in UNSIGNED, 256)
                assert torch.equal(got, c) and torch.equal(opt.state[q][k + "_absmax"], s)
            else:
                assert torch.equal(got, v)
    _train(opt, b, 2, 2)
    exported = opt.torch_state_dict()
    assert all("state_dtype" not in g for g in exported["param_groups"])
    c = [p.detach().clone().requires_grad_() for p in b]
    back = torch.optim.AdamW(c, lr=1e-2)
    back.load_state_dict(exported)
    for p, q in zip(b, c):
        st = opt.state[p]
        for k, v in back.state[q].items():
            if k == "step":
                continue
            assert v.dtype == torch.float32
            want = (
                _lowmem.dequantize(st[k], st[k + "_absmax"], k in UNSIGNED, 256)
                if st[k].dtype == torch.uint8
                else st[k]
            )
            assert torch.equal(v, want)
    # and the export loads into pyfastopt with any layout
    d = [p.detach().clone().requires_grad_() for p in b]
    for kind in (None, torch.bfloat16, "8bit"):
        pyfastopt.AdamW(d, lr=1e-2, state_dtype=kind).load_state_dict(exported)


def _saved_8bit():
    p = torch.nn.Parameter(torch.randn(5000))
    opt = pyfastopt.Adam([p], state_dtype="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    return p, opt.state_dict()


@pytest.mark.parametrize(
    "key,bad",
    [
        ("exp_avg_absmax", lambda t: t[:-1]),
        ("exp_avg_absmax", lambda t: t.double()),
        ("exp_avg_sq_qmap", lambda t: t[:255]),
        ("exp_avg_qmap", lambda t: t.flip(0)),
        ("exp_avg", lambda t: t.view(-1)[:4999]),
        ("exp_avg_absmax", lambda t: None),
    ],
    ids=["short-scales", "f64-scales", "short-map", "other-map", "short-codes", "no-scales"],
)
def test_corrupt_8bit_state_raises(key, bad):
    p, sd = _saved_8bit()
    st = sd["state"][0]
    new = bad(st[key])
    if new is None:
        del st[key]
    else:
        st[key] = new
    opt = pyfastopt.Adam([p], state_dtype="8bit")
    before = {k: v.clone() for k, v in opt.state_dict()["state"].get(0, {}).items()}
    with pytest.raises(StateError):
        opt.load_state_dict(sd)
    assert opt.state_dict()["state"].get(0, {}).keys() == before.keys()


def test_map_edited_in_place_is_caught_and_spares_other_checkpoints():
    # every state holds one shared map tensor; it used to be the reference itself, so editing
    # it in place passed every check (identity) and made valid checkpoints fail to load
    p, sd = _saved_8bit()
    good = copy.deepcopy(sd)  # as saved to a file (state_dict() hands out references)
    opt = pyfastopt.Adam([p], state_dtype="8bit")
    opt.load_state_dict(sd)
    opt.state[p]["exp_avg_qmap"].add_(0.5)
    opt._fastopt_plans = {}  # the general path (the cached step never reads the map)
    p.grad = torch.randn_like(p)
    with pytest.raises(StateError, match="modified in place"):
        opt.step()
    with pytest.raises(StateError):
        pyfastopt.Adam([p], state_dtype="8bit").load_state_dict(opt.state_dict())
    fresh = pyfastopt.Adam([p], state_dtype="8bit")
    fresh.load_state_dict(good)  # a valid checkpoint still loads
    assert torch.equal(fresh.state[p]["exp_avg_qmap"], torch.tensor(_core.quant_map(False)))
    fresh.step()


def test_8bit_state_dict_passed_through_torch_optim_is_refused():
    """torch.optim's load_state_dict casts the uint8 codes to the parameter's dtype (values
    0..255) and keeps the scales: loading that back used to quantise the code numbers as if
    they were state, silently."""
    p, sd = _saved_8bit()
    q = torch.nn.Parameter(p.detach().clone())
    t = torch.optim.Adam([q])
    t.load_state_dict(sd)
    assert t.state[q]["exp_avg"].dtype == torch.float32  # torch's cast
    for kind in ("8bit", None):
        opt = pyfastopt.Adam([p], state_dtype=kind)
        with pytest.raises(StateError, match="8-bit codes converted"):
            opt.load_state_dict(t.state_dict())


def test_state_tampered_between_steps_raises_not_crashes():
    p = torch.nn.Parameter(torch.randn(5000))
    opt = pyfastopt.Adam([p], state_dtype="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    opt.state[p]["exp_avg_absmax"] = torch.zeros(3)
    with pytest.raises(StateError):
        opt.step()
    opt.state[p]["exp_avg_absmax"] = torch.zeros(20)
    opt.state[p]["exp_avg"] = torch.zeros(5000)  # numbers beside scales: codes made numbers?
    with pytest.raises(StateError, match="codes converted to numbers"):
        opt.step()
    del opt.state[p]["exp_avg_absmax"]  # a float buffer alone: new state, quantised again
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.uint8


@pytest.mark.parametrize("start,end", [(None, "8bit"), ("8bit", None), ("8bit", torch.bfloat16)])
def test_switch_state_dtype_mid_training(start, end):
    ps = _params()
    opt = pyfastopt.Adam(ps, lr=1e-2, state_dtype=start)
    _train(opt, ps, 2, 1)
    big = ps[1]
    before = opt.torch_state_dict()["state"][1]["exp_avg"]
    for g in opt.param_groups:
        g["state_dtype"] = end
    _train(opt, ps, 1, 2)
    want = {None: torch.float32, "8bit": torch.uint8, torch.bfloat16: torch.bfloat16}[end]
    assert opt.state[big]["exp_avg"].dtype == want
    assert before.dtype == torch.float32


# ---- combinations and options ----


@pytest.mark.parametrize("opts", [{}, {"stochastic_rounding": True}, {"master_weights": True}])
def test_bf16_params_with_8bit_state(opts):
    """The smallest configuration trains like the same bfloat16 setup with its usual state."""
    p32 = torch.randn(64, 80)
    ref = torch.nn.Parameter(p32.clone())
    ropt = torch.optim.AdamW([ref], lr=1e-2)
    runs = {}
    for kind in (None, "8bit"):
        torch.manual_seed(0)
        p = torch.nn.Parameter(p32.to(torch.bfloat16))
        runs[kind] = (p, pyfastopt.AdamW([p], lr=1e-2, state_dtype=kind, **opts))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        gr = torch.randn(p32.shape, generator=g)
        ref.grad = gr
        ropt.step()
        for p, opt in runs.values():
            p.grad = gr.to(torch.bfloat16)
            opt.step()
    p8, opt8 = runs["8bit"]
    assert opt8.state[p8]["exp_avg"].dtype == torch.uint8
    err = {k: (p.float() - ref).abs().mean().item() for k, (p, _) in runs.items()}
    assert err["8bit"] <= 1.5 * err[None] + 1e-3, err


def test_grad_scaler_in_kernel_with_8bit_state():
    p = torch.nn.Parameter(torch.randn(5000))
    q = torch.nn.Parameter(p.detach().clone())
    a = pyfastopt.Adam([p], lr=1e-2, state_dtype="8bit", fused=True)
    b = pyfastopt.Adam([q], lr=1e-2, state_dtype="8bit")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        gr = torch.randn(p.shape, generator=g)
        if i == 2:
            gr[7] = float("inf")
        scaler.scale(torch.ones(()))  # as scaler.scale(loss) does: the scale exists
        p.grad = gr * scaler.get_scale()
        scaler.step(a)
        scaler.update()
        if i != 2:
            q.grad = gr
            b.step()
    assert torch.equal(p, q)
    assert torch.equal(a.state[p]["exp_avg"], b.state[q]["exp_avg"])


def test_one_optimizer_per_parameter():
    ps = [torch.nn.Parameter(torch.randn(64, 80)) for _ in range(10)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    one = pyfastopt.Adam(ps, lr=1e-2, state_dtype="8bit", min_8bit_size=0)
    each = [pyfastopt.Adam([q], lr=1e-2, state_dtype="8bit", min_8bit_size=0) for q in qs]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        one.step()
        for o in each:
            o.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "kw,err",
    [
        ({"state_dtype": "int4"}, ValueError),
        ({"state_dtype": torch.float16}, ValueError),
        ({"state_dtype": "8bit", "block_size": 100}, ValueError),
        ({"state_dtype": "8bit", "block_size": 8192}, ValueError),
        ({"state_dtype": "8bit", "min_8bit_size": -1}, ValueError),
        ({"state_dtype": "8bit", "state_stochastic_rounding": "yes"}, ValueError),
    ],
)
def test_bad_options_raise(kw, err):
    with pytest.raises(err):
        pyfastopt.Adam([torch.nn.Parameter(torch.randn(3))], **kw)


def test_bad_group_value_set_by_hand_raises_at_step():
    p = torch.nn.Parameter(torch.randn(5000))
    opt = pyfastopt.Adam([p], state_dtype="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    opt.param_groups[0]["block_size"] = 7
    with pytest.raises(ValueError):
        opt.step()


def test_unsupported_combinations_raise_clearly():
    p = torch.nn.Parameter(torch.randn(10).half())
    p.grad = torch.randn_like(p)
    with pytest.raises(UnsupportedError, match="master_weights"):
        pyfastopt.Adam([p], state_dtype=torch.bfloat16).step()
    q = torch.nn.Parameter(torch.randn(10))
    q.grad = torch.randn_like(q)
    with pytest.raises(UnsupportedError, match="bfloat16 state"):
        pyfastopt.Adam([q], state_stochastic_rounding=True).step()


def test_float64_params_keep_float64_state():
    p = torch.nn.Parameter(torch.randn(5000, dtype=torch.float64))
    opt = pyfastopt.Adam([p], state_dtype="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float64


def test_non_contiguous_parameter_with_8bit_state():
    base = torch.randn(80, 64)
    p = torch.nn.Parameter(base.t())  # dense, not contiguous
    q = torch.nn.Parameter(base.t().contiguous())
    a = pyfastopt.Adam([p], lr=1e-2, state_dtype="8bit")
    b = pyfastopt.Adam([q], lr=1e-2, state_dtype="8bit")
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        gr = torch.randn(q.shape, generator=g)
        p.grad, q.grad = gr.clone(), gr.clone()
        a.step()
        b.step()
    assert torch.equal(p, q)
    assert torch.equal(a.state[p]["exp_avg"], b.state[q]["exp_avg"])


# ---- option switches and hostile state found by a probe -----------------------------------------


def test_block_size_change_reblocks_the_codes():
    # 4100 elements: 2 blocks at 4096 and at 2064 alike, so the scale vector alone cannot tell
    # which block size the codes were made with; the optimizer remembers it
    p = torch.nn.Parameter(torch.zeros(4100))
    opt = pyfastopt.Adam([p], lr=1e-3, state_dtype="8bit", block_size=4096)
    p.grad = torch.cat([torch.full((4096,), 1e-3), torch.full((4,), 100.0)])
    opt.step()
    st = opt.state[p]
    before = _lowmem.dequantize(st["exp_avg"], st["exp_avg_absmax"], False, 4096)
    opt.param_groups[0]["block_size"] = 2064
    exported = opt.torch_state_dict()["state"][0]["exp_avg"]
    assert torch.equal(exported, before)  # read with the block size the codes were made with
    p.grad = torch.zeros(4100)
    opt.step()
    after = _lowmem.dequantize(st["exp_avg"], st["exp_avg_absmax"], False, 2064)
    assert st["exp_avg_absmax"].shape == (2,)
    # re-blocked, then decayed: within the new blocks' quantisation error of 0.9 * before
    torch.testing.assert_close(after[:2064], 0.9 * before[:2064], rtol=0.02, atol=0)
    torch.testing.assert_close(after[4096:], 0.9 * before[4096:], rtol=0.02, atol=0)


def test_torch_state_dict_checks_the_codes_before_reading():
    p = torch.nn.Parameter(torch.zeros(8192))
    opt = pyfastopt.AdamW([p], lr=1e-3, state_dtype="8bit")
    p.grad = torch.randn(8192)
    opt.step()
    opt.state[p]["exp_avg_absmax"] = torch.ones(3)  # truncated: would read past it
    with pytest.raises(StateError, match="block scales"):
        opt.torch_state_dict()


@pytest.mark.parametrize("name", ["Adagrad", "Adam"])
def test_float16_master_with_bf16_state_survives_a_checkpoint(name):
    # torch's loader would cast bfloat16 state to float16: Adagrad's sum overflows to inf
    p = torch.nn.Parameter(torch.ones(64, dtype=torch.float16))
    kw = {"lr": 0.1, "master_weights": True, "state_dtype": torch.bfloat16}
    opt = getattr(pyfastopt, name)([p], **kw)
    p.grad = torch.full((64,), 999.0, dtype=torch.float16)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = getattr(pyfastopt, name)([q], **kw)
    opt2.load_state_dict(torch.load(buf))
    for k, v in opt.state[p].items():
        assert opt2.state[q][k].dtype == v.dtype and torch.equal(opt2.state[q][k], v), k
    p.grad = q.grad = torch.full((64,), 1.0, dtype=torch.float16)
    opt.step()
    opt2.step()
    assert torch.equal(p, q)


def test_master_copy_is_dropped_when_master_weights_go_off():
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.bfloat16))
    opt = pyfastopt.SGD([p], lr=1.0, master_weights=True)
    p.grad = torch.ones(8, dtype=torch.bfloat16)
    opt.step()
    opt.param_groups[0]["master_weights"] = False
    for _ in range(5):
        opt.step()
    assert "master_weight" not in opt.state[p]
    assert all("master_weight" not in st for st in opt.state_dict()["state"].values())
    opt.load_state_dict(opt.state_dict())
    opt.param_groups[0]["master_weights"] = True
    opt.step()  # a fresh master copy from the parameter (-6), not the stale one (-1)
    assert torch.equal(p, torch.full((8,), -7.0, dtype=torch.bfloat16))


@pytest.mark.parametrize("cached", [False, True])
def test_block_scales_sharing_memory_are_refused(cached):
    ps = [torch.nn.Parameter(torch.randn(8192)) for _ in range(2)]
    opt = pyfastopt.AdamW(ps, lr=1e-3, state_dtype="8bit")
    for p in ps:
        p.grad = torch.randn(8192)
    opt.step()
    if cached:
        opt.step()
    for where in ("param", "other param"):
        st = opt.state[ps[0]]
        saved = st["exp_avg_absmax"]
        st["exp_avg_absmax"] = (
            ps[0].data[:32] if where == "param" else opt.state[ps[1]]["exp_avg_absmax"]
        )
        before = [p.detach().clone() for p in ps]
        with pytest.raises(StateError, match="shares memory"):
            opt.step()
        assert all(torch.equal(p, b) for p, b in zip(ps, before))
        st["exp_avg_absmax"] = saved


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_absmax", "exp_avg_sq"])
def test_state_storage_shrunk_in_place_is_refused(key):
    p = torch.nn.Parameter(torch.randn(8192))
    opt = pyfastopt.AdamW([p], lr=1e-3, state_dtype="8bit")
    p.grad = torch.randn(8192)
    opt.step()
    opt.step()  # cached
    opt.state[p][key].untyped_storage().resize_(8)
    with pytest.raises(StateError, match="past its storage"):
        opt.step()


@pytest.mark.parametrize("old, new", [(2080, 4096), (256, 64)])
def test_state_dict_after_a_block_size_change_loads_back_exactly(old, new):
    """block_size set in the group after the last step: the codes were made in the old blocks,
    but a checkpoint records the new block_size. state_dict() re-blocks them first (as the next
    step would), so the checkpoint loads back to the same values; before, a matching block count
    read them in the wrong blocks (small values inflated about 1000x), otherwise it never
    loaded."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4100 if old == 2080 else 8000))
    opt = pyfastopt.SGD([p], lr=0.1, momentum=0.9, state_dtype="8bit", block_size=old)
    g = torch.randn_like(p)
    g[: p.numel() // 2] *= 1000.0
    p.grad = g
    opt.step()
    opt.param_groups[0]["block_size"] = new
    saved = opt.state_dict()
    want = opt.torch_state_dict()["state"][0]["momentum_buffer"]
    q = torch.nn.Parameter(p.detach().clone())
    other = pyfastopt.SGD([q], lr=0.1, momentum=0.9, state_dtype="8bit", block_size=new)
    other.load_state_dict(saved)
    got = other.torch_state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(got, want)
    n_blocks = (p.numel() + new - 1) // new
    assert other.state[q]["momentum_buffer_absmax"].shape == (n_blocks,)


def test_centered_rmsprop_with_8bit_state_is_refused():
    """square_avg and grad_avg quantised apart make square_avg - grad_avg**2 negative and the
    step NaN within a few hundred ordinary steps: refused at construction and when switched on."""
    p = torch.nn.Parameter(torch.randn(8192))
    with pytest.raises(pyfastopt.UnsupportedError, match="centered"):
        pyfastopt.RMSprop([p], lr=1e-3, centered=True, state_dtype="8bit")
    opt = pyfastopt.RMSprop([p], lr=1e-3, state_dtype="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    opt.param_groups[0]["centered"] = True
    with pytest.raises(pyfastopt.UnsupportedError, match="centered"):
        opt.step()
    bf16 = pyfastopt.RMSprop([p], lr=1e-3, centered=True, state_dtype=torch.bfloat16)
    bf16.step()
