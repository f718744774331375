"""SparseAdam: torch's for-loop results on sparse gradients for every option, torch's state and
errors, checkpoints both ways, 16-bit parameters, thread-count independence, and the checks in
front of the native update (indices, repeats, layouts)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from helpers import make_params, run_steps, set_grad_of_another_dtype, sparse_grad_stream
from optim_db import TOL, case_id, require_torch_options, sparse_cases

import pyfastopt
from pyfastopt import StateError, UnsupportedError
from pyfastopt.bench.parity import round_state
from pyfastopt.optim.sparse_adam import KEYS

#: an embedding table, a vector, and parameters whose gradients index two dims
SHAPES = ((300, 16), (50,), (20, 30, 4), (6, 7))


def _two_dim_grads(params, seed: int = 1):
    """Sparse gradients indexing the first two dims (sparse_dim 2), with repeats."""
    gen = torch.Generator().manual_seed(seed)

    def next_grads():
        out = []
        for p in params:
            k = 10
            idx = torch.stack([torch.randint(0, s, (k,), generator=gen) for s in p.shape[:2]])
            vals = torch.randn((k, *p.shape[2:]), generator=gen, dtype=p.dtype)
            out.append(torch.sparse_coo_tensor(idx, vals, p.shape, check_invariants=True))
        return out

    return next_grads


def _pair(kw: dict, a, b):
    require_torch_options("SparseAdam", kw)
    return torch.optim.SparseAdam(a, **kw), pyfastopt.SparseAdam(b, **kw)


def _assert_same(ref, fast, a, b, dtype) -> None:
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[dtype])
        sa, sb = ref.state[pa], fast.state[pb]
        assert list(sa) == list(sb)
        assert type(sb["step"]) is int and sb["step"] == sa["step"]
        for k in ("exp_avg", "exp_avg_sq"):
            assert sb[k].dtype == sa[k].dtype and sb[k].shape == sa[k].shape
            torch.testing.assert_close(sb[k], sa[k], **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", sparse_cases(), ids=case_id)
def test_parity_with_torch(case, dtype):
    _, kw = case
    a, b = make_params(dtype, SHAPES)
    start = [p.detach().clone() for p in b]
    ref, fast = _pair(kw, a, b)
    run_steps([ref, fast], [a, b], steps=30, grads=sparse_grad_stream(a))
    run_steps([ref, fast], [a[2:], b[2:]], steps=10, grads=_two_dim_grads(a[2:]))
    _assert_same(ref, fast, a, b, dtype)
    for pb, p0 in zip(b, start):
        assert not torch.equal(pb.detach(), p0)


def test_tensor_lr_and_an_empty_gradient_count_steps_like_torch():
    a, b = make_params(torch.float64, ((40, 3),))
    ref, fast = _pair({"lr": torch.tensor(0.01)}, a, b)  # step size computed in float32
    run_steps([ref, fast], [a, b], steps=5, grads=sparse_grad_stream(a))
    empty = _coo(torch.zeros(1, 0, dtype=torch.int64), torch.zeros(0, 3), (40, 3))
    for opt, ps in ((ref, a), (fast, b)):
        ps[0].grad = empty.double()
        opt.step()
    assert fast.state[b[0]]["step"] == ref.state[a[0]]["step"] == 6
    run_steps([ref, fast], [a, b], steps=5, grads=sparse_grad_stream(a, seed=4))
    _assert_same(ref, fast, a, b, torch.float64)


@pytest.mark.parametrize("direction", ["torch_to_fast", "fast_to_torch"])
def test_state_dict_hand_over(direction):
    a, b = make_params(torch.float64, SHAPES[:2])
    ref = torch.optim.SparseAdam(a, lr=0.01)
    first = (torch.optim if direction == "torch_to_fast" else pyfastopt).SparseAdam(b, lr=0.01)
    run_steps([ref, first], [a, b], steps=10, grads=sparse_grad_stream(a))
    second = (pyfastopt if direction == "torch_to_fast" else torch.optim).SparseAdam(b, lr=0.01)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    run_steps([ref, second], [a, b], steps=10, grads=sparse_grad_stream(a, seed=2))
    _assert_same(ref, second, a, b, torch.float64)


def test_dense_gradient_raises_torchs_error_and_changes_nothing():
    a, b = make_params(torch.float32, SHAPES[:2])
    ref, fast = _pair({}, a, b)
    run_steps([ref, fast], [a, b], steps=2, grads=sparse_grad_stream(a))
    before = [p.detach().clone() for p in b]
    for opt, ps in ((ref, a), (fast, b)):
        ps[0].grad = ps[0].grad.to_dense()
        with pytest.raises(RuntimeError, match="does not support dense gradients"):
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(b, before))
    assert [fast.state[p]["step"] for p in b] == [2, 2]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_is_the_float32_rule_rounded_once(dtype):
    init = [torch.randn(s).to(dtype) for s in SHAPES[:2]]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    a = [torch.nn.Parameter(t.float()) for t in init]
    fast, ref = pyfastopt.SparseAdam(b, lr=0.01), torch.optim.SparseAdam(a, lr=0.01)
    grads = sparse_grad_stream(b)
    for _ in range(6):
        gs = grads()
        for p, q, g in zip(b, a, gs):  # repeats are summed in the 16-bit type, as torch does
            p.grad, q.grad = g.clone(), g.coalesce().float()
        fast.step()
        ref.step()
        round_state(ref, dtype)
        for p, q in zip(b, a):
            diff = (p.detach().float() - q.detach()).abs()
            # torch's float32 sqrt may differ from the correctly rounded one by a unit of
            # float32, which can flip the 16-bit rounding of an element now and then
            assert (diff > 0).float().mean() < 0.01
            assert torch.equal(fast.state[p]["exp_avg"].float(), ref.state[q]["exp_avg"])
    assert all(v.dtype == dtype for st in fast.state.values() for k, v in st.items() if k != "step")


def test_results_do_not_depend_on_the_thread_count():
    table = torch.randn(100_000, 64)  # an embedding with 1% of its rows touched per step
    finals = []
    for threads in (1, 2, 3):
        pyfastopt.set_num_threads(threads)
        p = torch.nn.Parameter(table.clone())
        opt = pyfastopt.SparseAdam([p], lr=0.01)
        run_steps([opt], [[p]], steps=3, grads=sparse_grad_stream([p], share=0.01))
        finals.append((p.detach().clone(), opt.state[p]["exp_avg_sq"].clone()))
    pyfastopt.set_num_threads(None)
    for x, y in finals[1:]:
        assert torch.equal(x, finals[0][0]) and torch.equal(y, finals[0][1])


def test_duplicate_parameter_and_non_contiguous_parameter_match_torch():
    base = torch.randn(12, 5)
    a = [torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.t().contiguous())]
    b = [torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.clone().t())]
    assert not b[1].is_contiguous()  # stepped by torch's own step
    with pytest.warns(UserWarning, match="duplicate"):
        ref = torch.optim.SparseAdam([a[0], a[0], a[1]], lr=0.01)
    with pytest.warns(UserWarning, match="duplicate"):
        fast = pyfastopt.SparseAdam([b[0], b[0], b[1]], lr=0.01)
    run_steps([ref, fast], [a, b], steps=5, grads=sparse_grad_stream(a))
    _assert_same(ref, fast, a, b, torch.float32)
    assert fast.state[b[0]]["step"] == 10


def _coo(indices, values, size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that invariants are not checked
        return torch.sparse_coo_tensor(indices, values, size, check_invariants=False)


def test_out_of_range_index_raises_before_any_write():
    p = torch.nn.Parameter(torch.zeros(4, 2))
    opt = pyfastopt.SparseAdam([p])
    p.grad = _coo(torch.tensor([[1, 7]]), torch.ones(2, 2), (4, 2))
    with pytest.raises(IndexError, match="out of range"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(4, 2))


def test_gradient_falsely_marked_coalesced_is_refused():
    p = torch.nn.Parameter(torch.zeros(4, 2))
    opt = pyfastopt.SparseAdam([p])
    g = _coo(torch.tensor([[1, 1]]), torch.ones(2, 2), (4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p.grad = torch.sparse_coo_tensor(g._indices(), g._values(), (4, 2), is_coalesced=True)
    with pytest.raises(ValueError, match="not unique"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(4, 2))


def test_gradient_of_another_dtype_gets_torchs_behaviour():
    a, b = make_params(torch.float32, ((6, 2),))
    ref, fast = _pair({}, a, b)
    g = sparse_grad_stream(a)()[0].double()
    outcomes = []
    for opt, ps in ((ref, a), (fast, b)):
        set_grad_of_another_dtype(ps[0], g.clone())
        try:
            opt.step()
            outcomes.append(None)
        except RuntimeError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
    torch.testing.assert_close(b[0], a[0])


CORRUPTIONS = {
    "truncated_exp_avg": lambda st: st.update(exp_avg=st["exp_avg"].flatten()[:5]),
    "missing_exp_avg_sq": lambda st: st.pop("exp_avg_sq"),
    "fractional_step": lambda st: st.update(step=2.5),
    "negative_step": lambda st: st.update(step=-1),
    "string_step": lambda st: st.update(step="two"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_checkpoint_raises_and_changes_nothing(corruption):
    _, b = make_params(torch.float32, ((8, 3),))
    opt = pyfastopt.SparseAdam(b)
    run_steps([opt], [b], steps=2, grads=sparse_grad_stream(b))
    bad = copy.deepcopy(opt.state_dict())
    CORRUPTIONS[corruption](bad["state"][0])
    with pytest.raises(StateError):
        opt.load_state_dict(bad)
    assert opt.state[b[0]]["step"] == 2
    run_steps([opt], [b], steps=1, grads=sparse_grad_stream(b))
    assert opt.state[b[0]]["step"] == 3


@pytest.mark.parametrize(
    "opts", [{"master_weights": True}, {"stochastic_rounding": True}, {"state_dtype": "8bit"}]
)
def test_pyfastopt_storage_options_are_refused(opts):
    with pytest.raises(UnsupportedError):
        pyfastopt.SparseAdam([torch.nn.Parameter(torch.zeros(3))], **opts)


@pytest.mark.parametrize("simd", ["avx512", "avx2", "baseline"])
def test_every_simd_build_matches_torch(simd):
    if simd not in pyfastopt._core.supported_simd():
        pytest.skip(f"this CPU cannot run the {simd} build")
    try:
        pyfastopt._config.set_simd(simd)
        a, b = make_params(torch.float32, SHAPES[:2])
        ref, fast = _pair({"lr": 0.01}, a, b)
        run_steps([ref, fast], [a, b], steps=5, grads=sparse_grad_stream(a))
    finally:
        pyfastopt._config.set_simd("auto")
    _assert_same(ref, fast, a, b, torch.float32)


@pytest.mark.skipif(
    "avx512" not in pyfastopt._core.supported_simd(), reason="no AVX-512 (no 16-lane loop)"
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lanes_give_the_bits_of_the_vectorised_loop(dtype):
    results = []
    try:
        pyfastopt._config.set_simd("avx512")
        for lanes in (True, False):
            pyfastopt._core.use_lanes(lanes)
            g = torch.Generator().manual_seed(0)
            p = torch.nn.Parameter(torch.randn(500, 37, generator=g).to(dtype))
            opt = pyfastopt.SparseAdam([p], lr=0.01)
            run_steps([opt], [[p]], steps=4, grads=sparse_grad_stream([p]))
            results.append([p.detach().clone(), *(opt.state[p][k].clone() for k in KEYS)])
    finally:
        pyfastopt._core.use_lanes(True)
        pyfastopt._config.set_simd("auto")
    for x, y in zip(*results):
        assert torch.equal(x.view(torch.int16), y.view(torch.int16))


def test_gradient_marked_coalesced_but_unsorted_steps_as_torch():
    outs = []
    for module in (torch.optim, pyfastopt):
        p = torch.nn.Parameter(torch.ones(8, 4))
        opt = module.SparseAdam([p], lr=0.1)
        idx, val = torch.tensor([[3, 1, 6]]), torch.arange(12.0).reshape(3, 4)
        p.grad = torch.sparse_coo_tensor(idx, val, (8, 4), is_coalesced=True)
        opt.step()
        outs.append((p.detach().clone(), opt.state[p]["exp_avg"].to_dense()))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1])


def test_refused_gradient_changes_no_step_counter():
    # repeated indices marked coalesced: the native step refuses them before writing anything,
    # the step counters included (a retry then takes the first step's bias correction)
    a, b = torch.nn.Parameter(torch.ones(8, 4)), torch.nn.Parameter(torch.ones(8, 4))
    opt = pyfastopt.SparseAdam([a, b], lr=0.1)
    good = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.ones(2, 4), (8, 4))
    a.grad = good
    b.grad = torch.sparse_coo_tensor(
        torch.tensor([[1, 1]]), torch.ones(2, 4), (8, 4), is_coalesced=True
    )
    with pytest.raises(ValueError):
        opt.step()
    assert opt.state[a]["step"] == opt.state[b]["step"] == 0
    assert torch.equal(a.detach(), torch.ones(8, 4)) and torch.equal(b.detach(), torch.ones(8, 4))


def test_negative_index_raises_before_coalescing():
    # torch's own coalesce() corrupts memory on a negative index of an unchecked tensor
    p = torch.nn.Parameter(torch.ones(8, 4))
    opt = pyfastopt.SparseAdam([p], lr=0.1)
    p.grad = torch.sparse_coo_tensor(
        torch.tensor([[-3, 1]]), torch.ones(2, 4), (8, 4), check_invariants=False
    )
    with pytest.raises(IndexError, match="out of range"):
        opt.step()
