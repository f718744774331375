"""``pyfastopt.LBFGS`` against ``torch.optim.LBFGS``.

Both run the same closures from the same start, with every option; the parameters after each
step and the whole state (``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``,
``prev_flat_grad``, ``prev_loss``, ``al``, counters) must agree within the parity tolerances.
The native dot products accumulate in double (torch's in the dtype, through BLAS), so the runs
are not bit-identical, and on Rosenbrock's curved valley differences grow by about 3x per step:
each case runs as many steps as stay well inside the tolerance. Every case also checks which
path ran (the native passes, or torch's own step for what they do not take).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from optim_db import TOL

import pyfastopt
from pyfastopt.errors import OperandError
from pyfastopt.optim import _vectors
from pyfastopt.optim._vectors import Space


@pytest.fixture
def native_calls(monkeypatch):
    """Counts the native vector calls (program, direction)."""
    calls = {"program": 0, "direction": 0}
    core = _vectors._core

    class Counting:
        def __getattr__(self, name):
            return getattr(core, name)

        def vector_program(self, *args, **kwargs):
            calls["program"] += 1
            return core.vector_program(*args, **kwargs)

        def lbfgs_direction(self, *args, **kwargs):
            calls["direction"] += 1
            return core.lbfgs_direction(*args, **kwargs)

    monkeypatch.setattr(_vectors, "_core", Counting())
    return calls


# ---- problems: (parameters, loss of the parameters) ---------------------------------------------


def quadratic(dtype):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 60, generator=gen, dtype=torch.float64)
    h = (a @ a.T / 60 + torch.eye(60, dtype=torch.float64)).to(dtype)
    b = torch.randn(60, generator=gen, dtype=torch.float64).to(dtype)
    start = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in ((5, 8), (20,))]

    def loss(ps):
        x = torch.cat([p.reshape(-1) for p in ps])
        return 0.5 * x @ (h @ x) - b @ x

    return start, loss


def rosenbrock(dtype):
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(6, generator=gen, dtype=dtype), torch.randn(4, generator=gen, dtype=dtype)]

    def loss(ps):
        x = torch.cat(ps)
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    return start, loss


def mlp(dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(128, 12, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (128,), generator=gen)
    shapes = ((16, 12), (16,), (3, 16), (3,), (4, 4))  # the last one gets no gradient
    start = [torch.randn(s, generator=gen, dtype=dtype) * 0.3 for s in shapes]

    def loss(ps):
        w1, b1, w2, b2, _unused = ps
        h = torch.tanh(x @ w1.T + b1)
        return torch.nn.functional.cross_entropy(h @ w2.T + b2, y)

    return start, loss


PROBLEMS = {"quadratic": quadratic, "rosenbrock": rosenbrock, "mlp": mlp}


def make(cls, problem, dtype, **options):
    start, loss = PROBLEMS[problem](dtype)
    params = [torch.nn.Parameter(s.clone()) for s in start]
    opt = cls(params, **options)

    def closure():
        opt.zero_grad()
        value = loss(params)
        value.backward()
        return value

    return params, opt, closure


def assert_same(ref_opt, fast_opt, ref_params, fast_params, tol):
    for a, b in zip(ref_params, fast_params):
        torch.testing.assert_close(b.detach(), a.detach(), **tol)
    assert_same_state(ref_opt.state_dict(), fast_opt.state_dict(), tol)


def assert_same_state(ref, fast, tol):
    assert ref["param_groups"] == fast["param_groups"]
    assert ref["state"].keys() == fast["state"].keys()
    for k in ref["state"]:
        a, b = ref["state"][k], fast["state"][k]
        assert list(a) == list(b), (list(a), list(b))
        for key in a:
            assert_same_value(a[key], b[key], tol, key)


def assert_same_value(a, b, tol, key):
    assert type(a) is type(b), (key, type(a), type(b))
    if isinstance(a, list):  # al, ro, old_dirs, old_stps
        assert len(a) == len(b), key
        for x, y in zip(a, b):
            assert (x is None) == (y is None), key
        if a and isinstance(a[0], torch.Tensor) and a[0].dim() == 0:
            # scalars from dot products, some with cancellation: compared as one vector
            x = torch.stack([t for t in a if t is not None])
            y = torch.stack([t for t in b if t is not None])
            atol = tol["rtol"] * 30 * float(x.abs().max())
            torch.testing.assert_close(y, x, rtol=tol["rtol"] * 30, atol=atol)
        else:
            for x, y in zip(a, b):
                assert_same_value(x, y, tol, key)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (key, a, b)
        torch.testing.assert_close(b, a, rtol=tol["rtol"] * 30, atol=tol["atol"] * 30)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=tol["rtol"] * 30, abs=tol["atol"]), key
    else:
        assert a == b, key


# (problem, options, steps in float32, steps in float64): as many steps as the two runs stay well
# within the tolerances (measured: the largest relative difference at the last step is 10x or more
# below them)
CASES = [
    ("quadratic", {"lr": 0.3, "max_iter": 5}, 2, 4),
    ("quadratic", {"line_search_fn": "strong_wolfe", "max_iter": 3, "history_size": 3}, 1, 2),
    ("rosenbrock", {"lr": 0.05, "history_size": 3, "max_iter": 4}, 4, 6),
    ("rosenbrock", {"line_search_fn": "strong_wolfe", "max_iter": 4}, 2, 4),
    ("rosenbrock", {"line_search_fn": "strong_wolfe", "max_iter": 3, "max_eval": 4}, 2, 4),
    ("mlp", {"lr": 0.5, "history_size": 2, "max_iter": 3}, 3, 5),
    ("mlp", {"line_search_fn": "strong_wolfe", "max_iter": 4, "history_size": 3}, 3, 4),
    ("mlp", {"max_iter": 1, "lr": torch.tensor(0.2)}, 5, 5),
    ("mlp", {"tolerance_change": 1e-2, "tolerance_grad": 1e-3, "max_iter": 6}, 1, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("problem", "options", "steps32", "steps64"), CASES)
def test_iterates_and_state_match_torch(problem, options, steps32, steps64, dtype, native_calls):
    tol = TOL[dtype]
    steps = steps32 if dtype == torch.float32 else steps64
    ref_params, ref, ref_closure = make(torch.optim.LBFGS, problem, dtype, **options)
    fast_params, fast, fast_closure = make(pyfastopt.LBFGS, problem, dtype, **options)
    for _ in range(steps):
        loss_ref = ref.step(ref_closure)
        loss_fast = fast.step(fast_closure)
        torch.testing.assert_close(loss_fast, loss_ref, **tol)
        assert_same(ref, fast, ref_params, fast_params, tol)
    assert native_calls["direction"] >= steps
    # a checkpoint of either loads into the other, and both go on alike
    fast2_params, fast2, fast2_closure = make(pyfastopt.LBFGS, problem, dtype, **options)
    ref2_params, ref2, ref2_closure = make(torch.optim.LBFGS, problem, dtype, **options)
    with torch.no_grad():
        for a, b, c in zip(fast2_params, ref2_params, ref_params):
            a.copy_(c)
            b.copy_(c)
    fast2.load_state_dict(copy.deepcopy(ref.state_dict()))
    ref2.load_state_dict(_through_file(fast.state_dict()))
    with torch.no_grad():
        for a, c in zip(ref2_params, fast_params):
            a.copy_(c)
    ref.step(ref_closure)
    fast.step(fast_closure)
    fast2.step(fast2_closure)
    ref2.step(ref2_closure)
    assert_same(ref, fast2, ref_params, fast2_params, tol)
    assert_same(ref2, fast, ref2_params, fast_params, tol)


def _through_file(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_converges_to_torchs_minimum(line_search_fn):
    """Run to convergence on Rosenbrock: the same minimum and about the same work."""
    options = {"line_search_fn": line_search_fn, "max_iter": 200, "history_size": 10}
    if line_search_fn is None:
        options["lr"] = 0.3
    runs = []
    for cls in (torch.optim.LBFGS, pyfastopt.LBFGS):
        params, opt, closure = make(cls, "rosenbrock", torch.float64, **options)
        for _ in range(3):
            opt.step(closure)
        runs.append((torch.cat([p.detach() for p in params]), opt.state[params[0]]))
    (x_ref, st_ref), (x_fast, st_fast) = runs
    ones = torch.ones(10, dtype=torch.float64)
    torch.testing.assert_close(x_ref, ones, rtol=0, atol=1e-4)
    torch.testing.assert_close(x_fast, ones, rtol=0, atol=1e-4)
    assert abs(st_fast["func_evals"] - st_ref["func_evals"]) <= 0.2 * st_ref["func_evals"]


def test_closure_returning_a_float_and_history_popping(native_calls):
    """torch calls float() on the closure's result; a full history drops its oldest pair."""
    results = []
    for cls in (torch.optim.LBFGS, pyfastopt.LBFGS):
        params, opt, closure = make(cls, "quadratic", torch.float64, history_size=2, max_iter=8)
        values = [float(opt.step(lambda closure=closure: closure().item())) for _ in range(2)]
        results.append((values, opt.state[params[0]]))
    (v_ref, s_ref), (v_fast, s_fast) = results
    assert v_fast == pytest.approx(v_ref, rel=1e-12)
    assert len(s_fast["old_dirs"]) == len(s_ref["old_dirs"]) == 2
    assert len(s_fast["al"]) == 2 and s_fast["n_iter"] == s_ref["n_iter"]
    assert native_calls["direction"] > 0


def test_optimal_start_returns_at_once(native_calls):
    p = torch.nn.Parameter(torch.ones(5))
    opt = pyfastopt.LBFGS([p])

    def closure():
        opt.zero_grad()
        loss = ((p - 1) ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 0
    assert opt.state[p] == {"func_evals": 1, "n_iter": 0}
    assert native_calls["direction"] == 0 and native_calls["program"] == 1


def test_results_do_not_depend_on_the_thread_count():
    """Reductions in a fixed order: one thread or two, the same bits (vectors of several blocks)."""
    runs = []
    for threads in (1, 2):
        pyfastopt.set_num_threads(threads)
        gen = torch.Generator().manual_seed(5)
        target = torch.randn(70000, generator=gen, dtype=torch.float32)
        scale = torch.rand(70000, generator=gen, dtype=torch.float32) + 0.5
        p = torch.nn.Parameter(torch.zeros(70000))
        opt = pyfastopt.LBFGS([p], line_search_fn="strong_wolfe", max_iter=5, history_size=3)

        def closure(p=p, target=target, scale=scale, opt=opt):
            opt.zero_grad()
            loss = (scale * (p - target) ** 2).sum() + (p**4).sum() * 1e-3
            loss.backward()
            return loss

        opt.step(closure)
        runs.append((p.detach().clone(), opt.state[p]["d"].clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# ---- what the native passes do not take: torch's own step ---------------------------------------


def _fallback_case(kind):
    gen = torch.Generator().manual_seed(3)
    if kind == "bfloat16":
        return [torch.nn.Parameter(torch.randn(4, 3, generator=gen).to(torch.bfloat16))]
    if kind == "mixed":
        return [
            torch.nn.Parameter(torch.randn(4, 3, generator=gen)),
            torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64)),
        ]
    if kind == "transposed":
        return [torch.nn.Parameter(torch.randn(3, 4, generator=gen).T)]
    if kind == "duplicated":
        p = torch.nn.Parameter(torch.randn(4, 3, generator=gen))
        return [p, p]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["bfloat16", "mixed", "transposed", "duplicated"])
def test_what_the_native_passes_do_not_take_is_torchs_step(kind, native_calls):
    outcomes = []
    for cls in (torch.optim.LBFGS, pyfastopt.LBFGS):
        params = [torch.nn.Parameter(p.detach().clone()) for p in _fallback_case(kind)]
        if kind == "duplicated":
            params = [params[0], params[0]]
        with pytest.warns(UserWarning) if kind == "duplicated" else _nothing():
            opt = cls(params, max_iter=3)

        def closure(params=params, opt=opt):
            opt.zero_grad()
            loss = sum((p.abs() ** 2).sum() * (i + 1) for i, p in enumerate(params))
            loss.backward()
            return loss

        try:
            opt.step(closure)
            outcomes.append([p.detach().clone() for p in params])
        except Exception as exc:  # torch refuses some of these: so must we, alike
            outcomes.append(type(exc))
    ref, fast = outcomes
    if isinstance(ref, type):
        assert fast is ref
    else:
        for a, b in zip(ref, fast):
            assert torch.equal(a, b)
    assert native_calls == {"program": 0, "direction": 0}


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_parameters_are_their_real_views(dtype, line_search_fn, native_calls):
    """torch.optim.LBFGS flattens a complex parameter as its real view (torch's own test_complex
    checks that a complex run equals the run on ``view_as_real`` copies bit for bit): the native
    passes take it the same way, so both runs are the same native run, and it stays within
    float rounding of torch's."""
    gen = torch.Generator().manual_seed(5)
    target = torch.randn(6, 5, generator=gen, dtype=dtype)
    start = torch.randn(6, 5, generator=gen, dtype=dtype)
    mixed = torch.randn(7, generator=gen, dtype=dtype.to_real())
    weights = torch.rand(6, 5, generator=gen, dtype=dtype.to_real()) + 0.5

    def run(cls, as_real):
        a = start.clone()
        a = torch.view_as_real(a).clone() if as_real else a
        params = [torch.nn.Parameter(a), torch.nn.Parameter(mixed.clone())]
        opt = cls(params, max_iter=5, line_search_fn=line_search_fn)

        def closure():
            opt.zero_grad()
            z = torch.view_as_complex(params[0]) if as_real else params[0]
            loss = ((z - target).abs().pow(2) * weights).sum() + (params[1] - 1).pow(2).sum()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        z = params[0].detach()
        return (torch.view_as_complex(z) if as_real else z), params[1].detach(), opt.state

    fast, fast_mixed, state = run(pyfastopt.LBFGS, False)
    assert native_calls["program"] > 0 and native_calls["direction"] > 0
    real, real_mixed, _ = run(pyfastopt.LBFGS, True)
    assert torch.equal(fast, real) and torch.equal(fast_mixed, real_mixed)
    ref, ref_mixed, ref_state = run(torch.optim.LBFGS, False)
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(fast_mixed, ref_mixed, rtol=tol, atol=tol)
    p0 = next(iter(state))
    assert state[p0]["d"].dtype == ref_state[next(iter(ref_state))]["d"].dtype == dtype.to_real()
    assert state[p0]["func_evals"] == ref_state[next(iter(ref_state))]["func_evals"]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_state_that_does_not_fit_is_torchs_business(native_calls):
    """A checkpoint whose flat vectors do not fit the parameters: torch's step, torch's error."""
    errors = []
    for cls in (torch.optim.LBFGS, pyfastopt.LBFGS):
        params, opt, closure = make(cls, "quadratic", torch.float32, max_iter=3)
        opt.step(closure)
        st = opt.state[params[0]]
        st["prev_flat_grad"] = st["prev_flat_grad"][:-1]
        before = dict(native_calls)
        with pytest.raises(RuntimeError) as info:
            opt.step(closure)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert before["direction"] > 0 and native_calls == before  # torch's step ran


def test_gradients_the_passes_cannot_read_are_gathered_like_torch(native_calls):
    """A non-contiguous gradient: torch's gather raises its own view error, and so do we; a
    gradient that is a view of the parameter is copied first, as torch's gather copies it."""
    errors = []
    for cls in (torch.optim.LBFGS, pyfastopt.LBFGS):
        p = torch.nn.Parameter(torch.randn(4, 6))
        opt = cls([p])

        def closure(p=p):
            p.grad = torch.randn(6, 4).T
            return (p**2).sum()

        with pytest.raises(RuntimeError) as info:
            opt.step(closure)
        errors.append(str(info.value))
    assert errors[0] == errors[1]

    finals = []
    for cls in (torch.optim.LBFGS, pyfastopt.LBFGS):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 12, dtype=torch.float64))
        opt = cls([p], max_iter=4, lr=0.1)

        def closure(p=p):
            p.grad = p.detach()  # the gradient of (p**2).sum() / 2, as a view of p itself
            return (p.detach() ** 2).sum() / 2

        opt.step(closure)
        finals.append(p.detach().clone())
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-12, atol=1e-14)
    assert native_calls["direction"] >= 1


def test_state_resized_inside_the_closure_is_refused():
    """A closure that shrinks a state tensor mid-step: a clear error, never a wild write."""
    params, opt, closure = make(pyfastopt.LBFGS, "quadratic", torch.float32, max_iter=3)
    opt.step(closure)

    def evil():
        opt.state[params[0]]["prev_flat_grad"].resize_(3)
        return closure()

    with pytest.raises(OperandError, match="does not fit"):
        opt.step(evil)


def test_parameter_replaced_inside_the_closure_is_refused():
    params, opt, closure = make(pyfastopt.LBFGS, "quadratic", torch.float64, max_iter=3)

    def evil():
        params[1].data = params[1].data.float()  # the loss promotes it back
        return closure()

    with pytest.raises(OperandError, match="parameter changed"):
        opt.step(evil)


def test_errors_match_torch():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="parameter groups"):
        pyfastopt.LBFGS([{"params": [p]}, {"params": [torch.nn.Parameter(torch.randn(2))]}])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        pyfastopt.LBFGS([p], lr=-1.0)
    messages = []
    for cls in (torch.optim.LBFGS, pyfastopt.LBFGS):
        q = torch.nn.Parameter(torch.randn(3))
        opt = cls([q], line_search_fn="backtracking")

        def closure(q=q):
            loss = (q**2).sum()
            loss.backward()
            return loss

        with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported") as info:
            opt.step(closure)
        messages.append(str(info.value))
        opt.param_groups[0]["line_search_fn"] = None
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))]})
        with pytest.raises(AssertionError) as info:  # (torch 2.13: "exactly one param_group")
            opt.step(closure)
        messages.append(str(info.value))
    assert messages[0] == messages[2]
    # torch's assertion message (torch 2.5: none; pyfastopt then says torch 2.13's)
    assert messages[3] == (messages[1] or "Expected exactly one param_group, but got 2")


def test_history_size_reduced_after_steps_fails_like_torch():
    """torch's `al` keeps its first length: a smaller history_size later makes `al[i] = ...`
    fail with IndexError, in both, before the direction is written."""
    states = []
    for cls in (torch.optim.LBFGS, pyfastopt.LBFGS):
        params, opt, closure = make(cls, "quadratic", torch.float64, history_size=4, max_iter=4)
        opt.step(closure)
        opt.param_groups[0]["history_size"] = 1
        del opt.state[params[0]]["al"]
        with pytest.raises(IndexError):
            opt.step(closure)
        states.append(opt.state[params[0]])
    assert len(states[0]["old_dirs"]) == len(states[1]["old_dirs"])
    torch.testing.assert_close(states[1]["d"], states[0]["d"], rtol=1e-11, atol=1e-12)


# ---- the native vector operations themselves --------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vector_program_against_float64_references(dtype):
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in ((300, 20), (0,), (7,), (9000,))]
    for p in params[:2]:
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
    space = Space.of(params)
    g = space.grad()
    flat_g = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )
    a = torch.randn(space.numel, generator=gen, dtype=dtype)
    b = torch.randn(space.numel, generator=gen, dtype=dtype)
    b[17] = float("nan")
    out, x = space.new(), torch.cat([p.reshape(-1) for p in params])
    dot, sum_abs, max_abs, max_nan = space.run(
        ("sub", out, g, a),
        ("dot", out, a),
        ("sum_abs", g),
        ("axpy", space, 0.25, a, space),
        ("max_abs", a),
        ("max_abs", b),
    )
    assert torch.equal(out, flat_g - a)
    ref = torch.dot((flat_g - a).double(), a.double()).item()
    assert dot == pytest.approx(ref, rel=1e-13)
    assert sum_abs == pytest.approx(flat_g.double().abs().sum().item(), rel=1e-13)
    assert max_abs == a.abs().max().item() and max_nan != max_nan
    after = torch.cat([p.reshape(-1) for p in params])
    torch.testing.assert_close(after, x.add(a, alpha=0.25), rtol=0, atol=0)


def test_core_refuses_invalid_calls():
    core = _vectors._core
    buf = torch.zeros(8)
    rows = [8, buf.data_ptr()]
    ok = core.vector_program(rows, 1, [], 0, [6, 0, 0, 0, 0], [], 1, 1, 1 << 15)
    assert ok == [0.0]
    bad = [
        (rows, 1, [], 0, [9, 0, 0, 0, 0], [], 1),  # unknown op
        (rows, 1, [], 0, [4, 0, 0, 3, 0], [], 1),  # operand out of range
        (rows, 1, [], 0, [1, 0, 0, 0, 2], [1.0], 0),  # scalar out of range
        (rows, 1, [], 0, [6, 0, 0, 0, 1], [], 1),  # result slot out of range
        (rows, 1, [], 2, [6, 0, 0, 0, 0], [], 1),  # dtype
        ([8, 0], 1, [], 0, [6, 0, 0, 0, 0], [], 1),  # null address
        ([8, buf.data_ptr() + 2], 1, [], 0, [6, 0, 0, 0, 0], [], 1),  # misaligned
        ([8, buf.data_ptr(), 5], 1, [], 0, [6, 0, 0, 0, 0], [], 1),  # ragged rows
        (rows, 1, [], 0, [6, 0, 0, 0, 0, 1], [], 1),  # ragged program
    ]
    for args in bad:
        with pytest.raises(ValueError):
            core.vector_program(*args, 1, 1 << 15)
    with pytest.raises(ValueError):
        core.lbfgs_direction(rows, 1, [], 0, 0, 0, 0, [0], [0], [], 1.0, False, 1, 1 << 15)
    with pytest.raises(ValueError):
        core.lbfgs_direction(rows, 1, [], 0, 0, 0, 0, [0], [0], [1.0], 1.0, True, 1, 1 << 15)


def test_written_operands_must_not_share_memory():
    p = torch.zeros(10)
    p.grad = torch.ones(10)
    space = Space.of([p])
    g = space.grad()
    base = torch.zeros(20)
    with pytest.raises(OperandError, match="shares memory"):
        space.run(("copy", base[:10], g), ("dot", base[5:15], g))
    with pytest.raises(OperandError, match="does not fit"):
        space.run(("copy", torch.zeros(9), g))
    assert space.run(("axpy", space, 2.0, g, space)) == []
    assert torch.equal(p, torch.full((10,), 2.0))
