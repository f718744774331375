"""CUDA parameters through ``pyfastopt._cuda``: which ones it takes, and the trust boundary for
device tensors.

A CUDA parameter goes to the CUDA module when the optimizer has a CUDA kernel, the module is
built and a device is usable (``_cuda_backend``), and the parameter and its gradient are plain
strided tensors of one device, dtype and shape. Everything whose address reaches the module is
checked here or by the checks the CPU path shares (``_state.check_buffer``: dtype, shape and
device of every state tensor; ``_layout``: dense layouts, else contiguous copies): nothing is
ever read back from the device to decide an address, so a step never waits for the device.

Step counters keep torch's layout for the group's flags: 0-d CPU tensors by default (the module
advances them on the host and hands their values to the kernel), 0-d tensors on the parameter's
device with ``capturable=True`` or ``fused=True`` (advanced and read on the device, so the step
can be captured in a CUDA graph and skipped on GradScaler's ``found_inf`` without a sync).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _cuda_backend
from ..errors import StateError
from ._layout import NATIVE_DTYPES, is_f32_scalar, is_plain
from ._state import STEP_DTYPES, check_step, describe

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter

#: where a call's step counters are (csrc/cuda/steps.h, gpu::Steps)
NO_STEPS, HOST_STEPS, DEVICE_STEPS = 0, 1, 2


def plain(t: Any) -> bool:
    """A plain strided CUDA tensor whose memory holds its values as they read."""
    return is_plain(t, "cuda")


def takes(opt: Any, p: _Tensor, g: Any) -> bool:
    """Whether the CUDA module steps ``p`` with gradient ``g``."""
    if not getattr(opt, "_cuda_kernel", False):
        return False
    if not (plain(p) and plain(g) and g.device == p.device and g.dtype == p.dtype):
        return False
    if g.shape != p.shape:
        return False
    return _cuda_backend.usable(warn=True)


def wants_device_steps(group: dict) -> bool:
    """torch keeps step counters on the parameters' device for these flags."""
    return bool(group.get("capturable") or group.get("fused"))


def check_device_row_step(st: dict, where: str, p: _Tensor, group: dict) -> int:
    """Validate a CUDA parameter's ``state['step']`` and return where it is (HOST_STEPS or
    DEVICE_STEPS). A 0-d float32/float64 tensor on the host or on ``p``'s device stays as it is
    (a device counter's value is not read: that would wait for the device); with
    ``capturable``/``fused`` a host counter moves to the device (torch's loader does the same);
    anything else is converted as ``_state.check_step`` converts it, or refused."""
    s = st.get("step") if isinstance(st, dict) else None
    if (
        type(s) is torch.Tensor
        and s.numel() == 1
        and s.dim() == 0
        and s.layout == torch.strided
        and s.dtype in STEP_DTYPES
        and not s.is_neg()
        and s.device == p.device
    ):
        return DEVICE_STEPS
    if isinstance(s, torch.Tensor) and s.device.type == "cuda":
        if s.numel() != 1 or s.layout != torch.strided or s.is_complex():
            raise StateError(f"{where}: state['step'] must hold one number; got {describe(s)}")
        # another device or dtype: a copy on this one (reads nothing back)
        st["step"] = s.detach().reshape(()).to(device=p.device, dtype=torch.float32)
        return DEVICE_STEPS
    host = check_step(st, where)  # numbers, CPU tensors: torch's CPU counter, validated
    if wants_device_steps(group):
        st["step"] = host.to(device=p.device)
        return DEVICE_STEPS
    return HOST_STEPS


def refuse_capture_with_host_steps(device: torch.device) -> None:
    """A step whose counters are on the host advances them when it runs, not when a CUDA graph
    replays it: capturing one would replay a frozen step count. torch asks for
    ``capturable=True`` (``fused=True`` for Adagrad) there; so does this."""
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"capturing a step of CUDA parameters on {device} whose step counters are on the "
            "host (torch's layout without capturable=True or fused=True): a replay would not "
            "advance them; construct the optimizer with capturable=True (Adagrad: fused=True)"
        )


def lr_address(lr: Any, device: torch.device, keep: list) -> int:
    """A tensor learning rate on a CUDA device: the address of a float32 copy of it on
    ``device`` (the kernel reads it there); 0 for anything else (the module converts a number
    or a CPU tensor on the host, as the CPU core does)."""
    if not (isinstance(lr, torch.Tensor) and lr.device.type == "cuda"):
        return 0
    if lr.numel() != 1:
        raise ValueError(f"a tensor lr must hold one number; got {describe(lr)}")
    t = lr.detach()
    if not (
        type(t) is torch.Tensor
        and t.device == device
        and t.dtype == torch.float32
        and not t.is_neg()
        and t.layout == torch.strided
    ):
        t = t.to(device=device, dtype=torch.float32, copy=True)
    keep.append(t)
    return t.data_ptr()


def make_call(table: list[int], width: int, device: torch.device, steps: int, lr: int) -> Any:
    """The module's Call for one native call, on torch's current stream of ``device``."""
    mod = _cuda_backend.module()
    assert mod is not None
    stream = torch.cuda.current_stream(device).cuda_stream
    index = device.index if device.index is not None else torch.cuda.current_device()
    return mod.Call(table, width, index, stream, steps, lr)


def amp_scalars(opt: Any, grad_scale: Any, found_inf: Any) -> dict | None:
    """GradScaler's scalars for a step whose every parameter with a gradient is a CUDA
    float32/bfloat16/float16 parameter the module takes: {device: (grad_scale, found_inf)} as
    float32 tensors on each device (moved there without waiting, as torch's fused step does),
    or None (then the Python layer unscales and checks found_inf itself)."""
    if not getattr(opt, "_cuda_kernel", False):
        return None
    for t in (grad_scale, found_inf):
        if t is not None and not is_f32_scalar(t, "cuda"):
            return None
    devices: set[torch.device] = set()
    for group in opt.param_groups:
        if not wants_device_steps(group) and opt._has_step:
            return None  # host step counters cannot skip on a device flag without waiting
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if NATIVE_DTYPES.get(p.dtype, (None,))[0] not in (0, 2, 3) or not takes(opt, p, g):
                return None
            devices.add(p.device)
    out: dict = {}
    for dev in devices:
        out[dev] = tuple(
            None if t is None else t.detach().reshape(()).to(dev, non_blocking=True)
            for t in (grad_scale, found_inf)
        )
    return out


def graph_capture_check(opt: Any) -> None:
    """torch's check before a step of CUDA parameters, for the optimizers whose torch step makes
    it (those with a ``capturable`` option): capturing a step needs ``capturable=True``."""
    if not all("capturable" in g for g in opt.param_groups):
        return
    check = getattr(opt, "_accelerator_graph_capture_health_check", None) or getattr(
        opt, "_cuda_graph_capture_health_check", None
    )
    if check is not None:
        check()
