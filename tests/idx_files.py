"""Tiny MNIST-format IDX files for tests (the loader's and the benchmark CLI's)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """``array`` as an IDX file: magic (0, type, ndim), big-endian dims, then the data."""
    header = struct.pack(">HBB", 0, type_code, array.ndim)
    header += struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.tobytes()


def images_for(n: int) -> np.ndarray:
    return (np.arange(n * 28 * 28) % 256).astype(np.uint8).reshape(n, 28, 28)


def labels_for(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


def write(path: Path, data: bytes, gz: bool) -> Path:
    """Write ``data`` to ``path`` (``path.gz`` gzip-compressed when ``gz``); the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data, compresslevel=1))
    else:
        path.write_bytes(data)
    return path


def make_mnist(
    directory: Path,
    sizes: dict[str, int],
    gz: bool = True,
) -> Path:
    """The IDX files of each split in ``sizes`` (split -> image count) under ``directory``."""
    for split, n in sizes.items():
        img, lbl = STEMS[split]
        write(directory / img, idx_bytes(images_for(n)), gz)
        write(directory / lbl, idx_bytes(labels_for(n)), gz)
    return directory
