from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import pyfastopt


def pytest_report_header(config):
    return [
        f"pyfastopt {pyfastopt.__version__} from {Path(pyfastopt.__file__).parent}",
        f"simd={pyfastopt._core.simd_path()} threads={pyfastopt.get_num_threads()} "
        f"torch={torch.__version__}",
    ]


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST directory named by PYFASTOPT_MNIST, or a visible skip."""
    from pyfastopt.data import ENV_VAR, find_mnist

    if not os.environ.get(ENV_VAR):
        pytest.skip(f"real MNIST not available: set {ENV_VAR} to a directory of IDX files")
    return find_mnist()


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    pyfastopt.set_num_threads(None)


@pytest.fixture(params=["c-reader", "python-reader"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Runs a test once per metadata reader (``pyfastopt._reader``), in this process and in any
    subprocess it starts."""
    from pyfastopt import _reader

    default = os.environ.get("PYFASTOPT_TORCH_ABI", "1") != "0"
    on = request.param == "c-reader"
    if on and not default:
        pytest.skip("the C reader is switched off (PYFASTOPT_TORCH_ABI=0)")
    monkeypatch.setenv("PYFASTOPT_TORCH_ABI", "1" if on else "0")
    assert _reader.use_torch_abi(on) == on, "the C reader's probe failed in this torch"
    yield request.param
    _reader.use_torch_abi(default)
