"""Adafactor beyond the parity table: every tile kind of the reduction pass, its independence of
the thread count, its accuracy where torch's float32 sums lose digits, the factored state's trust
boundary and torch's errors."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_same_state, make_params, run_steps
from optim_db import TOL

import pyfastopt
from pyfastopt import StateError, UnsupportedError

#: every way the native step cuts a tensor: vectors and scalars (one tile, several tiles), small
#: matrices taken whole and many to a tile (3x3 conv kernels, degenerate 1x1 and Nx1 / 1xN
#: matrices, batch dims), matrices cut into bands of rows (300x500) and into column ranges
#: (3x2500: more than a tile's 1024 columns)
TILE_SHAPES = (
    (),
    (1,),
    (9000,),
    (8, 6, 3, 3),
    (4, 5, 1, 1),
    (7, 1),
    (1, 7),
    (2, 3, 40),
    (300, 500),
    (3, 2500),
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.1, "maximize": True, "d": 1.1}], ids=str)
def test_every_tile_kind_matches_torch(dtype, kw):
    a, b = make_params(dtype, TILE_SHAPES)
    start = [p.detach().clone() for p in b]
    ref = torch.optim.Adafactor(a, foreach=False, lr=0.05, **kw)
    fast = pyfastopt.Adafactor(b, lr=0.05, **kw)
    run_steps([ref, fast], [a, b], steps=12)
    for pa, pb, p0 in zip(a, b, start):
        torch.testing.assert_close(pb, pa, **TOL[dtype])
        assert not torch.equal(pb.detach(), p0)
    assert_same_state(ref, fast, **TOL[dtype])


@pytest.mark.parametrize(
    "opts",
    [{}, {"stochastic_rounding": True}, {"master_weights": True}],
    ids=["float32", "bf16-stochastic", "bf16-master"],
)
def test_reductions_do_not_depend_on_the_thread_count(opts):
    dtype = torch.bfloat16 if opts else torch.float32
    results = []
    for threads in (1, 2, 3):
        pyfastopt.set_num_threads(threads)
        torch.manual_seed(0)  # the stochastic rounding seed
        _, b = make_params(torch.float32, TILE_SHAPES + ((70000,),))
        params = [torch.nn.Parameter(p.detach().to(dtype)) for p in b]
        opt = pyfastopt.Adafactor(params, lr=0.05, **opts)
        run_steps([opt], [params], steps=4)
        state = [v for p in params for v in opt.state[p].values() if torch.is_tensor(v)]
        results.append([p.detach().clone() for p in params] + [v.clone() for v in state])
    pyfastopt.set_num_threads(None)
    for other in results[1:]:
        assert len(other) == len(results[0])
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)  # bitwise


def test_float32_sums_are_closer_to_float64_than_torchs():
    """torch's float32 for-loop sums a large tensor's squares in float32; the native passes sum
    in double: on a large matrix both stay within the parity tolerance of each other's typical
    scale, and pyfastopt's trajectory is the closer one to torch's float64 for-loop."""
    g = torch.Generator().manual_seed(0)
    init = torch.randn(1500, 1100, generator=g)
    grads = [torch.randn(1500, 1100, generator=g) for _ in range(2)]

    def final(cls, dtype, **kw):
        p = torch.nn.Parameter(init.to(dtype, copy=True))
        opt = cls([p], **kw)
        for gr in grads:
            p.grad = gr.to(dtype)
            opt.step()
        return p.detach().double()

    eps = (torch.finfo(torch.float32).eps, 1e-3)
    exact = final(torch.optim.Adafactor, torch.float64, foreach=False, eps=eps)
    theirs = (final(torch.optim.Adafactor, torch.float32, foreach=False) - exact).abs().max()
    ours = (final(pyfastopt.Adafactor, torch.float32) - exact).abs().max()
    assert ours < theirs


def test_eps1_default_follows_the_first_parameter_with_a_gradient():
    # torch resolves eps=(None, .) once per group: finfo of its first parameter with a gradient
    a64, b64 = make_params(torch.float64, shapes=((4, 3),))
    a32, b32 = make_params(torch.float32, shapes=((5,),))
    ref = torch.optim.Adafactor(a32 + a64, foreach=False)
    fast = pyfastopt.Adafactor(b32 + b64)
    a32[0].grad = b32[0].grad = None  # the float64 parameter comes first with a gradient
    for pa, pb in ((a64[0], b64[0]),):
        pa.grad = torch.full_like(pa, 1e-9)  # below float32's eps: eps1 matters
        pb.grad = pa.grad.clone()
    ref.step()
    fast.step()
    torch.testing.assert_close(b64[0], a64[0], **TOL[torch.float64])


def test_master_weights_take_float32_eps1():
    init = torch.randn(6, 5).bfloat16()
    grad = torch.full((6, 5), 1e-5)
    p = torch.nn.Parameter(init.clone())
    opt = pyfastopt.Adafactor([p], master_weights=True)
    q = torch.nn.Parameter(init.float())
    ref = torch.optim.Adafactor([q], foreach=False)  # eps1 = float32's
    for _ in range(3):
        p.grad, q.grad = grad.bfloat16(), grad.bfloat16().float()
        opt.step()
        ref.step()
    torch.testing.assert_close(opt.state[p]["master_weight"], q.detach(), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_empty_parameter_raises_torchs_zero_division(shape):
    for cls in (torch.optim.Adafactor, pyfastopt.Adafactor):
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = torch.zeros(shape)
        with pytest.raises(ZeroDivisionError):
            cls([p]).step()


def test_clipping_threshold_zero_set_by_hand_raises_like_torch():
    a, b = make_params(torch.float32, shapes=((4, 3), (5,)))
    ref, fast = torch.optim.Adafactor(a, foreach=False), pyfastopt.Adafactor(b)
    run_steps([ref, fast], [a, b], steps=1)
    before = [p.detach().clone() for p in b]
    steps = [float(fast.state[p]["step"]) for p in b]
    for opt, ps in ((ref, a), (fast, b)):
        opt.param_groups[0]["d"] = 0.0
        for p in ps:
            p.grad = torch.ones_like(p)
        with pytest.raises(ZeroDivisionError):
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(b, before))  # refused before any write
    assert [float(fast.state[p]["step"]) for p in b] == steps


def test_non_contiguous_parameter_follows_its_logical_rows():
    base = torch.randn(7, 12)
    a = [torch.nn.Parameter(base.t().contiguous())]
    b = [torch.nn.Parameter(base.clone().t())]  # the same values, transposed memory
    assert not b[0].is_contiguous()
    ref, fast = torch.optim.Adafactor(a, foreach=False), pyfastopt.Adafactor(b)
    run_steps([ref, fast], [a, b], steps=6)
    torch.testing.assert_close(b[0], a[0], **TOL[torch.float32])
    assert_same_state(ref, fast, **TOL[torch.float32])


@pytest.mark.parametrize("kind", ["8bit", torch.bfloat16])
def test_low_memory_state_is_refused(kind):
    p = torch.nn.Parameter(torch.zeros(4, 3))
    with pytest.raises(UnsupportedError, match="state"):
        pyfastopt.Adafactor([p], state_dtype=kind)
    opt = pyfastopt.Adafactor([p])
    opt.param_groups[0]["state_dtype"] = kind  # set by hand: refused at the step
    p.grad = torch.ones(4, 3)
    with pytest.raises(UnsupportedError):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(4, 3))


def _checkpoint():
    _, b = make_params(torch.float32, shapes=((6, 4), (5,)))
    opt = pyfastopt.Adafactor(b, lr=0.05)
    run_steps([opt], [b], 3)
    return b, opt, opt.state_dict()


CORRUPTIONS = {
    "truncated_row_var": lambda st: st.update(row_var=st["row_var"].flatten()[:3]),
    "row_var_like_param": lambda st: st.update(row_var=torch.zeros(6, 4)),
    "col_var_transposed": lambda st: st.update(col_var=st["col_var"].reshape(4, 1)),
    "missing_col_var": lambda st: st.pop("col_var"),
    "variance_instead": lambda st: (st.pop("row_var"), st.update(variance=torch.zeros(6, 4))),
    "sparse_col_var": lambda st: st.update(col_var=st["col_var"].to_sparse()),
    "vector_step": lambda st: st.update(step=torch.tensor([1.0, 2.0])),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_factored_checkpoint_raises_and_changes_nothing(corruption):
    params, opt, sd = _checkpoint()
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(sd)
    CORRUPTIONS[corruption](bad["state"][0])
    with pytest.raises(StateError):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for k in before["state"]:
        for key in before["state"][k]:
            torch.testing.assert_close(after["state"][k][key], before["state"][k][key])
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert float(opt.state[params[0]]["step"]) == 4.0


def test_factored_state_changed_by_hand_is_revalidated_on_the_fast_path():
    params, opt, _ = _checkpoint()  # the cached plan exists
    opt.state[params[0]]["col_var"] = torch.zeros(3)  # would be read out of bounds
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(StateError):
        opt.step()


def test_checkpoint_of_a_bfloat16_run_loads_with_master_weights():
    init = [torch.randn(6, 4).bfloat16(), torch.randn(5).bfloat16()]
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = pyfastopt.Adafactor(ps, lr=0.05)
    run_steps([opt], [ps], 2)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = pyfastopt.Adafactor(qs, lr=0.05, master_weights=True)
    opt2.load_state_dict(opt.state_dict())  # bfloat16 factors become float32 beside a master
    run_steps([opt2], [qs], 2)
    for q in qs:
        st = opt2.state[q]
        assert st["master_weight"].dtype == torch.float32
        assert all(v.dtype == torch.float32 for k, v in st.items() if k != "step")
        assert torch.equal(q.detach(), st["master_weight"].bfloat16())


def test_master_weights_checkpoint_round_trip_continues_bit_for_bit():
    init = [torch.randn(6, 4).bfloat16(), torch.randn(5).bfloat16()]
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = pyfastopt.Adafactor(ps, lr=0.05, master_weights=True)
    run_steps([opt], [ps], 2)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = pyfastopt.Adafactor(qs, lr=0.05, master_weights=True)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # float32 factors kept as saved
    assert opt2.state[qs[0]]["row_var"].dtype == torch.float32
    run_steps([opt, opt2], [ps, qs], 3, seed=7)
    for p, q in zip(ps, qs):
        assert torch.equal(p.detach(), q.detach())
        assert torch.equal(opt.state[p]["master_weight"], opt2.state[q]["master_weight"])
