"""The CUDA backend proven on the host, without a GPU.

1. The launch planner and per-block index arithmetic: the one header the kernel uses
   (csrc/cuda/traversal.h), compiled by the host compiler with
   tests/native/check_cuda_traversal.cpp, which emulates every launch, block and thread over
   many table shapes (empty and 1-element tensors, tensors larger than a chunk and than a
   launch, misaligned addresses, more tensors than a launch holds, many tiny tensors, a
   5e9-element tensor's indices): every element visited exactly once, vector groups only where
   aligned, real rules through the traversal bit for bit as a plain loop.
2. The module's host side and kernels end to end (csrc/cuda/launch.cuh, counters.cu) on an
   emulated runtime (tests/native/emulated_cuda.h, check_cuda_emulated.cpp): step counters on
   the host or the device, a tensor lr and GradScaler's scalars read on the device, found_inf
   skipping everything, several launches per call, against a plain loop, bit for bit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def _build_and_run(tmp_path: Path, name: str, flags: list[str]) -> str:
    """Compile tests/native/<name>.cpp against the CUDA sources and run it; its stdout."""
    src = ROOT / "tests" / "native" / f"{name}.cpp"
    include, cuda = ROOT / "csrc" / "include", ROOT / "csrc" / "cuda"
    if not src.exists() or not (cuda / "traversal.h").exists():
        pytest.skip("needs the source tree (csrc/cuda, tests/native)")
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (set CXX)")
    exe = tmp_path / name
    dirs = ["-I", str(include), "-I", str(cuda), "-I", str(src.parent)]
    build = subprocess.run(
        [cxx, "-std=c++17", "-Wall", "-Wextra", *flags, *dirs, str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    assert "warning" not in build.stderr, build.stderr[-4000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 failures" in out.stdout and out.stdout.rstrip().endswith("ok"), out.stdout
    return out.stdout


def test_every_element_visited_once_on_every_table(tmp_path):
    out = _build_and_run(tmp_path, "check_cuda_traversal", ["-O2"])
    # the run covered what it claims: several launches, both paths, tables past one launch
    stats = out.split("checked:")[1]
    launches = int(stats.split(" launches")[0].split(",")[-1])
    assert launches > 100, stats
    assert "vector" in stats


def test_the_module_runs_end_to_end_on_an_emulated_device(tmp_path):
    flags = ["-O1", "-DPFO_CUDA_EMULATION", "-DPFO_ISA_NS=cuda"]
    out = _build_and_run(tmp_path, "check_cuda_emulated", flags)
    launches = int(out.split("checks, ")[1].split(" launches")[0])
    assert launches > 20, out
