"""The compiled core links neither libtorch nor libc10, and was built the portable way."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

import pyfastopt


def _needed(path: Path) -> list[str]:
    """DT_NEEDED entries of an ELF64 little-endian shared object (no external tools)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    dynamic = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC
    strtab = sections[dynamic[6]]  # sh_link -> .dynstr
    names = []
    for off in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            start = strtab[4] + val
            names.append(data[start : data.index(b"\0", start)].decode())
    return names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF only")
def test_core_does_not_link_torch():
    needed = _needed(Path(pyfastopt._core.__file__))
    assert needed, "no DT_NEEDED entries found: parser broken?"
    assert any(n.startswith("libc.so") or n.startswith("libstdc++") for n in needed)
    bad = [n for n in needed if "torch" in n or "c10" in n]
    assert not bad, f"the core links {bad}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF only")
def test_core_links_no_openmp_runtime_of_its_own():
    # CMakeLists.txt (PFO_LINK_OPENMP=OFF on Linux): the OpenMP calls bind at load time to the
    # runtime torch has loaded, so a wheel needs no libgomp, vendored or from the system
    needed = _needed(Path(pyfastopt._core.__file__))
    omp = [n for n in needed if "gomp" in n or "omp.so" in n or "iomp" in n]
    assert not omp, f"the core links an OpenMP runtime itself: {omp}"


_OMP_MAPS = """
import torch, pyfastopt
p = torch.nn.Parameter(torch.randn(1 << 17)); p.grad = torch.randn(1 << 17)
pyfastopt.set_num_threads(2)
pyfastopt.Adam([p]).step()  # large enough for a parallel region
maps = open("/proc/self/maps").read().splitlines()
print("\\n".join(sorted({line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]})))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_core_runs_on_torchs_own_openmp_runtime(tmp_path):
    import subprocess

    import torch

    out = subprocess.run(
        [sys.executable, "-c", _OMP_MAPS], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    loaded = [Path(line) for line in out.stdout.split("\n") if line.strip()]
    assert len(loaded) == 1, f"expected one OpenMP runtime in the process, got {loaded}"
    shipped = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    if shipped:  # torch's wheel ships its own: that is the one in use
        assert loaded[0].resolve() == shipped[0].resolve(), (loaded, shipped)


def test_supported_simd_paths_and_selection():
    paths = pyfastopt._core.supported_simd()
    assert paths[-1] == "baseline"
    assert pyfastopt._core.simd_path() == paths[0]
    with pytest.raises(ValueError):
        pyfastopt._core.select_simd("sse1")
    assert pyfastopt._core.select_simd("baseline") == "baseline"
    assert pyfastopt._core.select_simd("auto") == paths[0]


def _sgd(table, width=4, dtype=0, momentum=0.0, extra=None):
    core = pyfastopt._core
    return core.sgd_step(
        table, None, None, width, dtype, 0.1, momentum, 0.0, 0.0, False, False, 1, 1 << 15, extra
    )


def test_native_core_refuses_malformed_tables():
    with pytest.raises(ValueError):  # length not a multiple of the row width
        _sgd([1, 0, 0])
    with pytest.raises(ValueError):  # null data address for a non-empty tensor
        _sgd([4, 0, 0, 0])
    with pytest.raises(ValueError):  # width does not match the rule (momentum needs 5)
        _sgd([0, 0, 0, 0], momentum=0.9)
    with pytest.raises(ValueError):  # bad dtype code
        _sgd([0, 0, 0, 0], dtype=7)
    with pytest.raises(ValueError):  # misaligned float32 address
        _sgd([1, 0, 4097, 4096])
    with pytest.raises(ValueError):  # misaligned bfloat16 address
        _sgd([1, 0, 4097, 4096], dtype=2)
    with pytest.raises(ValueError):  # a rounding mode that does not exist
        _sgd([0, 0, 0, 0], extra=(5, 0, 0, 0, 0, 0, False))
    with pytest.raises(ValueError):  # stochastic rounding of float32
        _sgd([0, 0, 0, 0], extra=(1, 0, 0, 0, 0, 0, False))
    with pytest.raises(ValueError):  # stochastic rounding of float16
        _sgd([0, 0, 0, 0], dtype=3, extra=(1, 0, 0, 0, 0, 0, False))
    with pytest.raises(ValueError):  # a misaligned GradScaler scalar
        _sgd([0, 0, 0, 0], extra=(0, 0, 4097, 0, 0, 0, False))
    with pytest.raises(ValueError):  # master weights: the row needs the parameter's array too
        _sgd([0, 0, 0, 0], dtype=2, extra=(2, 0, 0, 0, 0, 0, False))
    with pytest.raises(ValueError):  # a state store that does not exist
        _sgd([0, 0, 0, 0], extra=(0, 0, 0, 0, 4, 256, False))
    with pytest.raises(ValueError):  # 8-bit state with a block size out of range
        _sgd([0, 0, 0, 0], extra=(0, 0, 0, 0, 3, 100, False))
    with pytest.raises(ValueError):  # 8-bit state: the row lacks its scale address
        _sgd([1, 0, 4096, 4096, 4096], width=5, momentum=0.9, extra=(0, 0, 0, 0, 3, 256, False))
    with pytest.raises(ValueError):  # 8-bit state: a null scale address
        _sgd([1, 0, 4096, 4096, 4096, 0], width=6, momentum=0.9, extra=(0, 0, 0, 0, 3, 256, False))
    with pytest.raises(ValueError):  # an extra tuple of the wrong length
        _sgd([0, 0, 0, 0], extra=(0, 0, 0, 0))
    with pytest.raises(ValueError):  # null step counter
        pyfastopt._core.adam_step(
            [0, 0, 0, 0, 0, 0],
            None,
            None,
            6,
            0,
            False,
            0.1,
            0.9,
            0.99,
            1e-8,
            0.0,
            False,
            False,
            False,
            1,
            1 << 15,
            None,
        )
    assert _sgd([0, 0, 0, 0]) is True  # an empty tensor is fine


def test_stale_plan_does_nothing():
    import torch

    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.ones(4)
    opt = pyfastopt.SGD([p], lr=0.5)
    opt.step()
    (plan,) = opt._fastopt_plans.values()
    source = plan.calls[0].source
    assert isinstance(source, pyfastopt._core.Plan) and len(source) == 1
    assert source.collect([p], opt.state)
    q = torch.nn.Parameter(torch.ones(4))
    assert not source.collect([q], opt.state)  # another parameter list
    p.grad = torch.ones(4).to_sparse()
    assert not source.collect([p], opt.state)  # a sparse gradient
    p.grad = torch.ones(8)[::2]
    assert not source.collect([p], opt.state)  # a gradient with another layout
    p.grad = None
    assert not source.collect([p], opt.state)
    p.grad = torch.ones(4)
    before = p.detach().clone()
    ran = pyfastopt._core.sgd_step(
        source, [q], opt.state, 4, 0, 0.5, 0.0, 0.0, 0.0, False, False, 1, 1 << 15, None
    )
    assert ran is False and torch.equal(p.detach(), before)


def test_no_fast_math_in_build_files():
    root = Path(__file__).resolve().parents[1]
    cmake = root / "CMakeLists.txt"
    if not cmake.exists():
        pytest.skip("source tree not available")
    text = cmake.read_text()
    flags = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(flags)
    assert "-ffast-math" not in joined and "-Ofast" not in joined and "-march=native" not in joined


@pytest.mark.parametrize("value,expect", [("baseline", "baseline"), ("sse1", None)])
def test_simd_environment_variable(tmp_path, value, expect):
    import os
    import subprocess

    env = dict(os.environ, PYFASTOPT_SIMD=value)
    out = subprocess.run(
        [sys.executable, "-c", "import pyfastopt; print(pyfastopt._core.simd_path())"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    if expect is None:
        assert "PYFASTOPT_SIMD ignored" in out.stderr
        assert out.stdout.strip() == pyfastopt._core.supported_simd()[0]
    else:
        assert out.stdout.strip() == expect
