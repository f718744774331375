"""Progress output: a redrawn bar only on a terminal; piped or under CI, plain lines per phase
(start and end with the elapsed time) and no carriage return anywhere in the log."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyfastopt import _progress
from pyfastopt._progress import progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.fixture
def no_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")


def _run(monkeypatch, tty: bool, items, **kwargs) -> tuple[list, str]:
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    got = list(progress(items, **kwargs))
    return got, stream.getvalue()


def test_piped_output_is_one_line_per_phase_start_and_end(monkeypatch, no_ci):
    got, text = _run(monkeypatch, False, range(5), desc="paths")
    assert got == [0, 1, 2, 3, 4]
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "paths: started (0/5)"
    assert lines[1].startswith("paths: done, 5/5 in ") and lines[1].endswith(" s")
    assert len(lines) == 2


def test_unknown_length_and_early_stop_still_end_the_phase(monkeypatch, no_ci):
    stream = _Stream(False)
    monkeypatch.setattr(sys, "stderr", stream)
    gen = progress(iter(range(10)), desc="epochs")
    assert next(gen) == 0 and next(gen) == 1
    gen.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "epochs: started"
    assert lines[1].startswith("epochs: stopped, 1 in ")


def test_terminal_draws_a_bar(monkeypatch, no_ci):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the built-in bar, whatever is installed
    got, text = _run(monkeypatch, True, range(3), desc="bench", total=3)
    assert got == [0, 1, 2]
    assert "\r" in text and "3/3" in text and "started" not in text


@pytest.mark.parametrize("env", [{"CI": "true"}, {"TERM": "dumb"}])
def test_ci_or_dumb_terminal_gets_plain_lines(monkeypatch, no_ci, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not _progress.interactive(_Stream(True))
    _, text = _run(monkeypatch, True, range(2), desc="x")
    assert "\r" not in text and text.startswith("x: started")


def test_disabled_writes_nothing(monkeypatch, no_ci):
    got, text = _run(monkeypatch, False, range(3), enabled=False)
    assert got == [0, 1, 2] and text == ""


def test_study_log_has_no_carriage_returns(tmp_path: Path):
    """The study with its progress on and its output piped, as in a CI log."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    done = subprocess.run(
        [sys.executable, "-m", "pyfastopt.study", "surfaces", "--quick", "--steps", "60",
         "--functions", "saddle", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert "\r" not in log
    assert "paths: started" in done.stderr and "paths: done" in done.stderr
