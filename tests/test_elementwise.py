"""NAdam, RAdam, Adamax, ASGD and Rprop beyond the parity table: their 0-d state scalars
(NAdam's mu_product, ASGD's eta and mu), which the native step reads and writes through their
addresses in their own dtype, and the steps where torch's host arithmetic raises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import assert_same_state, make_params, run_steps
from optim_db import TOL, make_pair

import pyfastopt
from pyfastopt import StateError

NEW = ["NAdam", "RAdam", "Adamax", "ASGD", "Rprop"]
KW = {
    "NAdam": {"lr": 0.01, "momentum_decay": 0.01},
    "RAdam": {"lr": 0.01, "betas": (0.9, 0.9)},
    "Adamax": {"lr": 0.01},
    "ASGD": {"lr": 0.01, "t0": 2, "lambd": 0.01},
    "Rprop": {"lr": 0.01},
}
SHAPES = ((6, 5), (9,))


@pytest.fixture
def default_dtype():
    """Restores torch's default dtype after a test that changes it."""
    old = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(old)


# ---- the scalars' dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_default_dtype_float64_gives_float64_scalars(name, default_dtype):
    default_dtype(torch.float64)
    a, b = make_params(torch.float64, shapes=SHAPES)
    ref, fast = make_pair(name, KW[name], a, b)
    run_steps([ref, fast], [a, b], steps=8)
    for key in ("step", "mu_product", "eta", "mu"):
        if key in ref.state[a[0]]:
            assert fast.state[b[0]][key].dtype == torch.float64, key
    assert_same_state(ref, fast, **TOL[torch.float64])


def test_asgd_new_eta_and_mu_pass_through_the_default_dtype(default_dtype):
    """torch.as_tensor(lr / ...) makes the next eta a tensor of the default dtype before it is
    copied into the float32 state: bfloat16 here, so eta holds bfloat16 values."""
    default_dtype(torch.bfloat16)
    a, b = make_params(torch.float32, shapes=SHAPES)
    ref, fast = make_pair("ASGD", {"lr": 0.01, "t0": 1, "lambd": 0.5}, a, b)
    run_steps([ref, fast], [a, b], steps=5)
    eta = fast.state[b[0]]["eta"]
    assert eta.dtype == torch.float32 and float(eta) == float(eta.bfloat16())
    assert float(eta) != float(np.float32(0.01 / (1 + 0.5 * 0.01 * 5) ** 0.75))
    assert_same_state(ref, fast, rtol=0, atol=0)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])


@pytest.mark.parametrize("name,key", [("NAdam", "mu_product"), ("ASGD", "eta"), ("ASGD", "mu")])
def test_float64_scalar_of_a_float32_parameter(name, key):
    """A float64 scalar (a checkpoint of float64 parameters, say) is read and written as
    float64, as torch computes with it, in the same call as float32 ones."""
    a, b = make_params(torch.float32, shapes=SHAPES)
    ref, fast = make_pair(name, KW[name], a, b)
    run_steps([ref, fast], [a, b], steps=3)
    for opt, p in ((ref, a[0]), (fast, b[0])):
        opt.state[p][key] = opt.state[p][key].double()
    run_steps([ref, fast], [a, b], steps=5, seed=2)
    assert fast.state[b[0]][key].dtype == torch.float64
    assert fast.state[b[1]][key].dtype == torch.float32
    assert_same_state(ref, fast, **TOL[torch.float32])
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])


# what pyfastopt is handed, and the tensor torch computes with the same way (torch's step leaves
# a plain number as it is: its `mu_product *= mu` rebinds a local)
BY_HAND = {
    "float": (0.5, torch.tensor(0.5)),
    "int": (2, torch.tensor(2.0)),
    "bf16": (torch.tensor(0.5, dtype=torch.bfloat16), torch.tensor(0.5)),  # kept as float32
    "shape1": (torch.tensor([0.75]), torch.tensor([0.75])),
    "neg-view": (torch._neg_view(torch.tensor(-0.5)), torch._neg_view(torch.tensor(-0.5))),
}


@pytest.mark.parametrize("case", BY_HAND)
def test_scalars_set_by_hand_are_converted_keeping_their_value(case):
    a, b = make_params(torch.float32, shapes=SHAPES)
    ref, fast = make_pair("NAdam", KW["NAdam"], a, b)
    run_steps([ref, fast], [a, b], steps=2)  # the plan is cached
    mine, theirs = BY_HAND[case]
    fast.state[b[0]]["mu_product"] = mine
    ref.state[a[0]]["mu_product"] = theirs
    run_steps([ref, fast], [a, b], steps=3, seed=3)
    got = fast.state[b[0]]["mu_product"]
    assert type(got) is torch.Tensor and got.dtype == torch.float32 and not got.is_neg()
    assert float(got) == float(ref.state[a[0]]["mu_product"])
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(2), "x", None, torch.tensor(1j), torch.empty((), device="meta")],
    ids=["two", "str", "none", "complex", "meta"],
)
@pytest.mark.parametrize("name,key", [("NAdam", "mu_product"), ("ASGD", "eta"), ("ASGD", "mu")])
def test_bad_scalars_raise_and_write_nothing(name, key, bad):
    _, b = make_params(torch.float32, shapes=SHAPES)
    fast = getattr(pyfastopt, name)(b, **KW[name])
    run_steps([fast], [b], steps=2)
    before = [p.detach().clone() for p in b]
    fast.state[b[1]][key] = bad
    for p in b:
        p.grad = torch.ones_like(p)
    with pytest.raises(StateError, match=key):
        fast.step()
    for p, q in zip(b, before):
        assert torch.equal(p.detach(), q)
    assert float(fast.state[b[0]]["step"]) == 2.0


def test_scalar_written_in_place_is_read_at_the_next_step():
    """The fast path reads the scalar through its address: an in-place write is seen."""
    a, b = make_params(torch.float32, shapes=SHAPES)
    ref, fast = make_pair("ASGD", KW["ASGD"], a, b)
    run_steps([ref, fast], [a, b], steps=2)
    for opt, p in ((ref, a[0]), (fast, b[0])):
        opt.state[p]["eta"].fill_(0.05)
        opt.state[p]["mu"].fill_(0.25)
    run_steps([ref, fast], [a, b], steps=3, seed=4)
    assert_same_state(ref, fast, **TOL[torch.float32])
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])


def test_16bit_checkpoints_keep_full_precision_scalars():
    """torch's loader casts 0-d state to the parameter's dtype; for bfloat16 parameters
    pyfastopt keeps (or restores) float32/float64 scalars, the precision torch makes them in."""
    ps = [torch.nn.Parameter(torch.randn(40).bfloat16())]
    opt = pyfastopt.NAdam(ps, lr=0.01)
    run_steps([opt], [ps], steps=3)
    saved = opt.state[ps[0]]["mu_product"].clone()
    opt2 = pyfastopt.NAdam(ps, lr=0.01)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[ps[0]]["mu_product"], saved)
    sd = opt.state_dict()  # as saved under torch.set_default_dtype(torch.float64)
    sd["state"][0] = dict(sd["state"][0], mu_product=torch.tensor(1 / 3, dtype=torch.float64))
    opt2.load_state_dict(sd)
    assert opt2.state[ps[0]]["mu_product"].dtype == torch.float64
    assert float(opt2.state[ps[0]]["mu_product"]) == 1 / 3
    t = torch.optim.NAdam(ps, lr=0.01)
    t.load_state_dict(opt.state_dict())
    assert t.state[ps[0]]["mu_product"].dtype == torch.bfloat16  # torch's own cast
    opt3 = pyfastopt.NAdam(ps, lr=0.01)
    opt3.load_state_dict(t.state_dict())
    run_steps([opt3], [ps], steps=1)
    assert opt3.state[ps[0]]["mu_product"].dtype == torch.float32
    exported = opt.torch_state_dict()["state"][0]
    assert exported["mu_product"].dtype == torch.float32 and exported["exp_avg"].dtype == (
        torch.float32
    )


# ---- where torch's host arithmetic raises -----------------------------------------------------


def _torch_and_fast(name: str, kw: dict, steps: int = 1):
    a, b = make_params(torch.float32, shapes=SHAPES)
    ref, fast = make_pair(name, kw, a, b)
    run_steps([ref, fast], [a, b], steps=steps)
    return a, ref, b, fast


def _step_raises(params, opt, exc: type, match: str | None = None) -> None:
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(exc, match=match):
        opt.step()


def _unchanged(fast, b, before, steps: int) -> None:
    for p, q in zip(b, before):
        assert torch.equal(p.detach(), q)
    assert float(fast.state[b[0]]["step"]) == steps


def test_nadam_mu_product_reaching_one_divides_by_zero_like_torch():
    """1 - mu_product is a Python float divisor: a mu_product that this step's update makes
    exactly 1 raises ZeroDivisionError, before pyfastopt writes anything. With
    momentum_decay = 0 and beta1 = 0.5 the momentum cache mu is 0.25 at every step."""
    kw = {"lr": 0.01, "betas": (0.5, 0.999), "momentum_decay": 0.0}
    a, ref, b, fast = _torch_and_fast("NAdam", kw, steps=2)
    for opt, p in ((ref, a[0]), (fast, b[0])):
        opt.state[p]["mu_product"].fill_(4.0)
    before = [p.detach().clone() for p in b]
    _step_raises(a, ref, ZeroDivisionError)
    _step_raises(b, fast, ZeroDivisionError)
    _unchanged(fast, b, before, 2)


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("RAdam", "betas", (0.9, 1.0)),  # rho_inf = 2 / (1 - beta2) - 1
        ("Adamax", "betas", (1.0, 0.999)),  # lr / (1 - beta1 ** step)
        ("ASGD", "lambd", -50.0),  # lr / (1 + lambd * lr * step) ** alpha at step 2: 0 ** 0.75
    ],
)
def test_zero_divisors_after_construction_raise_like_torch(name, key, value):
    a, ref, b, fast = _torch_and_fast(name, KW[name])
    for opt in (ref, fast):
        opt.param_groups[0][key] = value
    before = [p.detach().clone() for p in b]
    _step_raises(a, ref, ZeroDivisionError)
    _step_raises(b, fast, ZeroDivisionError)
    _unchanged(fast, b, before, 1)


def test_radam_complex_rectification_raises_like_torch():
    """beta2 > 1 makes torch's rectification term `(...) ** 0.5` of a negative float, a complex
    number its step cannot add to a real tensor (RuntimeError); pyfastopt refuses that step
    before writing anything."""
    a, ref, b, fast = _torch_and_fast("RAdam", {"lr": 0.01})
    for opt in (ref, fast):
        opt.param_groups[0]["betas"] = (0.9, 1.5)
    raised = False
    for step in range(2, 12):
        before = [p.detach().clone() for p in b]
        for p in (*a, *b):
            p.grad = torch.ones_like(p)
        try:
            ref.step()
        except RuntimeError:
            with pytest.raises(RuntimeError, match="complex"):
                fast.step()
            _unchanged(fast, b, before, step - 1)
            raised = True
            break
        fast.step()
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pb, pa, **TOL[torch.float32])
    assert raised


def test_asgd_complex_eta_is_refused():
    """A negative 1 + lambd * lr * step to a non-integer alpha: torch's next eta is a complex
    number whose imaginary part it drops with a warning; pyfastopt refuses the step instead."""
    _, b = make_params(torch.float32, shapes=SHAPES)
    fast = pyfastopt.ASGD(b, lr=0.1)
    run_steps([fast], [b], steps=1)
    fast.param_groups[0]["lambd"] = -20.0
    before = [p.detach().clone() for p in b]
    _step_raises(b, fast, RuntimeError, "complex")
    _unchanged(fast, b, before, 1)
    fast.param_groups[0]["alpha"] = 1.0  # an integer power is real: torch's own value again
    ref_eta = 0.1 / (1 - 20.0 * 0.1 * 2)
    run_steps([fast], [b], steps=1)
    assert math.isclose(float(fast.state[b[0]]["eta"]), ref_eta, rel_tol=1e-6)


# ---- the native tail of a row: the scalars' addresses and their flag word -----------------------


def _asgd(table: list[int], width: int) -> bool:
    return pyfastopt._core.asgd_step(
        table, None, None, width, 0, False, 0.01, 1e-4, 0.75, 1e6, 0.0, False, 0, 1, 1 << 15, None
    )


def test_native_core_refuses_malformed_scalar_tails():
    p, g, ax = torch.zeros(4), torch.zeros(4), torch.zeros(4)
    step, eta, mu = torch.zeros(()), torch.tensor(0.01), torch.ones(())
    eta64 = torch.tensor(0.01, dtype=torch.float64)
    head = [4, step.data_ptr(), p.data_ptr(), g.data_ptr(), ax.data_ptr()]
    good = [*head, eta.data_ptr(), mu.data_ptr(), 0]
    assert _asgd(good, 8) is True
    assert float(step) == 1.0 and float(eta) != 0.01  # the step wrote the next eta
    for bad, width in (
        ([*head, eta.data_ptr(), mu.data_ptr(), 4], 8),  # a flag bit beyond the two scalars
        ([*head, eta.data_ptr(), mu.data_ptr(), -1], 8),  # negative flags
        ([*head, 0, mu.data_ptr(), 0], 8),  # a null scalar address
        ([*head, eta.data_ptr() + 1, mu.data_ptr(), 0], 8),  # misaligned float32
        ([*head, eta.data_ptr() + 4, mu.data_ptr(), 1], 8),  # float64 needs 8-byte alignment
        ([*head, eta.data_ptr(), 0], 7),  # one scalar missing: the row is too short
        ([4, step.data_ptr(), p.data_ptr(), 0], 4),  # no room for any tail
    ):
        before = (float(step), float(eta))
        with pytest.raises(ValueError):
            _asgd(bad, width)
        assert (float(step), float(eta)) == before  # nothing was written
    assert _asgd([*head, eta64.data_ptr(), mu.data_ptr(), 1], 8) is True  # flag bit 0: float64
    assert float(step) == 2.0 and float(eta64) != 0.01


# ---- non-finite values --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_nonfinite_gradients_propagate_like_torch(name):
    """NaN and infinite gradients: torch.maximum propagates NaN into Adamax's exp_inf, sign(NaN)
    is 0 in Rprop, and so on; the same elements end up NaN, infinite or unchanged."""
    a, b = make_params(torch.float32, shapes=((64,), (3, 5)))
    ref, fast = make_pair(name, KW[name], a, b)
    g = torch.Generator().manual_seed(7)
    for step in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in a]
        flat = grads[0].view(-1)
        flat[step::9] = float("nan")
        flat[step + 3 :: 11] = float("inf")
        flat[step + 5 :: 13] = float("-inf")
        flat[step + 7 :: 17] = 0.0
        for params, opt in ((a, ref), (b, fast)):
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, equal_nan=True, **TOL[torch.float32])
    for pa, pb in zip(a, b):
        for k, v in ref.state[pa].items():
            torch.testing.assert_close(fast.state[pb][k], v, equal_nan=True, **TOL[torch.float32])


@pytest.mark.parametrize("name", NEW)
def test_grad_scaler_unscales_outside_the_step_like_torch(name):
    """torch has no fused kernel for these, so GradScaler unscales the gradients itself and skips
    the step on inf; the state (step counters and scalars included) matches torch's."""
    results = []
    for module in (torch.optim, pyfastopt):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        opt = getattr(module, name)(model.parameters(), **KW[name])
        assert not getattr(opt, "_step_supports_amp_scaling", False)
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        for i in range(5):
            opt.zero_grad()
            loss = model(torch.randn(4, 6, generator=torch.Generator().manual_seed(i))).sum()
            if i == 2:
                loss = loss * float("inf")  # skipped
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        results.append((model.weight.detach().clone(), opt))
    (w_ref, ref), (w_fast, fast) = results
    torch.testing.assert_close(w_fast, w_ref, **TOL[torch.float32])
    assert_same_state(ref, fast, **TOL[torch.float32])
    assert float(fast.state[fast.param_groups[0]["params"][0]]["step"]) == 4.0
