"""The low-memory state benchmark runs end to end (a smoke run, not a timing test)."""

from __future__ import annotations

import pytest

from pyfastopt.bench import lowmem


def test_lowmem_bench_runs_and_reports_every_candidate(capsys: pytest.CaptureFixture[str]) -> None:
    assert lowmem.main(["--models", "mlp-16", "--optimizers", "AdamW,RMSprop", "--rounds", "1",
                        "--others", "bitsandbytes,nosuchlib"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for impl in ("torch-fused", "torch-foreach", "pyfastopt 8bit", "pyfastopt bf16 state+sr",
                 "pyfastopt bf16 params+8bit", "8-bit roofline"):  # fmt: skip
        assert impl in out
    assert "skipped nosuchlib" in out


def test_lowmem_bench_per_param() -> None:
    assert lowmem.main(["--models", "small-3x5000", "--optimizers", "SGD", "--rounds", "1",
                        "--per-param", "--others", ""]) == 0  # fmt: skip


def test_bytes_moved_by_an_8bit_adam_step() -> None:
    assert lowmem.bytes_moved_8bit(1000, 2) == pytest.approx(1000 * (12 + 2 * 2.03125))
