"""LR schedulers, step hooks, zero_grad and GradScaler work as with torch.optim."""

from __future__ import annotations

import pytest
import torch
import torch.optim.optimizer as optimizer_mod
from helpers import assert_same_state, make_params, run_steps
from optim_db import TOL, make_pair

import pyfastopt

SCHEDULERS = {
    "StepLR": lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=40, cycle_momentum=True
    ),
    "CosineAnnealingLR": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10),
    "ExponentialLR": lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
}


SCHEDULED = [
    ("Adam", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5}),
    ("NAdam", {"lr": 0.01}),
    ("RAdam", {"lr": 0.01}),
    ("Adamax", {"lr": 0.01}),
    ("ASGD", {"lr": 0.01, "t0": 5}),  # eta follows the scheduled lr
    ("Rprop", {"lr": 0.01}),  # lr sets only the first step size
]
#: OneCycleLR cycles momentum or beta1: optimizers without either refuse it, as in torch
NO_MOMENTUM = {"ASGD", "Rprop"}


@pytest.mark.parametrize(
    "name,kw,sched",
    [
        (name, kw, sched)
        for name, kw in SCHEDULED
        for sched in SCHEDULERS
        if not (sched == "OneCycleLR" and name in NO_MOMENTUM)
    ],
)
def test_schedulers(name, kw, sched):
    a, b = make_params(torch.float32, shapes=((5, 4), (7,)))
    ref, fast = make_pair(name, kw, a, b)
    sr, sf = SCHEDULERS[sched](ref), SCHEDULERS[sched](fast)
    for i in range(40):
        run_steps([ref, fast], [a, b], 1, seed=i)
        sr.step()
        sf.step()
    assert sf.get_last_lr() == sr.get_last_lr()
    if sched == "OneCycleLR":  # momentum / betas were cycled and read back each step
        key = "betas" if "Adam" in name else "momentum"
        assert fast.param_groups[0][key] == ref.param_groups[0][key]
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa, **TOL[torch.float32])


def test_reduce_lr_on_plateau():
    a, b = make_params(torch.float32, shapes=((5,),))
    ref, fast = make_pair("Adam", {"lr": 0.1}, a, b)
    sr = torch.optim.lr_scheduler.ReduceLROnPlateau(ref, patience=1)
    sf = torch.optim.lr_scheduler.ReduceLROnPlateau(fast, patience=1)
    for i in range(12):
        run_steps([ref, fast], [a, b], 1, seed=i)
        sr.step(1.0)  # a loss that never improves
        sf.step(1.0)
    assert fast.param_groups[0]["lr"] == ref.param_groups[0]["lr"] < 0.1
    torch.testing.assert_close(b[0], a[0])


def test_tensor_lr_filled_by_scheduler():
    a, b = make_params(torch.float32, shapes=((5,),))
    ref = torch.optim.Adam(a, lr=torch.tensor(0.01), foreach=False)
    fast = pyfastopt.Adam(b, lr=torch.tensor(0.01))
    sr = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.3)
    sf = torch.optim.lr_scheduler.StepLR(fast, step_size=2, gamma=0.3)
    for i in range(8):
        run_steps([ref, fast], [a, b], 1, seed=i)
        sr.step()
        sf.step()
    assert isinstance(fast.param_groups[0]["lr"], torch.Tensor)
    torch.testing.assert_close(b[0], a[0])


def test_step_hooks_are_called_in_order():
    _, b = make_params(torch.float32, shapes=((3,),))
    opt = pyfastopt.SGD(b, lr=0.1)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o, args)))
    h2 = opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o, args)))
    gpre = optimizer_mod.register_optimizer_step_pre_hook(
        lambda o, args, kwargs: calls.append(("global_pre", o, args))
    )
    try:
        b[0].grad = torch.ones(3)
        opt.step()
    finally:
        gpre.remove()
    assert [c[0] for c in calls] == ["global_pre", "pre", "post"]
    assert all(c[1] is opt for c in calls)
    torch.testing.assert_close(b[0].grad, torch.ones(3))
    h1.remove()
    h2.remove()
    calls.clear()
    opt.step()
    assert calls == []


@pytest.mark.parametrize("cls", [torch.optim.SGD, pyfastopt.SGD], ids=["torch", "pyfastopt"])
def test_pre_hook_can_replace_arguments(cls):
    """torch's convention: the new args start with the optimizer (step's self)."""
    _, b = make_params(torch.float32, shapes=((3,),))
    opt = cls(b, lr=0.1)
    b[0].grad = torch.ones(3)

    def closure():
        return torch.tensor(7.0)

    opt.register_step_pre_hook(lambda o, args, kwargs: ((o,), {"closure": closure}))
    assert float(opt.step()) == 7.0


def test_a_subclass_overriding_step_runs_each_hook_once():
    """torch wraps a subclass's own step() with the hooks; pyfastopt's step, reached through
    super(), must not run them a second time (a hook that halves gradients halved them twice).
    (torch's own classes run them twice there too once the base class's step has been wrapped
    by an earlier instance of it in the process, so torch is not the reference here.)"""

    class Mine(pyfastopt.Adam):
        def step(self, closure=None):
            return super().step(closure)

    w = torch.nn.Parameter(torch.ones(3))
    opt = Mine([w], lr=0.1)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    handle = optimizer_mod.register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global"))
    try:
        w.grad = torch.ones(3)
        opt.step()
    finally:
        handle.remove()
    assert calls == ["global", "pre", "post"]


def test_hooks_see_the_arguments_as_torch_passes_them():
    """``args`` starts with the optimizer and ``kwargs`` is as the caller passed it (Lightning
    calls ``step(closure=...)``): the same in pre and post hooks as torch's."""

    def record(cls):
        p = torch.nn.Parameter(torch.ones(3))
        opt = cls([p], lr=0.1)
        seen = []

        def hook(kind):
            return lambda o, args, kwargs: seen.append(
                (kind, o is opt, args[0] is opt, len(args), sorted(kwargs))
            )

        opt.register_step_pre_hook(hook("pre"))
        opt.register_step_post_hook(hook("post"))

        def closure():
            p.grad = torch.ones(3)
            return torch.tensor(1.0)

        assert float(opt.step(closure=closure)) == 1.0
        assert float(opt.step(closure)) == 1.0
        assert opt.step() is None
        return seen, p.detach().clone()

    want, p_torch = record(torch.optim.Adam)
    got, p_fast = record(pyfastopt.Adam)
    assert got == want
    assert want[0] == ("pre", True, True, 1, ["closure"])
    torch.testing.assert_close(p_fast, p_torch)


def test_bad_pre_hook_result_raises():
    _, b = make_params(torch.float32, shapes=((3,),))
    opt = pyfastopt.SGD(b, lr=0.1)
    opt.register_step_pre_hook(lambda o, args, kwargs: "nope")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_step_is_recorded_by_the_profiler():
    _, b = make_params(torch.float32, shapes=((3,),))
    opt = pyfastopt.Adam(b, lr=0.1)
    b[0].grad = torch.ones(3)
    with torch.profiler.profile() as prof:
        opt.step()
    names = {e.name for e in prof.events()}
    assert "Optimizer.step#Adam.step" in names


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    a, b = make_params(torch.float32, shapes=((3,), (2, 2)))
    ref, fast = make_pair("Adam", {"lr": 0.01}, a, b)
    for _ in range(3):
        for params, opt in ((a, ref), (b, fast)):
            opt.zero_grad(set_to_none=set_to_none)
            loss = sum((p**2).sum() for p in params)
            loss.backward()
            opt.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pb, pa)
    fast.zero_grad(set_to_none=set_to_none)
    for p in b:
        assert p.grad is None if set_to_none else torch.equal(p.grad, torch.zeros_like(p))


def test_grad_scaler_with_fused_flag_matches_torch_fused():
    """fused=True opts into GradScaler's in-step unscaling, as torch's fused CPU Adam does."""
    results = []
    for cls in (torch.optim.Adam, pyfastopt.Adam):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        opt = cls(model.parameters(), lr=0.01, fused=True)
        assert opt._step_supports_amp_scaling
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for i in range(6):
            opt.zero_grad()
            x = torch.randn(4, 6, generator=torch.Generator().manual_seed(i))
            loss = model(x).pow(2).mean()
            if i == 3:
                loss = loss * float("inf")  # this step must be skipped
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        results.append((model.weight.detach().clone(), opt.state_dict()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    assert float(results[1][1]["state"][0]["step"]) == float(results[0][1]["state"][0]["step"]) == 5


def test_grad_scaler_without_fused_flag():
    results = []
    for cls in (torch.optim.SGD, pyfastopt.SGD):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        opt = cls(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        for i in range(5):
            opt.zero_grad()
            loss = model(torch.randn(4, 6, generator=torch.Generator().manual_seed(i))).sum()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        results.append(model.weight.detach().clone())
    torch.testing.assert_close(results[1], results[0])


def test_state_dict_after_scheduler_roundtrip():
    a, b = make_params(torch.float32, shapes=((5,),))
    ref, fast = make_pair("SGD", {"lr": 0.1, "momentum": 0.9}, a, b)
    run_steps([ref, fast], [a, b], 3)
    assert_same_state(ref, fast, **TOL[torch.float32])


def test_step_under_torch_compile():
    a, b = make_params(torch.float32, shapes=((4, 2),))
    ref, fast = make_pair("Adam", {"lr": 0.1}, a, b)
    compiled = torch.compile(fast.step)
    for i in range(3):
        g = torch.full((4, 2), 0.1 * (i + 1))
        a[0].grad, b[0].grad = g.clone(), g.clone()
        ref.step()
        compiled()
    torch.testing.assert_close(b[0], a[0])
