"""MNIST from the standard IDX files (gzip-compressed or raw), from a directory the user names.

``find_mnist(root)`` looks in ``root``, ``root/raw`` and ``root/MNIST/raw`` (the layout
torchvision writes); with no ``root`` it reads the ``PYFASTOPT_MNIST`` environment variable.
Files are checked against the IDX format (magic number, dimensions, exact length), so a corrupt
or truncated file raises :class:`MnistFormatError` rather than yielding garbage. Compression is
recognised by content (gzip's magic bytes), not by the file name.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import PyfastoptError

ENV_VAR = "PYFASTOPT_MNIST"
MEAN, STD = 0.1307, 0.3081
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_IDX_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class MnistFormatError(PyfastoptError, ValueError):
    """An IDX file is corrupt, truncated or not the MNIST file it claims to be."""


def _candidates(root: Path) -> list[Path]:
    return [root, root / "raw", root / "MNIST" / "raw", root / "mnist"]


def _locate(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        path = directory / name
        if path.is_file():
            return path
    return None


def check_directory(root: str | os.PathLike[str], named_by: str | None = None) -> Path:
    """``root`` (``~`` expanded) when it is an existing directory, else FileNotFoundError saying
    what it is instead; ``named_by``: the environment variable it came from, if any. An empty
    name is refused rather than read as the current directory."""
    subject = f"{named_by}={os.fspath(root)}" if named_by else os.fspath(root)
    if not os.fspath(root).strip():
        raise FileNotFoundError(f"{subject!r}: an empty MNIST directory name; name a directory")
    base = Path(root).expanduser()
    if not base.exists():
        raise FileNotFoundError(f"{subject}: MNIST directory not found")
    if not base.is_dir():
        raise FileNotFoundError(f"{subject} is a file, not a directory")
    return base


def find_mnist(root: str | os.PathLike[str] | None = None, split: str | None = None) -> Path:
    """The directory holding the MNIST IDX files, or FileNotFoundError saying where it looked
    (or that ``root``, or the directory ``$PYFASTOPT_MNIST`` names, does not exist or is a file).

    With ``split`` ('train' or 'test') only that split's two files are required, else all four.
    """
    if split is not None and split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    stems = [stem for name, files in _FILES.items() if split in (None, name) for stem in files[:2]]
    named_by = None
    if root is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            raise FileNotFoundError(
                f"no MNIST directory given: pass --data DIR or set {ENV_VAR} to a directory "
                "holding train-images-idx3-ubyte[.gz] and the other three IDX files"
            )
        root, named_by = env, ENV_VAR
    base = check_directory(root, named_by)
    looked = _candidates(base)
    for directory in looked:
        if all(_locate(directory, stem) for stem in stems):
            return directory
    needed = ", ".join(s + "[.gz]" for s in stems)
    raise FileNotFoundError(
        f"MNIST IDX files ({needed}) not found; looked in " + ", ".join(str(d) for d in looked)
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip-compressed or raw) into a numpy array, validating its header and
    length; a missing file raises FileNotFoundError, a malformed one :class:`MnistFormatError`."""
    path = Path(path)
    data = path.read_bytes()  # a missing file is FileNotFoundError, not a format error
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # bad header, truncated, corrupt stream
            raise MnistFormatError(f"{path}: corrupt gzip data ({exc})") from exc
    if len(data) < 4:
        raise MnistFormatError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise MnistFormatError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistFormatError(f"{path}: truncated header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise MnistFormatError(
            f"{path}: {len(data)} bytes, but its header ({dims}, {dtype}) needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as an (N, 784) tensor and labels as int64 (N,), from the IDX files under ``root``.

    ``normalize`` maps pixels to (x/255 - 0.1307)/0.3081, the usual MNIST normalisation;
    otherwise pixels are in [0, 1].
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = find_mnist(root, split)
    img_stem, lbl_stem, _count = _FILES[split]
    images = read_idx(_locate(directory, img_stem))  # type: ignore[arg-type]
    labels = read_idx(_locate(directory, lbl_stem))  # type: ignore[arg-type]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise MnistFormatError(f"{img_stem}: expected uint8 N×28×28 images, got {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8 or labels.shape[0] != images.shape[0]:
        raise MnistFormatError(
            f"{lbl_stem}: expected {images.shape[0]} uint8 labels, "
            f"got {labels.dtype} {labels.shape}"
        )
    if labels.size and int(labels.max()) > 9:
        raise MnistFormatError(f"{lbl_stem}: label {int(labels.max())} is not a digit")
    x = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / 255.0)
    if normalize:
        x = (x - MEAN) / STD
    return x.to(dtype), torch.from_numpy(labels.astype(np.int64))


def synthetic_mnist(
    n: int = 1024, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-shaped random data (N×784 normalised pixels, labels 0-9) for when no data is found."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 784, generator=gen, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x, y
