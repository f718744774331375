"""Bad input gets a clear Python exception, the same one torch raises where torch has one."""

from __future__ import annotations

import inspect

import pytest
import torch
from helpers import make_params, run_steps
from optim_db import NAMES

import pyfastopt
from pyfastopt import UnsupportedError

#: the element-wise optimizers of issue 12 (each has torch's sparse and capturable refusals)
NEW = ["NAdam", "RAdam", "Adamax", "ASGD", "Rprop"]

BAD_HYPERPARAMS = {
    "SGD": [
        {"lr": -0.1},
        {"momentum": -0.5},
        {"weight_decay": -1.0},
        {"nesterov": True},
        {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
    ],
    "Adagrad": [
        {"lr": -1.0},
        {"lr_decay": -1.0},
        {"weight_decay": -1.0},
        {"initial_accumulator_value": -1.0},
        {"eps": -1.0},
    ],
    "Adadelta": [{"lr": -1.0}, {"rho": 1.5}, {"rho": -0.1}, {"eps": -1.0}, {"weight_decay": -1.0}],
    "RMSprop": [
        {"lr": -1.0},
        {"eps": -1.0},
        {"momentum": -1.0},
        {"weight_decay": -1.0},
        {"alpha": -1.0},
    ],
    "Adam": [
        {"lr": -1.0},
        {"eps": -1.0},
        {"betas": (1.0, 0.9)},
        {"betas": (0.9, -0.1)},
        {"weight_decay": -1.0},
        {"lr": torch.tensor([0.1, 0.2])},
    ],
    "AdamW": [{"lr": -1.0}, {"betas": (0.9, 1.0)}, {"weight_decay": -0.1}],
    "NAdam": [
        {"lr": -1.0},
        {"eps": -1.0},
        {"betas": (1.0, 0.9)},
        {"betas": (0.9, -0.1)},
        {"weight_decay": -1.0},
        {"momentum_decay": -1.0},
    ],
    "RAdam": [{"lr": -1.0}, {"eps": -1.0}, {"betas": (0.9, 1.0)}, {"weight_decay": -1.0}],
    "Adamax": [{"lr": -1.0}, {"eps": -1.0}, {"betas": (-0.1, 0.9)}, {"weight_decay": -1.0}],
    "ASGD": [{"lr": -1.0}, {"weight_decay": -1.0}, {"lr": torch.tensor([0.1, 0.2])}],
    "Rprop": [{"lr": -1.0}, {"etas": (1.5, 2.0)}, {"etas": (0.5, 0.9)}, {"etas": (0.0, 1.2)}],
    "Adafactor": [
        {"lr": -1.0},
        {"beta2_decay": 0.5},
        {"eps": (-1.0, 1e-3)},
        {"eps": (None, -1.0)},
        {"d": 0.5},
        {"weight_decay": -1.0},
        {"lr": torch.tensor([0.1, 0.2])},
    ],
}


@pytest.mark.parametrize(
    "name,kw", [(n, kw) for n in NAMES for kw in BAD_HYPERPARAMS[n]], ids=lambda x: str(x)
)
def test_invalid_hyperparameters_raise_like_torch(name, kw):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError) as ref_err:
        getattr(torch.optim, name)([p], **kw)
    with pytest.raises(ValueError) as err:
        getattr(pyfastopt, name)([p], **kw)
    assert str(err.value) == str(ref_err.value)


@pytest.mark.parametrize("name", NAMES)
def test_empty_parameter_list_raises(name):
    with pytest.raises(ValueError, match="empty parameter list"):
        getattr(pyfastopt, name)([], lr=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_non_tensor_parameter_raises(name):
    with pytest.raises(TypeError):
        getattr(pyfastopt, name)([1.0, 2.0], lr=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_master_weights_and_stochastic_rounding_exclude_each_other(name):
    with pytest.raises(ValueError, match="exclude"):
        getattr(pyfastopt, name)(
            [torch.zeros(3, requires_grad=True)], lr=0.1, master_weights=True,
            stochastic_rounding=True,
        )  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_stochastic_rounding_of_float16_is_refused_at_step(name):
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    opt = getattr(pyfastopt, name)([p], lr=0.1, stochastic_rounding=True)
    p.grad = torch.ones(3, dtype=torch.float16)
    with pytest.raises(UnsupportedError, match="bfloat16"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3, dtype=torch.float16))


def _takes_differentiable(name: str) -> bool:
    return "differentiable" in inspect.signature(getattr(torch.optim, name).__init__).parameters


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_is_torchs_own_step_through_autograd(name):
    """``differentiable=True`` (meta-learning: a gradient through the update) is torch's own
    step, recorded by autograd: the same parameters, the same gradient through two steps of
    non-leaf parameters, the same errors (torch's Adamax cannot be differentiated: it updates
    a tensor autograd still needs)."""
    if not _takes_differentiable(name):
        with pytest.raises(TypeError, match="differentiable"):  # as torch's class (Adafactor)
            getattr(pyfastopt, name)([torch.zeros(3, requires_grad=True)], differentiable=True)
        return
    outcomes = []
    for mod in (torch.optim, pyfastopt):
        start = torch.linspace(-1, 1, 6, dtype=torch.float64).requires_grad_()
        w = start * 1.5  # a non-leaf parameter: allowed with differentiable=True, as in torch
        opt = getattr(mod, name)([w], lr=0.1, differentiable=True)
        try:
            for _ in range(2):
                w.grad = (w * 2 + 0.5).detach()
                opt.step()
            (meta,) = torch.autograd.grad((w**3).sum(), start)
            outcomes.append((w.detach().clone(), meta))
        except RuntimeError as exc:
            outcomes.append(str(exc))
    ref, fast = outcomes
    if isinstance(ref, str):
        assert fast == ref
    else:
        assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])
        assert fast[1].abs().sum() > 0


@pytest.mark.parametrize(
    "kw",
    [{"master_weights": True}, {"stochastic_rounding": True}, {"state_dtype": "8bit"}],
    ids=str,
)
def test_differentiable_with_pyfastopts_own_options_is_refused(kw):
    with pytest.raises(UnsupportedError, match="differentiable"):
        pyfastopt.Adam([torch.zeros(3, requires_grad=True)], differentiable=True, **kw)
    opt = pyfastopt.Adam([torch.zeros(3, requires_grad=True)], **kw)
    q = torch.zeros(3, requires_grad=True)
    with pytest.raises(UnsupportedError, match="differentiable"):
        opt.add_param_group({"params": [q], "differentiable": True})
    assert len(opt.param_groups) == 1


def test_fused_and_differentiable_raise_torchs_error():
    for mod in (torch.optim, pyfastopt):
        with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
            mod.Adam([torch.zeros(3, requires_grad=True)], fused=True, differentiable=True)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adadelta", *NEW])
def test_capturable_on_cpu_is_refused(name):
    with pytest.raises(UnsupportedError, match="capturable"):
        getattr(pyfastopt, name)([torch.zeros(3, requires_grad=True)], lr=0.1, capturable=True)


def test_bad_param_group_is_not_added():
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = pyfastopt.Adam([p], lr=0.1)
    with pytest.raises(UnsupportedError):
        opt.add_param_group({"params": [q], "capturable": True})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop", "Adadelta", *NEW])
def test_sparse_gradients_raise_like_torch(name):
    p = torch.zeros(5, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[1, 3]], [1.0, 2.0], (5,))
    with pytest.raises(RuntimeError, match="sparse"):
        getattr(pyfastopt, name)([p], lr=0.1).step()


@pytest.mark.parametrize("name,kw", [("SGD", {"momentum": 0.9}), ("SGD", {}), ("Adagrad", {})])
def test_sparse_gradients_work_where_torch_supports_them(name, kw):
    a, b = make_params(torch.float32, shapes=((6,),))
    ref = getattr(torch.optim, name)(a, lr=0.1, foreach=False, **kw)
    fast = getattr(pyfastopt, name)(b, lr=0.1, **kw)
    for step in range(4):
        for params, opt in ((a, ref), (b, fast)):
            params[0].grad = torch.sparse_coo_tensor([[0, step + 1]], [1.0, -2.0], (6,))
            opt.step()
    torch.testing.assert_close(b[0], a[0])


#: a numeric hyper-parameter of each optimizer besides lr, and whether it is a tuple
OTHER_HYPER = {
    "SGD": "momentum", "Adagrad": "eps", "Adadelta": "rho", "RMSprop": "alpha", "Adam": "betas",
    "AdamW": "weight_decay", "NAdam": "momentum_decay", "RAdam": "eps", "Adamax": "betas",
    "ASGD": "lambd", "Rprop": "etas", "Adafactor": "beta2_decay",
}  # fmt: skip


@pytest.mark.parametrize("cached", [False, True], ids=["first-step", "cached-plan"])
@pytest.mark.parametrize(
    "key, bad",
    [
        ("lr", "0.1"),
        ("lr", None),
        ("lr", [1e-3]),
        ("lr", torch.tensor([1e-3, 1e-3])),
        ("other", "x"),
    ],
)
@pytest.mark.parametrize("name", sorted(OTHER_HYPER))
def test_hyperparameter_of_wrong_type_in_a_group_raises(name, key, bad, cached):
    # set by hand in param_groups (as a careless scheduler might): a TypeError naming the entry,
    # raised before anything is read or written, on the cached fast path as on the first step
    key = OTHER_HYPER[name] if key == "other" else key
    _, b = make_params(torch.float32, shapes=((40,), (3, 5)))
    opt = getattr(pyfastopt, name)(b, lr=0.1)
    for p in b:
        p.grad = torch.ones_like(p)
    if cached:
        opt.step()
    before = [p.detach().clone() for p in b]
    state = {k: v.clone() for k, v in opt.state[b[0]].items() if torch.is_tensor(v)}
    if isinstance(opt.defaults[key], tuple) and key != "lr":
        bad = (bad, *opt.defaults[key][1:])
    opt.param_groups[0][key] = bad
    message, error = rf"{name}: param_groups\[0\]\['{key}'\] must be a", TypeError
    if name in ("ASGD", "Rprop") and key == "lr" and not cached:
        # the state is created from lr: torch's own error there (a StateError for ASGD's eta
        # from a two-element tensor, where torch raises RuntimeError)
        message, error = "", (TypeError, RuntimeError)
    if name == "Rprop" and key == "lr" and cached:
        opt.step()  # Rprop reads lr only when it creates its state, in torch too
        return
    with pytest.raises(error, match=message):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(b, before))
    for k, v in state.items():
        assert torch.equal(opt.state[b[0]][k], v), k


def test_grad_of_wrong_shape_after_param_resize_raises():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = pyfastopt.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    p.data = torch.zeros(6)
    p.grad = torch.ones(6)
    with pytest.raises(pyfastopt.StateError):
        opt.step()


def test_integer_parameters_can_not_be_optimized():
    p = torch.zeros(3, dtype=torch.int64)
    opt = pyfastopt.SGD([p], lr=0.1)
    run_steps([opt], [[p]], 0)  # nothing to do without a gradient
    assert opt.state == {}


def test_refused_sparse_gradient_leaves_other_params_untouched():
    p, q = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4)
    q.grad = torch.ones(4).to_sparse()
    opt = pyfastopt.Adam([p, q], lr=0.1)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(4))


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_gradient_resized_through_data_raises_on_the_fast_path(name):
    p = torch.nn.Parameter(torch.ones(1000))
    opt = getattr(pyfastopt, name)([p], lr=0.1)
    p.grad = torch.ones(1000)
    opt.step()  # builds the cached plan
    p.grad.data = torch.zeros(3)  # torch allows this; the gradient no longer fits the parameter
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="size of tensor"):  # torch's own step refuses it
        opt.step()
    assert torch.equal(p.detach(), before)


def test_every_error_class_is_exported_with_its_documented_bases():
    # README, "One trust boundary": users catch these by their top-level names
    import pyfastopt.errors as errors

    bases = {
        "PyfastoptError": (RuntimeError,),
        "StateError": (ValueError, KeyError),
        "UnsupportedError": (TypeError,),
        "OperandError": (ValueError,),
    }
    for name, extra in bases.items():
        cls = getattr(pyfastopt, name)
        assert cls is getattr(errors, name) and name in pyfastopt.__all__
        assert issubclass(cls, (pyfastopt.PyfastoptError, *extra))
        assert all(issubclass(cls, b) for b in (pyfastopt.PyfastoptError, *extra))


def test_adamw_follows_its_groups_decoupled_weight_decay_key():
    """torch 2.13's AdamW reads ``decoupled_weight_decay`` at each step (its __setstate__ sets
    it True on load): a group switched to False by hand decays as Adam's L2 term, in both."""
    if not issubclass(torch.optim.AdamW, torch.optim.Adam):
        pytest.skip("this torch's AdamW has no decoupled_weight_decay key")
    out = []
    for module in (torch.optim, pyfastopt):
        p = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
        opt = module.AdamW([p], lr=0.1, weight_decay=0.5)
        for k in range(3):
            if k == 1:
                opt.param_groups[0]["decoupled_weight_decay"] = False
            p.grad = torch.full_like(p, 0.25 * k)
            opt.step()
        out.append(p.detach())
    torch.testing.assert_close(out[1], out[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_beta2_above_one_set_between_steps_raises_before_writing(name):
    """torch's step takes ``(1 - beta2 ** step) ** 0.5``, which Python makes complex, and raises;
    pyfastopt raises too, and before anything is written (not NaN parameters)."""
    p = torch.nn.Parameter(torch.randn(10))
    opt = getattr(pyfastopt, name)([p], lr=0.1)
    p.grad = torch.randn(10)
    opt.step()
    opt.param_groups[0]["betas"] = (0.9, 1.5)
    before = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
    with pytest.raises(RuntimeError, match="complex"):
        opt.step()
    assert torch.equal(p.detach(), before[0])
    for k, v in opt.state[p].items():
        assert torch.equal(v, before[1][k]), k
    with pytest.raises(RuntimeError):  # torch's own step raises here too
        ref = torch.nn.Parameter(torch.randn(10))
        r = getattr(torch.optim, name)([ref], lr=0.1, foreach=False)
        ref.grad = torch.randn(10)
        r.step()
        r.param_groups[0]["betas"] = (0.9, 1.5)
        r.step()


def test_storage_shrunk_under_quasi_newton_state_or_a_clipped_gradient_raises():
    """A tensor whose storage was resized smaller in place keeps its sizes: the native passes
    (and torch's own ops, which crash the process there) would write past the allocation."""
    for cls, dtype, key in (
        (pyfastopt.BFGS, torch.float64, "H"),
        (pyfastopt.LBFGS, None, "prev_flat_grad"),
    ):
        x = torch.randn(50, dtype=dtype, requires_grad=True)
        opt = cls([x])

        def closure(opt=opt, x=x):
            opt.zero_grad()
            loss = (x**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        opt.step(closure)
        opt.state[x][key].untyped_storage().resize_(8)
        with pytest.raises(pyfastopt.StateError, match="storage"):
            opt.step(closure)

    p = torch.nn.Parameter(torch.randn(100))
    p.grad = torch.randn(100)
    p.grad.untyped_storage().resize_(8)
    with pytest.raises(pyfastopt.OperandError, match="storage"):
        pyfastopt.clip_grad_norm_([p], 1.0)


@pytest.mark.parametrize("name, key", [("Adam", "exp_avg"), ("SGD", "momentum_buffer")])
def test_an_expanded_state_buffer_raises_as_torch_does(name, key):
    """torch's in-place ops refuse to write a tensor whose elements share memory (stride 0);
    pyfastopt used to replace it by a full copy and step silently."""
    kw = {"momentum": 0.9} if name == "SGD" else {}
    errors = []
    for module in (torch.optim, pyfastopt):
        p = torch.nn.Parameter(torch.ones(4, 3))
        opt = getattr(module, name)([p], lr=0.1, **kw)
        p.grad = torch.ones(4, 3)
        opt.step()
        opt.state[p][key] = torch.ones(3).expand(4, 3)
        with pytest.raises(RuntimeError, match="more than one element") as info:
            opt.step()
        errors.append(info.value)
    assert isinstance(errors[1], pyfastopt.StateError)


def test_8bit_codes_converted_to_numbers_between_steps_raise():
    """``state[k].float()`` of 8-bit codes leaves code numbers beside their scales: refused as
    ``load_state_dict`` refuses them, instead of quantising the code numbers as moments. With
    the scales and map deleted too, a float buffer is new state and is quantised."""
    p = torch.nn.Parameter(torch.randn(10_000))
    opt = pyfastopt.Adam([p], lr=1e-3, state_dtype="8bit")
    for _ in range(2):
        p.grad = torch.randn_like(p)
        opt.step()
    st = opt.state[p]
    codes = st["exp_avg"]
    st["exp_avg"] = codes.float()
    with pytest.raises(pyfastopt.StateError, match="codes converted to numbers"):
        opt.step()
    del st["exp_avg_absmax"], st["exp_avg_qmap"]
    st["exp_avg"] = torch.zeros_like(p)
    opt.step()
    assert st["exp_avg"].dtype == torch.uint8 and "exp_avg_absmax" in st
