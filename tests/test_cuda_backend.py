"""The optional CUDA module without a GPU: how pyfastopt reports it, and that the module's own
checks refuse bad tables before any CUDA call (so nothing is launched with an address the
Python layer did not validate). The module is built only with PYFASTOPT_CUDA=1 (.ci/cuda);
tests that need it skip with that reason otherwise, tests that need a GPU live in
test_cuda_parity.py."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import pyfastopt
from pyfastopt import _cuda_backend

try:
    from pyfastopt import _cuda
except ImportError:  # the default build
    _cuda = None

needs_module = pytest.mark.skipif(
    _cuda is None, reason="pyfastopt._cuda is not built (PYFASTOPT_CUDA=1, see .ci/cuda)"
)
# the checks below hand the module fake device addresses: only where no device could run them
no_device = pytest.mark.skipif(
    _cuda_backend.usable(), reason="a CUDA device is usable here (test_cuda_parity.py runs)"
)


@pytest.fixture
def fresh_backend():
    _cuda_backend._reset_for_tests()
    yield _cuda_backend
    _cuda_backend._reset_for_tests()


def test_show_config_says_what_the_cuda_module_is(capsys):
    pyfastopt.show_config()
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("cuda:"))
    if _cuda is None:
        assert "not built" in line and "PYFASTOPT_CUDA=1" in line
    elif _cuda_backend.usable():
        assert "usable" in line
    else:
        assert "no usable CUDA device" in line, line


def test_a_module_that_is_not_built_is_reported_as_such(fresh_backend, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyfastopt._cuda", None)  # import fails as if absent
    assert not fresh_backend.built()
    assert "not built" in fresh_backend.reason()
    assert not fresh_backend.usable(warn=True)  # not news: no warning
    assert fresh_backend.status()["built"] is False


def test_the_backend_can_be_switched_off(fresh_backend, monkeypatch):
    monkeypatch.setenv(fresh_backend.ENV_OFF, "0")
    assert not fresh_backend.usable()
    assert "switched off" in fresh_backend.reason()


@needs_module
@no_device
def test_the_module_imports_and_says_why_no_device_is_usable(fresh_backend):
    st = _cuda.device_status()
    assert st["devices"] == 0 and st["error"] != 0
    assert st["runtime_version"] >= 13000  # CUDA 13
    why = fresh_backend.reason()
    assert why.startswith("no usable CUDA device: ") and st["error_name"] in why
    assert "driver >= 580" in why
    info = _cuda.build_info()
    assert info["cudart"] == "static" and info["archs"] != "unknown"


@needs_module
@no_device
def test_cpu_steps_are_untouched_by_the_built_module():
    p = torch.nn.Parameter(torch.ones(5))
    p.grad = torch.ones(5)
    with _NoCudaWarning():
        pyfastopt.Adam([p], lr=0.1).step()
    assert torch.all(p < 1)


#: the optimizers pyfastopt._cuda has (README, "CUDA"); every other one hands CUDA parameters to
#: torch's own step, whose native CPU steps must never see a device address
CUDA_KERNELS = {"SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW"}


def _fast_optimizer_classes() -> list[type]:
    from pyfastopt.optim._base import FastOptimizer

    objs = (getattr(pyfastopt, n) for n in pyfastopt.__all__)
    return [c for c in objs if isinstance(c, type) and issubclass(c, FastOptimizer)]


def test_only_the_optimizers_with_a_cuda_kernel_route_cuda_parameters_to_it(monkeypatch):
    from pyfastopt.optim import _cuda_rows

    # as if p and g were plain tensors of a usable CUDA device: the class alone decides
    monkeypatch.setattr(_cuda_rows, "plain", lambda t: True)
    monkeypatch.setattr(_cuda_backend, "usable", lambda warn=False: True)
    classes = _fast_optimizer_classes()
    names = {c.__name__ for c in classes}
    assert CUDA_KERNELS | {"NAdam", "RAdam", "Adamax", "ASGD", "Rprop", "Adafactor"} <= names
    assert "SparseAdam" in names
    for cls in classes:
        p = torch.nn.Parameter(torch.ones(2, 3))
        p.grad = torch.ones(2, 3)
        opt = cls([p])
        expected = cls.__name__ in CUDA_KERNELS
        assert _cuda_rows.takes(opt, p, p.grad) is expected, cls.__name__
        assert bool(opt._on_cuda_module(p)) is expected, cls.__name__
    # LBFGS's native passes take CPU parameters only (else torch's LBFGS step); BFGS refuses
    from pyfastopt.optim._vectors import Space

    assert Space.of([torch.nn.Parameter(torch.ones(3, device="meta"))]) is None
    assert not hasattr(pyfastopt.LBFGS, "_cuda_kernel")


@needs_module
def test_the_module_has_a_step_for_every_optimizer_that_routes_to_it():
    for cls in _fast_optimizer_classes():
        if cls._cuda_kernel:
            step = {"AdamW": "adam"}.get(cls.__name__, cls.__name__.lower())
            assert callable(getattr(_cuda, f"{step}_step", None)), cls.__name__


def test_the_gpu_benchmark_skips_pyfastopt_where_its_cuda_module_has_no_kernel():
    from pyfastopt.bench.impls import unavailable

    why = unavailable("pyfastopt", "nadam", False, "cuda")
    assert why is not None and "has no NAdam" in why and "torch's own step" in why
    assert "has no" not in (unavailable("pyfastopt", "adam", False, "cuda") or "")
    assert unavailable("pyfastopt", "nadam") is None  # on the CPU it runs


class _NoCudaWarning:
    """Fails if a warning about CUDA was raised inside."""

    def __enter__(self):
        self._w = warnings.catch_warnings(record=True)
        self.records = self._w.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
        assert not [r for r in self.records if "CUDA" in str(r.message)], self.records


# ---- the module's own checks (defence in depth behind the Python layer) -----------------------

ALIGNED = 1 << 40  # a fake device address, never dereferenced: every call below is refused first


def _call(rows: list[list[int]], steps: int = 0, lr: int = 0):
    width = len(rows[0]) if rows else 4
    return _cuda.Call([v for r in rows for v in r], width, 0, 0, steps, lr)


def _adam(call, width: int, step_f64: bool = False, extra=None, beta1: float = 0.9, **kw):
    return _cuda.adam_step(
        call, None, None, width, kw.get("dtype", 0), step_f64, 0.01, beta1, 0.999, 1e-8, 0.0,
        False, False, False, 1, 0, extra,
    )  # fmt: skip


@needs_module
@pytest.mark.parametrize(
    "args",
    [
        ([1, 0, ALIGNED], 3, 0, 0, 0, 0),  # a width too small for any rule
        ([1, 0, ALIGNED, ALIGNED], 4, -1, 0, 0, 0),  # no such device
        ([1, 0, ALIGNED, ALIGNED], 4, 0, 0, 3, 0),  # no such step mode
        ([1, 0, ALIGNED, ALIGNED], 4, 0, 0, 0, 2),  # misaligned learning rate
        ([1, 0, ALIGNED, ALIGNED, 7], 4, 0, 0, 0, 0),  # not a whole number of rows
    ],
)
def test_a_malformed_call_is_refused(args):
    with pytest.raises(ValueError):
        _cuda.Call(*args)


@needs_module
def test_a_table_that_does_not_fit_the_rule_is_refused_before_any_cuda_call():
    call = _call([[4, ALIGNED, ALIGNED, ALIGNED, ALIGNED]], steps=2)  # Adam needs 4 arrays
    with pytest.raises(ValueError, match="row width"):
        _adam(call, 5)
    for bad in (0, ALIGNED + 2):  # null, misaligned for float32
        call = _call([[4, ALIGNED, ALIGNED, ALIGNED, bad, ALIGNED]], steps=2)
        with pytest.raises(ValueError, match="null or misaligned tensor address"):
            _adam(call, 6)
    call = _call([[4, 0, ALIGNED, ALIGNED, ALIGNED, ALIGNED]], steps=2)  # no step counter
    with pytest.raises(ValueError, match="step counter"):
        _adam(call, 6)
    with pytest.raises(ValueError, match="re-checks nothing"):
        _cuda.adam_step(call, [], {}, 6, 0, False, 0.01, 0.9, 0.999, 1e-8, 0, 0, 0, 0, 1, 0, None)
    with pytest.raises(ValueError, match="extra"):
        _adam(call, 6, extra=(0, 0, 0))


@needs_module
def test_found_inf_needs_device_step_counters():
    call = _call([[4, ALIGNED, ALIGNED, ALIGNED, ALIGNED, ALIGNED]], steps=1)
    with pytest.raises(ValueError, match="found_inf"):
        _adam(call, 6, extra=(0, 0, 0, ALIGNED, 0, 0, False))


@needs_module
def test_division_by_zero_is_refused_before_anything_is_written():
    step = torch.zeros((), dtype=torch.float32)
    call = _call([[4, step.data_ptr(), ALIGNED, ALIGNED, ALIGNED, ALIGNED]], steps=1)
    with pytest.raises(ZeroDivisionError):  # host counters: exactly where torch raises
        _adam(call, 6, beta1=1.0)
    assert step.item() == 0.0  # nothing advanced
    call = _call([[4, ALIGNED, ALIGNED, ALIGNED, ALIGNED, ALIGNED]], steps=2)
    with pytest.raises(ValueError, match="division by zero"):  # device counters: refused
        _adam(call, 6, beta1=1.0)


@needs_module
@no_device
def test_without_a_device_a_step_raises_instead_of_crashing():
    call = _call([[4, 0, ALIGNED, ALIGNED]])  # SGD without momentum: no step counter
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        _cuda.sgd_step(call, None, None, 4, 0, 0.1, 0.0, 0.0, 0.0, False, False, 1, 0, None)
    empty = _cuda.Call([], 4, 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        _cuda.sgd_step(empty, None, None, 4, 0, 0.1, 0.0, 0.0, 0.0, False, False, 1, 0, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present (the benchmark runs)")
def test_the_gpu_benchmark_says_plainly_that_there_is_no_gpu(capsys):
    from pyfastopt.bench.cli import main

    assert main(["--device", "cuda", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device here" in err and "nothing was run" in err
