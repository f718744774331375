"""The optional CUDA backend: whether ``pyfastopt._cuda`` is built and can run here, and why not.

The CUDA module is a separate extension, built only on request (``PYFASTOPT_CUDA=1``; README,
"CUDA"). When it is built and a device is usable, the CUDA parameters of a group are stepped by
it; otherwise they take torch's own step, as without the module. Nothing here initialises CUDA
until a CUDA parameter is stepped or :func:`status` is asked for (``show_config``): importing
pyfastopt never does.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Any

#: how to build the module (the messages name it)
BUILD_HINT = "build pyfastopt with PYFASTOPT_CUDA=1 (README, 'CUDA')"
#: PYFASTOPT_CUDA_BACKEND=0 keeps a built module unused (CUDA parameters take torch's step)
ENV_OFF = "PYFASTOPT_CUDA_BACKEND"

_module: ModuleType | None = None
_import_error: str | None = None
_imported = False
_device: dict[str, Any] | None = None  # _cuda.device_status(), asked once
_warned = False


def module() -> ModuleType | None:
    """``pyfastopt._cuda`` if it is built and imports, else None (:func:`reason` says why)."""
    global _module, _import_error, _imported
    if not _imported:
        _imported = True
        try:
            _module = importlib.import_module("pyfastopt._cuda")
        except ImportError as exc:
            missing = isinstance(exc, ModuleNotFoundError) and exc.name == "pyfastopt._cuda"
            _import_error = (
                f"the CUDA module is not built ({BUILD_HINT})"
                if missing
                else f"the CUDA module does not import: {exc}"
            )
    return _module


def built() -> bool:
    """Whether ``pyfastopt._cuda`` is installed and imports (touches no CUDA API)."""
    return module() is not None


def device_status() -> dict[str, Any] | None:
    """The module's view of the CUDA runtime and driver (None when it is not built). The first
    call initialises the CUDA driver in this process, as ``torch.cuda.is_available()`` does."""
    global _device
    mod = module()
    if mod is None:
        return None
    if _device is None:
        _device = dict(mod.device_status())
    return _device


def reason() -> str:
    """Why CUDA parameters take torch's step instead of the module ("" when they do not)."""
    if os.environ.get(ENV_OFF, "1") == "0":
        return f"switched off ({ENV_OFF}=0)"
    if module() is None:
        return _import_error or "the CUDA module is not available"
    st = device_status()
    assert st is not None
    if st["devices"] > 0 and st["error"] == 0:
        return ""
    driver = st["driver_version"]
    return (
        f"no usable CUDA device: {st['message']} ({st['error_name']}, error {st['error']}); "
        f"the module needs CUDA 13 (driver >= 580), driver here: "
        f"{_version(driver) if driver else 'none'}"
    )


def usable(warn: bool = False) -> bool:
    """Whether the module can step CUDA parameters here. ``warn``: say once why not, when a
    built module cannot run (a module that is simply not built is the default, not news)."""
    why = reason()
    if why and warn and built():
        _warn_once(why)
    return not why


def status() -> dict[str, Any]:
    """For ``show_config``: built, usable, why not, the versions and architectures."""
    mod = module()
    out: dict[str, Any] = {"built": mod is not None, "usable": False, "reason": ""}
    if mod is not None:
        info = dict(mod.build_info())
        out["archs"] = info.get("archs")
        st = device_status()
        assert st is not None
        out["runtime"] = _version(st["runtime_version"])
        out["driver"] = _version(st["driver_version"]) if st["driver_version"] else None
        out["devices"] = st["devices"]
    out["reason"] = reason()
    out["usable"] = not out["reason"]
    return out


def describe() -> str:
    """One line for ``show_config``."""
    st = status()
    if not st["built"]:
        return f"not built ({BUILD_HINT})"
    where = f"CUDA {st['runtime']}, archs {st['archs']}"
    if st["usable"]:
        return f"usable: {st['devices']} device(s), {where}, driver {st['driver']}"
    return f"built ({where}), not used: {st['reason']}"


def _version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _warn_once(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"pyfastopt: CUDA parameters take torch's own step: {why}",
            RuntimeWarning,
            stacklevel=4,
        )


def _reset_for_tests() -> None:
    """Forget what was learnt (tests that hide or fake the module)."""
    global _module, _import_error, _imported, _device, _warned
    _module, _import_error, _imported, _device, _warned = None, None, False, None, False
