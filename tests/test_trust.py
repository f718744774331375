"""Regression tests for the trust boundary: misuse through standard APIs after a plan is cached.

Each case takes a step (so the fast path is armed), changes something the way a user can, and
steps again; the result must be torch's (``foreach=False``) or torch's own error. Cases that
used to crash the process run in a subprocess, so a regression fails the test instead of the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from helpers import torch_inits_added_adagrad_groups
from optim_db import require_torch_options

import pyfastopt
from pyfastopt import StateError
from pyfastopt.errors import OperandError

pytestmark = pytest.mark.usefixtures("reader")  # every case with both metadata readers

NAMES = [
    "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta", "NAdam", "RAdam", "Adamax", "ASGD",
    "Rprop", "Adafactor",
]  # fmt: skip
KW = {
    "SGD": {"lr": 0.1, "momentum": 0.9},
    "Adam": {"lr": 0.1},
    "AdamW": {"lr": 0.1},
    "Adagrad": {"lr": 0.1},
    "RMSprop": {"lr": 0.01, "momentum": 0.5},
    "Adadelta": {"lr": 0.5},
    "NAdam": {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True},
    "RAdam": {"lr": 0.1, "betas": (0.9, 0.9)},
    "Adamax": {"lr": 0.1},
    "ASGD": {"lr": 0.1, "t0": 0.0},  # averaging (mu != 1) from the third step on
    "Rprop": {"lr": 0.1},
    "Adafactor": {"lr": 0.05, "weight_decay": 0.01},
}


def pair(name: str, *tensors: torch.Tensor, **kw):
    """A torch.optim optimizer (for-loop) and a pyfastopt one over clones of ``tensors``."""
    opts = dict(KW[name], **kw)
    a = [torch.nn.Parameter(t.clone()) for t in tensors]
    b = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = getattr(torch.optim, name)(a, foreach=False, **opts)
    fast = getattr(pyfastopt, name)(b, **opts)
    return a, ref, b, fast


def both(a, ref, b, fast, fn):
    """Apply ``fn(params, opt)`` to both sides; return torch's exception type (or None)."""
    errors = []
    for params, opt in ((a, ref), (b, fast)):
        try:
            fn(params, opt)
            errors.append(None)
        except Exception as exc:  # compared below: same behaviour, error or not
            errors.append(type(exc))
    ea, eb = errors
    assert (ea is None) == (eb is None), f"torch raised {ea}, pyfastopt raised {eb}"
    return ea


def same(a, b, ref=None, fast=None):
    for x, y in zip(a, b):
        torch.testing.assert_close(y.detach(), x.detach(), rtol=1e-5, atol=1e-6)
    if ref is not None:
        for x, y in zip(a, b):
            for k, v in ref.state[x].items():
                torch.testing.assert_close(fast.state[y][k], v, rtol=1e-5, atol=1e-6)


def step_with(grads):
    def fn(params, opt):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()

    return fn


def run_py(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(__file__),
    )  # fmt: skip


# ---- 1. gradient dtype, 2. parameter dtype/strides, 10. gradient shape -----------------------


def test_gradient_dtype_swapped_through_data_is_torchs_result():
    code = """
    import torch, pyfastopt
    for n in (1000, 10**7):
        p = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
        o = pyfastopt.SGD([p], lr=.1)
        p.grad = torch.zeros_like(p); o.step()
        p.grad.data = torch.ones(n); o.step()
        assert torch.allclose(p.detach(), torch.full((n,), -0.1, dtype=torch.float64)), p[:3]
    print("ok")
    """
    out = run_py(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_retransposed_through_data(name):
    torch.manual_seed(0)
    w = torch.randn(5, 5)
    a, ref, b, fast = pair(name, w)
    g1 = torch.randn(5, 5)
    both(a, ref, b, fast, step_with([g1]))
    for params in (a, b):
        params[0].data = params[0].data.t()
    both(a, ref, b, fast, step_with([torch.randn(5, 5)]))
    both(a, ref, b, fast, step_with([torch.randn(5, 5).t()]))
    same(a, b, ref, fast)


def test_parameter_dtype_changed_at_the_same_size():
    # float32 (or complex64) data at the very address the float64 plan cached: the step must
    # not read it as float64. torch promotes or raises; pyfastopt matches it, or refuses with
    # StateError (the float64 state no longer fits the parameter) before writing anything.
    code = """
    import torch, pyfastopt
    from test_trust import NAMES, pair, both, step_with, same
    for name in NAMES:
        for dtype in (torch.float32, torch.complex64):
            a, ref, b, fast = pair(name, torch.zeros(1000, dtype=torch.float64))
            both(a, ref, b, fast, step_with([torch.ones(1000, dtype=torch.float64)]))
            for params in (a, b):
                params[0].data = torch.empty(0)
                params[0].data = torch.ones(1000, dtype=dtype)
            before = b[0].detach().clone()
            try:
                ref.step()
                torch_error = None
            except Exception as exc:
                torch_error = exc
            try:
                fast.step()
            except pyfastopt.StateError:
                assert torch.equal(b[0].detach(), before)
            except Exception as exc:
                assert torch_error is not None, exc
            else:
                assert torch_error is None, torch_error
                same(a, b)
    print("ok")
    """
    out = run_py(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("name", NAMES)
def test_gradient_of_another_shape_with_the_same_numel(name):
    a, ref, b, fast = pair(name, torch.randn(3, 4))
    both(a, ref, b, fast, step_with([torch.randn(3, 4)]))

    def reshaped(params, opt):
        params[0].grad.data = torch.randn(4, 3)
        opt.step()

    err = both(a, ref, b, fast, reshaped)
    assert err is not None  # torch refuses to broadcast a (4, 3) update into a (3, 4) weight
    same(a, b)


def test_gradient_shrunk_through_data_is_refused_like_torch():
    a, ref, b, fast = pair("Adam", torch.randn(100))
    both(a, ref, b, fast, step_with([torch.randn(100)]))

    def shrunk(params, opt):
        params[0].grad.data = torch.randn(10)
        opt.step()

    assert both(a, ref, b, fast, shrunk) is not None
    same(a, b)


# ---- 3. state storage swapped in place --------------------------------------------------------


def test_state_storage_swapped():
    code = """
    import torch
    from test_trust import NAMES, pair, both, step_with, same
    for name in NAMES:
        for how in ("share_memory_", "data_clone", "set_"):
            torch.manual_seed(0)
            a, ref, b, fast = pair(name, torch.randn(4096), torch.randn(3, 7))
            both(a, ref, b, fast, step_with([torch.randn(4096), torch.randn(3, 7)]))
            for opt, params in ((ref, a), (fast, b)):
                for p in params:
                    for v in opt.state[p].values():
                        if not torch.is_tensor(v):
                            continue
                        if how == "share_memory_":
                            v.share_memory_()
                        elif how == "data_clone":
                            v.data = v.data.clone()
                        else:
                            v.set_(v.detach().clone())
            for _ in range(3):
                both(a, ref, b, fast, step_with([torch.randn(4096), torch.randn(3, 7)]))
            same(a, b, ref, fast)
    print("ok")
    """
    out = run_py(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# ---- 4. a gradient replaced by another thread while the kernel runs ----------------------------


def test_gradient_replaced_by_another_thread_during_step():
    code = """
    import threading, torch, pyfastopt
    pyfastopt.set_num_threads(2)
    ps = [torch.nn.Parameter(torch.zeros(1 << 18)) for _ in range(4)]
    for p in ps:
        p.grad = torch.ones_like(p)
    o = pyfastopt.Adam(ps, lr=1e-3)
    stop = False
    def swap():
        while not stop:
            for p in ps:
                p.grad = torch.ones_like(p)
    t = threading.Thread(target=swap)
    t.start()
    try:
        for _ in range(100):
            o.step()
    finally:
        stop = True
        t.join()
    assert all(torch.isfinite(p).all() for p in ps)
    print("ok")
    """
    out = run_py(code, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# ---- 5. options that change the table's meaning at the same width ----------------------------


def test_rmsprop_centered_and_momentum_switched_together():
    torch.manual_seed(0)
    a, ref, b, fast = pair("RMSprop", torch.randn(50), momentum=0.0, centered=True)
    both(a, ref, b, fast, step_with([torch.randn(50)]))
    for opt in (ref, fast):
        opt.param_groups[0]["centered"] = False
        opt.param_groups[0]["momentum"] = 0.9
    # torch has no momentum buffer to read (KeyError); nor has pyfastopt (StateError, a
    # KeyError too), and nothing is written
    before = b[0].detach().clone()
    assert both(a, ref, b, fast, step_with([torch.randn(50)])) is KeyError
    with pytest.raises(pyfastopt.StateError, match="momentum_buffer"):
        step_with([torch.randn(50)])(b, fast)
    assert torch.equal(b[0].detach(), before)
    # back to the options the state was made for: the same numbers as torch again
    for opt in (ref, fast):
        opt.param_groups[0]["centered"] = True
        opt.param_groups[0]["momentum"] = 0.0
    for _ in range(3):
        both(a, ref, b, fast, step_with([torch.randn(50)]))
    same(a, b)
    # a fresh parameter with the switched options: torch and pyfastopt create the state alike
    a2, ref2, b2, fast2 = pair("RMSprop", torch.randn(50), momentum=0.0, centered=True)
    both(a2, ref2, b2, fast2, step_with([torch.randn(50)]))
    for opt in (ref2, fast2):
        opt.param_groups[0]["centered"] = False
        opt.param_groups[0]["momentum"] = 0.9
        opt.state.clear()
    for _ in range(3):
        both(a2, ref2, b2, fast2, step_with([torch.randn(50)]))
    same(a2, b2, ref2, fast2)
    assert all(torch.isfinite(p).all() for p in b2)


@pytest.mark.parametrize("name,key,values", [("Adam", "amsgrad", (True, False, True))])
def test_amsgrad_switched(name, key, values):
    torch.manual_seed(0)
    a, ref, b, fast = pair(name, torch.randn(50))
    both(a, ref, b, fast, step_with([torch.randn(50)]))
    for v in values:
        for opt in (ref, fast):
            opt.param_groups[0][key] = v
        both(a, ref, b, fast, step_with([torch.randn(50)]))
        same(a, b)


# ---- 6. conjugate and negative views ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("where", ["grad", "param"])
def test_conjugate_views(name, where):
    torch.manual_seed(0)
    z = torch.randn(6, dtype=torch.complex64)
    init = z.conj() if where == "param" else z
    opts = dict(KW[name])
    a = [torch.nn.Parameter(init.clone() if where == "grad" else z.clone().conj())]
    b = [torch.nn.Parameter(init.clone() if where == "grad" else z.clone().conj())]
    ref = getattr(torch.optim, name)(a, foreach=False, **opts)
    fast = getattr(pyfastopt, name)(b, **opts)
    g = torch.randn(6, dtype=torch.complex64)

    def fn(params, opt):
        params[0].grad = g.clone().conj() if where == "grad" else g.clone()
        opt.step()

    for _ in range(2):
        both(a, ref, b, fast, fn)
    same(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_negative_view_gradient(name):
    torch.manual_seed(0)
    a, ref, b, fast = pair(name, torch.randn(8))
    g = torch.randn(8)

    def fn(params, opt):
        params[0].grad = torch._neg_view(g.clone())
        opt.step()

    for _ in range(3):
        both(a, ref, b, fast, fn)
    same(a, b, ref, fast)


@pytest.mark.parametrize("name", NAMES)
def test_negative_view_parameter_and_state_after_caching(name):
    torch.manual_seed(0)
    a, ref, b, fast = pair(name, torch.randn(8))
    both(a, ref, b, fast, step_with([torch.randn(8)]))
    for opt, params in ((ref, a), (fast, b)):
        params[0].data = torch._neg_view(params[0].data.neg())  # same values, neg bit set
        for v in opt.state[params[0]].values():
            if torch.is_tensor(v):  # the step counter too
                v.data = torch._neg_view(v.data.neg())
    for _ in range(2):
        both(a, ref, b, fast, step_with([torch.randn(8)]))
    same(a, b, ref, fast)


class _StateSubclass(torch.Tensor):
    """A tensor subclass without overrides: torch's for-loop computes with it as with a tensor."""


@pytest.mark.parametrize("name", NAMES)
def test_state_buffer_of_a_subclass_is_replaced_by_a_plain_copy(name):
    # (empty_like kept the subclass, and the core then refused the "copy")
    torch.manual_seed(0)
    a, ref, b, fast = pair(name, torch.randn(8))
    both(a, ref, b, fast, step_with([torch.randn(8)]))
    for opt, params in ((ref, a), (fast, b)):
        st = opt.state[params[0]]
        for k, v in list(st.items()):
            if torch.is_tensor(v) and v.shape == params[0].shape:
                st[k] = v.clone().as_subclass(_StateSubclass)
    for _ in range(2):
        both(a, ref, b, fast, step_with([torch.randn(8)]))
    same(a, b, ref, fast)


# ---- 7. duplicated and overlapping parameters ----------------------------------------------------


def test_duplicated_parameter_sgd_momentum_matches_torch():
    p = torch.nn.Parameter(torch.zeros(1))
    q = torch.nn.Parameter(torch.zeros(1))
    ref = torch.optim.SGD([p, p], lr=0.1, momentum=0.9, foreach=False)
    fast = pyfastopt.SGD([q, q], lr=0.1, momentum=0.9)
    for _ in range(3):
        p.grad, q.grad = torch.ones(1), torch.ones(1)
        ref.step()
        fast.step()
        torch.testing.assert_close(q.detach(), p.detach())
        torch.testing.assert_close(
            fast.state[q]["momentum_buffer"], ref.state[p]["momentum_buffer"]
        )
    assert p.item() != 0.0


@pytest.mark.parametrize("name", NAMES)
def test_tied_weights_listed_twice(name):
    torch.manual_seed(0)
    emb = torch.randn(10, 4)
    a, ref, b, fast = pair(name, emb, torch.randn(4))
    ref.param_groups[0]["params"] = [a[0], a[1], a[0]]
    fast.param_groups[0]["params"] = [b[0], b[1], b[0]]
    for _ in range(4):
        both(a, ref, b, fast, step_with([torch.randn(10, 4), torch.randn(4)]))
    same(a, b, ref, fast)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_overlapping_column_views(name, threads):
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    wa, wb = w.clone(), w.clone()
    a = [torch.nn.Parameter(wa[:, :6]), torch.nn.Parameter(wa[:, 2:])]
    b = [torch.nn.Parameter(wb[:, :6]), torch.nn.Parameter(wb[:, 2:])]
    ref = getattr(torch.optim, name)(a, foreach=False, **KW[name])
    fast = getattr(pyfastopt, name)(b, **KW[name])
    pyfastopt.set_num_threads(threads)
    try:
        for _ in range(3):
            gs = [torch.randn(6, 6), torch.randn(6, 6)]
            both(a, ref, b, fast, step_with(gs))
    finally:
        pyfastopt.set_num_threads(None)
    torch.testing.assert_close(wb, wa, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_overlapping_dense_parameters_are_thread_count_independent(name):
    results = []
    for threads in (1, 2):
        torch.manual_seed(0)
        flat = torch.randn(1 << 17)
        a = [torch.nn.Parameter(flat[: 1 << 16]), torch.nn.Parameter(flat[1 << 15 :])]
        ref = getattr(torch.optim, name)(a, foreach=False, **KW[name])
        flat_b = flat.clone()
        b = [torch.nn.Parameter(flat_b[: 1 << 16]), torch.nn.Parameter(flat_b[1 << 15 :])]
        fast = getattr(pyfastopt, name)(b, **KW[name])
        pyfastopt.set_num_threads(threads)
        try:
            for _ in range(3):
                gs = [torch.randn(1 << 16), torch.randn(3 << 15)]
                both(a, ref, b, fast, step_with(gs))
        finally:
            pyfastopt.set_num_threads(None)
        torch.testing.assert_close(flat_b, flat, rtol=1e-5, atol=1e-6)
        results.append(flat_b)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("name", NAMES)
def test_parameter_overlapping_itself_is_torchs_result(name):
    """``p.data = base.as_strided((5, 4), (1, 1))``: torch's in-place ops write the shared
    elements one after another; stepping a contiguous copy and copying it back did not."""
    a, ref, b, fast = pair(name, torch.randn(5, 4))
    both(a, ref, b, fast, step_with([torch.randn(5, 4)]))
    for params in (a, b):
        params[0].data = torch.linspace(-1, 1, 10).as_strided((5, 4), (1, 1))
    for _ in range(2):
        both(a, ref, b, fast, step_with([torch.randn(5, 4)]))
    same(a, b)


# ---- 7b. gradients and state sharing memory with what the step writes ---------------------------

DECAY_FIRST = {  # steps that scale the parameter in place before they read the gradient
    "AdamW": {"lr": 0.1},
    "Adam": {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True},
    "NAdam": {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True},
    "RAdam": {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True},
    "Adafactor": {"lr": 0.05, "weight_decay": 0.1},
}


def aliased_grad(params, opt):
    for p in params:
        p.grad = p.detach()  # the gradient *is* the parameter: torch reads it as decayed
    opt.step()


@pytest.mark.parametrize("name", sorted(DECAY_FIRST))
def test_gradient_aliasing_its_parameter_is_torchs_result(name):
    require_torch_options(name, DECAY_FIRST[name])
    a, ref, b, fast = pair(name, torch.randn(6, 5), **DECAY_FIRST[name])
    for _ in range(3):
        both(a, ref, b, fast, aliased_grad)
        same(a, b, ref, fast)


@pytest.mark.parametrize("name", ["AdamW", "Adafactor"])
def test_gradient_aliasing_its_parameter_after_caching(name):
    """The fast path compares each gradient's bytes with the memory its plan holds
    (``Plan.collect``): a gradient set to alias its parameter after a plan is cached sends the
    group back to the general path, which hands it to torch's step."""
    a, ref, b, fast = pair(name, torch.randn(6, 5), **DECAY_FIRST[name])
    both(a, ref, b, fast, step_with([torch.randn(6, 5)]))  # arms the fast path
    for _ in range(2):
        both(a, ref, b, fast, aliased_grad)
    same(a, b, ref, fast)


def buffers(opt, p):
    return [k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.shape == p.shape]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["param", "other-buffer"])
def test_state_buffer_sharing_memory_is_torchs_result(name, how):
    """A state entry set to the parameter itself, or two entries set to one tensor."""
    torch.manual_seed(0)
    a, ref, b, fast = pair(name, torch.randn(6, 5), torch.randn(7))
    both(a, ref, b, fast, step_with([torch.randn(6, 5), torch.randn(7)]))
    for opt, params in ((ref, a), (fast, b)):
        st, keys = opt.state[params[0]], buffers(opt, params[0])
        if len(keys) < (1 if how == "param" else 2):
            pytest.skip("no buffers of the parameter's shape to alias")
        if how == "param":
            st[keys[0]] = params[0].data
        else:
            st[keys[1]] = st[keys[0]]
    for _ in range(2):
        both(a, ref, b, fast, step_with([torch.randn(6, 5), torch.randn(7)]))
    for x, y in zip(a, b):  # a square root of the parameter as a buffer: NaN where it is < 0
        torch.testing.assert_close(y.detach(), x.detach(), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_state_buffer_sharing_memory_with_bf16_state_is_refused():
    p = torch.nn.Parameter(torch.randn(64))
    opt = pyfastopt.Adam([p], lr=0.1, state_dtype=torch.bfloat16)
    p.grad = torch.randn(64)
    opt.step()
    opt.state[p]["exp_avg_sq"] = opt.state[p]["exp_avg"]
    before = p.detach().clone()
    with pytest.raises(pyfastopt.StateError, match="shares memory"):
        opt.step()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["complex", "float64"])
def test_parameter_made_complex_or_float64_keeps_its_float32_state(name, kind):
    """``p.data = complex/double`` after steps: torch's step computes with the float32 state or
    raises; pyfastopt used to cast the state silently (inventing imaginary parts)."""
    torch.manual_seed(0)
    a, ref, b, fast = pair(name, torch.randn(6))
    both(a, ref, b, fast, step_with([torch.randn(6)]))
    for params in (a, b):
        d = params[0].data
        params[0].data = torch.complex(d, 0.5 * d) if kind == "complex" else d.double()
    g = torch.randn(6, dtype=b[0].dtype)
    errors = []
    for params, opt in ((a, ref), (b, fast)):
        try:
            step_with([g])(params, opt)
            errors.append(None)
        except Exception as exc:  # compared below
            errors.append(exc)
    torch_error, fast_error = errors
    if torch_error is not None:  # torch refuses the float32 state: so must pyfastopt
        assert fast_error is not None
        return
    if isinstance(fast_error, pyfastopt.StateError):  # or refuses it clearly where torch
        return  # computes with it (a state tensor that does not fit: docs/trust.md)
    assert fast_error is None
    same(a, b)
    for k, v in ref.state[a[0]].items():
        assert fast.state[b[0]][k].dtype == v.dtype, k


# ---- 8. autograd version counters ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_backward_through_stale_weights_raises_like_torch(name):
    for module in (torch.optim, pyfastopt):
        torch.manual_seed(0)
        first, lin = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)  # lin's weight is saved
        opt = getattr(module, name)(lin.parameters(), **KW[name])
        loss = lin(first(torch.randn(2, 4))).pow(2).sum()
        loss.backward(retain_graph=True)
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


@pytest.mark.parametrize("name", NAMES)
def test_every_written_tensor_is_bumped(name):
    a, ref, b, fast = pair(name, torch.randn(5))
    both(a, ref, b, fast, step_with([torch.randn(5)]))
    before = {k: v._version for k, v in fast.state[b[0]].items() if torch.is_tensor(v)}
    pv = b[0]._version
    both(a, ref, b, fast, step_with([torch.randn(5)]))
    assert b[0]._version > pv
    for k, v in fast.state[b[0]].items():
        if torch.is_tensor(v):
            assert v._version > before[k], k


# ---- 9. invalid options set after construction ---------------------------------------------------


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("Adam", "betas", (1.0, 0.999)),
        ("AdamW", "betas", (1.0, 0.9)),
        ("Adagrad", "lr_decay", -1.0),
    ],
)
def test_invalid_options_after_construction_raise_like_torch(name, key, value):
    a, ref, b, fast = pair(name, torch.randn(5))
    both(a, ref, b, fast, step_with([torch.randn(5)]))
    for opt in (ref, fast):
        opt.param_groups[0][key] = value
    before = b[0].detach().clone()
    with pytest.raises(ZeroDivisionError):
        step_with([torch.randn(5)])(a, ref)
    with pytest.raises(ZeroDivisionError):
        step_with([torch.randn(5)])(b, fast)
    assert torch.equal(b[0].detach(), before)  # nothing written


def test_capturable_set_by_hand_after_caching_is_refused():
    a, ref, b, fast = pair("Adam", torch.randn(5))
    both(a, ref, b, fast, step_with([torch.randn(5)]))
    fast.param_groups[0]["capturable"] = True
    before = b[0].detach().clone()
    with pytest.raises(pyfastopt.UnsupportedError, match="capturable"):
        step_with([torch.randn(5)])(b, fast)
    assert torch.equal(b[0].detach(), before)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_differentiable_set_by_hand_after_caching_is_torchs_step(name):
    a, ref, b, fast = pair(name, torch.randn(5))
    both(a, ref, b, fast, step_with([torch.randn(5)]))
    ref.param_groups[0]["differentiable"] = True
    fast.param_groups[0]["differentiable"] = True
    for _ in range(2):
        both(a, ref, b, fast, step_with([torch.randn(5)]))
        torch.testing.assert_close(b[0], a[0], rtol=1e-6, atol=1e-7)
        assert b[0].grad_fn is None  # torch's grad mode: defaults["differentiable"] is False
    fast.param_groups[0]["differentiable"] = False  # back to the native step
    ref.param_groups[0]["differentiable"] = False
    both(a, ref, b, fast, step_with([torch.randn(5)]))
    torch.testing.assert_close(b[0], a[0], rtol=1e-6, atol=1e-7)


# ---- also: Adagrad's lazily created state, fork safety ------------------------------------------


@pytest.mark.skipif(
    not torch_inits_added_adagrad_groups(), reason="this torch's Adagrad raises KeyError here"
)
def test_adagrad_add_param_group_starts_from_the_constructors_value():
    x, y = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    ref = torch.optim.Adagrad(
        [torch.nn.Parameter(torch.ones(1))], lr=0.1, initial_accumulator_value=0.5
    )
    fast = pyfastopt.Adagrad(
        [torch.nn.Parameter(torch.ones(1))], lr=0.1, initial_accumulator_value=0.5
    )
    ref.add_param_group({"params": [x], "initial_accumulator_value": 2.0})
    fast.add_param_group({"params": [y], "initial_accumulator_value": 2.0})
    for opt, p in ((ref, x), (fast, y)):
        p.grad = torch.ones(3)
        opt.step()
    torch.testing.assert_close(fast.state[y]["sum"], ref.state[x]["sum"])
    torch.testing.assert_close(y.detach(), x.detach())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_forked_child_does_not_hang_after_set_num_threads():
    code = """
    import os, torch, pyfastopt
    pyfastopt.set_num_threads(2)
    ps = [torch.nn.Parameter(torch.zeros(1 << 18)) for _ in range(2)]
    for p in ps:
        p.grad = torch.ones_like(p)
    o = pyfastopt.Adam(ps, lr=1e-3)
    o.step()  # the parent's OpenMP pool is up
    pid = os.fork()
    if pid == 0:
        o.step()
        code = 0 if pyfastopt.get_num_threads() == 1 else 3
        try:  # asking for threads again would hang the next large step: refused
            pyfastopt.set_num_threads(2)
            code = 4
        except RuntimeError:
            pass
        pyfastopt.set_num_threads(None)  # (following torch's count would hang too)
        o.step()
        os._exit(code if pyfastopt.get_num_threads() == 1 else 5)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    o.step()
    print("ok")
    """
    out = run_py(code, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_other_thread_can_step_meanwhile():
    """Two optimizers stepped from two Python threads: both right, nothing shared."""
    torch.manual_seed(0)
    outs = []

    def work(seed):
        g = torch.Generator().manual_seed(seed)
        a, ref, b, fast = pair("Adam", torch.randn(1 << 16, generator=g))
        for _ in range(5):
            both(a, ref, b, fast, step_with([torch.randn(1 << 16, generator=g)]))
        outs.append(torch.equal(a[0], a[0]) and torch.allclose(b[0], a[0], atol=1e-6))

    ts = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert outs == [True, True]


def test_plan_refuses_malformed_rows():
    core = pyfastopt._core
    p = torch.nn.Parameter(torch.zeros(4))
    row = [4, 0, p.data_ptr(), 0]
    bump = torch._C._increment_version
    for bad in (
        (p, None, (1,), (p,)),  # a check that is not a (key, value) pair
        (p, [], (), (p,)),  # a state that is not a dict
        (p, None, (), ()),  # no parameter held
        (p, None, (), (torch._neg_view(torch.zeros(4)),)),  # a tensor the core may not read
        (p, None, (), (torch.zeros(4),)),  # the table's address is not the held tensor's
    ):
        with pytest.raises(ValueError):
            core.Plan([p], [bad], row, 4, [], bump, [], [16])
    with pytest.raises(ValueError):  # one gradient extent per row
        core.Plan([p], [(p, None, (), (p,))], row, 4, [], bump, [], [])


# ---- values set in place on the cached path, shrunk storage, options set by hand ----------------


@pytest.mark.parametrize("value", [float("nan"), -5.0, float("inf")])
@pytest.mark.parametrize("name", ["Adam", "RMSprop", "Adafactor", "NAdam"])
def test_step_counter_set_in_place_is_refused_on_the_cached_path(name, value):
    p = torch.nn.Parameter(torch.randn(6, 5))
    opt = getattr(pyfastopt, name)([p], lr=1e-2)
    p.grad = torch.randn(6, 5)
    opt.step()
    opt.step()  # the plan is cached: it re-checks the counter's identity, not its value
    opt.state[p]["step"].fill_(value)
    before = p.detach().clone()
    with pytest.raises(StateError, match="finite count"):
        opt.step()
    assert torch.equal(p, before)


@pytest.mark.parametrize("target", ["param", "grad", "state"])
def test_storage_shrunk_in_place_is_refused(target):
    p = torch.nn.Parameter(torch.randn(4096))
    opt = pyfastopt.AdamW([p], lr=1e-2)
    p.grad = torch.randn(4096)
    opt.step()
    opt.step()
    t = {"param": p, "grad": p.grad, "state": opt.state[p]["exp_avg"]}[target]
    t.untyped_storage().resize_(8)
    with pytest.raises((StateError, OperandError), match="past its storage"):
        opt.step()


def test_master_weights_and_stochastic_rounding_set_by_hand_are_refused():
    p = torch.nn.Parameter(torch.randn(8).bfloat16())
    opt = pyfastopt.Adam([p], lr=1e-2, master_weights=True)
    p.grad = torch.randn(8).bfloat16()
    opt.step()
    opt.param_groups[0]["stochastic_rounding"] = True
    with pytest.raises(ValueError, match="exclude each other"):
        opt.step()


def test_two_threads_stepping_one_optimizer_take_turns():
    # thread A is in its native call (the GIL released) when the main thread replaces the
    # gradient and steps the same optimizer: the steps run one after the other (a lock per
    # optimizer), where sharing the cached plan freed A's gradient under its kernel
    code = """
    import threading, time, torch, pyfastopt
    pyfastopt.set_num_threads(1)
    n = 1 << 24
    p = torch.nn.Parameter(torch.zeros(n))
    opt = pyfastopt.Adam([p], lr=1e-3)
    for _ in range(2):
        p.grad = torch.ones(n)
        opt.step()
    for _ in range(3):
        p.grad = torch.ones(n)
        a = threading.Thread(target=opt.step)
        a.start()
        time.sleep(0.003)
        p.grad = torch.ones(n)
        opt.step()
        a.join()
    assert float(opt.state[p]["step"]) == 8.0
    print("ok")
    """
    out = run_py(code, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, (out.returncode, out.stderr[-2000:])


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop", "Adafactor"])
def test_inference_tensors_are_not_updated_outside_inference_mode(name):
    kw = {"lr": 0.1, "momentum": 0.9} if name == "SGD" else {"lr": 0.1}
    with torch.inference_mode():
        made_inside = torch.nn.Parameter(torch.ones(6, 5))
    for p, first_inside in ((made_inside, False), (torch.nn.Parameter(torch.ones(6, 5)), True)):
        opt = getattr(pyfastopt, name)([p], **kw)
        p.grad = torch.ones(6, 5)
        if first_inside:  # the state made inside is inference tensors
            with torch.inference_mode():
                opt.step()
                opt.step()
        before = p.detach().clone()
        with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
            opt.step()
        assert torch.equal(p.detach(), before)


def test_load_state_dict_hooks_raise_as_in_torch():
    class HookError(Exception):
        pass

    def pre(opt, sd):
        raise HookError("pre")

    def post(opt):
        raise HookError("post")

    outs = []
    for module, kw in ((torch.optim, {"foreach": False}), (pyfastopt, {})):
        p = torch.nn.Parameter(torch.ones(3))
        opt = module.SGD([p], lr=0.1, momentum=0.9, **kw)
        p.grad = torch.ones(3)
        opt.step()
        sd = opt.state_dict()
        sd = {"state": {0: {"momentum_buffer": torch.full((3,), 5.0)}},
              "param_groups": [dict(sd["param_groups"][0], lr=0.01)]}  # fmt: skip
        handle = opt.register_load_state_dict_pre_hook(pre)
        with pytest.raises(HookError, match="pre"):  # its own type, nothing loaded
            opt.load_state_dict(sd)
        assert opt.param_groups[0]["lr"] == 0.1
        handle.remove()
        opt.register_load_state_dict_post_hook(post)
        with pytest.raises(HookError, match="post"):  # raised after the state was loaded
            opt.load_state_dict(sd)
        outs.append((opt.param_groups[0]["lr"], opt.state[p]["momentum_buffer"].clone()))
    assert outs[0][0] == outs[1][0] == 0.01
    assert torch.equal(outs[0][1], outs[1][1])
