"""pyfastopt: fused multi-tensor C++ optimizer steps as drop-in ``torch.optim`` optimizers.

``pyfastopt.Adam`` replaces ``torch.optim.Adam`` (likewise SGD, Adagrad, Adadelta, RMSprop,
AdamW, NAdam, RAdam, Adamax, ASGD, Rprop, Adafactor and SparseAdam): same arguments, defaults,
param_groups and state, one native call per step.
``pyfastopt.LBFGS`` replaces ``torch.optim.LBFGS``, its vector work done natively over the
parameters in place; ``pyfastopt.BFGS`` is dense BFGS for small problems, with LBFGS's closure
protocol and line search.
``pyfastopt.clip_grad_norm_`` replaces ``torch.nn.utils.clip_grad_norm_`` the same way.
"""

from __future__ import annotations

# torch first: its libgomp.so.1 is then the OpenMP runtime our core binds to (same soname), so
# pyfastopt and torch share one thread pool.
import torch  # noqa: F401

try:
    from . import _core  # noqa: E402
except ImportError as _exc:  # one clear ImportError instead of "partially initialized module"
    from pathlib import Path as _Path

    from ._core_error import core_import_error as _core_import_error

    raise _core_import_error(_exc, __name__, _Path(__file__).parent) from None
from ._config import get_num_threads, set_num_threads, show_config  # noqa: E402
from .clip import clip_grad_norm_  # noqa: E402
from .errors import OperandError, PyfastoptError, StateError, UnsupportedError  # noqa: E402
from .optim import (  # noqa: E402
    ASGD,
    BFGS,
    LBFGS,
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    NAdam,
    RAdam,
    RMSprop,
    Rprop,
    SparseAdam,
)

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "BFGS",
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "LBFGS",
    "NAdam",
    "OperandError",
    "RAdam",
    "PyfastoptError",
    "RMSprop",
    "Rprop",
    "SparseAdam",
    "StateError",
    "UnsupportedError",
    "clip_grad_norm_",
    "get_num_threads",
    "set_num_threads",
    "show_config",
    "_core",
]
