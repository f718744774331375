"""Memory shared between the rows of a step, set up by hand between steps (when the fast path
already holds a plan): each case steps to torch's numbers on every thread count, never to a
race between the threads of one fused call.

Found by a hostile-usage probe (stop 26): two parameters given one state dict, one gradient
tensor given to two parameters under GradScaler (whose unscaling writes it), and a gradient
aliasing what another native call of the same group writes (another dtype, a later wave).
"""

from __future__ import annotations

import pytest
import torch

import pyfastopt

#: over pyfastopt's parallel threshold (32K elements), so two threads split each call
N = 300 * 300


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    pyfastopt.set_num_threads(request.param)
    yield request.param
    pyfastopt.set_num_threads(None)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9}),
        ("Adam", {"lr": 0.01}),
        ("RMSprop", {"lr": 0.01}),
        ("Adagrad", {"lr": 0.1}),
        ("Rprop", {}),
    ],
)
def test_two_parameters_sharing_one_state_dict_step_in_torchs_order(name, kw, threads):
    def run(module):
        torch.manual_seed(0)
        a = torch.nn.Parameter(torch.randn(N, dtype=torch.float64))
        b = torch.nn.Parameter(torch.randn(N, dtype=torch.float64))
        opt = getattr(module, name)([a, b], **kw)
        for k in range(4):
            if k == 2:  # after the fast path holds a plan for the group
                opt.state[b] = opt.state[a]
            a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
            opt.step()
        return a.detach(), b.detach()

    for got, want in zip(run(pyfastopt), run(torch.optim), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad"])
@pytest.mark.parametrize("share_from", [0, 2], ids=["from_start", "after_caching"])
def test_a_gradient_shared_under_grad_scaler_is_unscaled_once_per_parameter(
    name, share_from, threads
):
    """torch's fused step unscales the shared gradient once for each parameter in turn (the
    second reads the first's result): pyfastopt hands such a group to torch's step."""

    def run(module):
        torch.manual_seed(0)
        a = torch.nn.Parameter(torch.randn(N))
        b = torch.nn.Parameter(torch.randn(N))
        opt = getattr(module, name)([a, b], lr=0.01, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for k in range(4):
            opt.zero_grad()
            scaler.scale((a * torch.randn(N)).sum() + (b * torch.randn(N)).sum()).backward()
            if k >= share_from:
                b.grad = a.grad
            scaler.step(opt)
            scaler.update()
        return a.detach(), b.detach()

    for got, want in zip(run(pyfastopt), run(torch.optim), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_gradient_aliasing_a_parameter_of_another_call_is_read_in_torchs_order(name, threads):
    """float64 and float32 parameters in one group are two native calls; once a plan is cached,
    a float32 gradient viewing a later float64 parameter must still be read before that
    parameter's update, as torch's for-loop reads it."""

    def run(module, switch_at):
        torch.manual_seed(0)
        a1 = torch.nn.Parameter(torch.randn(N, dtype=torch.float64))
        b = torch.nn.Parameter(torch.randn(2 * N))
        a2 = torch.nn.Parameter(torch.randn(N, dtype=torch.float64))
        kw = {"momentum": 0.9} if name == "SGD" else {}
        opt = getattr(module, name)([a1, b, a2], lr=0.01, foreach=False, **kw)
        for k in range(4):
            for p in (a1, b, a2):
                p.grad = torch.randn_like(p)
            if k >= switch_at:
                b.grad = a2.detach().view(torch.float32)
            opt.step()
        return a1.detach(), b.detach(), a2.detach()

    for switch_at in (0, 2):
        got, want = run(pyfastopt, switch_at), run(torch.optim, switch_at)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_a_gradient_aliasing_the_state_of_a_later_wave_is_read_in_torchs_order(threads):
    """Two overlapping views of one weight are stepped in two waves (two native calls); a third
    parameter's gradient set to the second view's state after caching must be read before that
    state is updated."""

    def run(module):
        torch.manual_seed(0)
        base = torch.randn(2 * N)
        first = torch.nn.Parameter(base[: N + N // 2])
        second = torch.nn.Parameter(base[N // 2 :])
        c = torch.nn.Parameter(torch.randn(N + N // 2))
        opt = module.SGD([first, second, c], lr=0.01, momentum=0.9, foreach=False)
        for k in range(4):
            for p in (first, second, c):
                p.grad = torch.ones_like(p) * (k + 1)
            if k >= 2:
                c.grad = opt.state[second]["momentum_buffer"]
            opt.step()
        return base, c.detach()

    for got, want in zip(run(pyfastopt), run(torch.optim), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
