"""The optimizers: torch.optim classes whose step is one fused native call per group."""

from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .bfgs import BFGS
from .lbfgs import LBFGS
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["BFGS", "LBFGS", "SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "RMSprop"]
