"""The low-memory state benchmark runs end to end (a smoke run, not a timing test)."""

from __future__ import annotations

import pytest

from pyfastopt.bench import lowmem


def test_lowmem_bench_runs_and_reports_every_candidate(capsys: pytest.CaptureFixture[str]) -> None:
    assert lowmem.main(["--models", "mlp-16", "--optimizers", "adamw,RMSPROP", "--rounds", "1",
                        "--others", "bitsandbytes"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for impl in ("torch-fused", "torch-foreach", "pyfastopt 8bit", "pyfastopt bf16 state+sr",
                 "pyfastopt bf16 params+8bit", "8-bit roofline"):  # fmt: skip
        assert impl in out
    # timed where installed, else a line says why not
    assert "bitsandbytes 8bit" in out or "skipped bitsandbytes" in out
    assert "RMSprop" in out and "AdamW" in out  # any case in, the canonical name out


def test_lowmem_bench_refuses_an_unknown_library(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the libraries it knows: an unknown one is a usage error, not "foo has no 8-bit SGD"
    as if it were a real library."""
    with pytest.raises(SystemExit) as exc:
        lowmem.main(["--others", "bitsandbytes,nosuchlib"])
    assert exc.value.code == 2
    assert "unknown library 'nosuchlib'" in capsys.readouterr().err
    assert lowmem.other_library("nosuchlib", "SGD")[0] is None


def test_lowmem_bench_per_param() -> None:
    assert lowmem.main(["--models", "small-3x5000", "--optimizers", "SGD", "--rounds", "1",
                        "--per-param", "--others", ""]) == 0  # fmt: skip


def test_bytes_moved_by_an_8bit_adam_step() -> None:
    assert lowmem.bytes_moved_8bit(1000, 2) == pytest.approx(1000 * (12 + 2 * 2.03125))
