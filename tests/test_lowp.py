"""bfloat16 and float16: every optimizer and option of the parity table against its reference.

References (README, "bfloat16 and float16"):
- Adam, AdamW: torch's fused CPU kernel on the same 16-bit tensors (float32 math, one rounding
  per stored value). Bit-identical, parameters and state.
- SGD, Adagrad, RMSprop, Adadelta, NAdam, RAdam, Adamax, ASGD, Rprop: torch's float32 for-loop
  on float32 copies, with parameters and state rounded to the 16-bit dtype once per step ("the
  float32 rule on upcast values, rounded once"). torch's own 16-bit paths round every
  intermediate (for-loop, foreach) or are wrong (fused SGD), so they are not the reference.
  0-d state scalars (step, NAdam's mu_product, ASGD's eta and mu) are float32 on both sides, as
  torch creates them; Rprop's initial step size is lr stored in the 16-bit dtype, as torch's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import require_amp_scaling, set_grad_of_another_dtype
from optim_db import NAMES, case_id, cases, require_torch_options

import pyfastopt
from pyfastopt import StateError
from pyfastopt.bench.parity import round_state as _round_state
from pyfastopt.bench.parity import upcast_hparams
from pyfastopt.optim._state import SCALAR_KEYS

LOWP = [torch.bfloat16, torch.float16]
SHAPES = ((1023,), (7, 33), (1,), (5000,))
STEPS = 12
FUSED = {"Adam", "AdamW"}
#: at most this share of elements may differ, and only by one unit in the last place
ULP_SHARE = 1e-3


def _grads(dtype: torch.dtype, steps: int = STEPS, seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # gradients of the size GradScaler-free float16 training sees (about 1e-2 .. 1)
    return [[(torch.randn(s, generator=g) * 0.5).to(dtype) for s in SHAPES] for _ in range(steps)]


def _init(dtype: torch.dtype, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(dtype) for s in SHAPES]


def _train(opt: torch.optim.Optimizer, params: list, grads, to: torch.dtype | None = None) -> None:
    """Step ``opt`` once per gradient list of ``grads`` (cast to ``to`` when given)."""
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone() if to is None else g.to(to)
        opt.step()


def fused_reference(name: str, kw: dict, init, grads) -> tuple[list[torch.Tensor], list[dict]]:
    """torch's fused trajectory (Adam, AdamW): the final 16-bit parameters and their state."""
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(torch.optim, name)(ps, fused=True, **kw)
    _train(opt, ps, grads)
    return [p.detach() for p in ps], [opt.state[p] for p in ps]


def reference(name: str, kw: dict, dtype: torch.dtype, init, grads) -> list[torch.Tensor]:
    """The reference trajectory's final parameters, as 16-bit tensors."""
    if name in FUSED:
        return fused_reference(name, kw, init, grads)[0]
    ps = [torch.nn.Parameter(t.float()) for t in init]
    opt = getattr(torch.optim, name)(ps, foreach=False, **upcast_hparams(name, kw, dtype))
    _round_state(opt, dtype)  # Adagrad's initial accumulator, stored in the 16-bit dtype
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.float()
        opt.step()
        _round_state(opt, dtype)
    return [p.detach().to(dtype) for p in ps]


def assert_lowp_equal(
    got: torch.Tensor, want: torch.Tensor, share: float = ULP_SHARE, atol: float = 0.0
) -> None:
    """Bit-identical, except for at most ``share`` of the elements, each within one unit in the
    last place of the stored type (or within ``atol``: the float32 parity tests' absolute
    tolerance, for values that cancel down to a few float32 ulps)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    a, b = got.reshape(-1).view(torch.int16).int(), want.reshape(-1).view(torch.int16).int()
    af, bf = got.reshape(-1).float(), want.reshape(-1).float()
    nan = torch.isnan(af) & torch.isnan(bf)
    diff = ((a - b).abs() != 0) & ~nan & ~((af - bf).abs() <= atol)
    if not diff.any():
        return
    assert (a[diff] - b[diff]).abs().max().item() <= 1, "more than one unit in the last place"
    assert diff.float().mean().item() <= share, f"{int(diff.sum())}/{a.numel()} elements differ"


def _sync_from(ref: torch.optim.Optimizer, opt: torch.optim.Optimizer) -> None:
    """Set the float32 reference to pyfastopt's current (16-bit) parameters and state."""
    with torch.no_grad():
        for q, p in zip(ref.param_groups[0]["params"], opt.param_groups[0]["params"]):
            q.copy_(p.float())
            for k, v in opt.state[p].items():
                if k == "step":
                    ref.state[q][k] = v.clone()
                elif torch.is_tensor(v):
                    ref.state[q][k] = v.float().clone()


@pytest.mark.parametrize("dtype", LOWP, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_low_precision_parity(case, dtype):
    """Adam/AdamW: the whole trajectory against torch's fused kernel. The others: every step
    against torch's float32 for-loop applied to pyfastopt's own upcast state, rounded once."""
    name, kw = case
    require_torch_options(name, kw)
    init, grads = _init(dtype), _grads(dtype)
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(pyfastopt, name)(ps, **kw)
    refs = [torch.nn.Parameter(t.float()) for t in init]
    up = upcast_hparams(name, kw, dtype)
    ref = None if name in FUSED else getattr(torch.optim, name)(refs, foreach=False, **up)
    for gs in grads:
        if ref is not None and opt.state:
            _sync_from(ref, opt)
        for p, q, g in zip(ps, refs, gs):
            p.grad, q.grad = g.clone(), g.float()
        opt.step()
        if ref is not None:
            ref.step()
            for p, q in zip(ps, refs):
                assert_lowp_equal(p.detach(), q.detach().to(dtype), atol=1e-6)
                for k, v in opt.state[p].items():
                    if k in SCALAR_KEYS:
                        assert torch.equal(v, ref.state[q][k]), k
                    elif torch.is_tensor(v):
                        assert_lowp_equal(v, ref.state[q][k].to(dtype), atol=1e-6)
    if ref is None:  # Adam, AdamW: the whole trajectory bit for bit, parameters and state
        want, want_state = fused_reference(name, kw, init, grads)
        for p, w, ws in zip(ps, want, want_state):
            assert_lowp_equal(p.detach(), w, share=0.0)
            assert opt.state[p].keys() == ws.keys()
            for k, v in opt.state[p].items():
                if k in SCALAR_KEYS:
                    assert torch.equal(v, ws[k]), k
                else:
                    assert_lowp_equal(v, ws[k], share=0.0)
    for st in opt.state.values():  # torch's layout: buffers in the parameter's dtype
        for k, v in st.items():
            if k in SCALAR_KEYS:
                assert v.dtype == torch.float32 and v.dim() == 0
            else:
                assert v.dtype == dtype, k


def _fma_sensitive(dtype: torch.dtype, beta2: float, wd: float) -> tuple[torch.Tensor, ...]:
    """Parameters, gradients and second moments whose stored results depend on whether
    ``v * beta2 + (1 - beta2) * g * g`` and ``g + p * wd`` round once (fused multiply-add) or
    twice: with ordinary gradients fewer than one element in 10^4 is such a case. A multiple of
    32 of them, so that torch's fused kernel takes them all in its vector loop (its scalar tail,
    the last ``numel % 32`` elements, rounds the second moment twice)."""
    gen = torch.Generator().manual_seed(7)
    n = 1 << 21  # float16's longer mantissa makes such elements rarer
    v = (10.0 ** (torch.rand(n, generator=gen, dtype=torch.float64) * 8 - 6)).to(dtype)
    g = (torch.randn(n, generator=gen) * 10.0 ** (torch.rand(n, generator=gen) * 4 - 3)).to(dtype)
    p = torch.randn(n, generator=gen).to(dtype)
    p64, g64, v64 = p.double(), g.double(), v.double()
    f32 = torch.float32
    b2, c, w = (torch.tensor(x, dtype=f32).double() for x in (beta2, 1 - beta2, wd))
    g_two = (g64 + (p64 * w).to(f32).double()).to(f32).double()  # rounded twice
    g_one = (g64 + p64 * w).to(f32).double()  # fma: exact product, one rounding
    pick = torch.zeros(n, dtype=torch.bool)
    for gd in (g_two, g_one) if wd else (g64,):
        cg = (c * gd).to(f32).double()
        vb = (v64 * b2).to(f32).double()
        two = (vb + (cg * gd).to(f32).double()).to(f32).to(dtype)
        one = (vb + cg * gd).to(f32).to(dtype)  # |cg * gd| fits float64 exactly: one rounding
        pick |= two.view(torch.int16) != one.view(torch.int16)
    if wd:
        pick |= g_two.to(dtype).view(torch.int16) != g_one.to(dtype).view(torch.int16)
    idx = pick.nonzero().squeeze(1)
    idx = idx[: idx.numel() // 32 * 32]
    assert idx.numel() >= 32, "the generator found too few sensitive elements"
    return p[idx], g[idx], v[idx]


def _fma_paths() -> list[str]:
    """pyfastopt's SIMD paths whose multiply-adds round as torch's kernels do here: ATen's AVX2
    and AVX-512 builds contract `a * b + c` to one fma, its DEFAULT build does not."""
    fma = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
    return [s for s in pyfastopt._core.supported_simd() if (s != "baseline") == fma]


@pytest.mark.parametrize("dtype", LOWP, ids=["bf16", "fp16"])
@pytest.mark.parametrize("wd", [0.0, 0.1], ids=["no_wd", "wd"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_rounds_its_multiply_adds_as_torch_fused(name, wd, dtype):
    """Elements chosen so that one rounding more or less in the second moment or the L2 term
    changes the stored 16-bit value: bit-identical to torch's fused kernel on each SIMD path
    whose fused multiply-adds match torch's build, over three steps, with each option that
    changes the arithmetic around them."""
    beta2 = 0.8
    p0, g, v0 = _fma_sensitive(dtype, beta2, wd if name == "Adam" else 0.0)
    for simd in _fma_paths():
        pyfastopt._core.select_simd(simd)
        try:
            for extra in ({}, {"amsgrad": True}, {"maximize": True}):
                kw = {"lr": 0.01, "betas": (0.5, beta2), "weight_decay": wd, **extra}
                results = []
                for module, fused in ((torch.optim, {"fused": True}), (pyfastopt, {})):
                    p = torch.nn.Parameter(p0.clone())
                    opt = getattr(module, name)([p], **kw, **fused)
                    opt.state[p] = {
                        "step": torch.tensor(1.0),
                        "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": v0.clone(),
                    }
                    if extra.get("amsgrad"):
                        opt.state[p]["max_exp_avg_sq"] = torch.zeros_like(p)
                    for _ in range(3):
                        p.grad = g.clone()
                        opt.step()
                    results.append([p.detach(), *(opt.state[p][k] for k in sorted(opt.state[p]))])
                for got, want in zip(results[1], results[0]):
                    assert_lowp_equal(got, want, share=0.0)
        finally:
            pyfastopt._core.select_simd("auto")


@pytest.mark.parametrize("name", NAMES)
def test_a_group_may_mix_float32_and_bfloat16(name):
    kw = {"lr": 0.01}
    a32, a16 = torch.randn(300), torch.randn(300).bfloat16()
    grads = [(torch.randn(300), torch.randn(300).bfloat16()) for _ in range(5)]
    ps = [torch.nn.Parameter(a32.clone()), torch.nn.Parameter(a16.clone())]
    opt = getattr(pyfastopt, name)(ps, **kw)
    for g32, g16 in grads:
        ps[0].grad, ps[1].grad = g32.clone(), g16.clone()
        opt.step()
    ref32 = torch.nn.Parameter(a32.clone())
    r = getattr(torch.optim, name)([ref32], foreach=False, **kw)
    for g32, _ in grads:
        ref32.grad = g32.clone()
        r.step()
    torch.testing.assert_close(ps[0].detach(), ref32.detach(), rtol=1e-5, atol=1e-6)
    if name == "Adafactor":  # eps1=None: finfo of the group's first parameter, float32 here
        kw = {**kw, "eps": (torch.finfo(torch.float32).eps, 1e-3)}
    want = reference(name, kw, torch.bfloat16, [a16], [[g] for _, g in grads])
    assert_lowp_equal(ps[1].detach(), want[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_low_precision_results_do_not_depend_on_the_thread_count(threads):
    init = torch.randn(200_003).bfloat16()
    grads = [torch.randn(200_003).bfloat16() for _ in range(3)]

    def run(n: int) -> torch.Tensor:
        pyfastopt.set_num_threads(n)
        p = torch.nn.Parameter(init.clone())
        opt = pyfastopt.Adam([p], lr=0.01, stochastic_rounding=False)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        return p.detach()

    assert torch.equal(run(threads), run(1))


@pytest.mark.parametrize("dtype", LOWP, ids=["bf16", "fp16"])
@pytest.mark.parametrize("direction", ["fast->torch", "torch->fast"])
def test_state_dict_hand_over_with_torch_fused_adam(dtype, direction):
    init, grads = _init(dtype), _grads(dtype, steps=10)
    first, second = (pyfastopt, torch.optim)
    if direction == "torch->fast":
        first, second = second, first
    # fused=True on both sides: the group options travel with the checkpoint
    kw1 = kw2 = {"fused": True}
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = first.Adam(ps, lr=0.01, **kw1)
    for gs in grads[:5]:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    opt2 = second.Adam(ps, lr=0.01, **kw2)
    opt2.load_state_dict(sd)
    for gs in grads[5:]:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt2.step()
    want = reference("Adam", {"lr": 0.01}, dtype, init, grads)
    for p, w in zip(ps, want):
        assert_lowp_equal(p.detach(), w)


# ---- GradScaler in the kernel --------------------------------------------------------------


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_grad_scaler_fused_matches_torch_fused(name, dtype):
    """fused=True: GradScaler hands the step its scale and inf flag. The kernel skips exactly
    when torch's fused step does, unscales in float32 and writes the rounded gradient back."""
    require_amp_scaling(name)
    kw = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    g = torch.Generator().manual_seed(3)
    init = torch.randn(517, generator=g).to(dtype)
    # scaled gradients: tiny ones that are subnormal in float16 once unscaled
    raw = [torch.randn(517, generator=g) * 10 ** torch.empty(517).uniform_(-7, -2, generator=g)
           for _ in range(6)]  # fmt: skip
    raw[2][5] = float("inf")  # this step is skipped
    results = []
    for module in (torch.optim, pyfastopt):
        if module is torch.optim and name in ("SGD", "Adagrad") and dtype != torch.float32:
            # torch's fused SGD never writes 16-bit parameters (pytorch #191763); its fused
            # Adagrad rounds lr, eps and weight_decay to the 16-bit type (../shared/notes/lowp.md)
            continue
        p = torch.nn.Parameter(init.clone())
        opt = getattr(module, name)([p], fused=True, **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        grads_after, scales = [], []
        for r in raw:
            scaler.scale(torch.ones(()))  # as scaler.scale(loss) does: the scale exists
            scales.append(scaler.get_scale())
            p.grad = (r * scales[-1]).to(dtype)
            scaler.step(opt)
            scaler.update()
            grads_after.append(p.grad.clone())
        results.append((p.detach().clone(), grads_after, scaler.get_scale(), opt.state[p]))
    if len(results) == 1:
        # no torch reference: the float32 rule on upcast values and the float32-unscaled
        # gradient, rounded once per step; skipped where the scaled gradient is not finite
        q = torch.nn.Parameter(init.float())
        ref = getattr(torch.optim, name)([q], foreach=False, **kw)
        p_f, g_f = results[0][0], results[0][1]
        for r, scale, g_after in zip(raw, scales, g_f):
            scaled = (r * scale).to(dtype)
            if not torch.isfinite(scaled.float()).all():
                assert torch.equal(g_after, scaled)  # left scaled, as torch's fused step does
                continue
            q.grad = scaled.float() / scale
            assert torch.equal(g_after, q.grad.to(dtype))
            ref.step()
            _round_state(ref, dtype)
        assert_lowp_equal(p_f, q.detach().to(dtype), atol=1e-6)
        return
    (p_t, g_t, s_t, st_t), (p_f, g_f, s_f, st_f) = results
    assert s_t == s_f
    for a, b in zip(g_f, g_t):  # unscaled (or, on the skipped step, still scaled) gradients
        assert torch.equal(a, b)
    if dtype == torch.float32:
        torch.testing.assert_close(p_f, p_t, rtol=1e-6, atol=1e-7)
    else:
        assert_lowp_equal(p_f, p_t)
    if "step" in st_t:
        assert float(st_f["step"]) == float(st_t["step"]) == 5.0


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_grad_scaler_with_an_optimizer_without_gradients(name):
    require_amp_scaling(name)
    # two optimizers share one scaler and the second's parameters are frozen: GradScaler hands
    # it found_inf = sum([]), the int 0, and torch's fused step does nothing
    outs = []
    for module in (torch.optim, pyfastopt):
        a = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 40))
        b = torch.nn.Parameter(torch.ones(4))
        o1 = getattr(module, name)([a], lr=0.1, fused=True)
        o2 = getattr(module, name)([b], lr=0.1, fused=True)
        scaler = torch.amp.GradScaler("cpu")
        for _ in range(3):
            o1.zero_grad()
            o2.zero_grad()
            scaler.scale((a**2).sum()).backward()
            scaler.step(o1)
            scaler.step(o2)
            scaler.update()
        assert torch.equal(b.detach(), torch.ones(4))
        assert all(float(st.get("step", 0)) == 0 for st in o2.state.values())
        outs.append(a.detach().clone())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
@pytest.mark.parametrize("layout", ["transposed", "gapped"])
def test_grad_scaler_writes_unscaled_gradients_of_another_layout_back(name, layout):
    # the kernel reads a copy of a gradient laid out unlike its parameter: the unscaled
    # values must still reach .grad, as torch's unscaling in place leaves them
    outs = []
    for module, fused in ((torch.optim, False), (pyfastopt, True)):
        p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 24).reshape(4, 6))
        opt = getattr(module, name)([p], lr=0.1, fused=fused)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for step in range(3):
            scaler.scale(torch.ones(()))
            g = torch.arange(24.0).reshape(4, 6) * (step + 1) * scaler.get_scale()
            if layout == "transposed":
                p.grad = g.t().contiguous().t()
            else:
                p.grad = torch.zeros(4, 12)[:, ::2].copy_(g)
            scaler.step(opt)
            scaler.update()
            assert torch.equal(p.grad, torch.arange(24.0).reshape(4, 6) * (step + 1))
        outs.append(p.detach().clone())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop"])
@pytest.mark.parametrize(
    "before, after", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)]
)
def test_parameter_dtype_changed_under_its_state_is_refused(name, before, after):
    # model.to(dtype) after steps leaves the state in the old dtype: torch's step raises
    # (Adam) or keeps computing with it (SGD, RMSprop); pyfastopt refuses rather than differ
    m = torch.nn.Linear(8, 4).to(before)
    kw = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    opt = getattr(pyfastopt, name)(m.parameters(), **kw)
    for dtype in (before, after):
        m.to(dtype)
        opt.zero_grad()
        m(torch.ones(2, 8, dtype=dtype)).sum().backward()
        if dtype == before:
            opt.step()
            opt.step()  # a cached plan too
            continue
        weight = m.weight.detach().clone()
        with pytest.raises(StateError, match="changed dtype"):
            opt.step()
        assert torch.equal(m.weight.detach(), weight)
    # the remedy the message names: torch's loader casts the state to the new dtype
    opt.load_state_dict(opt.state_dict())
    opt.step()
    assert all(v.dtype == after for k, v in opt.state[m.weight].items() if k != "step")
    # a switch of the state's layout keeps the parameter's dtype and converts the state
    opt.param_groups[0]["master_weights"] = after != torch.float32
    opt.step()


def test_grad_scaler_skip_on_the_first_sgd_step_leaves_no_buffer():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = pyfastopt.SGD([p], lr=0.1, momentum=0.9, fused=True)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.ones(()))
    p.grad = torch.full((4,), float("inf"), dtype=torch.float16)
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), torch.ones(4, dtype=torch.float16))
    assert "momentum_buffer" not in opt.state.get(p, {})
    scaler.scale(torch.ones(()))
    p.grad = torch.full((4,), scaler.get_scale(), dtype=torch.float16)  # 1.0 once unscaled
    scaler.step(opt)
    # the first real step takes torch's first-step semantics: buffer = gradient
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.ones(4, dtype=torch.float16))


class _Tagged(torch.nn.Parameter):
    """A parameter subclass: torch's own step takes it (as FSDP2's DTensor)."""


def _scaled_run(module, params_fn, name, steps, kw, inf_at=(), scale=2.0**10):
    """Steps ``params_fn()`` with GradScaler (fused=True); returns the parameters, the gradients
    after each step and the state after the first step."""
    ps = params_fn()
    opt = getattr(module, name)(ps, fused=True, **kw)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=2)
    g = torch.Generator().manual_seed(5)
    grads_after, first_state = [], None
    for i in range(steps):
        scaler.scale(torch.ones(()))
        s = scaler.get_scale()
        for p in ps:  # tiny gradients: subnormal in float16 once unscaled
            r = torch.randn(p.shape, generator=g) * 10 ** torch.empty(p.shape).uniform_(
                -7, -2, generator=g
            )
            if i in inf_at:
                r.view(-1)[0] = float("inf")
            p.grad = (r * s).to(p.dtype)
        scaler.step(opt)
        scaler.update()
        grads_after.append([p.grad.clone() for p in ps])
        if i == 0:
            first_state = [copy.deepcopy(dict(opt.state.get(p, {}))) for p in ps]
    return [p.detach().clone() for p in ps], grads_after, first_state


def _assert_states_equal(a: list[dict], b: list[dict]) -> None:
    for sa, sb in zip(a, b, strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), k


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_grad_scaler_float64_unscaled_in_the_kernel_like_torch_fused(name):
    require_amp_scaling(name)
    # float64 parameters: unscaled in float64 in the step, and a skipped first step leaves
    # torch's initial state (step 0, zero moments), as torch's fused float64 step does
    kw = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    init = torch.randn(333, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def params():
        return [torch.nn.Parameter(init.clone())]

    # (SGD: torch's fused step keeps an uninitialised momentum buffer after a skipped first
    # step, where pyfastopt keeps none: test_grad_scaler_skip_on_the_first_sgd_step_...)
    inf_at = (1, 3) if name == "SGD" else (0, 3)
    t = _scaled_run(torch.optim, params, name, 6, kw, inf_at=inf_at)
    f = _scaled_run(pyfastopt, params, name, 6, kw, inf_at=inf_at)
    _assert_states_equal(f[2], t[2])
    for ga, gb in zip(f[1], t[1]):
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))
    torch.testing.assert_close(f[0], t[0], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("extra", ["float64", "subclass"])
def test_grad_scaler_one_odd_parameter_keeps_in_step_unscaling_for_the_others(name, extra):
    # a float64 parameter, or a tensor subclass that torch's own step takes, beside float16
    # ones: the float16 gradients are still unscaled in float32 in the step (they used to be
    # divided in float16 first, off torch in most elements), and the odd one is stepped as
    # torch's fused step steps it
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 64, generator=g).half()
    b = torch.randn(64, generator=g).half()
    x = torch.randn(40, generator=g).double()

    def params():
        odd = _Tagged(x.half()) if extra == "subclass" else torch.nn.Parameter(x.clone())
        return [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone()), odd]

    t = _scaled_run(torch.optim, params, name, 5, {"lr": 0.01}, inf_at=(2,))
    f = _scaled_run(pyfastopt, params, name, 5, {"lr": 0.01}, inf_at=(2,))
    for a, bb in zip(f[0][:2], t[0][:2]):
        assert_lowp_equal(a, bb)
    if extra == "subclass":
        assert torch.equal(f[0][2], t[0][2])
    else:
        torch.testing.assert_close(f[0][2], t[0][2], rtol=1e-13, atol=1e-15)
    for ga, gb in zip(f[1], t[1]):
        assert all(torch.equal(a, bb) for a, bb in zip(ga, gb))


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_grad_scaler_with_stochastic_rounding(name):
    # bfloat16 parameters with stochastic rounding take GradScaler's scalars in the step: with a
    # power-of-two scale the unscaled gradients are the unscaled ones exactly, so the run equals
    # the same seeded run without a scaler; an inf skips the step and changes nothing
    kw = {"lr": 0.01, "momentum": 0.9} if name == "SGD" else {"lr": 0.01}
    g = torch.Generator().manual_seed(4)
    init = torch.randn(300, generator=g).bfloat16()
    grads = [(torch.randn(300, generator=g) * 0.1).bfloat16() for _ in range(4)]
    outs = []
    for scaled in (False, True):
        torch.manual_seed(0)
        p = torch.nn.Parameter(init.clone())
        opt = getattr(pyfastopt, name)([p], stochastic_rounding=True, fused=scaled, **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=100)
        for gr in grads:
            if not scaled:
                p.grad = gr.clone()
                opt.step()
                continue
            scaler.scale(torch.ones(()))
            p.grad = gr * scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            assert torch.equal(p.grad, gr)  # unscaled in the step, written back
        outs.append((p.detach().clone(), copy.deepcopy(opt.state[p])))
    assert torch.equal(outs[0][0], outs[1][0])
    _assert_states_equal([outs[0][1]], [outs[1][1]])
    # an inf: nothing changes
    p_before, st_before = outs[1][0], outs[1][1]
    scaler.scale(torch.ones(()))
    bad = torch.full((300,), float("inf"), dtype=torch.bfloat16)
    p.grad = bad.clone()
    scaler.step(opt)
    assert torch.equal(p.detach(), p_before)
    assert torch.equal(p.grad, bad)
    _assert_states_equal([dict(opt.state[p])], [st_before])


@pytest.mark.parametrize(
    "option",
    [
        {"state_dtype": "8bit"},
        {"state_dtype": torch.bfloat16},
        {"master_weights": True},
        {"stochastic_rounding": True},
    ],
    ids=["8bit", "bf16-state", "master", "sr"],
)
@pytest.mark.parametrize("odd", ["subclass", "grad-dtype"])
def test_own_options_are_refused_for_parameters_torch_steps(option, odd):
    # torch's own step takes a tensor subclass (FSDP2's DTensor) or a gradient of another dtype:
    # it cannot keep 8-bit or bfloat16 state, a master copy or stochastic rounding, so the
    # option is refused by name rather than silently dropped; nothing is written
    cls = _Tagged if odd == "subclass" else torch.nn.Parameter
    p = cls(torch.linspace(-1, 1, 8192).bfloat16())
    q = torch.nn.Parameter(torch.ones(8192, dtype=torch.bfloat16))
    opt = pyfastopt.Adam([q, p], lr=0.1, **option)
    q.grad = torch.ones_like(q)
    if odd == "subclass":
        p.grad = torch.ones_like(p)
    else:
        set_grad_of_another_dtype(p, torch.ones(8192))
    before = p.detach().clone()
    key = next(iter(option))
    with pytest.raises(pyfastopt.UnsupportedError, match=f"param 1 of group 0: {key}"):
        opt.step()
    assert torch.equal(p.detach(), before)
    assert torch.equal(q.detach(), torch.ones(8192, dtype=torch.bfloat16))


def test_shared_gradient_with_grad_scaler_is_torchs_fused_step():
    # a gradient sharing memory with a parameter the step writes sends the group to torch's own
    # step; with GradScaler's scalars in the step, torch's fused step gets them (it used to raise)
    outs = []
    for module in (torch.optim, pyfastopt):
        a = torch.nn.Parameter(torch.linspace(-1, 1, 32))
        b = torch.nn.Parameter(torch.linspace(1, 2, 32))
        opt = module.Adam([a, b], lr=0.1, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        for _ in range(3):
            scaler.scale(torch.ones(()))
            a.grad = torch.full((32,), 0.5) * scaler.get_scale()
            b.grad = a.detach()  # b's gradient is a's memory
            scaler.step(opt)
            scaler.update()
        outs.append((a.detach().clone(), b.detach().clone()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


# ---- master weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", LOWP, ids=["bf16", "fp16"])
def test_master_weights_follow_the_float32_rule(name, dtype):
    kw = {"lr": 0.01}
    init, grads = _init(dtype), _grads(dtype, steps=8)
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(pyfastopt, name)(ps, master_weights=True, **kw)
    _train(opt, ps, grads)
    refs = [torch.nn.Parameter(t.float()) for t in init]
    _train(getattr(torch.optim, name)(refs, foreach=False, **kw), refs, grads, torch.float32)
    for p, q in zip(ps, refs):
        master = opt.state[p]["master_weight"]
        assert master.dtype == torch.float32
        torch.testing.assert_close(master, q.detach(), rtol=2e-6, atol=1e-7)
        assert torch.equal(p.detach(), master.to(dtype))  # the parameter is the rounded master
        for k, v in opt.state[p].items():
            if k != "step":
                assert v.dtype == torch.float32, k


def test_master_weights_survive_a_state_dict_round_trip():
    init, grads = _init(torch.bfloat16), _grads(torch.bfloat16, steps=6)
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = pyfastopt.AdamW(ps, lr=0.01, master_weights=True)
    for gs in grads[:3]:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = pyfastopt.AdamW(qs, lr=0.01, master_weights=True)
    opt2.load_state_dict(sd)
    for q in qs:
        assert opt2.state[q]["master_weight"].dtype == torch.float32
        assert opt2.state[q]["exp_avg"].dtype == torch.float32
    for gs in grads[3:]:
        for p, q, g in zip(ps, qs, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt2.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p.detach(), q.detach())
        assert torch.equal(opt.state[p]["master_weight"], opt2.state[q]["master_weight"])


def test_master_weights_checkpoint_loads_into_torch():
    init, grads = _init(torch.bfloat16), _grads(torch.bfloat16, steps=4)
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = pyfastopt.Adam(ps, lr=0.01, master_weights=True)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    t = torch.optim.Adam(ps, lr=0.01)
    t.load_state_dict(opt.state_dict())  # torch casts the buffers to bfloat16 and steps on
    for p, g in zip(ps, grads[0]):
        p.grad = g.clone()
    t.step()
    assert all(torch.isfinite(p.detach().float()).all() for p in ps)


# ---- stochastic rounding ---------------------------------------------------------------------


def _sr_run(seed: int, threads: int, steps: int = 4) -> torch.Tensor:
    pyfastopt.set_num_threads(threads)
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.ones(100_003, dtype=torch.bfloat16))
    opt = pyfastopt.SGD([p], lr=1.0, stochastic_rounding=True)
    for _ in range(steps):
        p.grad = torch.full_like(p, 1e-3)
        opt.step()
    return p.detach()


def test_stochastic_rounding_is_reproducible_and_thread_count_independent():
    a = _sr_run(0, 1)
    assert torch.equal(a, _sr_run(0, 1))
    assert torch.equal(a, _sr_run(0, 2))
    assert not torch.equal(a, _sr_run(1, 1))


def test_stochastic_rounding_is_unbiased_where_nearest_stalls():
    steps = 4
    sr = _sr_run(0, 1, steps).float()
    p = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
    opt = pyfastopt.SGD([p], lr=1.0)
    for _ in range(steps):
        p.grad = torch.full_like(p, 1e-3)
        opt.step()
    assert torch.equal(p.detach().float(), torch.ones(1000))  # 1e-3 is below half a bf16 ulp
    # unbiased: the mean moves by the true amount (4e-3) within a few standard errors
    assert abs(sr.mean().item() - (1 - steps * 1e-3)) < 3e-4
    assert sr.min().item() >= 1 - steps * 2**-8 and sr.max().item() <= 1.0  # a bf16 ulp a step


def test_stochastic_rounding_state_is_saved():
    p = torch.nn.Parameter(torch.ones(10, dtype=torch.bfloat16))
    opt = pyfastopt.Adam([p], lr=0.1, stochastic_rounding=True)
    p.grad = torch.ones_like(p)
    opt.step()
    group = opt.state_dict()["param_groups"][0]
    assert group["stochastic_rounding"] is True
    assert group["sr_step"] == 1 and isinstance(group["sr_seed"], int)


def test_stochastic_rounding_switched_on_by_hand():
    p = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    opt = pyfastopt.SGD([p], lr=1.0)
    opt.param_groups[0]["stochastic_rounding"] = True  # no seed drawn: seed 0
    for _ in range(3):
        p.grad = torch.full_like(p, 1e-3)
        opt.step()
    assert opt.param_groups[0]["sr_step"] == 3
    assert (p.detach().float() < 1).any()  # moved where round-to-nearest would stall


@pytest.mark.parametrize("how", ["copy_", "data", "load_state_dict"])
def test_master_weights_follow_a_parameter_the_user_wrote(how):
    """Weights written outside the optimizer (a model checkpoint loaded mid-training) re-seed the
    master copy: the next step continues from them, never from the old master."""
    model = torch.nn.Linear(8, 4).bfloat16()
    opt = pyfastopt.AdamW(model.parameters(), lr=0.01, master_weights=True)
    for _ in range(2):
        model.zero_grad()
        model(torch.randn(3, 8).bfloat16()).float().sum().backward()
        opt.step()
    new = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    if how == "copy_":
        with torch.no_grad():
            for p, v in zip(model.parameters(), new.values()):
                p.copy_(v)
    elif how == "data":
        for p, v in zip(model.parameters(), new.values()):
            p.data = v.clone()
    else:
        model.load_state_dict(new)
    model.zero_grad()
    model(torch.randn(3, 8).bfloat16()).float().sum().backward()
    opt.step()
    for p in model.parameters():
        assert (p.detach().float() - 0.5).abs().max() < 0.05  # one small step from 0.5
        master = opt.state[p]["master_weight"]
        assert torch.equal(master.to(torch.bfloat16), p.detach())


# The optimizers that take master weights, with options that make every buffer matter.
MASTER_OPTIONS = {
    "SGD": {"lr": 0.1, "momentum": 0.9},
    "Adam": {"lr": 0.01},
    "AdamW": {"lr": 0.01, "amsgrad": True},
    "Adagrad": {"lr": 0.1},
    "RMSprop": {"lr": 0.01, "centered": True, "momentum": 0.5},
    "Adadelta": {"lr": 1.0},
    "NAdam": {"lr": 0.01},
    "RAdam": {"lr": 0.01},
    "Adamax": {"lr": 0.01},
    "ASGD": {"lr": 0.01, "t0": 1},
    "Rprop": {"lr": 0.01},
    "Adafactor": {"lr": 0.01},
}


def _written_run(name, dtype, write, state_dtype=None):
    """Four steps of `name` with master weights on fixed gradients, `write(p)` after the second;
    the parameters and master copies at the end."""
    gen = torch.Generator().manual_seed(7)
    params = [
        torch.nn.Parameter((torch.rand(s, generator=gen) * 2 - 1).to(dtype))
        for s in ((12, 10), (37,))
    ]
    grads = [[torch.randn(p.shape, generator=gen).to(dtype) for p in params] for _ in range(4)]
    extra = {} if state_dtype is None else {"state_dtype": state_dtype, "min_8bit_size": 16}
    opt = getattr(pyfastopt, name)(params, master_weights=True, **MASTER_OPTIONS[name], **extra)
    for i, gs in enumerate(grads):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        if i == 1:
            for p in params:
                write(p)
    return [p.detach().clone() for p in params], [opt.state[p]["master_weight"] for p in params]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", [*MASTER_OPTIONS, "Adam-8bit"])
def test_master_weights_follow_writes_autograd_does_not_count(name, dtype):
    """`p.data.copy_(w)` (or WGAN's `p.data.clamp_()`) leaves autograd's version counter alone;
    the kernel still sees every element that no longer equals its master rounded and re-seeds
    it, so the run equals the one whose write autograd counted (every element changed here)."""
    name, state_dtype = ("Adam", "8bit") if name == "Adam-8bit" else (name, None)

    def counted(p):
        with torch.no_grad():
            p.copy_(p + 3)  # every element moves (|p| < 2 here), so all are re-seeded

    def uncounted(p):
        p.data.copy_(p.data + 3)

    want = _written_run(name, dtype, counted, state_dtype)
    got = _written_run(name, dtype, uncounted, state_dtype)
    assert _same(got[0], want[0]) and _same(got[1], want[1])
    untouched = _written_run(name, dtype, lambda p: None, state_dtype)
    assert not _same(got[0], untouched[0])  # the write mattered


@pytest.mark.parametrize("name", [n for n in MASTER_OPTIONS if n != "Adafactor"])
def test_master_weights_reseed_only_the_elements_written(name):
    """An element-wise rule: the elements written through `.data` continue from the written
    value, the others keep their master's extra precision (a counted write re-seeds all)."""

    def every_third(p):
        return torch.arange(p.numel()).reshape(p.shape) % 3 == 0

    def partial(p):
        p.data[every_third(p)] = 7.0  # no parameter is anywhere near 7

    def counted_everywhere(p):
        with torch.no_grad():
            p.copy_(torch.where(every_third(p), torch.full_like(p, 7.0), p))

    got = _written_run(name, torch.bfloat16, partial)
    written = _written_run(name, torch.bfloat16, counted_everywhere)
    untouched = _written_run(name, torch.bfloat16, lambda p: None)
    for i, p in enumerate(untouched[0]):
        m = every_third(p)
        for part in (0, 1):  # parameters, master copies
            assert torch.equal(got[part][i][m], written[part][i][m])
            assert torch.equal(got[part][i][~m], untouched[part][i][~m])


def test_master_weights_keep_their_precision_across_skipped_and_idle_steps():
    p = torch.nn.Parameter(torch.ones(16, dtype=torch.bfloat16))
    opt = pyfastopt.SGD([p], lr=1e-4, master_weights=True)
    for i in range(6):
        p.grad = None if i % 2 else torch.ones_like(p)  # every other step has no gradient
        opt.step()
    master = opt.state[p]["master_weight"]
    torch.testing.assert_close(master, torch.full((16,), 1 - 3e-4), rtol=0, atol=1e-7)
