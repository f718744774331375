"""``python -m pyfastopt.bench.lbfgs`` runs end to end and checks parity (no timing asserted)."""

from __future__ import annotations

import pytest

from pyfastopt.bench import lbfgs


def test_lbfgs_bench_runs_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--models", "small-3x500", "--history", "3", "--rounds", "1",
            "--bfgs-model", "small-2x100"]  # fmt: skip
    assert lbfgs.main(argv) == 0
    out = capsys.readouterr().out
    for impl in ("torch LBFGS", "pyfastopt LBFGS", "pyfastopt BFGS"):
        assert impl in out
    assert "parity: max relative diff" in out


def test_parity_refuses_a_diverging_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parity check is a real check: an L-BFGS with another step size fails it."""
    makers = lbfgs.lbfgs_makers(3)
    real = makers["pyfastopt LBFGS"]
    monkeypatch.setattr(
        lbfgs,
        "lbfgs_makers",
        lambda h: {**makers, "pyfastopt LBFGS": lambda ps: type(real(ps))(ps, lr=0.3, max_iter=1)},
    )
    with pytest.raises(AssertionError, match="left torch's iterates"):
        lbfgs.parity(((500,),), 3)
