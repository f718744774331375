"""The CUDA backend on a GPU: every option of the six optimizers against torch on the same
device, the 16-bit storage modes against the CPU backend, CUDA graph capture, torch's current
stream, GradScaler in the step, and steps that never wait for the device.

References and tolerances:
- float32/float64: torch's for-loop on the GPU (``foreach=False``) with the parity table's
  tolerances (optim_db.TOL), and torch's fused CUDA kernel (SGD, Adagrad, Adam, AdamW) with
  torch's own fused-vs-for-loop tolerance (``torch.testing.assert_close``'s defaults);
- bfloat16/float16: torch's fused CUDA kernel with torch's fused-vs-for-loop tolerance for 16-bit
  dtypes (optim_db in torch: atol = rtol = 5e-3), and pyfastopt's CPU backend (same rules, same
  storage policies) within one unit in the last place.

Every test skips, with the reason, where torch has no CUDA device or pyfastopt's CUDA module
cannot run (not built: PYFASTOPT_CUDA=1; see README, "CUDA").
"""

from __future__ import annotations

import copy

import pytest
import torch
from optim_db import TOL, case_id, cases, require_torch_options

import pyfastopt
from pyfastopt import _cuda_backend


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"
    why = _cuda_backend.reason()
    return f"pyfastopt's CUDA module cannot run here: {why}" if why else None


pytestmark = [
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
    # torch's note when a capturable optimizer steps outside a graph
    pytest.mark.filterwarnings("ignore:This instance was constructed with capturable=True"),
]

DEV = "cuda"
SHAPES = ((40, 30), (30,), (7, 3, 5), (1,), (0,), (70001,))
STEPS = 20
#: torch's optimizers with a fused CUDA kernel (torch's optim_db: supports_fused_on "cuda")
TORCH_FUSED = {"SGD", "Adagrad", "Adam", "AdamW"}
#: torch's fused-vs-for-loop tolerance for 16-bit dtypes (common_optimizers.py)
LOWP_TOL = {"atol": 5e-3, "rtol": 5e-3}
#: one unit in the last place
ULP = {torch.bfloat16: {"atol": 1e-6, "rtol": 2**-7}, torch.float16: {"atol": 1e-6, "rtol": 2**-10}}


def _params(dtype: torch.dtype, device: str, shapes=SHAPES, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype).to(device)) for s in shapes]


def _grads(dtype: torch.dtype, steps: int, shapes=SHAPES, seed: int = 1) -> list[list]:
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(s, generator=g) * 0.5).to(dtype) for s in shapes] for _ in range(steps)]


def _train(opt: torch.optim.Optimizer, params: list, grads: list[list]) -> None:
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.to(p.device)
        opt.step()


def _native_only(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Fail if any parameter would take torch's own step (the CUDA module must run)."""

    def refuse(group: dict, params: list) -> None:
        pytest.fail(f"{len(params)} CUDA parameters took torch's step instead of the module")

    opt._torch_step = refuse  # type: ignore[method-assign]
    return opt


def _pyfastopt(name: str, params: list, **kw) -> torch.optim.Optimizer:
    return _native_only(getattr(pyfastopt, name)(params, **kw))


def _close(got: list, ref: list, **tol) -> None:
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.detach().cpu(), b.detach().cpu(), **tol)


def _state(opt: torch.optim.Optimizer) -> list:
    return [v for st in opt.state.values() for k, v in sorted(st.items()) if torch.is_tensor(v)]


# ---- float32 / float64: every option against torch on the GPU -----------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", cases(), ids=case_id)
@pytest.mark.parametrize("flags", ["default", "device-steps"])
def test_every_option_matches_torch_on_the_gpu(case, dtype, flags):
    name, kw = case
    require_torch_options(name, kw)
    extra = {}
    if flags == "device-steps":  # step counters on the device: capturable, or fused
        if name in ("Adam", "AdamW", "RMSprop", "Adadelta"):
            extra = {"capturable": True}
        elif name == "Adagrad":
            extra = {"fused": True}
        else:
            pytest.skip("SGD has no step counter")
    grads = _grads(dtype, STEPS)
    a, b = _params(dtype, DEV), _params(dtype, DEV)
    ref = getattr(torch.optim, name)(a, foreach=False, **kw)
    fast = _pyfastopt(name, b, **kw, **extra)
    _train(ref, a, grads)
    _train(fast, b, grads)
    _close(b, a, **TOL[dtype])
    _close(_state(fast), _state(ref), **TOL[dtype])
    for st in fast.state.values():  # torch's layout for these flags
        if "step" in st:
            want = "cuda" if extra else "cpu"
            assert st["step"].device.type == want
    if name in TORCH_FUSED:  # and torch's fused CUDA kernel, within torch's own tolerance
        c = _params(dtype, DEV)
        _train(getattr(torch.optim, name)(c, fused=True, **kw), c, grads)
        _close(b, c)


# ---- bfloat16 / float16 ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_low_precision_matches_torch_fused_and_the_cpu_backend(case, dtype):
    name, kw = case
    require_torch_options(name, kw)
    steps = 8
    grads = _grads(dtype, steps)
    b, cpu = _params(dtype, DEV), _params(dtype, "cpu")
    _train(_pyfastopt(name, b, **kw), b, grads)
    _train(getattr(pyfastopt, name)(cpu, **kw), cpu, grads)
    _close(b, cpu, **ULP[dtype])
    if name in TORCH_FUSED:
        c = _params(dtype, DEV)
        _train(getattr(torch.optim, name)(c, fused=True, **kw), c, grads)
        _close(b, c, **LOWP_TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"])
@pytest.mark.parametrize(
    "mode",
    [
        {"master_weights": True},
        {"stochastic_rounding": True},
        {"state_dtype": torch.bfloat16, "master_weights": True},
    ],
    ids=["master", "stochastic", "bf16-state"],
)
def test_storage_modes_match_the_cpu_backend(name, dtype, mode):
    if mode.get("stochastic_rounding") and dtype != torch.bfloat16:
        pytest.skip("stochastic rounding is for bfloat16")
    kw = {"lr": 0.01}
    if name == "SGD":
        kw["momentum"] = 0.9
    grads = _grads(dtype, 6)
    b, cpu = _params(dtype, DEV), _params(dtype, "cpu")
    torch.manual_seed(3)  # the stochastic-rounding seed: the same on both
    fast = _pyfastopt(name, b, **kw, **mode)
    torch.manual_seed(3)
    slow = getattr(pyfastopt, name)(cpu, **kw, **mode)
    _train(fast, b, grads)
    _train(slow, cpu, grads)
    _close(b, cpu, **ULP[dtype])
    _close(_state(fast), _state(slow), **ULP[torch.bfloat16])


# ---- layouts, groups, devices ------------------------------------------------------------------


def test_strided_and_offset_parameters():
    """A transposed parameter (dense, stepped in place), parameters with gaps and an offset
    (stepped through contiguous copies), a gradient of another layout: torch's results."""

    def make() -> list:
        g = torch.Generator().manual_seed(5)
        big = torch.randn(64, 48, generator=g).to(DEV)
        return [
            torch.nn.Parameter(torch.randn(48, 64, generator=g).to(DEV).t()),
            torch.nn.Parameter(big[3:40, 5:]),
            torch.nn.Parameter(big[:, 7]),
        ]

    a, b = make(), make()
    grads = [[torch.randn(p.shape) for p in a] for _ in range(5)]
    grads[2][0] = grads[2][0].t().contiguous().t()  # the transpose's gradient: row-major
    _train(torch.optim.Adam(a, lr=0.01, foreach=False), a, grads)
    _train(_pyfastopt("Adam", b, lr=0.01), b, grads)
    _close(b, a, **TOL[torch.float32])


def test_a_group_may_mix_cpu_and_cuda_parameters():
    a = _params(torch.float32, DEV)[:3] + _params(torch.float32, "cpu")[3:]
    b = _params(torch.float32, DEV)[:3] + _params(torch.float32, "cpu")[3:]
    grads = _grads(torch.float32, 5)
    _train(torch.optim.AdamW(a, lr=0.01, foreach=False), a, grads)
    _train(pyfastopt.AdamW(b, lr=0.01), b, grads)
    _close(b, a, **TOL[torch.float32])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_parameters_on_two_devices():
    a = [torch.nn.Parameter(torch.randn(1000, device=f"cuda:{i}")) for i in (0, 1)]
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    grads = [[torch.randn(1000), torch.randn(1000)] for _ in range(5)]
    _train(torch.optim.SGD(a, lr=0.1, momentum=0.9, foreach=False), a, grads)
    _train(_pyfastopt("SGD", b, lr=0.1, momentum=0.9), b, grads)
    _close(b, a, **TOL[torch.float32])


def test_state_dict_round_trip_with_torch():
    a, b = _params(torch.float32, DEV), _params(torch.float32, DEV)
    grads = _grads(torch.float32, 10)
    ref = torch.optim.Adam(a, lr=0.01, amsgrad=True, foreach=False)
    fast = _pyfastopt("Adam", b, lr=0.01, amsgrad=True)
    _train(ref, a, grads[:5])
    _train(fast, b, grads[:5])
    torch_again = torch.optim.Adam(b, lr=0.01, amsgrad=True, foreach=False)
    torch_again.load_state_dict(fast.state_dict())  # ours into torch ...
    fast_again = _pyfastopt("Adam", a, lr=0.01, amsgrad=True)
    fast_again.load_state_dict(ref.state_dict())  # ... and torch's into ours
    _train(torch_again, b, grads[5:])
    _train(fast_again, a, grads[5:])
    _close(b, a, **TOL[torch.float32])


def test_a_checkpoint_with_master_weights_resumes_exactly():
    """pyfastopt's own layouts (a float32 master of a bfloat16 parameter) survive torch's loader,
    which would cast them to the parameter's dtype: resuming gives the uninterrupted run's bits."""
    grads = _grads(torch.bfloat16, 6)
    a = _params(torch.bfloat16, DEV)
    opt = _pyfastopt("AdamW", a, lr=0.01, master_weights=True)
    _train(opt, a, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    _train(opt, a, grads[3:])
    again = _pyfastopt("AdamW", b, lr=0.01, master_weights=True)
    again.load_state_dict(saved)
    _train(again, b, grads[3:])
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    masters = [st["master_weight"] for st in again.state.values() if "master_weight" in st]
    assert masters and all(m.dtype == torch.float32 for m in masters)


# ---- streams, graphs, GradScaler, no waiting ---------------------------------------------------


def test_the_step_runs_on_torchs_current_stream():
    """Gradients written on a side stream after a long wait there: a step on that stream sees
    them (a step on any other stream would read the old ones)."""
    a, b = _params(torch.float32, DEV), _params(torch.float32, DEV)
    old = [torch.zeros_like(p) for p in b]
    new = [torch.randn_like(p) for p in b]
    ref = torch.optim.Adam(a, lr=0.1, foreach=False)
    for p, g in zip(a, new):
        p.grad = g.clone()
    ref.step()
    fast = _pyfastopt("Adam", b, lr=0.1)
    for p, g in zip(b, old):
        p.grad = g.clone()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time before the gradients land
        for p, g in zip(b, new):
            p.grad.copy_(g)
        fast.step()
    torch.cuda.current_stream().wait_stream(side)
    _close(b, a, **TOL[torch.float32])


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adadelta", "SGD"])
def test_capturable_step_in_a_cuda_graph(name):
    """torch's recipe (warm-up on a side stream, capture, replay with new gradients copied into
    the captured ones, a tensor lr changed between replays) gives torch's eager results."""
    kw: dict = {"lr": torch.tensor(0.01, device=DEV)}
    if name == "SGD":
        kw["momentum"] = 0.9
    else:
        kw["capturable"] = True
    a, b = _params(torch.float32, DEV), _params(torch.float32, DEV)
    ref = getattr(torch.optim, name)(a, foreach=False, **kw)
    kw_b = dict(kw, lr=torch.tensor(0.01, device=DEV))
    fast = _pyfastopt(name, b, **kw_b)
    grads = _grads(torch.float32, 8)
    static = [torch.zeros(p.shape, device=DEV) for p in b]
    for p, g in zip(b, static):
        p.grad = g
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for gs in grads[:3]:
            for s, g in zip(static, gs):
                s.copy_(g)
            fast.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fast.step()
    _train(ref, a, grads[:3])
    for i, gs in enumerate(grads[3:]):
        if i == 2:  # a scheduler writing the tensor lr: the replay reads it on the device
            kw_b["lr"].fill_(0.005)
            ref.param_groups[0]["lr"].fill_(0.005)
        for s, g in zip(static, gs):
            s.copy_(g)
        graph.replay()
        _train(ref, a, [gs])
    torch.cuda.synchronize()
    _close(b, a, **TOL[torch.float32])


def test_capturing_a_step_with_host_step_counters_is_refused():
    b = _params(torch.float32, DEV)
    fast = _pyfastopt("Adagrad", b, lr=0.1)  # torch's layout: step counters on the host
    for p in b:
        p.grad = torch.ones_like(p)
    fast.step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable|fused"), torch.cuda.graph(graph):
        fast.step()


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adam", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_grad_scaler_in_the_step_matches_torch_fused(name, dtype):
    """fused=True: GradScaler hands the scale and found_inf to the step; an inf gradient skips
    the whole step (parameters, state and step counters) without a sync."""
    kw: dict = {"lr": 0.01, "fused": True}
    if name == "SGD":
        kw["momentum"] = 0.9
    a, b = _params(dtype, DEV), _params(dtype, DEV)
    ref = getattr(torch.optim, name)(a, **kw)
    fast = _pyfastopt(name, b, **kw)
    scalers = [torch.amp.GradScaler("cuda", init_scale=1024.0) for _ in range(2)]
    grads = _grads(torch.float32, 6)
    grads[2][0][0] = float("inf")  # this step is skipped
    for gs in grads:
        for opt, ps, scaler in zip((ref, fast), (a, b), scalers):
            for p, g in zip(ps, gs):
                p.grad = (g * scaler.get_scale()).to(dtype).to(DEV)
            scaler.step(opt)
            scaler.update()
    tol = TOL[torch.float32] if dtype == torch.float32 else LOWP_TOL
    _close(b, a, **tol)
    _close(_state(fast), _state(ref), **tol)
    assert scalers[0].get_scale() == scalers[1].get_scale()


@pytest.mark.parametrize(
    "name,kw",
    [
        ("Adam", {"capturable": True, "lr": "tensor"}),
        ("AdamW", {"fused": True}),
        ("SGD", {"momentum": 0.9}),
        ("RMSprop", {"capturable": True, "centered": True}),
        ("Adagrad", {}),
        ("Adadelta", {}),
    ],
)
def test_a_step_never_waits_for_the_device(name, kw):
    """torch's sync debug mode raises on anything that waits for the GPU (``.item()``, a copy to
    the host): a step of CUDA parameters does none, from the second step on (the first makes
    the state)."""
    kw = dict(kw)
    if kw.get("lr") == "tensor":
        kw["lr"] = torch.tensor(0.01, device=DEV)
    b = _params(torch.float32, DEV)
    fast = _pyfastopt(name, b, **kw)
    for p in b:
        p.grad = torch.randn_like(p)
    fast.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            fast.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in b)


def test_large_tensors_and_many_tensors():
    """A tensor of more than one launch's blocks (2048 chunks) and more tensors than one launch
    holds (hundreds of tiny ones, some empty), against torch."""
    shapes = [(2048 * 65536 + 1000,)] + [((i % 5),) for i in range(700)]
    a, b = _params(torch.float32, DEV, shapes), _params(torch.float32, DEV, shapes)
    grads = _grads(torch.float32, 2, shapes)
    _train(torch.optim.SGD(a, lr=0.1, foreach=False), a, grads)
    _train(_pyfastopt("SGD", b, lr=0.1), b, grads)
    _close(b, a, **TOL[torch.float32])
