"""Data sets used by the benchmarks and the study (MNIST from standard IDX files)."""

from .mnist import ENV_VAR, MnistFormatError, find_mnist, load_mnist, read_idx, synthetic_mnist

__all__ = ["ENV_VAR", "MnistFormatError", "find_mnist", "load_mnist", "read_idx", "synthetic_mnist"]
