"""Exceptions raised by pyfastopt.

Each also derives from the built-in exception a torch user would catch for the same problem, so
``except ValueError`` / ``except TypeError`` / ``except RuntimeError`` keep working.
"""

from __future__ import annotations


class PyfastoptError(RuntimeError):
    """Base class of pyfastopt's own errors."""


class StateError(PyfastoptError, ValueError, KeyError):
    """Optimizer state (from a checkpoint or set by hand) does not fit its parameter.

    Also a ``KeyError``: where torch's own step finds a state entry missing, it raises that.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnsupportedError(PyfastoptError, TypeError):
    """A tensor or an option pyfastopt cannot honour (dtype, device, capturable, ...)."""


class OperandError(PyfastoptError, ValueError):
    """A tensor handed to L-BFGS's or BFGS's vector operations no longer fits them: it changed
    shape, dtype or memory during the step (inside the closure), or it shares memory with a
    tensor the operation writes."""
