"""pyfastopt: fused multi-tensor C++ optimizer steps as drop-in ``torch.optim`` optimizers.

``pyfastopt.Adam`` replaces ``torch.optim.Adam`` (likewise SGD, Adagrad, Adadelta, RMSprop and
AdamW): same arguments, defaults, param_groups and state, one native call per step.
"""

from __future__ import annotations

# torch first: its libgomp.so.1 is then the OpenMP runtime our core binds to (same soname), so
# pyfastopt and torch share one thread pool.
import torch  # noqa: F401

from . import _core  # noqa: E402
from ._config import get_num_threads, set_num_threads, show_config  # noqa: E402
from .errors import PyfastoptError, StateError, UnsupportedError  # noqa: E402
from .optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "PyfastoptError",
    "RMSprop",
    "StateError",
    "UnsupportedError",
    "get_num_threads",
    "set_num_threads",
    "show_config",
    "_core",
]
