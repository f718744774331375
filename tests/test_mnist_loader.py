"""The MNIST IDX loader, on tiny IDX files each test writes itself (gz and raw, corrupt ones)."""

from __future__ import annotations

import gzip
from pathlib import Path

import idx_files
import numpy as np
import pytest
import torch
from idx_files import idx_bytes, images_for, labels_for, write

from pyfastopt.data import (
    ENV_VAR,
    MnistFormatError,
    find_mnist,
    load_mnist,
    read_idx,
    synthetic_mnist,
)

SIZES = {"train": 12, "test": 5}


def make_mnist(directory: Path, gz: bool = True, splits: tuple[str, ...] = ("train", "test")):
    return idx_files.make_mnist(directory, {s: SIZES[s] for s in splits}, gz)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_reads_both_splits(tmp_path, gz):
    make_mnist(tmp_path, gz=gz)
    x, y = load_mnist(tmp_path, "train", normalize=False)
    assert x.shape == (SIZES["train"], 784) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == labels_for(SIZES["train"]).tolist()
    expected = torch.from_numpy(images_for(SIZES["train"]).reshape(-1, 784).astype(np.float32))
    torch.testing.assert_close(x, expected / 255.0)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    xt, yt = load_mnist(tmp_path, "test")
    assert xt.shape == (SIZES["test"], 784) and yt.shape == (SIZES["test"],)


def test_normalisation_and_dtype(tmp_path):
    make_mnist(tmp_path)
    raw, _ = load_mnist(tmp_path, normalize=False)
    norm, _ = load_mnist(tmp_path, dtype=torch.float64)
    assert norm.dtype == torch.float64
    torch.testing.assert_close(norm, ((raw.double() - 0.1307) / 0.3081))


@pytest.mark.parametrize("layout", ["", "raw", "MNIST/raw"])
def test_finds_torchvision_layouts(tmp_path, layout):
    directory = make_mnist(tmp_path / layout if layout else tmp_path)
    assert find_mnist(tmp_path) == directory
    assert load_mnist(tmp_path)[0].shape[0] == SIZES["train"]


def test_env_var_lookup(tmp_path, monkeypatch):
    directory = make_mnist(tmp_path / "MNIST" / "raw")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert find_mnist() == directory
    assert load_mnist(split="test")[1].shape == (SIZES["test"],)


def test_no_env_var_says_how_to_fix(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        find_mnist()


def test_missing_files_list_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message
    assert str(tmp_path) in message and str(tmp_path / "MNIST" / "raw") in message


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="MNIST directory not found") as info:
        load_mnist(missing)
    assert str(missing) in str(info.value)


def test_a_file_is_not_a_directory(tmp_path):
    a_file = tmp_path / "mnist.tar"
    a_file.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a directory"):
        find_mnist(a_file)


def test_an_empty_name_is_not_the_current_directory(tmp_path, monkeypatch):
    make_mnist(tmp_path)
    monkeypatch.chdir(tmp_path)  # MNIST right here: "" must still not find it
    with pytest.raises(FileNotFoundError, match="empty"):
        find_mnist("")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_env_var_naming_no_directory_says_so(tmp_path, monkeypatch, kind):
    path = tmp_path / "nowhere"
    if kind == "file":
        path.write_bytes(b"")
    monkeypatch.setenv(ENV_VAR, str(path))
    with pytest.raises(FileNotFoundError) as info:
        find_mnist()
    assert f"{ENV_VAR}={path}" in str(info.value)


def test_one_split_is_enough_for_that_split(tmp_path):
    make_mnist(tmp_path, splits=("test",))
    assert load_mnist(tmp_path, "test")[0].shape[0] == SIZES["test"]
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path, "train")
    with pytest.raises(FileNotFoundError):
        find_mnist(tmp_path)  # all four files by default


def test_bad_split_name(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_corrupt_magic(tmp_path, gz):
    data = bytearray(idx_bytes(labels_for(10)))
    data[0:2] = b"\x12\x34"
    path = write(tmp_path / "labels", bytes(data), gz)
    with pytest.raises(MnistFormatError, match="not an IDX file"):
        read_idx(path)


def test_unknown_type_code(tmp_path):
    path = write(tmp_path / "x", idx_bytes(labels_for(4), type_code=0x42), gz=False)
    with pytest.raises(MnistFormatError):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("cut", [1, 100, 790], ids=["data", "image", "header"])
def test_truncated_file(tmp_path, gz, cut):
    data = idx_bytes(images_for(1))
    path = write(tmp_path / "images", data[: len(data) - cut], gz)
    with pytest.raises(MnistFormatError):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(images_for(3)))[:-30])
    with pytest.raises(MnistFormatError, match="gzip"):
        read_idx(path)


def test_corrupt_gzip_stream(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(images_for(3))))
    for i in range(12, 40):
        packed[i] ^= 0xFF
    path = tmp_path / "images.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(MnistFormatError):
        read_idx(path)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_wrong_length(tmp_path, gz):
    path = write(tmp_path / "labels", idx_bytes(labels_for(10)) + b"\x00\x00", gz)
    with pytest.raises(MnistFormatError, match="needs"):
        read_idx(path)


def test_too_short_for_a_header(tmp_path):
    path = write(tmp_path / "x", b"\x00\x00", gz=False)
    with pytest.raises(MnistFormatError):
        read_idx(path)


def test_gzip_recognised_by_content_not_name(tmp_path):
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(labels_for(7))))
    assert read_idx(path).tolist() == labels_for(7).tolist()


def test_missing_file_is_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


def _replace(directory: Path, stem: str, data: bytes) -> None:
    (directory / (stem + ".gz")).write_bytes(gzip.compress(data))


@pytest.mark.parametrize(
    "stem, data",
    [
        ("train-images-idx3-ubyte", idx_bytes(images_for(12)[:, :27, :])),  # 27×28 images
        ("train-labels-idx1-ubyte", idx_bytes(labels_for(11))),  # 11 labels, 12 images
        ("train-labels-idx1-ubyte", idx_bytes(labels_for(12) + 5)),  # labels up to 14
        ("train-labels-idx1-ubyte", idx_bytes(labels_for(12).astype(np.int8), 0x09)),
    ],
    ids=["image-shape", "label-count", "label-range", "label-dtype"],
)
def test_not_mnist_content(tmp_path, stem, data):
    make_mnist(tmp_path)
    _replace(tmp_path, stem, data)
    with pytest.raises(MnistFormatError):
        load_mnist(tmp_path)


def test_format_error_is_a_value_error():
    assert issubclass(MnistFormatError, ValueError)


def test_synthetic_is_mnist_shaped_and_deterministic():
    x, y = synthetic_mnist(64, seed=3)
    x2, y2 = synthetic_mnist(64, seed=3)
    assert x.shape == (64, 784) and y.shape == (64,) and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) <= 9
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_real_mnist(mnist_dir):
    x, y = load_mnist(mnist_dir, "train")
    assert x.shape == (60000, 784) and y.shape == (60000,)
    assert y[:5].tolist() == [5, 0, 4, 1, 9]
    xt, yt = load_mnist(mnist_dir, "test")
    assert xt.shape == (10000, 784) and yt[:3].tolist() == [7, 2, 1]
