"""bfloat16/float16 parameters: the opt-in storage modes and GradScaler inside the step.

By default a bfloat16/float16 parameter keeps torch's layout: state in the parameter's dtype,
every stored value computed in float32 and rounded once to nearest even. Two options go
beyond torch (constructor keywords of every pyfastopt optimizer, kept per param group):

- ``master_weights=True``: a float32 copy of each low-precision parameter lives in its state as
  ``state["master_weight"]``, the state buffers are float32, and the step updates the copy and
  writes the parameter as its rounded value in the same pass (apex's and DeepSpeed's
  mixed-precision recipe). Saved and loaded with ``state_dict``.
- ``stochastic_rounding=True`` (bfloat16 parameters): the parameter is rounded up or down at
  random with probabilities that make the rounding unbiased. The bits come from a hash of
  (seed, group, step, element), so a run is reproducible for a given ``torch.manual_seed`` and
  independent of the thread count. State stays bfloat16, rounded to nearest.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..errors import UnsupportedError
from ._layout import LOW_PRECISION, is_f32_scalar

NEAREST, STOCHASTIC, MASTER = 0, 1, 2
MASTER_KEY = "master_weight"
OPTIONS = ("master_weights", "stochastic_rounding")
_MASK = (1 << 64) - 1


def split_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove pyfastopt's own keywords from a constructor's ``kwargs``; return the group keys."""
    master = bool(kwargs.pop("master_weights", False))
    stochastic = bool(kwargs.pop("stochastic_rounding", False))
    if master and stochastic:
        raise ValueError("master_weights and stochastic_rounding exclude each other")
    keys: dict[str, Any] = {}
    if master:
        keys["master_weights"] = True
    if stochastic:
        keys["stochastic_rounding"] = True
        # from torch's default generator: torch.manual_seed(s) makes the run reproducible
        keys["sr_seed"] = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        keys["sr_step"] = 0
    return keys


def row_mode(p: torch.Tensor, group: dict, where: str) -> int:
    """How the step stores ``p``: NEAREST, STOCHASTIC or MASTER (float32 parameters: NEAREST)."""
    if p.dtype not in LOW_PRECISION:
        return NEAREST
    if group.get("master_weights"):
        return MASTER
    if group.get("stochastic_rounding"):
        if p.dtype != torch.bfloat16:
            raise UnsupportedError(
                f"{where}: stochastic_rounding applies to bfloat16 parameters, not {p.dtype} "
                "(use master_weights=True for float16)"
            )
        return STOCHASTIC
    return NEAREST


def state_dtype(p: torch.Tensor, mode: int) -> torch.dtype:
    """The dtype of ``p``'s state buffers: float32 with master weights, else ``p``'s (torch's)."""
    return torch.float32 if mode == MASTER else p.dtype


def ensure_master(p: torch.Tensor, st: dict, mode: int) -> None:
    """Master weights: make a low-precision parameter's float32 master copy from ``p`` when its
    state has none (a new mode, or a checkpoint without one), and drop it when the mode is off.
    The buffers are brought to their dtype by ``_lowmem.settle``."""
    if mode != MASTER:  # switched off: a stale copy would resume from old weights later
        st.pop(MASTER_KEY, None)
    elif p.dtype in LOW_PRECISION and MASTER_KEY not in st:
        st[MASTER_KEY] = torch.empty_like(p, dtype=torch.float32).copy_(p.detach())


def follow_written_params(group: dict, state: Any, seen: Any) -> None:
    """Master weights: a parameter written since the last step by anything but this optimizer
    (``model.load_state_dict``, ``p.copy_``, ``p.data = ...``) re-seeds its master copy, so the
    step continues from what the user wrote instead of overwriting it with the old master.
    ``seen`` maps id(parameter) to (weak reference, autograd version, address) as the last step
    left them (``record_params``); every in-place write advances the version, ``p.data =`` moves
    the address."""
    for p in group["params"]:
        entry = seen.get(id(p))
        if entry is None or entry[0]() is not p or entry[1:] == (p._version, p.data_ptr()):
            continue
        st = state.get(p)
        master = st.get(MASTER_KEY) if isinstance(st, dict) else None
        if isinstance(master, torch.Tensor):
            if master.shape == p.shape and p.dtype in LOW_PRECISION:
                with torch.no_grad():
                    master.copy_(p)
            else:  # another shape or dtype now: made again from the parameter
                del st[MASTER_KEY]


def record_params(group: dict, seen: Any) -> None:
    """What ``follow_written_params`` compares against at the next step."""
    for p in group["params"]:
        if p.dtype in LOW_PRECISION:
            seen[id(p)] = (weakref.ref(p), p._version, p.data_ptr())


def call_seed(group: dict, salt: int) -> int:
    """The stochastic-rounding seed of one native call at this step (the kernel adds the row)."""
    x = (int(group.get("sr_seed", 0)) * 0x9E3779B97F4A7C15 + int(group.get("sr_step", 0))) & _MASK
    return (x * 0xBF58476D1CE4E5B9 ^ salt) & _MASK


def amp_pointers(opt: torch.optim.Optimizer, grad_scale: Any, found_inf: Any) -> tuple | None:
    """(grad_scale address or 0, found_inf address or 0) when the CPU step can take GradScaler's
    scalars in its kernels: float32 CPU scalars and every parameter with a gradient on the CPU.
    The kernels unscale (float64 too) and skip; a parameter torch's own step takes gets them
    in torch's step (``_torch_step``). None: the CUDA module's scalars, or unscaled in Python."""
    addrs = []
    for t in (grad_scale, found_inf):
        if t is None:
            addrs.append(0)
            continue
        if not is_f32_scalar(t, "cpu"):
            return None
        addrs.append(t.data_ptr())
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None and p.device.type != "cpu":
                return None
    return (addrs[0], addrs[1])
