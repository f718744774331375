"""A stateful property test of the fast path: random interleavings of steps and misuse.

Two worlds are kept side by side, one stepped by ``torch.optim`` (``foreach=False``) and one by
pyfastopt, with identical parameters (including a duplicate and two overlapping views of one
weight). Hypothesis interleaves steps, option changes, group edits, ``p.data`` / ``p.grad`` /
state reassignments, re-views, ``load_state_dict`` both ways, thread-count changes and switches
of the metadata reader (torch's C entry points or its Python accessors, ``pyfastopt._reader``),
and after every rule both worlds must hold the same numbers, or both must have raised.

CI runs a bounded budget. A longer hunt: ``PYFASTOPT_FUZZ_EXAMPLES=3000 pytest
tests/test_trust_state_machine.py`` (about 2 minutes on two cores).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from helpers import torch_inits_added_adagrad_groups  # noqa: E402
from hypothesis import HealthCheck, event, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule  # noqa: E402

import pyfastopt  # noqa: E402
from pyfastopt import _reader  # noqa: E402

EXAMPLES = int(os.environ.get("PYFASTOPT_FUZZ_EXAMPLES", "30"))

OPTIONS = {
    "SGD": {"lr": 0.05, "momentum": 0.9},
    "Adam": {"lr": 0.01},
    "AdamW": {"lr": 0.01},
    "Adagrad": {"lr": 0.05},
    "RMSprop": {"lr": 0.01},
    "Adadelta": {"lr": 0.5},
    "NAdam": {"lr": 0.01},
    "RAdam": {"lr": 0.01},
    "Adamax": {"lr": 0.01},
    "ASGD": {"lr": 0.01, "t0": 3.0},
    "Rprop": {"lr": 0.01},
}
#: option changes a user may make between steps: (key, values)
TWEAKS = {
    "SGD": [("lr", (0.01, 0.1)), ("momentum", (0.0, 0.5)), ("nesterov", (False,)),
            ("dampening", (0.0, 0.1)), ("weight_decay", (0.0, 0.01)), ("maximize", (True, False))],
    "Adam": [("lr", (0.001, 0.02)), ("betas", ((0.8, 0.99), (0.9, 0.999))),
             ("amsgrad", (True, False)), ("weight_decay", (0.0, 0.1)), ("maximize", (True, False))],
    "AdamW": [("lr", (0.001, 0.02)), ("amsgrad", (True, False)), ("weight_decay", (0.0, 0.1))],
    "Adagrad": [("lr", (0.01, 0.1)), ("lr_decay", (0.0, 0.01)), ("weight_decay", (0.0, 0.1))],
    "RMSprop": [("lr", (0.001, 0.02)), ("alpha", (0.9, 0.99)), ("momentum", (0.0, 0.5)),
                ("centered", (True, False)), ("weight_decay", (0.0, 0.1))],
    "Adadelta": [("lr", (0.1, 1.0)), ("rho", (0.8, 0.95)), ("weight_decay", (0.0, 0.1))],
    "NAdam": [("lr", (0.001, 0.02)), ("betas", ((0.8, 0.99), (0.9, 0.999))),
              ("momentum_decay", (0.0, 0.004)), ("decoupled_weight_decay", (True, False)),
              ("weight_decay", (0.0, 0.1))],
    "RAdam": [("lr", (0.001, 0.02)), ("betas", ((0.9, 0.9), (0.9, 0.999))),
              ("decoupled_weight_decay", (True, False)), ("weight_decay", (0.0, 0.1)),
              ("maximize", (True, False))],
    "Adamax": [("lr", (0.001, 0.02)), ("betas", ((0.8, 0.99), (0.9, 0.999))),
               ("weight_decay", (0.0, 0.1))],
    "ASGD": [("lr", (0.005, 0.02)), ("lambd", (1e-4, 0.01)), ("alpha", (0.75, 0.5)),
             ("t0", (3.0, 1e6)), ("weight_decay", (0.0, 0.1))],
    "Rprop": [("etas", ((0.5, 1.2), (0.3, 1.5))), ("step_sizes", ((1e-6, 50), (1e-3, 0.05))),
              ("maximize", (True, False))],
}  # fmt: skip
DTYPE = torch.float64  # exact enough that any divergence is a bug, not rounding
TOL = {"rtol": 1e-9, "atol": 1e-11}


class World:
    """One side: a weight matrix, the parameters viewing it, loose parameters, an optimizer."""

    def __init__(self, module: object, name: str, seed: int, shared: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(6, 8, generator=g, dtype=DTYPE)
        loose = [
            torch.randn(5, generator=g, dtype=DTYPE),
            torch.randn(3, 4, generator=g, dtype=DTYPE),
        ]
        self.params = [torch.nn.Parameter(t) for t in loose]
        if shared:  # two overlapping views of one weight, and a duplicate
            self.params += [
                torch.nn.Parameter(self.weight[:, :5]),
                torch.nn.Parameter(self.weight[:, 3:]),
            ]
        group = list(self.params)
        if shared:
            group.append(self.params[0])
        kw = dict(OPTIONS[name])
        if module is torch.optim:
            kw["foreach"] = False
        self.opt = getattr(module, name)(group, **kw)
        self.extra: list[torch.nn.Parameter] = []

    def all_params(self) -> list[torch.Tensor]:
        return [*self.params, *self.extra]


class TrustMachine(RuleBasedStateMachine):
    @initialize(
        name=st.sampled_from(sorted(OPTIONS)), seed=st.integers(0, 2**16), shared=st.booleans()
    )
    def setup(self, name: str, seed: int, shared: bool) -> None:
        self.name = name
        self.ref = World(torch.optim, name, seed, shared)
        self.fast = World(pyfastopt, name, seed, shared)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.diverged = False  # see both()

    def both(self, fn, early: type[Exception] | None = None) -> None:
        """Apply ``fn`` to both worlds; they must agree on raising.

        After a failure the worlds may differ legitimately (torch's for-loop may have updated
        some parameters before it raised; pyfastopt validates first and updates none), so from
        then on only robustness is checked: any exception is fine, a crash or a hang is not.
        ``early``: an error pyfastopt may raise where torch raises only at the next step.
        """
        errors = []
        for w in (self.ref, self.fast):
            try:
                fn(w)
                errors.append(None)
            except Exception as exc:  # compared: torch and pyfastopt must agree on failing
                errors.append(exc)
        if self.diverged:
            return
        ref_err, fast_err = errors
        if early is not None and ref_err is None and isinstance(fast_err, early):
            event(f"diverged: pyfastopt refused early ({type(fast_err).__name__})")
            self.diverged = True
            return
        assert (ref_err is None) == (fast_err is None), (
            f"torch: {ref_err!r}; pyfastopt: {fast_err!r}"
        )
        if ref_err is not None:
            event(f"diverged: both raised {type(ref_err).__name__}")
            self.diverged = True

    # ---- steps and gradients ---------------------------------------------------------------
    @rule(scale=st.sampled_from([1.0, 1e-3, 100.0]), skip=st.integers(0, 5))
    def step(self, scale: float, skip: int) -> None:
        grads = [
            None if i == skip else torch.randn(p.shape, generator=self.gen, dtype=p.dtype) * scale
            for i, p in enumerate(self.ref.all_params())
        ]

        def fn(w: World) -> None:
            for p, g in zip(w.all_params(), grads):
                p.grad = None if g is None else g.clone()
            w.opt.step()

        self.both(fn)

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none: bool) -> None:
        self.both(lambda w: w.opt.zero_grad(set_to_none=set_to_none))

    @rule(i=st.integers(0, 3))
    def grad_relayout(self, i: int) -> None:
        def fn(w: World) -> None:
            p = w.all_params()[i % len(w.all_params())]
            if p.grad is not None and p.grad.dim() == 2:
                p.grad = p.grad.t().contiguous().t()  # same values, column-major
            w.opt.step()

        self.both(fn)

    # ---- options and groups ----------------------------------------------------------------
    @rule(data=st.data())
    def tweak(self, data: st.DataObject) -> None:
        key, values = data.draw(st.sampled_from(TWEAKS[self.name]))
        value = data.draw(st.sampled_from(values))

        def fn(w: World) -> None:
            for group in w.opt.param_groups:
                group[key] = value

        self.both(fn)

    @rule(threads=st.sampled_from([None, 1, 2]))
    def threads(self, threads: int | None) -> None:
        pyfastopt.set_num_threads(threads)

    @rule(c_reader=st.booleans())
    def reader(self, c_reader: bool) -> None:
        _reader.use_torch_abi(c_reader)

    @rule(n=st.integers(1, 40))
    def add_group(self, n: int) -> None:
        if len(self.ref.extra) >= 2:
            return
        if self.name == "Adagrad" and not torch_inits_added_adagrad_groups():
            return  # this torch's Adagrad then raises KeyError('sum'); pyfastopt steps
        t = torch.randn(n, generator=self.gen, dtype=DTYPE)

        def fn(w: World) -> None:
            p = torch.nn.Parameter(t.clone())
            w.extra.append(p)
            w.opt.add_param_group({"params": [p]})

        self.both(fn)

    # ---- reassignments through standard APIs ------------------------------------------------
    @rule(i=st.integers(0, 5), how=st.sampled_from(["clone", "transpose", "noncontig", "same"]))
    def reassign_data(self, i: int, how: str) -> None:
        def fn(w: World) -> None:
            p = w.all_params()[i % len(w.all_params())]
            if how == "clone":
                p.data = p.data.clone()
            elif how == "transpose" and p.dim() == 2:
                p.data = p.data.t()
                if p.grad is not None:
                    p.grad = p.grad.t()
            elif how == "noncontig" and p.dim() == 2:
                p.data = p.data.t().contiguous().t()
            else:
                p.data = p.data

        self.both(fn)

    @rule(i=st.integers(0, 5), how=st.sampled_from(["clone", "share", "set_", "replace"]))
    def reassign_state(self, i: int, how: str) -> None:
        def fn(w: World) -> None:
            p = w.all_params()[i % len(w.all_params())]
            state = w.opt.state.get(p, {})
            for key, v in list(state.items()):
                if not torch.is_tensor(v):
                    continue
                if how == "clone":
                    v.data = v.data.clone()
                elif how == "share":
                    v.share_memory_()
                elif how == "set_":
                    v.set_(v.detach().clone())
                else:
                    state[key] = v.clone()

        self.both(fn)

    @rule(direction=st.sampled_from(["torch->fast", "fast->torch", "roundtrip"]))
    def load_state_dict(self, direction: str) -> None:
        if self.diverged:
            return
        # as a checkpoint hands them over: copies (a live state_dict shares its tensors)
        ref_sd = copy.deepcopy(self.ref.opt.state_dict())
        fast_sd = copy.deepcopy(self.fast.opt.state_dict())

        def fn(w: World) -> None:
            if direction == "roundtrip":
                w.opt.load_state_dict(w.opt.state_dict())
            elif (w is self.fast) == (direction == "torch->fast"):
                w.opt.load_state_dict(ref_sd if w is self.fast else fast_sd)
            else:
                w.opt.load_state_dict(w.opt.state_dict())

        # a checkpoint without a buffer the group's options now need (amsgrad switched on):
        # torch loads it and raises KeyError at the next step, pyfastopt refuses it at once
        self.both(fn, early=pyfastopt.StateError)

    # ---- the invariant ------------------------------------------------------------------------
    @invariant()
    def same_numbers(self) -> None:
        if not hasattr(self, "ref") or self.diverged:
            return
        torch.testing.assert_close(self.fast.weight, self.ref.weight, **TOL)
        for a, b in zip(self.ref.all_params(), self.fast.all_params()):
            torch.testing.assert_close(b.detach(), a.detach(), **TOL)
            for key, v in self.ref.opt.state.get(a, {}).items():
                mine = self.fast.opt.state[b].get(key)
                if torch.is_tensor(v) and mine is not None:
                    torch.testing.assert_close(mine.to(v.dtype), v, **TOL)

    def teardown(self) -> None:
        pyfastopt.set_num_threads(None)
        _reader.use_torch_abi(os.environ.get("PYFASTOPT_TORCH_ABI", "1") != "0")


TrustMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=EXAMPLES <= 30,  # CI: the same examples every run
    database=None if EXAMPLES <= 30 else settings.default.database,  # (no .hypothesis/ written)
)
test_trust_state_machine = TrustMachine.TestCase
