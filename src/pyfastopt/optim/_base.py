"""Shared plumbing of every pyfastopt optimizer.

Each optimizer is ``class X(FastOptimizer, torch.optim.X)``: torch's class supplies the
constructor (signature, defaults, argument checks), ``param_groups``, ``state_dict`` and hooks;
this mixin replaces ``step``. A step groups a param group's tensors by dtype, validates every
address and extent (``_state.py``), and makes one native call per (group, dtype).

The first step of a group, and any step after something changed, takes the *general path*,
which validates everything and caches a *plan*. Later steps take the *fast path*: they only
confirm, per parameter, that the plan still describes it (same parameter storage, same state
objects, a gradient with the parameter's layout) and fill in the gradient addresses.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any, ClassVar

import torch
import torch.optim.optimizer as _topt

from .. import _config, _core
from ..errors import StateError, UnsupportedError
from ._layout import LOW_PRECISION, NATIVE_DTYPES, is_dense, same_layout
from ._state import check_buffer, check_step, describe

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_GLOBAL_PRE: dict = getattr(_topt, "_global_optimizer_pre_hooks", {})
_GLOBAL_POST: dict = getattr(_topt, "_global_optimizer_post_hooks", {})
_profiler = torch.autograd.profiler
_disable_dynamo: Callable[[Callable], Callable] = getattr(torch, "_disable_dynamo", lambda f: f)
_is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)


class _Call:
    """The rows of one native call: one (dtype, step dtype, wave) of one group.

    ``source`` is what the native step function reads: the flat row list on the general path,
    a ``_core.Plan`` (which re-checks itself each step) on the fast path.
    """

    __slots__ = ("dtype", "step_f64", "entries", "table", "width", "source", "steady_aux")

    def __init__(self, dtype: int, step_f64: bool) -> None:
        self.dtype = dtype
        self.step_f64 = step_f64
        self.entries: list[tuple] = []  # (param, data_ptr, state dict|None, checks, strides|None)
        self.table: list[int] = []
        self.width = 0
        self.source: Any = self.table
        self.steady_aux: list[int] = []  # each row's aux word after this step (SGD: not first)

    def add(
        self, p: _Tensor, st: dict | None, checks: tuple, row: list[int], steady_aux: int
    ) -> None:
        strides = None if p.is_contiguous() else tuple(p.stride())
        self.entries.append((p, p.data_ptr(), st, checks, strides))
        self.table.extend(row)
        self.width = len(row)
        self.steady_aux.append(steady_aux)

    def freeze(self, group_params: list) -> _Call:
        """Turn the rows, as later steps see them, into a native Plan for the fast path."""
        table = list(self.table)
        table[1 :: self.width] = self.steady_aux
        self.source = _core.Plan(list(group_params), self.entries, table, self.width)
        return self


class _Plan:
    """What the fast path needs to step a group without re-validating it."""

    __slots__ = ("inactive", "calls", "single")

    def __init__(self, inactive: list, calls: list[_Call]) -> None:
        self.inactive = inactive
        self.calls = calls
        # the common case, stepped inline by _step: one native call, every parameter active
        self.single = calls[0] if len(calls) == 1 and not inactive else None


class FastOptimizer(torch.optim.Optimizer):
    """Mixin base: put it before the torch optimizer class in the bases."""

    #: torch's class, whose own step serves tensors the native core does not take
    #: (non-CPU devices, sparse gradients, tensor subclasses).
    _torch_cls: ClassVar[type[torch.optim.Optimizer]]
    #: whether state holds a 'step' counter the kernel advances
    _has_step: ClassVar[bool] = True

    # ---- per-algorithm hooks -------------------------------------------------------------
    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        """State keys of the buffers, in the order the native rule takes them."""
        raise NotImplementedError

    def _init_state(self, p: _Tensor, state: dict, group: dict) -> None:
        """Fill an empty state dict with torch's initial state for ``p``."""
        raise NotImplementedError

    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        """Run one native call on ``call.source``; ``params``/``state`` re-check a Plan."""
        raise NotImplementedError

    def _uses_state(self, group: dict) -> bool:
        return True

    def _row_aux(self, state: dict | None, first: bool) -> int:
        """The row's aux word: the step counter's address (SGD overrides with flags)."""
        assert state is not None
        return state["step"].data_ptr()

    # ---- construction ---------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _check_group_options(self, group)
        except Exception:
            self.param_groups.pop()
            raise

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, then a full validation; on error nothing changes."""
        old_state, old_groups = self.state, self.param_groups
        try:
            super().load_state_dict(state_dict)
        except StateError:
            raise
        except Exception as exc:  # torch's own loader choked on it: one error type for callers
            self.state, self.param_groups = old_state, old_groups
            raise StateError(f"cannot load this state_dict: {type(exc).__name__}: {exc}") from exc
        self._fastopt_plans = {}
        try:
            for group in self.param_groups:
                _check_group_options(self, group)
                self._validate_loaded(group)
        except Exception:
            self.state, self.param_groups = old_state, old_groups
            self._fastopt_plans = {}
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._fastopt_plans = {}

    def _validate_loaded(self, group: dict) -> None:
        gi = _group_index(self, group)
        keys = self._buffer_keys(group)
        for i, p in enumerate(group["params"]):
            st = self.state.get(p)
            where = f"param {i} of group {gi}"
            if st is not None and not isinstance(st, dict):
                raise StateError(f"{where}: state must be a dict, got {describe(st)}")
            if not st or not _native_tensor(p):
                continue
            for key in keys:
                # SGD's buffer may legitimately be absent until the first step with a gradient.
                if key == "momentum_buffer" and st.get(key) is None:
                    continue
                check_buffer(p, st, key, where)
            if self._has_step:
                check_step(st, where)

    # ---- step -----------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step (see the torch.optim class of the same name)."""
        if _is_compiling():  # under torch.compile: run eagerly, the native call is opaque to it
            return _eager_step(self, closure)
        if (
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _GLOBAL_PRE
            or _GLOBAL_POST
            or _profiler._is_profiler_enabled
        ):
            return _step_with_hooks(self, closure)
        return self._step(closure)

    step.hooked = True  # type: ignore[attr-defined]  # torch must not wrap it (we call hooks)

    def _step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        d = self.__dict__
        if d.get("grad_scale") is not None or d.get("found_inf") is not None:
            return self._amp_step(loss)
        plans = d.get("_fastopt_plans")
        if plans is None:
            plans = self._fastopt_plans = {}
        threads = _config.get_num_threads()
        state = self.state
        groups = self.param_groups
        if len(plans) > len(groups):  # groups were removed: drop their plans (and references)
            live = {id(g) for g in groups}
            for key in [k for k in plans if k not in live]:
                del plans[key]
        for group in groups:
            plan = plans.get(id(group))
            if plan is not None:
                call = plan.single
                if call is not None:  # the plan re-checks itself inside the native call
                    try:
                        if self._native_step(call, group["params"], state, group, threads):
                            continue
                    except ValueError:
                        # the group's options now need another table shape (momentum switched
                        # on or off, ...): the core refused before touching anything; rebuild
                        pass
                elif self._fast_step(plan, group, threads):
                    continue
            plans[id(group)] = self._general_step(group, threads)
        return loss

    def _amp_step(self, loss: Any) -> Any:
        """GradScaler hands a fused optimizer the scale and the inf flag: skip or unscale."""
        d = self.__dict__
        grad_scale, found_inf = d.pop("grad_scale", None), d.pop("found_inf", None)
        try:
            if found_inf is not None and bool(found_inf.detach().sum().item() != 0):
                return loss
            if grad_scale is not None:
                with torch.no_grad():
                    for group in self.param_groups:
                        for p in group["params"]:
                            if p.grad is not None:
                                p.grad.div_(grad_scale.to(p.grad.device))
            self._step(None)
            return loss
        finally:
            d["grad_scale"], d["found_inf"] = grad_scale, found_inf

    def _fast_step(self, plan: _Plan, group: dict, threads: int) -> bool:
        """Step ``group`` through its cached plan; False (nothing done) if the plan is stale."""
        for p in plan.inactive:
            if p.grad is not None:
                return False
        calls = plan.calls
        params, state = group["params"], self.state
        for call in calls:
            if not call.source.collect(params, state):
                return False
        try:
            for call in calls:
                self._native_step(call, None, None, group, threads)
        except ValueError:
            # a table shape the group's options no longer fit, refused before any update;
            # only possible for the first call, since all calls of a plan share the options
            return False
        return True

    def _general_step(self, group: dict, threads: int) -> _Plan | None:
        """Validate everything, step the group, and return a plan for the next steps (or None)."""
        gi = _group_index(self, group)
        keys = self._buffer_keys(group)
        uses_state = self._uses_state(group)
        calls: dict[tuple[int, bool, int], _Call] = {}
        fallback: list[_Tensor] = []
        copy_back: list[tuple[_Tensor, _Tensor]] = []
        keep_alive: list[_Tensor] = []
        inactive: list[_Tensor] = []
        cacheable = True
        seen: dict[int, int] = {}  # a parameter listed twice is updated twice, in two waves
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                inactive.append(p)
                continue
            where = f"param {i} of group {gi}"
            if not _native_tensor(p) or not _native_tensor(g):
                _refuse_low_precision(p, where)
                fallback.append(p)
                cacheable = False
                continue
            if g.dtype != p.dtype or g.shape != p.shape:
                raise UnsupportedError(
                    f"{where}: gradient {describe(g)} does not match parameter {describe(p)}"
                )
            first = False
            st: dict | None = None
            if uses_state:
                st = self.state[p]
                if not isinstance(st, dict):
                    raise StateError(f"{where}: state must be a dict, got {describe(st)}")
                if len(st) == 0:
                    self._init_state(p, st, group)
                    first = True
                elif "momentum_buffer" in keys and st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    first = True
                bufs = [check_buffer(p, st, k, where) for k in keys]
                if self._has_step:
                    check_step(st, where)
            else:
                bufs = []
            dense = is_dense(p)
            if dense:
                for k, b in zip(keys, bufs):
                    if not same_layout(b, p):  # re-lay the buffer out like the parameter, once
                        assert st is not None
                        st[k] = torch.empty_like(p).copy_(b)
                bufs = [st[k] for k in keys] if st is not None else []
                pt = p
                if not same_layout(g, p):
                    g = torch.empty_like(p).copy_(g)
                    keep_alive.append(g)
                    cacheable = False
            else:  # a parameter with gaps: update contiguous copies, then copy back
                cacheable = False
                pt = p.detach().contiguous()
                copy_back.append((p, pt))
                g = g.contiguous()
                keep_alive.append(g)
                staged = []
                for b in bufs:
                    bc = b.contiguous()
                    if bc is not b:
                        copy_back.append((b, bc))
                    staged.append(bc)
                bufs = staged
            code, mult = NATIVE_DTYPES[p.dtype]
            step_f64 = bool(st is not None and self._has_step and st["step"].dtype == torch.float64)
            aux = self._row_aux(st, first)
            row = [p.numel() * mult, aux, pt.data_ptr(), g.data_ptr()]
            row.extend(b.data_ptr() for b in bufs)
            wave = seen.get(id(p), 0)
            seen[id(p)] = wave + 1
            key = (code, step_f64, wave)
            step_key = ("step",) if self._has_step else ()
            checks = () if st is None else tuple((k, st[k]) for k in (*keys, *step_key))
            calls.setdefault(key, _Call(code, step_f64)).add(
                p, st, checks, row, self._row_aux(st, False)
            )
        if fallback:  # first: torch raises here for what it refuses (sparse Adam gradients)
            self._torch_step(group, fallback)
        for call in calls.values():
            self._native_step(call, None, None, group, threads)
        if copy_back:
            with torch.no_grad():
                for dst, src in copy_back:
                    dst.copy_(src)
        del keep_alive
        if not cacheable:
            return None
        params = group["params"]
        return _Plan(inactive, [call.freeze(params) for call in calls.values()])

    def _torch_step(self, group: dict, params: list[_Tensor]) -> None:
        """torch's own step for ``params`` of ``group`` (devices and layouts we do not take)."""
        raw = _unwrap(self._torch_cls.step)
        sub = dict(group)
        sub["params"] = params
        saved = self.param_groups
        self.param_groups = [sub]
        try:
            with torch.no_grad():
                raw(self)
        finally:
            self.param_groups = saved


def _unwrap(fn: Callable) -> Callable:
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def _native_tensor(t: _Tensor) -> bool:
    tp = type(t)
    return (
        (tp is _Tensor or tp is _Parameter)
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and t.dtype in NATIVE_DTYPES
    )


def _refuse_low_precision(p: _Tensor, where: str) -> None:
    if p.device.type == "cpu" and p.dtype in LOW_PRECISION:
        raise UnsupportedError(
            f"{where}: pyfastopt does not update {p.dtype} parameters yet (float32, float64, "
            "complex64 and complex128 are supported); keep an fp32 master copy or use torch.optim"
        )
    if (
        p.device.type == "cpu"
        and p.layout == torch.strided
        and not (p.is_floating_point() or p.is_complex())
    ):
        raise UnsupportedError(f"{where}: cannot optimize a {p.dtype} tensor")


def _check_group_options(opt: torch.optim.Optimizer, group: dict) -> None:
    if group.get("differentiable"):
        raise UnsupportedError(
            f"{type(opt).__name__}: differentiable=True is not supported by pyfastopt (the "
            "native step is not recorded by autograd); use torch.optim for differentiable steps"
        )
    if group.get("capturable") and any(p.device.type == "cpu" for p in group["params"]):
        raise UnsupportedError(
            f"{type(opt).__name__}: capturable=True has no meaning for CPU parameters "
            "(there is no graph to capture); leave it False"
        )
    for i, p in enumerate(group["params"]):
        if p.device.type == "cpu" and p.dtype in LOW_PRECISION:
            _refuse_low_precision(p, f"param {i} of the new group")


def _group_index(opt: torch.optim.Optimizer, group: dict) -> int:
    for i, g in enumerate(opt.param_groups):
        if g is group:
            return i
    return -1


@_disable_dynamo
def _eager_step(opt: FastOptimizer, closure: Callable[[], Any] | None) -> Any:
    """The step as torch.compile sees it: one call it does not trace into."""
    return _step_with_hooks(opt, closure)


def _step_with_hooks(opt: FastOptimizer, closure: Callable[[], Any] | None) -> Any:
    """torch's ``profile_hook_step`` around our step, without its cost when nothing listens."""
    args: tuple = (closure,) if closure is not None else ()
    kwargs: dict = {}
    name = f"Optimizer.step#{type(opt).__name__}.step"
    with _profiler.record_function(name):
        for pre_hook in chain(_GLOBAL_PRE.values(), opt._optimizer_step_pre_hooks.values()):
            result = pre_hook(opt, args, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    args, kwargs = result
                else:
                    raise RuntimeError(
                        f"{opt.step} must return None or a tuple of (new_args, new_kwargs), "
                        f"but got {result}."
                    )
        out = opt._step(*args, **kwargs)
        opt._optimizer_step_code()
        for post_hook in chain(opt._optimizer_step_post_hooks.values(), _GLOBAL_POST.values()):
            post_hook(opt, args, kwargs)
        return out
