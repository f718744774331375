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
