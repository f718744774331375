"""state_dict hand-over in both directions, and checkpoints that must be refused."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from helpers import assert_same_state, make_params, run_steps
from optim_db import TOL, case_id, cases, require_torch_options

import pyfastopt
from pyfastopt import StateError


def _train(name, kw, params, steps, seed, cls):
    opt = cls(params, **kw) if cls is getattr(pyfastopt, name) else cls(params, foreach=False, **kw)
    run_steps([opt], [params], steps, seed=seed)
    return opt


@pytest.mark.parametrize("direction", ["torch_to_fast", "fast_to_torch"])
@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_handover_mid_training(case, direction):
    """Train 30 steps with one library, hand over, train 30 more: the same as torch handing
    over to itself (torch's loader casts 0-d state such as NAdam's mu_product to the parameter's
    dtype, which changes how later steps round it)."""
    name, kw = case
    require_torch_options(name, kw)
    tcls, fcls = getattr(torch.optim, name), getattr(pyfastopt, name)
    first, second = (tcls, fcls) if direction == "torch_to_fast" else (fcls, tcls)
    a, b = make_params(torch.float64, shapes=((6, 5), (9,)))
    ref = tcls(a, foreach=False, **kw)
    ref.load_state_dict(_train(name, kw, a, 30, 1, tcls).state_dict())
    opt1 = _train(name, kw, b, 30, 1, first)
    sd = opt1.state_dict()
    kw2 = dict(kw) if second is fcls else {**kw, "foreach": False}
    opt2 = second(b, **kw2)
    opt2.load_state_dict(sd)
    run_steps([ref, opt2], [a, b], 30, seed=2)
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float64])
    assert_same_state(ref, opt2, **TOL[torch.float64])


@pytest.mark.parametrize("case", cases()[::4], ids=case_id)
def test_state_matches_torch_layout(case):
    name, kw = case
    a, b = make_params(torch.float32, shapes=((4, 3), (5,)))
    ref = getattr(torch.optim, name)(a, foreach=False, **kw)
    fast = getattr(pyfastopt, name)(b, **kw)
    run_steps([ref, fast], [a, b], 3)
    for pa, pb in zip(a, b):
        sr, sf = ref.state[pa], fast.state[pb]
        assert list(sr) == list(sf)
        for key in sr:
            assert type(sf[key]) is torch.Tensor
            assert sf[key].dtype == sr[key].dtype and sf[key].shape == sr[key].shape
            assert sf[key].device == sr[key].device
    if "step" in ref.state[a[0]]:
        assert fast.state[b[0]]["step"].dim() == 0
        assert fast.state[b[0]]["step"].dtype == torch.float32


def test_save_load_roundtrip_weights_only():
    a, b = make_params(torch.float32, shapes=((4, 3),))
    fast = pyfastopt.AdamW(b, lr=0.01, amsgrad=True)
    run_steps([fast], [b], 5)
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    ref = torch.optim.AdamW(a, lr=0.01, amsgrad=True)
    ref.load_state_dict(sd)
    assert float(ref.state[a[0]]["step"]) == 5.0


def test_deepcopy_and_pickle_keep_working():
    _, b = make_params(torch.float32, shapes=((4, 3),))
    fast = pyfastopt.Adam(b, lr=0.01)
    run_steps([fast], [b], 2)
    clone = copy.deepcopy(fast)
    p2 = clone.param_groups[0]["params"][0]
    p2.grad = torch.ones_like(p2)
    clone.step()
    assert float(clone.state[p2]["step"]) == 3.0
    assert float(fast.state[b[0]]["step"]) == 2.0
    restored = pickle.loads(pickle.dumps(fast))
    assert isinstance(restored, pyfastopt.Adam)


# ---- hostile checkpoints --------------------------------------------------------------------


def _adam_checkpoint():
    _, b = make_params(torch.float32, shapes=((8, 4), (6,)))
    opt = pyfastopt.Adam(b, lr=0.01, amsgrad=True)
    run_steps([opt], [b], 3)
    return b, opt, opt.state_dict()


CORRUPTIONS = {
    "truncated_exp_avg": lambda st: st.update(exp_avg=st["exp_avg"].flatten()[:5]),
    "empty_exp_avg_sq": lambda st: st.update(exp_avg_sq=torch.empty(0)),
    "reshaped_exp_avg": lambda st: st.update(exp_avg=st["exp_avg"].reshape(4, 8)),
    "larger_max_exp_avg_sq": lambda st: st.update(max_exp_avg_sq=torch.zeros(9, 4)),
    "missing_exp_avg_sq": lambda st: st.pop("exp_avg_sq"),
    "missing_max_exp_avg_sq": lambda st: st.pop("max_exp_avg_sq"),
    "list_exp_avg": lambda st: st.update(exp_avg=[0.0] * 32),
    "none_exp_avg": lambda st: st.update(exp_avg=None),
    "sparse_exp_avg": lambda st: st.update(exp_avg=st["exp_avg"].to_sparse()),
    "meta_exp_avg": lambda st: st.update(exp_avg=torch.empty(8, 4, device="meta")),
    "string_step": lambda st: st.update(step="three"),
    "vector_step": lambda st: st.update(step=torch.tensor([1.0, 2.0])),
    "nan_step_number": lambda st: st.update(step=float("nan")),
    "missing_step": lambda st: st.pop("step"),
}


WHOLE_STATE = {
    "int_state": 0,
    "list_state": [1.0, 2.0],
    "string_state": "exp_avg",
    "none_state": None,
}


@pytest.mark.parametrize("bad", WHOLE_STATE)
def test_state_that_is_not_a_dict_raises(bad):
    params, opt, sd = _adam_checkpoint()
    sd = copy.deepcopy(sd)
    sd["state"][0] = WHOLE_STATE[bad]
    with pytest.raises(StateError):
        opt.load_state_dict(sd)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_checkpoint_raises_and_changes_nothing(corruption):
    params, opt, sd = _adam_checkpoint()
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(sd)
    CORRUPTIONS[corruption](bad["state"][0])
    with pytest.raises(StateError):
        opt.load_state_dict(bad)
    # the optimizer still holds its previous state and still steps correctly
    after = opt.state_dict()
    for k in before["state"]:
        for key in before["state"][k]:
            torch.testing.assert_close(after["state"][k][key], before["state"][k][key])
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert float(opt.state[params[0]]["step"]) == 4.0


def test_torch_itself_accepts_what_we_refuse():
    """The checkpoint is bad for torch too: it loads it and then computes with it."""
    _, _, sd = _adam_checkpoint()
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg"] = bad["state"][0]["exp_avg"].flatten()[:5]
    a, _ = make_params(torch.float32, shapes=((8, 4), (6,)))
    torch.optim.Adam(a, lr=0.01, amsgrad=True).load_state_dict(bad)  # no error from torch


@pytest.mark.parametrize("corruption", ["truncated", "replaced_dict", "wrong_dtype", "deleted"])
def test_state_changed_by_hand_is_revalidated(corruption):
    params, opt, _ = _adam_checkpoint()
    p = params[0]
    if corruption == "truncated":
        opt.state[p]["exp_avg"] = torch.zeros(3)
    elif corruption == "replaced_dict":
        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}
    elif corruption == "wrong_dtype":
        opt.state[p]["exp_avg_sq"] = torch.zeros(8, 4, dtype=torch.float64)
    else:
        del opt.state[p]["max_exp_avg_sq"]
    for q in params:
        q.grad = torch.ones_like(q)
    with pytest.raises(StateError):
        opt.step()


def test_state_reset_by_hand_restarts_like_torch():
    a, b = make_params(torch.float32, shapes=((5,),))
    ref, fast = torch.optim.Adam(a, lr=0.01, foreach=False), pyfastopt.Adam(b, lr=0.01)
    run_steps([ref, fast], [a, b], 3)
    ref.state[a[0]] = {}
    fast.state[b[0]] = {}
    run_steps([ref, fast], [a, b], 3, seed=3)
    torch.testing.assert_close(b[0], a[0])
    assert float(fast.state[b[0]]["step"]) == 3.0


def test_param_data_replaced_is_revalidated():
    _, b = make_params(torch.float32, shapes=((4, 4),))
    opt = pyfastopt.SGD(b, lr=0.1, momentum=0.9)
    run_steps([opt], [b], 2)
    b[0].data = torch.zeros(2, 2)  # the momentum buffer no longer fits
    b[0].grad = torch.ones(2, 2)
    with pytest.raises(StateError):
        opt.step()


def test_step_as_python_number_is_converted():
    params, opt, sd = _adam_checkpoint()
    sd = copy.deepcopy(sd)
    sd["state"][0]["step"] = 3
    opt.load_state_dict(sd)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert isinstance(opt.state[params[0]]["step"], torch.Tensor)
    assert float(opt.state[params[0]]["step"]) == 4.0


def test_param_reviewed_with_fewer_elements_is_revalidated():
    """Same storage, same data_ptr, fewer elements: the cached extent must not be reused."""
    p = torch.nn.Parameter(torch.ones(1000))
    opt = pyfastopt.Adam([p], lr=0.1)
    p.grad = torch.ones(1000)
    opt.step()
    p.data = p.data[:10]  # same address, 10 elements
    p.grad = torch.ones(10)
    with pytest.raises(StateError):  # the 1000-element state no longer fits
        opt.step()


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adafactor"])
def test_torch_state_dict_keeps_float64_state(name):
    """``torch_state_dict()`` used to round the state of float64 parameters to float32, so a
    float64 run resumed in torch.optim drifted from the one it left."""
    kw = {"lr": 0.1, "momentum": 0.9} if name == "SGD" else {"lr": 0.1}
    a, b = make_params(torch.float64, shapes=((6, 5), (7,)))
    fast = getattr(pyfastopt, name)(b, **kw)
    run_steps([fast], [b], 3)
    exported = fast.torch_state_dict()
    for pid, st in fast.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                assert exported["state"][pid][k].dtype == torch.float64, k
                assert torch.equal(exported["state"][pid][k], v), k
    with torch.no_grad():
        for x, y in zip(a, b):
            x.copy_(y)
    ref = getattr(torch.optim, name)(a, foreach=False, **kw)
    ref.load_state_dict(exported)
    run_steps([ref, fast], [a, b], 3, seed=2)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["RMSprop", "Adam"])
def test_step_on_the_meta_device_is_a_state_error(name):
    """A ``step`` with no value (meta) used to escape as torch's NotImplementedError."""
    p = torch.nn.Parameter(torch.randn(4))
    opt = getattr(pyfastopt, name)([p], lr=0.1)
    p.grad = torch.randn(4)
    opt.step()
    opt.state[p]["step"] = torch.tensor(1.0, device="meta")
    before = p.detach().clone()
    with pytest.raises(StateError, match="cannot be read"):
        opt.step()
    assert torch.equal(p.detach(), before)
