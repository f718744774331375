"""Shared plumbing of every pyfastopt optimizer.

Each optimizer is ``class X(FastOptimizer, torch.optim.X)``: torch's class supplies the
constructor (signature, defaults, argument checks), ``param_groups``, ``state_dict`` and hooks;
this mixin replaces ``step``. A step groups a param group's tensors by dtype, validates every
address and extent (``_state.py``), and makes one native call per (group, dtype).

The first step of a group, and any step after something changed, takes the *general path*,
which validates everything and builds a native ``Plan`` per call; the Plan records the signature
of every tensor it points at (``csrc/bindings/tensor_sig.h``). Later steps take the *fast path*:
the Plan re-reads every signature with the same reader, re-checks the identity of the parameter
list, state dicts and state entries, requires each gradient to fit its parameter, and fills in the
gradient addresses; any difference goes back to the general path (docs/trust.md).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from functools import partial
from itertools import chain
from typing import Any, ClassVar

import numpy as np
import torch
import torch.optim.optimizer as _topt
from torch.utils.weak import WeakIdKeyDictionary

from .. import _config, _core, _cuda_backend, _reader  # noqa: F401  (_reader: metadata reader)
from ..errors import OperandError, StateError, UnsupportedError
from . import _cuda_rows, _lowmem, _precision
from ._layout import (
    NATIVE_DTYPES,
    check_storage,
    is_dense,
    is_plain,
    may_overlap_itself,
    same_layout,
    spans_overlap,
)
from ._lowmem import FORMATS
from ._precision import MASTER, MASTER_KEY
from ._state import check_buffer, check_scalar, check_step, describe

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_GLOBAL_PRE: dict = getattr(_topt, "_global_optimizer_pre_hooks", {})
_GLOBAL_POST: dict = getattr(_topt, "_global_optimizer_post_hooks", {})
_profiler = torch.autograd.profiler
_disable_dynamo: Callable[[Callable], Callable] = getattr(torch, "_disable_dynamo", lambda f: f)
_is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)


class _Call:
    """One native call: the rows of one (dtype, step dtype) of one wave of a group.

    ``source`` is the ``_core.Plan`` the native step function reads. The general path builds it
    (taking every tensor's signature) and runs it; a plan kept for later steps re-checks itself
    in ``collect`` and is the fast path. A call of CUDA parameters (``device`` set) has a
    ``_cuda.Call`` instead, built by the general path at every step, and ``backend`` is
    ``pyfastopt._cuda``: the same step functions with the same arguments.
    """

    __slots__ = (
        "dtype",
        "step_f64",
        "rounding",
        "store",
        "salt",
        "rows",
        "table",
        "width",
        "written",
        "steady_aux",
        "source",
        "device",
        "steps",
        "backend",
        "keep",
    )

    def __init__(
        self,
        dtype: int,
        step_f64: bool,
        rounding: int,
        store: int,
        salt: int,
        device: torch.device | None = None,
        steps: int = 0,
    ) -> None:
        self.dtype = dtype
        self.step_f64 = step_f64
        self.rounding = rounding  # _precision.NEAREST / STOCHASTIC / MASTER
        self.store = store  # _lowmem.AS_PARAM / BF16 / BF16_SR / BLOCK8
        self.salt = salt  # stochastic rounding: tells this call's rows from other calls'
        self.rows: list[tuple] = []  # (param, state dict|None, checks, held tensors)
        self.table: list[int] = []
        self.width = 0
        self.written: list[_Tensor] = []  # tensors the step writes: their versions are bumped
        self.steady_aux: list[int] = []  # each row's aux word after this step (SGD: not first)
        self.source: Any = None
        self.device = device  # a CUDA device, or None (the CPU core)
        self.steps = steps  # CUDA calls: where the step counters are (_cuda_rows)
        self.backend: Any = _core
        self.keep: list = []  # CUDA calls: tensors made for the call (a device lr)

    def add(
        self, p: _Tensor, st: dict | None, checks: tuple, held: tuple, row: list[int], aux: int
    ) -> None:
        self.rows.append((p, st, checks, held))
        self.table.extend(row)
        self.width = len(row)
        self.written.extend(held)
        self.steady_aux.append(aux)

    def build(self, group_params: list) -> _Call:
        # the fast path refuses a gradient that overlaps any tensor the table holds (the general
        # path hands such a group to torch: _shared_memory); a gradient fits held[0]'s layout
        extents = [_extent(t) for t in self.written if t.numel() > 0]
        grad_bytes = [_extent(held[0])[1] - held[0].data_ptr() for _, _, _, held in self.rows]
        self.source = _core.Plan(
            list(group_params),
            self.rows,
            self.table,
            self.width,
            self.written,
            _bump_versions,
            extents,
            grad_bytes,
        )
        return self

    def build_cuda(self, group: dict) -> _Call:
        """The CUDA module's Call for these rows (validated like any others), on torch's current
        stream of their device."""
        assert self.device is not None
        if self.steps == _cuda_rows.HOST_STEPS:
            _cuda_rows.refuse_capture_with_host_steps(self.device)
        self.backend = _cuda_backend.module()
        lr = _cuda_rows.lr_address(group["lr"], self.device, self.keep)
        self.source = _cuda_rows.make_call(self.table, self.width, self.device, self.steps, lr)
        return self


class _Plan:
    """What the fast path needs to step a group without re-validating it."""

    __slots__ = ("inactive", "calls", "single", "key")

    def __init__(self, inactive: list, calls: list[_Call], key: tuple) -> None:
        self.inactive = inactive
        self.calls = calls
        self.key = key  # FastOptimizer._plan_key of the group when the plan was built
        # the common case, stepped inline by _step: one native call, every parameter active
        self.single = calls[0] if len(calls) == 1 and not inactive else None


class _Item:
    """A validated parameter of the general path, before its row is laid out."""

    __slots__ = ("p", "g", "st", "first", "mode", "store")

    def __init__(
        self, p: _Tensor, g: _Tensor, st: dict | None, first: bool, mode: int, store: int
    ) -> None:
        self.p, self.g, self.st, self.first, self.mode = p, g, st, first, mode
        self.store = store


class FastOptimizer(torch.optim.Optimizer):
    """Mixin base: put it before the torch optimizer class in the bases."""

    #: torch's class, whose own step serves tensors the native core does not take
    #: (non-CPU devices, sparse gradients, tensor subclasses).
    _torch_cls: ClassVar[type[torch.optim.Optimizer]]
    #: whether state holds a 'step' counter the kernel advances
    _has_step: ClassVar[bool] = True
    #: other 0-d state scalars the kernel reads and writes through their addresses (NAdam's
    #: mu_product, ASGD's eta and mu): each row ends with their addresses and a dtype flag word
    _scalar_keys: ClassVar[tuple[str, ...]] = ()
    #: buffers torch creates at their first use rather than with the rest of the state
    _lazy_buffers: ClassVar[tuple[str, ...]] = ()
    #: whether torch lets GradScaler hand this optimizer its scale (``fused=True``)
    _amp_in_kernel: ClassVar[bool] = False
    #: whether pyfastopt._cuda has this algorithm (its ``<name>_step`` takes the arguments of
    #: ``_core``'s and ``_native_step`` calls it through ``call.backend``); without it, CUDA
    #: parameters take torch's step
    _cuda_kernel: ClassVar[bool] = False

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        options = _precision.split_options(kwargs)  # master_weights, stochastic_rounding
        options.update(_lowmem.split_options(kwargs))  # state_dtype, block_size, ...
        if options.get("state_stochastic_rounding") and "sr_seed" not in options:
            options["sr_seed"] = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            options["sr_step"] = 0
        super().__init__(params, *args, **kwargs)
        if options:
            self.defaults.update(options)
            for group in self.param_groups:
                for key, value in options.items():
                    group.setdefault(key, value)
                _check_group_options(self, group)  # (differentiable=True with them)

    # ---- per-algorithm hooks -------------------------------------------------------------
    def _buffer_keys(self, group: dict) -> tuple[str, ...]:
        """State keys of the buffers, in the order the native rule takes them."""
        raise NotImplementedError

    def _buffer_keys_for(self, p: _Tensor, group: dict) -> tuple[str, ...]:
        """The buffer keys of ``p``'s state (Adafactor's depend on the parameter's shape)."""
        return self._buffer_keys(group)

    def _takes(self, p: _Tensor) -> bool:
        """Whether the native step takes ``p`` (else torch's own step, which may raise)."""
        return True

    def _check_options(self, group: dict) -> None:
        """Refuse a group's options this optimizer does not support (beyond the shared ones)."""

    def _init_state(self, p: _Tensor, state: dict, group: dict) -> None:
        """Fill an empty state dict with torch's initial state for ``p``."""
        raise NotImplementedError

    def _native_step(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        """Run one native call on ``call.source``; ``params``/``state`` re-check a Plan."""
        raise NotImplementedError

    def _native(
        self, call: _Call, params: list | None, state: Any, group: dict, threads: int
    ) -> bool:
        """``_native_step``, with a hyper-parameter of the wrong type named: the core's binding
        rejects it before anything is read or written, in pybind11's words."""
        try:
            return self._native_step(call, params, state, group, threads)
        except TypeError as exc:
            raise _native_type_error(self, group, exc) from None

    def _plan_key(self, group: dict) -> tuple:
        """What a cached plan is valid for: the buffer names its rows hold, and the flags that
        ``_check_group_options`` refuses (so setting them by hand is caught at the next step)."""
        return (
            self._buffer_keys(group),
            group.get("capturable"),
            group.get("differentiable"),
            group.get("master_weights"),
            group.get("stochastic_rounding"),
            *(group.get(k) for k in _lowmem.OPTIONS),
        )

    def _grads_written(self) -> bool:
        """Whether this step writes the gradients: GradScaler's scale unscaled in the kernels."""
        d = self.__dict__
        return d.get("_amp_pointers") is not None or d.get("_amp_cuda") is not None

    def _skipped_by_scaler(self) -> bool:
        """Whether GradScaler's found_inf made the kernels skip this step (general path only)."""
        found_inf = self.__dict__.get("_amp_found_inf")
        return found_inf is not None and bool(found_inf.item() == 1.0)

    def _extra(self, call: _Call, group: dict) -> tuple | None:
        """The native call's storage options: None, or (rounding, seed, grad_scale address,
        found_inf address, state store, block, lr_f32)."""
        amp = self.__dict__.get("_amp_pointers")
        lr_f32 = False
        if call.device is not None:  # GradScaler's scalars on the call's device, if in the step
            scalars = self.__dict__.get("_amp_cuda")
            amp = None
            if scalars is not None:
                amp = tuple(0 if t is None else t.data_ptr() for t in scalars[call.device])
        elif type(group["lr"]) is not float:
            lr_f32 = _lr_in_float32(group)
        if (
            call.rounding == _precision.NEAREST
            and amp is None
            and call.store == _lowmem.AS_PARAM
            and not lr_f32
        ):
            return None
        stochastic = call.rounding == _precision.STOCHASTIC or call.store == _lowmem.BF16_SR
        seed = _precision.call_seed(group, call.salt) if stochastic else 0
        gs, fi = amp if amp is not None else (0, 0)
        block = _block_size(group)
        return (call.rounding, seed, gs, fi, call.store, block, lr_f32)

    def _kept_tensors(self, state_dict: Any) -> dict[Any, tuple[_Tensor, tuple[Any, ...]]]:
        """For each saved parameter id of a native parameter: the parameter and the state keys
        whose tensors torch's loader would corrupt by casting them to the parameter's dtype
        (8-bit codes, float32 master copies of a 16-bit parameter, ...:
        ``_lowmem.kept_as_saved``). Empty where the state_dict's shape is not one torch's
        loader accepts (it raises then)."""
        try:
            saved = state_dict["state"]
            pairs = [
                (pid, p)
                for sg, group in zip(state_dict["param_groups"], self.param_groups, strict=True)
                for pid, p in zip(sg["params"], group["params"], strict=True)
            ]
        except Exception:
            return {}
        out: dict[Any, tuple[_Tensor, tuple[Any, ...]]] = {}
        for pid, p in pairs:
            src = saved.get(pid) if isinstance(saved, dict) else None
            if not isinstance(src, dict) or not (_native_tensor(p) or self._on_cuda_module(p)):
                continue
            keys = tuple(
                k for k, v in src.items() if k != "step" and _lowmem.kept_as_saved(k, v, p)
            )
            if keys:
                out[pid] = (p, keys)
        return out

    def _restore_saved_state(self, state_dict: dict[str, Any], kept: dict | None = None) -> None:
        """torch's loader casts every floating state tensor to its parameter's dtype (8-bit codes
        included); a native parameter's state takes the tensors of pyfastopt's own layouts from
        the checkpoint again, as saved (``_kept_tensors``), and the validation then converts
        them to the group's layout (master copies, bfloat16 or 8-bit state, torch's). As
        torch's loader does with a tensor it need not cast, the state shares them with the
        checkpoint (a tensor on another device is copied to the parameter's)."""
        saved = state_dict.get("state", {})
        saved_groups = state_dict.get("param_groups", [])
        for gi, sg in enumerate(saved_groups):
            for i, pid in enumerate(sg.get("params", [])):
                src = saved.get(pid)
                if isinstance(src, dict):
                    _lowmem.check_saved_codes(src, f"param {i} of group {gi}")
        kept = self._kept_tensors(state_dict) if kept is None else kept
        for pid, (p, keys) in kept.items():
            st = self.state.get(p)
            if isinstance(st, dict):
                for k in keys:
                    st[k] = saved[pid][k].detach().to(device=p.device)

    def _settle(
        self,
        p: _Tensor,
        st: dict,
        keys: tuple,
        mode: int,
        store: int,
        group: dict,
        where: str,
        first: bool = False,
    ) -> None:
        """Bring ``p``'s state to the group's layout (master copy, state store) and check it.

        What the state was last settled for, ``(p's dtype, block size of its 8-bit codes)``, is
        kept per parameter (not in ``state_dict``; ``load_state_dict`` starts afresh): codes are
        re-blocked when ``block_size`` changed, and a parameter whose dtype changed between
        float32, bfloat16 and float16 under its state is refused. Its buffers then still have
        the old dtype: torch's step raises (Adam-like) or keeps computing with them (SGD,
        RMSprop, ...), while bringing them to the new layout would differ from torch without a
        word. A switch of ``state_dtype`` or ``master_weights`` keeps the parameter's dtype and
        converts the state.
        """
        before = self._settled_for(p, first, where)
        _precision.ensure_master(p, st, mode)
        block = _block_size(group)
        as_param = _precision.state_dtype(p, mode)
        made_with = before[1] if before is not None else None
        _lowmem.settle(p, st, keys, store, as_param, block, where, made_with)
        _lowmem.check_state(p, st, keys, store, as_param, block, where, check_buffer)
        if store != _lowmem.BLOCK8:
            for k in keys:
                st.pop(k + _lowmem.ABSMAX, None)
                st.pop(k + _lowmem.QMAP, None)
        self._made_for()[p] = (p.dtype, block if store == _lowmem.BLOCK8 else None)

    def _settled_for(self, p: _Tensor, first: bool, where: str) -> tuple | None:
        """What ``p``'s state was last settled for (see ``_settle``), after refusing a change of
        ``p``'s dtype between float32, bfloat16 and float16 since then."""
        before = self._made_for().get(p)
        if before is not None and not first and before[0] != p.dtype and before[0] in FORMATS:
            raise StateError(
                f"{where}: the parameter changed dtype from {before[0]} to {p.dtype} after its "
                "state was made (model.to(dtype) or .data); torch.optim's step then raises or "
                "keeps the old state dtype, which pyfastopt does not emulate. Re-create the "
                "optimizer, or load its state_dict (torch's loader casts the state to the "
                "parameters' dtypes)"
            )
        return before

    def _made_for(self) -> WeakIdKeyDictionary:
        """Per parameter: (dtype, 8-bit block size) its state was last settled for."""
        made = self.__dict__.get("_fastopt_made_for")
        if made is None:
            made = self._fastopt_made_for = WeakIdKeyDictionary()
        return made

    def torch_state_dict(self) -> dict[str, Any]:
        """This optimizer's ``state_dict`` in torch's layout, every state buffer a float32 tensor
        (8-bit state dequantised, bfloat16 state widened; float64 state of float64 parameters
        kept) and without pyfastopt's own group keys
        or master copies: ``torch.optim`` (and pyfastopt with any ``state_dtype``) loads it."""
        sd = super().state_dict()  # (8-bit codes read in the blocks they were made with)
        made = self._made_for()
        block_of = {}
        for g, group in zip(sd["param_groups"], self.param_groups, strict=True):
            for pid, p in zip(g["params"], group["params"], strict=True):
                made_with = made.get(p, (None, None))[1]  # the codes' own block size
                block_of[pid] = made_with or _block_size(group)
        state = {
            pid: _lowmem.float32_state(st, block_of.get(pid, 256), f"state of param id {pid}")
            if isinstance(st, dict)
            else st
            for pid, st in sd["state"].items()
        }
        own = set(_precision.OPTIONS) | set(_lowmem.OPTIONS) | {"sr_seed", "sr_step"}
        groups = [{k: v for k, v in g.items() if k not in own} for g in sd["param_groups"]]
        return {"state": state, "param_groups": groups}

    def _uses_state(self, group: dict) -> bool:
        return True

    def _on_cuda_module(self, p: _Tensor) -> bool:
        """Whether the CUDA module steps ``p`` (its state then keeps pyfastopt's layouts)."""
        return self._cuda_kernel and _cuda_rows.plain(p) and _cuda_backend.usable()

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
        """torch's ``load_state_dict``, then a full validation; on error nothing changes.

        The post-hooks run last, as in torch, but after the validation (they see the state as
        the step will); an exception from a hook propagates as it is, where torch's own loader
        failing becomes a ``StateError``. A post-hook that raises leaves the state loaded, as
        torch's does."""
        old_state, old_groups = self.state, self.param_groups
        post_hooks = self._optimizer_load_state_dict_post_hooks
        posts = list(post_hooks.items())
        post_hooks.clear()  # run below, after the validation
        # the state_dict as torch's loader gets it (after the pre-hooks) and the tensors taken
        # from it as saved, which a last pre-hook of ours records (_lighten)
        seen: list[tuple[dict[str, Any], dict]] = []
        pre_hooks = self._optimizer_load_state_dict_pre_hooks
        handle = torch.utils.hooks.RemovableHandle(pre_hooks)
        pre_hooks[handle.id] = partial(_lighten, seen)
        try:
            super().load_state_dict(state_dict)
        except StateError:
            raise
        except Exception as exc:
            self.state, self.param_groups = old_state, old_groups
            if _raised_by_hook(exc, self._optimizer_load_state_dict_pre_hooks):
                raise  # a pre-hook's own exception, as torch propagates it
            # torch's own loader choked on it: one error type for callers
            raise StateError(f"cannot load this state_dict: {type(exc).__name__}: {exc}") from exc
        finally:
            handle.remove()
            added = list(post_hooks.items())  # registered by a pre-hook meanwhile
            post_hooks.clear()
            post_hooks.update(posts)
            post_hooks.update(added)
        self._fastopt_plans = {}
        self._fastopt_master_seen = {}  # the master copies now come from the checkpoint
        self._fastopt_made_for = WeakIdKeyDictionary()  # and the state's dtypes
        try:
            for group in self.param_groups:
                for key in _precision.OPTIONS + _lowmem.OPTIONS + ("sr_seed", "sr_step"):
                    if key in self.defaults:
                        group.setdefault(key, self.defaults[key])
            self._restore_saved_state(*(seen[-1] if seen else (state_dict, None)))
            for group in self.param_groups:
                _check_group_options(self, group)
                self._validate_loaded(group)
        except Exception:
            self.state, self.param_groups = old_state, old_groups
            self._fastopt_plans = {}
            raise
        for hook in list(post_hooks.values()):
            hook(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._fastopt_plans = {}

    def state_dict(self) -> dict[str, Any]:  # (torch's, after re-blocking stale 8-bit codes)
        self._reblock_codes()
        return super().state_dict()

    def _reblock_codes(self) -> None:
        """8-bit codes made with another ``block_size`` than their group now asks for (set
        since the last step) are re-quantised in the group's blocks, as the next step would do:
        a checkpoint records the group's ``block_size`` and is read back with it."""
        made = self._made_for()
        for gi, group in enumerate(self.param_groups):
            block = _block_size(group)
            for i, p in enumerate(group["params"]):
                before, st = made.get(p), self.state.get(p)
                if before is None or before[1] in (None, block) or not isinstance(st, dict):
                    continue
                keys = tuple(k for k in st if _lowmem.is_codes(st, k))
                where = f"param {i} of group {gi}"
                _lowmem.settle(p, st, keys, _lowmem.BLOCK8, p.dtype, block, where, before[1])
                made[p] = (before[0], block)

    def _validate_loaded(self, group: dict) -> None:
        if group.get("differentiable"):
            return  # torch's own step takes this group's state as torch's does
        gi = _group_index(self, group)
        for i, p in enumerate(group["params"]):
            st = self.state.get(p)
            where = f"param {i} of group {gi}"
            if st is not None and not isinstance(st, dict):
                raise StateError(f"{where}: state must be a dict, got {describe(st)}")
            on_cuda = not _native_tensor(p) and self._on_cuda_module(p)
            if not st or not (_native_tensor(p) or on_cuda) or not self._takes(p):
                continue
            keys = self._buffer_keys_for(p, group)
            mode = _precision.row_mode(p, group, where)
            store = _lowmem.row_store(p, group, mode == MASTER, where)
            if on_cuda and store == _lowmem.BLOCK8:
                continue  # refused at the step (UnsupportedError)
            # SGD's buffer may legitimately be absent until the first step with a gradient.
            present = tuple(k for k in keys if not (k in self._lazy_buffers and st.get(k) is None))
            self._settle(p, st, present, mode, store, group, where)
            if mode == MASTER:
                check_buffer(p, st, MASTER_KEY, where, torch.float32)
            if self._has_step and on_cuda:
                _cuda_rows.check_device_row_step(st, where, p, group)
            elif self._has_step:
                check_step(st, where)
            for k in self._scalar_keys:
                check_scalar(st, k, where)

    # ---- step -----------------------------------------------------------------------------
    def step(self, *args: Any, **kwargs: Any) -> Any:
        """Perform a single optimization step (see the torch.optim class of the same name).

        Takes ``closure`` by position or by keyword, as torch's does; the call's arguments are
        kept as given so that step hooks see them as torch passes them (``_step_with_hooks``).
        """
        if _is_compiling():  # under torch.compile: run eagerly, the native call is opaque to it
            return _eager_step(self, args, kwargs)
        lock = self.__dict__.get("_fastopt_lock")  # (step_lock, inlined: the hot path)
        with lock if lock is not None else step_lock(self):
            if (
                self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks
                or _GLOBAL_PRE
                or _GLOBAL_POST
                or _profiler._is_profiler_enabled
            ) and type(self).step is FastOptimizer.step:
                # (a subclass overriding step() has it wrapped by torch, whose wrapper ran the
                # hooks and the profiler range before calling this through super())
                return _step_with_hooks(self, args, kwargs)
            return self._step(*args, **kwargs)

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
            if group.get("stochastic_rounding") or group.get("state_stochastic_rounding"):
                # the step that keys the rounding bits
                group["sr_step"] = group.get("sr_step", 0) + 1
            if group.get("master_weights"):
                _precision.follow_written_params(group, state, self._master_seen())
            plan = plans.get(id(group))
            # a plan is keyed by the options that decide what its tables mean (the buffer
            # names) or whether a step is allowed: any change takes the general path
            if plan is not None and plan.key == self._plan_key(group):
                call = plan.single
                if call is not None:  # the plan re-checks itself inside the native call
                    try:  # (_native, inlined: this is the hot path)
                        if self._native_step(call, group["params"], state, group, threads):
                            continue
                    except TypeError as exc:
                        raise _native_type_error(self, group, exc) from None
                elif self._fast_step(plan, group, threads):
                    continue
            plans[id(group)] = self._general_step(group, threads)
        for group in groups:
            if group.get("master_weights"):
                _precision.record_params(group, self._master_seen())
        return loss

    # what inspect.signature(opt.step) reports, as for torch's step: (closure=None)
    step.__signature__ = inspect.signature(_step)  # type: ignore[attr-defined]

    def _master_seen(self) -> dict:
        """Master weights: each parameter's (version, address) after the last step."""
        seen = self.__dict__.get("_fastopt_master_seen")
        if seen is None:
            seen = self._fastopt_master_seen = {}
        return seen

    def _amp_step(self, loss: Any) -> Any:
        """GradScaler hands a fused optimizer the scale and the inf flag: skip or unscale."""
        d = self.__dict__
        grad_scale, found_inf = d.pop("grad_scale", None), d.pop("found_inf", None)
        try:
            amp = None
            if self._amp_in_kernel:
                amp = _precision.amp_pointers(self, grad_scale, found_inf)
            if amp is not None:  # the kernel skips on found_inf == 1 and unscales in its step
                d["_amp_pointers"], d["_amp_found_inf"] = amp, found_inf
                d["_amp_torch"] = (grad_scale, found_inf)  # for what torch's step takes
                try:
                    self._step(None)
                finally:
                    del d["_amp_pointers"], d["_amp_found_inf"], d["_amp_torch"]
                return loss
            scalars = None
            if self._amp_in_kernel:  # CUDA parameters: the scalars on each device, no sync
                scalars = _cuda_rows.amp_scalars(self, grad_scale, found_inf)
            if scalars is not None:
                d["_amp_cuda"], d["_amp_found_inf"] = scalars, found_inf
                try:
                    self._step(None)
                finally:
                    del d["_amp_cuda"], d["_amp_found_inf"]
                return loss
            # found_inf is the int 0 where GradScaler unscaled no gradient (sum of none)
            if found_inf is not None and bool(torch.as_tensor(found_inf).sum().item() != 0):
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
        written = self._grads_written()
        for call in calls:
            if not call.source.collect(params, state, written):
                return False
        if written and _grads_overlap(params):  # (collect compared those of one call only)
            return False
        for call in calls:  # waves in order: later waves overlap earlier ones
            self._native(call, None, None, group, threads)
        return True

    def _general_step(self, group: dict, threads: int) -> _Plan | None:
        """Validate everything, step the group, and return a plan for the next steps (or None)."""
        gi = _group_index(self, group)
        _check_group_options(self, group)  # flags set by hand since the last general step
        if group.get("differentiable"):  # torch's own step, which autograd records
            with_grad = [p for p in group["params"] if p.grad is not None]
            if with_grad:
                self._torch_step(group, with_grad)
            return None
        step_key = ("step",) if self._has_step else ()
        uses_state = self._uses_state(group)
        params = group["params"]
        items: list[_Item] = []
        fallback: list[_Tensor] = []
        inactive: list[_Tensor] = []
        firsts: dict[int, bool] = {}  # a duplicate takes the first-step semantics of its first
        cuda_seen = False
        for i, p in enumerate(params):
            g = p.grad
            if g is None:
                inactive.append(p)
                continue
            where = f"param {i} of group {gi}"
            on_cuda = False
            if (
                not _native_tensor(p)
                or not _native_tensor(g)
                or g.dtype != p.dtype
                or g.shape != p.shape
                or not self._takes(p)
                or may_overlap_itself(p)
            ):
                # pyfastopt._cuda, when built and usable, for the algorithms it has
                on_cuda = self._takes(p) and _cuda_rows.takes(self, p, g)
                if not on_cuda:
                    # torch's own step, which computes or raises exactly as torch does: other
                    # devices, subclasses, neg/conj views, a gradient of another dtype or shape
                    _refuse_non_float(p, where)
                    _refuse_own_options(self, p, group, where)
                    fallback.append(p)
                    continue
                if not cuda_seen:
                    cuda_seen = True
                    _cuda_rows.graph_capture_check(self)
            check_storage(p, "the parameter", OperandError, where)
            check_storage(g, "its gradient", OperandError, where)
            st: dict | None = None
            keys = self._buffer_keys_for(p, group)
            first = firsts.get(id(p))
            mode = _precision.row_mode(p, group, where)
            store = _lowmem.row_store(p, group, mode == MASTER, where) if uses_state else 0
            if on_cuda and store == _lowmem.BLOCK8:
                raise UnsupportedError(
                    f"{where}: state_dtype='8bit' is not supported for CUDA parameters yet "
                    "(state_dtype=torch.bfloat16 is)"
                )
            if uses_state or mode == MASTER:
                st = self.state[p]
                if not isinstance(st, dict):
                    raise StateError(f"{where}: state must be a dict, got {describe(st)}")
                if first is None:
                    first = False
                    if len(st) == 0 and uses_state:
                        # master weights: torch's initial state of a float32 parameter
                        like = p
                        if mode == MASTER:
                            like = torch.empty_like(p, dtype=torch.float32).copy_(p.detach())
                            st[MASTER_KEY] = like
                        _lowmem.init_compact(
                            lambda t, s: self._init_state(t, s, group),
                            like,
                            st,
                            keys,
                            store,
                            _block_size(group),
                        )
                        first = True
                    elif uses_state and any(st.get(k) is None for k in self._lazy_buffers):
                        # SGD's buffer: made at its first use
                        _lowmem.init_compact(
                            partial(_zeros, self._lazy_buffers, _precision.state_dtype(p, mode)),
                            p,
                            st,
                            self._lazy_buffers,
                            store,
                            _block_size(group),
                        )
                        first = True
                for k, v in st.items():  # before anything reads them
                    if isinstance(v, _Tensor):
                        check_storage(v, f"state[{k!r}]", StateError, where)
                        if k in keys and _expanded(v):  # torch's in-place ops refuse to write it
                            raise StateError(
                                f"{where}: state[{k!r}]: unsupported operation: more than one "
                                "element of the written-to tensor refers to a single memory "
                                "location (an expanded tensor; clone() it), as torch's step raises"
                            )
                self._settle(p, st, keys, mode, store, group, where, first)
                for k in (MASTER_KEY,) if mode == MASTER else ():
                    check_buffer(p, st, k, where, torch.float32)
                plain = _cuda_rows.plain if on_cuda else _native_tensor
                for k in (*keys, MASTER_KEY) if mode == MASTER else keys:
                    b = st[k]
                    if b.dtype == torch.uint8:
                        continue  # 8-bit codes, checked by _settle (_lowmem.check_codes)
                    if not plain(b):  # a neg/conj view or a subclass: a plain copy
                        b = b.as_subclass(torch.Tensor)  # (empty_like keeps a subclass)
                        st[k] = torch.empty_like(b).copy_(b)
                if self._has_step and on_cuda:
                    _cuda_rows.check_device_row_step(st, where, p, group)
                elif self._has_step:
                    check_step(st, where)
                for k in self._scalar_keys:
                    check_scalar(st, k, where)
            else:  # stateless steps (SGD without momentum): a master copy switched off goes
                stale = self.state.get(p)
                if isinstance(stale, dict):
                    stale.pop(MASTER_KEY, None)
            firsts[id(p)] = bool(first)
            items.append(_Item(p, g, st, bool(first), mode, store))
        tensors = [self._row_tensors(it, group) for it in items]
        inference = _inference_writes(tensors, gi)
        shared = _shared_memory(items, tensors, self._grads_written())
        if shared is not None:
            # a gradient or state tensor sharing memory with a tensor the step writes: torch's
            # in-place for-loop reads it as changed by the writes before it, which one fused
            # pass over all rows cannot do; torch's own step computes it (docs/trust.md)
            # (GradScaler's scalars go to torch's step with the group: _torch_step)
            if any(it.mode != _precision.NEAREST or it.store != _lowmem.AS_PARAM for it in items):
                raise StateError(
                    f"param {shared} of group {gi}: a gradient or state tensor shares memory "
                    "with a tensor the step writes, which pyfastopt steps only with torch's "
                    "layout (no master_weights, stochastic_rounding or state_dtype)"
                )
            for it in items:
                if it.first and it.st is not None:  # made lazily above: torch makes its own
                    for k in self._lazy_buffers:
                        it.st.pop(k, None)
            fallback = [p for p in params if p.grad is not None]
            items = []
        if fallback:  # first: torch raises here for what it refuses (sparse Adam gradients)
            self._torch_step(group, fallback)
        calls: list[_Call] = []
        cacheable = not fallback and not inference  # inference tensors: checked at every step
        for wave in _waves([it.p for it in items], [it.st for it in items]):
            wave_calls: dict[tuple[int, bool, int], _Call] = {}
            copy_back: list[tuple[_Tensor, _Tensor]] = []
            keep_alive: list[_Tensor] = []  # gradients and copies the calls read
            for it in (items[j] for j in wave):
                keys = self._buffer_keys_for(it.p, group)
                row, held, g, dense_ok = self._lay_out(it, keys, copy_back)
                keep_alive.append(g)
                cacheable &= dense_ok
                st = it.st
                code = NATIVE_DTYPES[it.p.dtype][0]
                step_f64 = bool(
                    st is not None and self._has_step and st["step"].dtype == torch.float64
                )
                device, steps = None, _cuda_rows.NO_STEPS
                if it.p.device.type == "cuda":
                    device = it.p.device
                    if st is not None and self._has_step:
                        on_host = st["step"].device.type == "cpu"
                        steps = _cuda_rows.HOST_STEPS if on_host else _cuda_rows.DEVICE_STEPS
                own = (MASTER_KEY,) if it.mode == MASTER else ()
                if it.store == _lowmem.BLOCK8:
                    own += _lowmem.aux_keys(keys)
                own += self._scalar_keys
                checks = () if st is None else tuple((k, st[k]) for k in (*keys, *own, *step_key))
                ck = (code, step_f64, it.mode, it.store, device, steps)
                if ck not in wave_calls:  # salt: group and call, for stochastic rounding
                    salt = (gi << 24) + (len(calls) << 4) + len(wave_calls)
                    wave_calls[ck] = _Call(code, step_f64, it.mode, it.store, salt, device, steps)
                wave_calls[ck].add(it.p, st, checks, held, row, self._row_aux(st, False))
            for call in wave_calls.values():
                if call.device is None:
                    call.build(params)
                else:  # CUDA calls are built (and validated) at every step: no cached plan
                    call.build_cuda(group)
                    cacheable = False
                self._native(call, None, None, group, threads)
                if call.device is None:
                    call.source.set_aux(call.steady_aux)
                else:  # as torch's in-place step bumps them (a Plan does this for the CPU)
                    _bump_versions(call.written)
                calls.append(call)
            wave_items = [items[j] for j in wave]
            # whether GradScaler skipped is read back from a CUDA device only when it matters
            # (buffers made lazily this step), as reading it waits for the device
            cuda_only = bool(wave_items) and all(it.p.device.type == "cuda" for it in wave_items)
            ask = not cuda_only or (bool(self._lazy_buffers) and any(it.first for it in wave_items))
            if ask and self._skipped_by_scaler():  # nothing was stepped: undo lazily made buffers
                for it in (items[j] for j in wave):
                    if it.first and it.st is not None:
                        for k in self._lazy_buffers:
                            it.st.pop(k, None)
                cacheable = False
            if copy_back:
                with torch.no_grad():
                    for dst, src in copy_back:
                        dst.copy_(src)
            del keep_alive
        if not cacheable:
            return None
        if len(calls) > 1:  # a gradient must not overlap what any call of the group writes
            every = [_extent(t) for call in calls for t in call.written if t.numel() > 0]
            for call in calls:
                call.source.add_extents(every)
        return _Plan(inactive, calls, self._plan_key(group))

    def _row_tensors(self, it: _Item, group: dict) -> list[tuple[int, str, _Tensor]]:
        """``(kind, state key, tensor)`` for every tensor a row's step reads or writes: the
        parameter, its gradient, the state buffers, master copy, 8-bit block scales, step
        counter and 0-d scalars."""
        tensors: list[tuple[int, str, _Tensor]] = [(_PARAM, "", it.p), (_GRAD, "", it.g)]
        st = it.st
        if st is not None:
            keys = self._buffer_keys_for(it.p, group)
            own = (MASTER_KEY,) if it.mode == MASTER else ()
            if it.store == _lowmem.BLOCK8:
                own += _lowmem.aux_keys(keys)
            step = ("step",) if self._has_step else ()
            for k in (*keys, *own, *step, *self._scalar_keys):
                v = st.get(k)
                if isinstance(v, _Tensor) and v.layout == torch.strided:
                    tensors.append((_STATE, k, v))
        return tensors

    def _lay_out(
        self, it: _Item, keys: tuple[str, ...], copy_back: list[tuple[_Tensor, _Tensor]]
    ) -> tuple[list[int], tuple, _Tensor, bool]:
        """One table row for a validated parameter: ``(row, held, gradient, cacheable)``.

        A dense parameter is updated in place, its buffers re-laid out like it once, a gradient
        of another layout copied into its layout (not cacheable: a copy per step). A parameter
        with gaps is updated through contiguous copies, recorded in ``copy_back``.
        """
        p, g, st = it.p, it.g, it.st
        master = it.mode == MASTER
        quantised = it.store == _lowmem.BLOCK8
        scales = _lowmem.scale_tensors(st, keys) if quantised and st is not None else []
        if master:
            keys = (MASTER_KEY, *keys)  # laid out like a buffer, table array 0
        cacheable = True
        # 8-bit codes and their blocks follow the parameter's logical order: in place only
        # when the parameter is contiguous
        if is_dense(p) and not (quantised and not p.is_contiguous()):
            if st is not None:
                for k in keys:
                    if not same_layout(st[k], p) and st[k].dtype != torch.uint8:
                        st[k] = torch.empty_like(p, dtype=st[k].dtype).copy_(st[k])
            bufs = [st[k] for k in keys] if st is not None else []
            pt = p
            if not same_layout(g, p):
                g = self._grad_copy(g, torch.empty_like(p).copy_(g), copy_back)
                cacheable = False
        else:
            cacheable = False
            pt = p.detach().contiguous()
            copy_back.append((p, pt))
            g = self._grad_copy(g, g.contiguous(), copy_back)
            bufs = []
            for k in keys:
                assert st is not None
                b = st[k]
                bc = b.contiguous()
                if bc is not b:
                    copy_back.append((b, bc))
                bufs.append(bc)
        mult = NATIVE_DTYPES[p.dtype][1]
        step = (st["step"],) if st is not None and self._has_step else ()
        scalars = tuple(st[k] for k in self._scalar_keys) if st is not None else ()
        if master:  # [master, grad, buffers..., parameter]: the parameter is the rounded master
            row = [p.numel() * mult, self._row_aux(st, it.first), bufs[0].data_ptr()]
            row.append(g.data_ptr())
            row.extend(b.data_ptr() for b in bufs[1:])
            row.append(pt.data_ptr())
        else:
            row = [p.numel() * mult, self._row_aux(st, it.first), pt.data_ptr(), g.data_ptr()]
            row.extend(b.data_ptr() for b in bufs)
        row.extend(s.data_ptr() for s in scales)
        if scalars:  # their addresses, then bit i: scalar i is float64 (csrc/cpu/row_scalars.h)
            row.extend(s.data_ptr() for s in scalars)
            row.append(sum(1 << i for i, s in enumerate(scalars) if s.dtype == torch.float64))
        return row, (pt, *bufs, *scales, *step, *scalars), g, cacheable

    def _grad_copy(
        self, g: _Tensor, copy: _Tensor, copy_back: list[tuple[_Tensor, _Tensor]]
    ) -> _Tensor:
        """The copy of a gradient the kernel reads in ``p``'s layout; with GradScaler's scale
        unscaled in the step (which writes the unscaled gradient, as torch's fused step does to
        ``.grad``) the copy is written back to ``g`` after the step."""
        if self._grads_written() and copy is not g and not may_overlap_itself(g):
            copy_back.append((g, copy))
        return copy

    def _torch_step(self, group: dict, params: list[_Tensor]) -> None:
        """torch's own step for ``params`` of ``group`` (devices and layouts we do not take).
        While the kernels take GradScaler's scalars, torch's step gets them too (its fused step
        skips on ``found_inf`` and unscales these gradients itself)."""
        raw = _unwrap(self._torch_cls.step)
        sub = dict(group)
        sub["params"] = params
        d = self.__dict__
        scalars = d.get("_amp_torch")
        saved = self.param_groups
        self.param_groups = [sub]
        if scalars is not None:
            d["grad_scale"], d["found_inf"] = scalars
        try:  # grad mode as torch's step sets it (``_use_grad_for_differentiable``)
            with torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
                raw(self)
        finally:
            self.param_groups = saved
            if scalars is not None:
                del d["grad_scale"], d["found_inf"]


def _unwrap(fn: Callable) -> Callable:
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def _lighten(seen: list, opt: FastOptimizer, state_dict: dict[str, Any]) -> dict | None:
    """The last load_state_dict pre-hook (pyfastopt's own): records the state_dict torch's
    loader is about to cast and hands it one whose tensors that ``_restore_saved_state`` takes
    from the checkpoint again are empty placeholders, so the loader never makes the casts it
    would throw away (8-bit codes cast to float32 were four times the state they carry)."""
    kept = opt._kept_tensors(state_dict)
    seen.append((state_dict, kept))
    if not kept:
        return None
    state = dict(state_dict["state"])
    for pid, (_, keys) in kept.items():
        state[pid] = {
            k: v.new_empty((0,)) if k in keys and v.dim() > 0 else v for k, v in state[pid].items()
        }
    return {**state_dict, "state": state}


def _raised_by_hook(exc: BaseException, hooks: Any) -> bool:
    """Whether ``exc`` was raised inside one of ``hooks`` (a frame of its traceback runs one)."""
    codes = set()
    for h in hooks.values():
        h = _unwrap(h)  # a function or method, else a callable object's __call__
        call = h if hasattr(h, "__code__") else type(h).__call__
        codes.add(getattr(call, "__code__", None))
    codes.discard(None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def step_lock(opt: torch.optim.Optimizer) -> threading.RLock:
    """The optimizer's step lock: a step runs its native calls without the GIL, and two threads
    stepping one optimizer at once would share its cached plans (one thread's gradients freed
    under the other's kernel). Steps of one optimizer therefore run one at a time; a hook may
    step it again from the same thread. Not pickled (torch's ``__getstate__``): made anew."""
    lock = opt.__dict__.get("_fastopt_lock")
    if lock is None:
        lock = opt.__dict__.setdefault("_fastopt_lock", threading.RLock())
    return lock


def _inference_writes(tensors: list[list[tuple[int, str, _Tensor]]], gi: int) -> bool:
    """Whether the step writes an inference tensor (a parameter made, or state first made,
    under ``torch.inference_mode()``); outside inference mode that raises torch's
    RuntimeError, as torch's in-place update does, before anything is written. ``tensors``:
    ``_row_tensors`` of each row."""
    for row in tensors:
        for kind, key, t in row:
            if kind != _GRAD and t.is_inference():
                if not torch.is_inference_mode_enabled():
                    what = "the parameter" if kind == _PARAM else f"state[{key!r}]"
                    raise RuntimeError(
                        "Inplace update to inference tensor outside InferenceMode is not "
                        f"allowed ({what} of a parameter of group {gi}). You can make a "
                        "clone to get a normal tensor before doing inplace update."
                    )
                return True
    return False


def _zeros(keys: tuple[str, ...], dtype: torch.dtype, like: _Tensor, st: dict) -> None:
    """Buffers ``keys`` of zeros like ``like``, in ``dtype`` (a lazily made buffer's start)."""
    for k in keys:
        st[k] = torch.zeros_like(like, dtype=dtype, memory_format=torch.preserve_format)


def _lr_in_float32(group: dict) -> bool:
    """Whether torch's for-loop computes this group's step sizes in float32: its lr is a 0-d
    float32 tensor (or an integer one, under a float32 default dtype), which torch divides and
    multiplies as a tensor, or a NumPy float32 (NumPy 2 keeps float32 with Python floats). Its
    fused kernels read a tensor lr as a double instead."""
    lr = group["lr"]
    if group.get("fused"):
        return False
    if isinstance(lr, np.float32):
        return _NUMPY_2
    if not isinstance(lr, _Tensor):
        return False
    if lr.dtype == torch.float32:
        return True
    return not lr.is_floating_point() and torch.get_default_dtype() == torch.float32


_NUMPY_2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def _expanded(t: _Tensor) -> bool:
    """A dim of stride 0 and more than one element: torch's in-place ops raise on writing it
    (``assert_no_internal_overlap``), where a staged copy would step it silently."""
    return t.layout == torch.strided and any(
        s == 0 and n > 1 for s, n in zip(t.stride(), t.shape, strict=True)
    )


def _block_size(group: dict) -> int:
    """The elements per block of a group's 8-bit state."""
    return int(group.get("block_size", _lowmem.DEFAULTS["block_size"]))


def _shared_memory(
    items: list[_Item], tensors: list[list[tuple[int, str, _Tensor]]], grads_written: bool = False
) -> int | None:
    """The position (in ``items``) of a parameter whose gradient or state shares memory
    with a tensor the step writes (another row's or its own), or None.

    Parameters overlapping each other are not counted (waves step them in torch's order), nor
    gradients overlapping each other unless ``grads_written`` (GradScaler's unscaling in the step
    writes them: torch's fused step unscales a shared gradient once per parameter, in turn).
    Judged on byte ranges.
    """
    # lo, hi, kind, (state dict id, state key), item position
    spans: list[tuple[int, int, int, tuple[int, str], int]] = []
    for i, (it, row) in enumerate(zip(items, tensors, strict=True)):
        for kind, key, t in row:
            if t.numel() > 0 and t.device.type == "cpu":
                spans.append((*_extent(t), kind, (id(it.st), key), i))
    spans.sort()
    open_spans: list[tuple[int, int, int, tuple[int, str], int]] = []
    for span in spans:
        lo = span[0]
        open_spans = [o for o in open_spans if o[1] > lo]
        for o in open_spans:
            kinds = {o[2], span[2]}
            if kinds == {_PARAM} or (kinds == {_GRAD} and not grads_written):
                continue
            if o[2] == span[2] == _STATE and o[3] == span[3]:
                continue  # one entry of rows sharing a state dict (a duplicated parameter)
            if o[2] == span[2] == _STATE and o[3][1] == span[3][1] == "step":
                continue  # one counter for several rows: advanced row by row, as torch's
            return min(o[4], span[4])
        open_spans.append(span)
    return None


def _native_tensor(t: _Tensor) -> bool:
    """A plain CPU-strided tensor whose memory holds its values as they read (no neg/conj bit)."""
    return is_plain(t, "cpu")


def _make_bump() -> Callable[[list], None]:
    """torch's own version-counter bump for a list of tensors (older torch takes one at a time)."""
    inc = torch._C._increment_version
    try:
        inc([])
        return inc
    except TypeError:  # torch < 2.6 takes a single tensor

        def bump_each(tensors: list) -> None:
            for t in tensors:
                inc(t)

        return bump_each


#: Advances the autograd version counter of every tensor a step wrote, as an in-place op does, so
#: a backward through a graph that saved them raises torch's "modified by an inplace operation".
_bump_versions = _make_bump()


def _extent(t: _Tensor) -> tuple[int, int]:
    """The byte range ``[lo, hi)`` that a strided tensor's elements lie in."""
    lo = t.data_ptr()
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * t.element_size()


_PARAM, _GRAD, _STATE = 0, 1, 2  # kinds of tensor in _shared_memory


def _grads_overlap(params: list[_Tensor]) -> bool:
    """Whether two of the parameters' gradients share memory (judged on byte ranges)."""
    return spans_overlap([_extent(p.grad) for p in params if p.grad is not None])


def _waves(params: list[_Tensor], states: list[dict | None] | None = None) -> list[list[int]]:
    """Split parameter positions into waves that are stepped one after another.

    A parameter whose memory overlaps an earlier one's (a duplicate, or two views of one weight),
    or whose state dict is an earlier one's (``opt.state[b] = opt.state[a]``: both steps update
    the same buffers), goes one wave after it, so shared elements see torch's order of updates;
    all others stay in wave 0, fused and parallel. Overlap is judged on byte ranges, so
    interleaved views that share no element are serialised too: harmless, and still torch's order.
    """
    earlier: list[list[int]] = [[] for _ in params]  # the positions each one must follow
    spans = sorted((*_extent(p), i) for i, p in enumerate(params) if p.numel() > 0)
    cluster: list[tuple[int, int, int]] = []
    end = -1

    def settle() -> None:
        for lo_a, hi_a, i in cluster:
            for lo_b, hi_b, j in cluster:
                if j < i and lo_a < hi_b and lo_b < hi_a:
                    earlier[i].append(j)

    for span in spans:
        if span[0] >= end:
            settle()
            cluster = []
        cluster.append(span)
        end = max(end, span[1])
    settle()
    last_with: dict[int, int] = {}  # state dict id -> the last position holding it
    for i, st in enumerate(states or ()):
        if st is not None:
            if id(st) in last_with:
                earlier[i].append(last_with[id(st)])
            last_with[id(st)] = i
    wave = [0] * len(params)
    for i in range(len(params)):  # in torch's order: every earlier one is settled
        for j in earlier[i]:
            wave[i] = max(wave[i], wave[j] + 1)
    out: list[list[int]] = [[] for _ in range(max(wave, default=0) + 1)]
    for i, w in enumerate(wave):
        out[w].append(i)
    return out


def _refuse_non_float(p: _Tensor, where: str) -> None:
    if (
        p.device.type == "cpu"
        and p.layout == torch.strided
        and not (p.is_floating_point() or p.is_complex())
    ):
        raise UnsupportedError(f"{where}: cannot optimize a {p.dtype} tensor")


def _refuse_own_options(opt: FastOptimizer, p: _Tensor, group: dict, where: str) -> None:
    """A parameter torch's own step takes (a tensor subclass such as FSDP2's DTensor, another
    device, a gradient of another dtype or shape, ...) is updated with torch's state layout and
    rounding: pyfastopt's own options that would change its step are refused, not dropped."""
    mode = _precision.row_mode(p, group, where)
    store = _lowmem.AS_PARAM
    if opt._uses_state(group):
        store = _lowmem.row_store(p, group, mode == MASTER, where)
    if mode == _precision.NEAREST and store == _lowmem.AS_PARAM:
        return
    what = {
        MASTER: "master_weights=True",
        _precision.STOCHASTIC: "stochastic_rounding=True",
    }.get(mode) or f"state_dtype={group.get('state_dtype')!r}"
    g = p.grad
    if type(p) not in (torch.Tensor, torch.nn.Parameter):
        why = f"a {type(p).__name__} (tensor subclass)"
    elif p.device.type != "cpu":
        why = f"on device {p.device}"
    elif g is not None and (g.dtype != p.dtype or g.shape != p.shape):
        why = f"a {g.dtype} gradient of shape {tuple(g.shape)}"
    else:
        why = "a layout or view the native step does not take"
    raise UnsupportedError(
        f"{where}: {what} does not apply to this parameter ({why}): torch's own step updates "
        "it, with torch's state layout and rounding"
    )


def _check_group_options(opt: FastOptimizer, group: dict) -> None:
    _lowmem.check_group(group, type(opt).__name__)
    opt._check_options(group)
    if group.get("master_weights") and group.get("stochastic_rounding"):
        raise ValueError(  # as the constructor (set by hand in param_groups since)
            f"{type(opt).__name__}: master_weights and stochastic_rounding exclude each other"
        )
    if group.get("differentiable"):  # torch's own step: none of pyfastopt's own options
        own = [k for k in ("master_weights", "stochastic_rounding") if group.get(k)]
        if _lowmem.asks_low_memory(group):
            own.append(f"state_dtype={group['state_dtype']!r}")
        if own:
            raise UnsupportedError(
                f"{type(opt).__name__}: differentiable=True steps through torch's own "
                f"implementation (autograd records it), which has no {', '.join(own)}"
            )
    if group.get("capturable") and any(p.device.type == "cpu" for p in group["params"]):
        raise UnsupportedError(
            f"{type(opt).__name__}: capturable=True has no meaning for CPU parameters "
            "(there is no graph to capture); leave it False"
        )


#: group entries that are not hyper-parameters of the update
_NOT_HYPER = frozenset(("params", "foreach", "fused", "capturable", "differentiable", "initial_lr"))


def _numeric(v: Any) -> bool:
    """A number, a one-element real tensor, or a tuple/list of those (``None`` allowed inside)."""
    if isinstance(v, tuple | list):
        return all(x is None or _numeric(x) for x in v)
    if isinstance(v, torch.Tensor):
        return v.numel() == 1 and not v.is_complex()
    return isinstance(v, int | float)


def _native_type_error(opt: torch.optim.Optimizer, group: dict, exc: TypeError) -> TypeError:
    """A TypeError from the core's binding, which rejects a hyper-parameter of the wrong type
    before anything is read or written (in pybind11's words): the same error naming the group
    entry. Any other TypeError is passed on."""
    if "incompatible function arguments" not in str(exc):
        return exc
    where = f"{type(opt).__name__}: param_groups[{_group_index(opt, group)}]"
    for key, value in group.items():
        default = opt.defaults.get(key)
        if key in _NOT_HYPER or not _numeric(default):
            continue  # not a numeric hyper-parameter (state_dtype, a name, ...)
        is_tuple = isinstance(default, tuple | list)
        if not _numeric(value) or is_tuple != isinstance(value, tuple | list):
            kind = "a tuple of numbers" if is_tuple else "a number or a one-element tensor"
            return TypeError(f"{where}[{key!r}] must be {kind}, got {describe(value)}")
    return TypeError(f"{where}: a hyper-parameter is not a number the step can take")


def _group_index(opt: torch.optim.Optimizer, group: dict) -> int:
    for i, g in enumerate(opt.param_groups):
        if g is group:
            return i
    return -1


@_disable_dynamo
def _eager_step(opt: FastOptimizer, args: tuple, kwargs: dict[str, Any]) -> Any:
    """The step as torch.compile sees it: one call it does not trace into."""
    return _step_with_hooks(opt, args, kwargs)


def _step_with_hooks(opt: FastOptimizer, args: tuple, kwargs: dict[str, Any]) -> Any:
    """torch's ``profile_hook_step`` around our step, without its cost when nothing listens.

    As in torch, every hook gets ``args`` starting with the optimizer (``step``'s ``self``) and
    ``kwargs`` as the caller passed them (``opt.step(closure=c)``: ``(opt,)``, ``{"closure": c}``),
    and a pre-hook's ``(new_args, new_kwargs)`` is called as ``step(*new_args, **new_kwargs)``.
    """
    args = (opt, *args)
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
        out = type(opt)._step(*args, **kwargs)  # args[0] is self, as torch calls its step
        opt._optimizer_step_code()
        for post_hook in chain(opt._optimizer_step_post_hooks.values(), _GLOBAL_POST.values()):
            post_hook(opt, args, kwargs)
        return out
