"""The reduction passes of csrc/cpu/reduce.h, checked natively (tests/native/check_reduce.cpp):
RowBlocks' blocks, and run_passes' rounds stopped early by their serial step, on 1-3 threads."""

from __future__ import annotations

from pathlib import Path

from helpers import ROOT, run_native_check


def test_row_blocks_and_rounds(tmp_path: Path) -> None:
    out = run_native_check(
        tmp_path,
        "check_reduce.cpp",
        [],
        flags=("-fopenmp", "-DPFO_ISA_NS=isa_check", "-I", str(ROOT / "csrc" / "cpu")),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failures" in out.stdout
