"""Every option of every optimizer matches torch.optim's for-loop over 100 steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SHAPES, assert_same_state, make_params, run_steps
from optim_db import NAMES, NO_COMPLEX, TOL, case_id, cases, make_pair, shapes_for

import pyfastopt

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_parity_100_steps(case, dtype):
    name, kw = case
    a, b = make_params(dtype, shapes_for(name, SHAPES))
    start = [p.detach().clone() for p in a]
    ref, fast = make_pair(name, kw, a, b)
    run_steps([ref, fast], [a, b], steps=100)
    for pa, pb, p0 in zip(a, b, start):
        torch.testing.assert_close(pb, pa, **TOL[dtype])
        if p0.numel():  # the optimizer really moved the parameters
            assert not torch.equal(pb.detach(), p0)
    assert_same_state(ref, fast, **TOL[dtype])


@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_parity_complex(case):
    name, kw = case
    a, b = make_params(torch.complex64, shapes=((6, 5), (17,)))
    ref, fast = make_pair(name, kw, a, b)
    if name in NO_COMPLEX:  # torch refuses them: the same error, nothing changed
        before = [p.detach().clone() for p in b]
        messages = []
        for opt, ps in ((ref, a), (fast, b)):
            for p in ps:
                p.grad = torch.ones_like(p)
            with pytest.raises(RuntimeError, match="does not support complex") as err:
                opt.step()
            messages.append(str(err.value))
        assert messages[0] == messages[1]
        assert all(torch.equal(p, q) for p, q in zip(b, before))
        return
    run_steps([ref, fast], [a, b], steps=30)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
        if name == "SGD":  # torch's own step (complex arithmetic): bit for bit, as real SGD
            assert torch.equal(pb, pa)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("simd", ["avx512", "avx2", "baseline"])
def test_every_simd_path_matches_torch(name, simd):
    if simd not in pyfastopt._core.supported_simd():
        pytest.skip(f"this CPU cannot run the {simd} build")
    kw = {"lr": 0.01} if name == "Rprop" else {"lr": 0.01, "weight_decay": 0.01}  # no decay
    if name == "SGD":
        kw["momentum"] = 0.9
    try:
        pyfastopt._config.set_simd(simd)
        a, b = make_params(torch.float32, shapes_for(name, SHAPES))
        ref, fast = make_pair(name, kw, a, b)
        run_steps([ref, fast], [a, b], steps=20)
    finally:
        pyfastopt._config.set_simd("auto")
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "NAdam", "RAdam", "ASGD", "Rprop"])
def test_tensor_lr_matches_float_lr(name):
    kw = {"momentum": 0.9} if name == "SGD" else {}
    a, b = make_params(torch.float32)
    ref = getattr(torch.optim, name)(a, lr=torch.tensor(0.01), foreach=False, **kw)
    fast = getattr(pyfastopt, name)(b, lr=torch.tensor(0.01), **kw)
    run_steps([ref, fast], [a, b], steps=20)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])


@pytest.mark.parametrize(
    "name, kw",
    [
        ("Adam", {}),
        ("Adam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
        ("AdamW", {"weight_decay": 0.05, "amsgrad": True}),
        ("NAdam", {}),
        ("NAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
        ("RAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
        ("Adamax", {}),
        ("Adagrad", {"lr_decay": 0.01}),
    ],
)
@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_float32_lr_steps_float64_parameters_in_torchs_float32_arithmetic(name, kw, kind):
    """A float32 lr (a 0-d tensor, or NumPy's float32) meets Python floats in float32 in torch's
    for-loop (``lr / bias_correction1``, ``1 - lr * weight_decay``): the step sizes carry
    float32 rounding even for float64 parameters, and pyfastopt's do too (1e-7 apart before)."""
    if kind == "numpy" and np.lib.NumpyVersion(np.__version__) < "2.0.0":
        pytest.skip("NumPy 1 promotes float32 with a Python float to float64")
    lr = torch.tensor(0.0123) if kind == "tensor" else np.float32(0.0123)
    a, b = make_params(torch.float64)
    ref = getattr(torch.optim, name)(a, lr=lr, foreach=False, **kw)
    fast = getattr(pyfastopt, name)(b, lr=lr, **kw)
    run_steps([ref, fast], [a, b], steps=10)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float64])


def test_multiple_param_groups_and_add_param_group():
    a, b = make_params(torch.float32)
    ref = torch.optim.Adam(
        [{"params": a[:2]}, {"params": a[2:4], "lr": 0.1, "amsgrad": True}], lr=0.01, foreach=False
    )
    fast = pyfastopt.Adam(
        [{"params": b[:2]}, {"params": b[2:4], "lr": 0.1, "amsgrad": True}], lr=0.01
    )
    run_steps([ref, fast], [a, b], steps=10)
    ref.add_param_group({"params": a[4:], "weight_decay": 0.1})
    fast.add_param_group({"params": b[4:], "weight_decay": 0.1})
    run_steps([ref, fast], [a, b], steps=10, seed=5)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])
    assert_same_state(ref, fast, **TOL[torch.float32])


def test_mixed_dtypes_in_one_group():
    a, b = make_params(torch.float32, shapes=((5, 4),))
    a64, b64 = make_params(torch.float64, shapes=((3,),))
    ref = torch.optim.Adam(a + a64, lr=0.01, foreach=False)
    fast = pyfastopt.Adam(b + b64, lr=0.01)
    run_steps([ref, fast], [a + a64, b + b64], steps=10)
    torch.testing.assert_close(b[0], a[0], **TOL[torch.float32])
    torch.testing.assert_close(b64[0], a64[0], **TOL[torch.float64])


def test_default_dtype_float64_gives_float64_step():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        a, b = make_params(torch.float64, shapes=((4,),))
        ref, fast = make_pair("Adam", {"lr": 0.01}, a, b)
        run_steps([ref, fast], [a, b], steps=5)
    finally:
        torch.set_default_dtype(old)
    assert fast.state[b[0]]["step"].dtype == torch.float64
    assert_same_state(ref, fast, **TOL[torch.float64])


@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_params_without_grad_are_skipped(case):
    name, kw = case
    a, b = make_params(torch.float32, shapes=((3, 3), (4,)))
    ref, fast = make_pair(name, kw, a, b)
    for step in range(6):
        for ps in (a, b):
            ps[0].grad = torch.full((3, 3), 0.1 * (step + 1))
            ps[1].grad = None if step < 3 else torch.full((4,), -0.2)
        ref.step()
        fast.step()
        if step < 3:  # untouched: no state (Adagrad creates its state up front, step 0)
            assert len(fast.state[b[1]]) == len(ref.state[a[1]])
            assert float(fast.state[b[1]].get("step", 0)) == 0
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])
    assert_same_state(ref, fast, **TOL[torch.float32])


def test_zero_size_tensors_still_count_steps():
    a, b = make_params(torch.float32, shapes=((0,), (0, 5), (2,)))
    ref, fast = make_pair("Adam", {"lr": 0.01}, a, b)
    run_steps([ref, fast], [a, b], steps=3)
    assert float(fast.state[b[0]]["step"]) == 3.0
    assert_same_state(ref, fast, **TOL[torch.float32])


def test_duplicate_parameter_is_updated_twice_like_torch():
    a, b = make_params(torch.float32, shapes=((5,),))
    with pytest.warns(UserWarning):
        ref = torch.optim.Adam([a[0], a[0]], lr=0.01, foreach=False)
    with pytest.warns(UserWarning):
        fast = pyfastopt.Adam([b[0], b[0]], lr=0.01)
    run_steps([ref, fast], [a, b], steps=5)
    torch.testing.assert_close(b[0], a[0], **TOL[torch.float32])
    assert float(fast.state[b[0]]["step"]) == 10.0


def test_closure_is_evaluated_with_grad_enabled():
    a, b = make_params(torch.float32, shapes=((4,),))
    for params, cls in ((a, torch.optim.SGD), (b, pyfastopt.SGD)):
        opt = cls(params, lr=0.1)

        def closure(params=params, opt=opt):
            opt.zero_grad()
            loss = (params[0] ** 2).sum()
            loss.backward()
            return loss

        with torch.no_grad():
            loss = opt.step(closure)
        assert loss is not None and loss.requires_grad
    torch.testing.assert_close(b[0], a[0])


@pytest.mark.parametrize(
    "name,changes",
    [
        ("SGD", [{"momentum": 0.9}, {"momentum": 0.0}, {"momentum": 0.5, "nesterov": True}]),
        ("RMSprop", [{"alpha": 0.9}, {"eps": 1e-3}]),
        ("Adam", [{"betas": (0.5, 0.9)}, {"weight_decay": 0.1}]),
    ],
)
def test_options_changed_between_steps(name, changes):
    a, b = make_params(torch.float32, shapes=((5, 4), (7,)))
    ref, fast = make_pair(name, {"lr": 0.01}, a, b)
    run_steps([ref, fast], [a, b], steps=3)
    for i, change in enumerate(changes):
        ref.param_groups[0].update(change)
        fast.param_groups[0].update(change)
        run_steps([ref, fast], [a, b], steps=3, seed=10 + i)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])
    assert_same_state(ref, fast, **TOL[torch.float32])


def test_removed_param_group_releases_its_plan():
    a, b = make_params(torch.float32, shapes=((3,), (4,)))
    fast = pyfastopt.SGD([{"params": [b[0]]}, {"params": [b[1]]}], lr=0.1, momentum=0.9)
    run_steps([fast], [b], steps=2)
    assert len(fast._fastopt_plans) == 2
    fast.param_groups.pop()
    b[1].grad = None
    run_steps([fast], [b[:1]], steps=1)
    assert len(fast._fastopt_plans) == 1
