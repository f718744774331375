"""torch.distributed's optimizer helpers driving pyfastopt optimizers, in one process (a gloo group
of one rank): ZeroRedundancyOptimizer(optimizer_class=...), the distributed-checkpoint state_dict
helpers (get/set_optimizer_state_dict, FSDP2's and torchtitan's path), the optimizer-in-backward
helper, and swa_utils. Each must give what it gives with the torch.optim class of the same name."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
from optim_db import TOL
from torch import nn

import pyfastopt

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no torch.distributed/gloo"
)

KWARGS: dict[str, dict] = {
    "Adam": {"lr": 1e-2},
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "SGD": {"lr": 0.1, "momentum": 0.9, "nesterov": True},
    "RMSprop": {"lr": 1e-2, "centered": True},
    "Adagrad": {"lr": 0.1},
    "Adadelta": {"lr": 1.0},
}


@pytest.fixture(scope="module", autouse=True)
def one_rank_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if dist.is_initialized():  # another module's group: use it
        yield
        return
    store = tmp_path_factory.mktemp("dist") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


_GEN = torch.Generator().manual_seed(1)
X, Y = torch.randn(64, 20, generator=_GEN), torch.randn(64, 5, generator=_GEN)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), Y).backward()
        opt.step()


def _assert_close(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, **TOL[torch.float32])


def _assert_equal(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def _torch_cls(name: str) -> Callable[..., torch.optim.Optimizer]:
    cls = getattr(torch.optim, name)
    return lambda params, **kw: cls(params, foreach=False, **kw)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "RMSprop"])
def test_zero_redundancy_matches_torch_and_swaps_checkpoints(name):
    from torch.distributed.optim import ZeroRedundancyOptimizer as Zero

    def zero(model: nn.Module, cls: Callable) -> Zero:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ZeRO's own notices (one rank, no bucket view)
            return Zero(model.parameters(), optimizer_class=cls, **KWARGS[name])

    ref, fast = _model(), _model()
    o_ref, o_fast = zero(ref, _torch_cls(name)), zero(fast, getattr(pyfastopt, name))
    _train(ref, o_ref, 5)
    _train(fast, o_fast, 5)
    _assert_close(ref, fast)
    assert type(o_fast.optim) is getattr(pyfastopt, name)
    # the consolidated checkpoint of either loads into the other
    for src, src_model in ((o_ref, ref), (o_fast, fast)):
        src.consolidate_state_dict(0)
        sd = src.state_dict()
        outs = []
        for cls in (_torch_cls(name), getattr(pyfastopt, name)):
            m = _model()
            m.load_state_dict(src_model.state_dict())
            o = zero(m, cls)
            o.load_state_dict(copy.deepcopy(sd))
            _train(m, o, 3)
            outs.append(m)
        _assert_close(outs[0], outs[1])


def _resumed(
    model: nn.Module, sd: dict, make: Callable[..., torch.optim.Optimizer]
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A copy of ``model`` and a new optimizer from ``make`` given the DCP state_dict ``sd``."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    m = _model()
    m.load_state_dict(model.state_dict())
    opt = make(m.parameters())
    set_optimizer_state_dict(m, opt, optim_state_dict=copy.deepcopy(sd))
    return m, opt


@pytest.mark.parametrize("state_dtype", [None, torch.bfloat16, "8bit"])
@pytest.mark.parametrize("name", list(KWARGS))
def test_dcp_state_dict_helpers_round_trip(name, state_dtype):
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
    )

    kw = dict(KWARGS[name], state_dtype=state_dtype)
    if name == "RMSprop" and state_dtype == "8bit":
        kw["centered"] = False  # refused with 8-bit state (test_lowmem)
    a = _model()
    before = copy.deepcopy(a)
    opt = getattr(pyfastopt, name)(a.parameters(), **kw)
    # on a fresh optimizer the helper initialises the state with a zero-lr step on zero
    # gradients: the weights must not move, and the group's lr comes back
    get_optimizer_state_dict(a, opt)
    _assert_equal(a, before)
    assert opt.param_groups[0]["lr"] == kw["lr"]
    assert all(p.grad is None for p in a.parameters())
    _train(a, opt, 4)
    sd = get_optimizer_state_dict(a, opt)
    assert set(sd["state"]) == {n for n, _ in a.named_parameters()}  # keyed by name
    b, opt_b = _resumed(a, sd, lambda ps: getattr(pyfastopt, name)(ps, **kw))
    _train(a, opt, 3)
    _train(b, opt_b, 3)
    _assert_equal(a, b)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD"])
def test_dcp_state_dict_helpers_swap_with_torch(name):
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
    )

    for src_cls, dst_cls in (
        (_torch_cls(name), getattr(pyfastopt, name)),
        (getattr(pyfastopt, name), _torch_cls(name)),
    ):
        a = _model()
        opt = src_cls(a.parameters(), **KWARGS[name])
        _train(a, opt, 4)
        sd = get_optimizer_state_dict(a, opt)
        b, opt_b = _resumed(a, sd, lambda ps, c=dst_cls: c(ps, **KWARGS[name]))
        ref, opt_ref = _resumed(a, sd, lambda ps, c=src_cls: c(ps, **KWARGS[name]))
        _train(b, opt_b, 3)
        _train(ref, opt_ref, 3)
        _assert_close(ref, b)


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad"])
def test_optimizer_in_backward_helper(name):
    from torch.distributed.optim import _apply_optimizer_in_backward

    ref, fast = _model(), _model()
    _apply_optimizer_in_backward(_torch_cls(name), ref.parameters(), KWARGS[name])
    _apply_optimizer_in_backward(getattr(pyfastopt, name), fast.parameters(), KWARGS[name])
    for _ in range(4):
        for m in (ref, fast):
            nn.functional.mse_loss(m(X), Y).backward()
    _assert_close(ref, fast)
    assert all(p.grad is None for p in fast.parameters())  # the helper's hook frees each grad


def test_swa_utils():
    from torch.optim.swa_utils import SWALR, AveragedModel

    runs = []
    for cls in (_torch_cls("SGD"), pyfastopt.SGD):
        m = _model()
        opt = cls(m.parameters(), lr=0.1, momentum=0.9)
        swa, sched = AveragedModel(m), SWALR(opt, swa_lr=0.05, anneal_epochs=3)
        lrs = []
        for _ in range(5):
            _train(m, opt, 1)
            sched.step()
            swa.update_parameters(m)
            lrs.append(opt.param_groups[0]["lr"])
        runs.append((swa, lrs))
    assert runs[0][1] == runs[1][1]
    _assert_close(runs[0][0], runs[1][0])
