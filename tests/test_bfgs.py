"""``pyfastopt.BFGS``: against SciPy's BFGS (same minimum, comparable iteration counts), against a
dense reference written here (torch's own line search and flat tensors), against
torch.optim.LBFGS where the two methods coincide, and its refusals and checkpoints."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from optim_db import TOL
from torch.optim.lbfgs import _strong_wolfe

import pyfastopt
from pyfastopt.optim.bfgs import MAX_NUMEL


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def beale(x):
    x0, x1 = x[0], x[1]
    return (
        (1.5 - x0 + x0 * x1) ** 2 + (2.25 - x0 + x0 * x1**2) ** 2 + (2.625 - x0 + x0 * x1**3) ** 2
    )


# function, start (as the study's surfaces), minimum
FUNCTIONS = {
    "rosenbrock": (rosenbrock, (-1.5, 2.0), (1.0, 1.0)),
    "beale": (beale, (1.0, 1.5), (3.0, 0.5)),
}


def minimize(f, start, dtype=torch.float64, **options):
    p = torch.nn.Parameter(torch.tensor(start, dtype=dtype))
    opt = pyfastopt.BFGS([p], **options)

    def closure():
        opt.zero_grad()
        loss = f(p)
        loss.backward()
        return loss

    opt.step(closure)
    return p.detach(), opt.state[p]


@pytest.mark.parametrize("name", ["rosenbrock", "beale"])
def test_against_scipy(name):
    optimize = pytest.importorskip("scipy.optimize", reason="SciPy is not installed")
    np = pytest.importorskip("numpy")
    f, start, minimum = FUNCTIONS[name]

    def fun(x):
        return float(f(torch.tensor(x)))

    def jac(x):
        t = torch.tensor(x, requires_grad=True)
        f(t).backward()
        return t.grad.numpy()

    ref = optimize.minimize(fun, np.array(start), jac=jac, method="BFGS", options={"gtol": 1e-9})
    assert ref.success
    x, state = minimize(
        f,
        start,
        line_search_fn="strong_wolfe",
        max_iter=500,
        tolerance_grad=1e-9,
        tolerance_change=1e-14,  # near the minimum the loss changes by less than the default
    )
    torch.testing.assert_close(x, torch.tensor(ref.x), rtol=0, atol=1e-6)
    torch.testing.assert_close(x, torch.tensor(minimum, dtype=torch.float64), rtol=0, atol=1e-6)
    # comparable work (measured: Rosenbrock 42 iterations vs SciPy's 39, Beale 18 vs 20)
    assert 0.5 * ref.nit <= state["n_iter"] <= 1.5 * ref.nit + 5
    assert state["func_evals"] <= 2 * ref.nfev + 5


@pytest.mark.parametrize("name", ["rosenbrock", "beale"])
def test_float32_reaches_the_minimum(name):
    f, start, minimum = FUNCTIONS[name]
    x, state = minimize(f, start, torch.float32, line_search_fn="strong_wolfe", max_iter=200)
    assert state["H"].dtype == torch.float64
    torch.testing.assert_close(x, torch.tensor(minimum), rtol=0, atol=2e-3)


# ---- a reference written here: dense BFGS on flat tensors, torch's own line search ----------


def reference_bfgs(params, closure, state, lr=1.0, max_iter=20, line_search_fn=None):
    """The algorithm pyfastopt.BFGS documents, in plain torch ops (the step of torch.optim.LBFGS
    with the direction -H g; H float64, scaled by y.s/y.y before the first update)."""

    def flat_grad():
        return torch.cat([p.grad.reshape(-1) for p in params])

    def add(t, d):
        offset = 0
        for p in params:
            p.add_(d[offset : offset + p.numel()].view_as(p), alpha=t)
            offset += p.numel()

    def evaluate(x, t, d):
        add(t, d)
        with torch.enable_grad():
            loss = float(closure().detach())
        g = flat_grad()
        with torch.no_grad():
            for p, xp in zip(params, x):
                p.copy_(xp)
        return loss, g

    state.setdefault("n_iter", 0)
    loss = float(closure().detach())
    g = flat_grad()
    for n in range(1, max_iter + 1):
        state["n_iter"] += 1
        if state["n_iter"] == 1:
            d, h = g.neg(), None
        else:
            y, s = g.sub(state["prev"]), state["d"].mul(state["t"])
            y64, s64 = y.double(), s.double()
            ys, yy = float(y64.dot(s64)), float(y64.dot(y64))
            h = state["H"]
            if ys > 1e-10:
                if h is None:
                    h = torch.eye(y.numel(), dtype=torch.float64) * (ys / yy)
                rho = 1 / ys
                eye = torch.eye(y.numel(), dtype=torch.float64)
                h = (eye - rho * torch.outer(s64, y64)) @ h @ (eye - rho * torch.outer(y64, s64))
                h = h + rho * torch.outer(s64, s64)
            d = g.neg() if h is None else torch.mv(h, g.double()).neg().to(g.dtype)
        state["H"], state["prev"], state["d"] = h, g.clone(), d
        t = min(1.0, 1.0 / g.abs().sum()) * lr if state["n_iter"] == 1 else lr
        gtd = g.dot(d)
        if gtd > -1e-9:
            break
        if line_search_fn is None:
            with torch.no_grad():
                add(t, d)
            if n != max_iter:
                loss = float(closure().detach())
                g = flat_grad()
        else:
            x = [p.detach().clone() for p in params]
            with torch.no_grad():
                loss, g, t, _ = _strong_wolfe(evaluate, x, t, d, loss, g, gtd)
                add(t, d)
        state["t"] = t
        if g.abs().max() <= 1e-7:
            break
    return loss


def mlp_problem(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen, dtype=dtype)
    y = torch.randn(64, 2, generator=gen, dtype=dtype)
    start = [torch.randn(s, generator=gen, dtype=dtype) * 0.5 for s in ((6, 5), (6,), (2, 6))]

    def loss(ps):
        return ((torch.tanh(x @ ps[0].T + ps[1]) @ ps[2].T - y) ** 2).mean()

    return start, loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_against_the_reference(dtype, line_search_fn):
    tol = TOL[dtype]
    start, loss = mlp_problem(dtype)
    lr = 1.0 if line_search_fn else 0.2
    runs = []
    for impl in ("reference", "pyfastopt"):
        params = [torch.nn.Parameter(s.clone()) for s in start]
        if impl == "pyfastopt":
            opt = pyfastopt.BFGS(params, lr=lr, max_iter=6, line_search_fn=line_search_fn)
        else:
            opt, state = None, {}

        def closure(params=params, opt=opt):
            for p in params:
                p.grad = None
            value = loss(params)
            value.backward()
            return value

        trajectory = []
        for _ in range(3 if dtype == torch.float64 else 2):
            if opt is None:
                with torch.enable_grad():
                    reference_bfgs(params, closure, state, lr, 6, line_search_fn)
            else:
                opt.step(closure)
            trajectory.append(torch.cat([p.detach().reshape(-1) for p in params]))
        runs.append(trajectory)
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a, **tol)


def test_where_bfgs_is_lbfgs():
    """Before a second curvature pair, BFGS (H scaled by y.s/y.y, one update) and L-BFGS (H_diag
    = y.s/y.y, one pair) take the same direction, so one step of two iterations agrees with
    torch.optim.LBFGS's; on a linear function every pair fails the curvature condition, both
    skip them all and agree for any number of iterations (BFGS never builds H)."""
    linear = lambda x: 3 * x[0] - 2 * x[1]  # noqa: E731
    for f, start, max_iter in ((rosenbrock, (-1.2, 1.0), 2), (linear, (0.5, 0.5), 6)):
        ends = []
        for cls in (torch.optim.LBFGS, pyfastopt.BFGS):
            p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
            opt = cls([p], lr=0.1, max_iter=max_iter, max_eval=2 * max_iter)

            def closure(p=p, opt=opt, f=f):
                opt.zero_grad()
                loss = f(p)
                loss.backward()
                return loss

            opt.step(closure)
            ends.append((p.detach().clone(), opt.state[p]))
        torch.testing.assert_close(ends[1][0], ends[0][0], rtol=1e-12, atol=1e-14)
        assert ends[1][1]["n_iter"] == ends[0][1]["n_iter"] == max_iter
        if f is linear:
            assert ends[1][1]["H"] is None and ends[0][1]["old_dirs"] == []


# ---- refusals, checkpoints ------------------------------------------------------------------


def test_complex_parameters_are_their_real_views():
    """As LBFGS (and torch's LBFGS) flatten them: a complex run is the run on real-view copies,
    bit for bit, with an inverse Hessian over the real elements."""
    gen = torch.Generator().manual_seed(2)
    target = torch.randn(4, 3, generator=gen, dtype=torch.complex128)
    start = torch.randn(4, 3, generator=gen, dtype=torch.complex128)
    ends = []
    for as_real in (False, True):
        p = torch.nn.Parameter(torch.view_as_real(start).clone() if as_real else start.clone())
        opt = pyfastopt.BFGS([p], line_search_fn="strong_wolfe")

        def closure(p=p, opt=opt, as_real=as_real):
            opt.zero_grad()
            z = torch.view_as_complex(p) if as_real else p
            loss = (z - target).abs().pow(2).sum()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        z = p.detach()
        ends.append((torch.view_as_complex(z) if as_real else z, opt.state[p]["H"]))
    assert torch.equal(ends[0][0], ends[1][0]) and torch.equal(ends[0][1], ends[1][1])
    assert ends[0][1].shape == (24, 24)
    torch.testing.assert_close(ends[0][0], target, rtol=0, atol=1e-10)


def test_refuses_more_than_max_numel():
    ok = torch.nn.Parameter(torch.zeros(MAX_NUMEL))
    pyfastopt.BFGS([ok])  # nothing is allocated before the first update
    big = [torch.nn.Parameter(torch.zeros(MAX_NUMEL - 1)), torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(pyfastopt.UnsupportedError, match=f"at most {MAX_NUMEL}"):
        pyfastopt.BFGS(big)


@pytest.mark.parametrize(
    "param",
    [
        torch.zeros(3, dtype=torch.complex64).conj(),
        torch.zeros(3, dtype=torch.bfloat16),
        torch.zeros(3, 4).T,
        torch.zeros(0),
    ],
    ids=["conjugate", "bfloat16", "transposed", "empty"],
)
def test_refuses_parameters_it_cannot_take(param):
    with pytest.raises(pyfastopt.UnsupportedError, match="BFGS takes dense"):
        pyfastopt.BFGS([torch.nn.Parameter(param)])


def test_errors_like_lbfgs():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="parameter groups"):
        pyfastopt.BFGS([{"params": [p]}, {"params": [torch.nn.Parameter(torch.ones(2))]}])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        pyfastopt.BFGS([p], lr=float("nan"))
    opt = pyfastopt.BFGS([p], line_search_fn="backtracking")

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):
        opt.step(closure)


def test_state_dict_round_trip_keeps_h_in_float64():
    f, start, _ = FUNCTIONS["rosenbrock"]

    def make():
        p = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32))
        opt = pyfastopt.BFGS([p], line_search_fn="strong_wolfe", max_iter=4)

        def closure():
            opt.zero_grad()
            loss = f(p)
            loss.backward()
            return loss

        return p, opt, closure

    p, opt, closure = make()
    for _ in range(2):
        opt.step(closure)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    q, opt2, closure2 = make()
    with torch.no_grad():
        q.copy_(p)
    opt2.load_state_dict(torch.load(buf))
    h = opt2.state[q]["H"]
    assert h.dtype == torch.float64 and torch.equal(h, opt.state[p]["H"])
    assert sorted(opt2.state[q]) == [
        "H",
        "d",
        "func_evals",
        "n_iter",
        "prev_flat_grad",
        "prev_loss",
        "t",
    ]
    opt.step(closure)
    opt2.step(closure2)
    assert torch.equal(p, q)
    assert torch.equal(opt.state[p]["H"], opt2.state[q]["H"])


def test_bad_state_raises_state_error():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    opt = pyfastopt.BFGS([p], max_iter=3)

    def closure():
        opt.zero_grad()
        loss = rosenbrock(p)
        loss.backward()
        return loss

    opt.step(closure)
    good = copy.deepcopy(opt.state[p])
    for key, value in (
        ("H", torch.eye(3, dtype=torch.float64)),
        ("H", torch.eye(2, dtype=torch.float32)),
        ("d", torch.zeros(3, dtype=torch.float64)),
        ("prev_flat_grad", torch.zeros(2)),
        ("t", None),
    ):
        opt.state[p] = {**good, key: value}
        with pytest.raises(pyfastopt.StateError):
            opt.step(closure)
