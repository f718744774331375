"""The optimizer-state study (``python -m pyfastopt.study state``) on small synthetic problems.

No real MNIST needed: the runs use a synthetic problem or tiny IDX files (tests/idx_files.py). No
test asserts a timing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from idx_files import make_mnist

from pyfastopt.data import ENV_VAR
from pyfastopt.study import cli, state_study
from pyfastopt.study.lockstep import VariantResult
from pyfastopt.study.mnist_run import MnistData
from pyfastopt.study.state_study import CONTROL, Cell, StateOptions, StateStudy, check

VARIANTS = ("float32", "bf16", "8bit", CONTROL)


def _data() -> MnistData:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(784, 10, generator=g)
    x = torch.rand(512, 784, generator=g)
    xt = torch.rand(128, 784, generator=g)
    return MnistData(x, (x @ w).argmax(1), xt, (xt @ w).argmax(1))


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def study() -> StateStudy:
    options = StateOptions(
        out=Path("unused"), hidden=(32,), epochs=2, batch_size=64, seeds=(1, 2), show_progress=False
    )
    return state_study.run(options, data=_data())


# --- training ----------------------------------------------------------------------------------


def test_every_family_and_state_trains(study: StateStudy):
    assert list(study.cells) == [(f.name, v) for f in state_study.FAMILIES for v in VARIANTS]
    for (family, state), cell in study.cells.items():
        assert len(cell.runs) == 2, (family, state)
        for r in cell.runs:
            assert len(r.train_loss) == len(r.test_accuracy) == 3
            assert len(r.batch_loss) == 2 * 512 // 64
            assert all(math.isfinite(v) for v in r.train_loss)
            assert r.train_loss[-1] < r.train_loss[0], (family, state)  # every variant learns
            assert r.step_seconds > 0 and r.train_seconds >= r.step_seconds


def test_same_weights_and_batches_within_a_seed(study: StateStudy):
    for family in state_study.FAMILIES:
        runs = {v: study.cells[family.name, v].runs for v in VARIANTS}
        for seed_index in range(2):
            first = {v: rs[seed_index] for v, rs in runs.items()}
            # the same start: identical untrained loss, and identical first-batch loss, for the
            # three state variants (the control starts one ulp away)
            assert len({first[v].train_loss[0] for v in ("float32", "bf16", "8bit")}) == 1
            assert len({first[v].batch_loss[0] for v in ("float32", "bf16", "8bit")}) == 1
            assert first[CONTROL].train_loss[0] == pytest.approx(first["float32"].train_loss[0])
        # different seeds: different weights
        assert runs["float32"][0].train_loss[0] != runs["float32"][1].train_loss[0]


def test_state_bytes_shrink(study: StateStudy):
    for family in state_study.FAMILIES:
        cells = {v: study.cells[family.name, v] for v in VARIANTS}
        params = cells["float32"].params
        assert params == 784 * 32 + 32 + 32 * 10 + 10
        buffers = 2 if family.optimizer in ("Adam", "AdamW") else 1
        # float32: 4 bytes per parameter and buffer (plus a step counter)
        assert buffers * 4 <= cells["float32"].bytes_per_param < buffers * 4 + 0.01
        assert cells["bf16"].state_bytes < 0.51 * cells["float32"].state_bytes
        assert cells["8bit"].state_bytes < 0.3 * cells["float32"].state_bytes
        assert cells[CONTROL].state_bytes == cells["float32"].state_bytes


# --- the check ---------------------------------------------------------------------------------


def test_check_on_fabricated_numbers():
    ok = check([0.1005], [0.9712], [0.1], [0.9700])
    assert ok.mean_loss_rel == pytest.approx(0.005) and ok.mean_acc_points == pytest.approx(1.2e-1)
    assert ok.passed and ok.seeds_passed == 1
    assert check([0.0995], [0.9690], [0.1], [0.9700]).passed  # better or worse: both count
    assert not check([0.102], [0.97], [0.1], [0.97]).passed  # loss 2 % above
    assert not check([0.098], [0.97], [0.1], [0.97]).passed  # 2 % below: "within" is both ways
    assert not check([0.1], [0.9660], [0.1], [0.97]).passed  # 0.4 points lower
    assert not check([0.1], [0.9740], [0.1], [0.97]).passed  # 0.4 points higher
    # exactly on the tolerances passes
    assert check([0.101], [0.9730], [0.1], [0.9700]).passed
    assert check([0.099], [0.9670], [0.1], [0.9700]).passed
    # a diverged run fails
    assert not check([math.nan], [0.1], [0.1], [0.97]).passed
    assert not check([0.1], [math.nan], [0.1], [0.97]).passed


def test_check_averages_paired_differences_over_seeds():
    # seed 1: +1.5 % (fails alone), seed 2: -0.1 %: mean +0.7 % passes, one seed of two
    c = check([0.1015, 0.1998], [0.97, 0.96], [0.1, 0.2], [0.97, 0.96])
    assert c.loss_rel == pytest.approx((0.015, -0.001))
    assert c.passed and c.seeds_passed == 1
    # differences are paired by seed: a seed-to-seed spread in float32 itself does not count
    c = check([0.1, 0.3], [0.9, 0.99], [0.1, 0.3], [0.9, 0.99])
    assert c.passed and c.seeds_passed == 2
    with pytest.raises(ValueError):
        check([0.1], [0.9], [0.1, 0.2], [0.9, 0.9])


def _fabricated(losses: dict[str, list[float]], accs: dict[str, list[float]]) -> StateStudy:
    """A study of one family (Adam) with made-up final numbers, two seeds."""
    options = StateOptions(
        out=Path("unused"), seeds=(1, 2), families=(state_study.BY_NAME["adam"],), command="cmd"
    )
    cells = {}
    for state in VARIANTS:
        runs = [
            VariantResult(state, [2.3, loss], [0.1, acc], 0.5, 1.0, [2.3, 1.0])
            for loss, acc in zip(losses[state], accs[state])
        ]
        per_param = {"float32": 8.0, "bf16": 4.0, "8bit": 2.0, CONTROL: 8.0}[state]
        cells["adam", state] = Cell(options.families[0], state, runs, int(1000 * per_param), 1000)
    info = {
        "cpu": "test CPU", "logical_cpus": 2, "study_threads": 1, "pyfastopt": "0",
        "simd_path": "x", "compiler": "c", "torch": "t", "python": "p", "date": "today",
    }  # fmt: skip
    return StateStudy(options, cells, {"train": 60000, "test": 10000}, 3082, info)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(md: str, start: str) -> list[str]:
    (line,) = [ln for ln in md.splitlines() if ln.startswith(start)]
    return _cells(line)


def _result(md: str, state: str) -> dict[str, str]:
    """The results table's row of Adam with ``state``, by column name."""
    header = _row(md, "| optimizer | state |")
    return dict(zip(header, _row(md, f"| Adam | {state_study.LABELS[state]} |")))


VERDICT = "within 1 % / 0.3 pts"


def test_report_says_pass_and_fail_per_row():
    study = _fabricated(
        losses={
            "float32": [0.100, 0.200],
            "bf16": [0.1005, 0.2010],  # +0.5 %: pass
            "8bit": [0.105, 0.210],  # +5 %: fail
            CONTROL: [0.1002, 0.1996],
        },
        accs={
            "float32": [0.970, 0.960],
            "bf16": [0.971, 0.960],
            "8bit": [0.970, 0.960],
            CONTROL: [0.970, 0.961],
        },
    )
    md = state_study.report(study, "state_loss.png")
    base, bf16, q8, control = (_result(md, s) for s in VARIANTS)
    assert base[VERDICT] == "baseline"
    assert bf16[VERDICT] == "**PASS** (2/2 seeds)"
    assert q8[VERDICT] == "**FAIL** (0/2 seeds)"
    assert control[VERDICT] == "PASS (2/2 seeds)"
    # mean (min to max) over seeds, and bytes per parameter
    assert base["final train loss"] == "0.1500 (0.1000 to 0.2000)"
    assert bf16["test accuracy, %"] == "96.55 (96.00 to 97.10)"
    assert q8["bytes / param"] == "2.00" and bf16["× float32 state"] == "0.50"
    assert q8["Δ train loss vs float32, %"] == "+5.00 (+5.00 to +5.00)"
    assert bf16["Δ test acc. vs float32, points"] == "+0.05 (+0.00 to +0.10)"
    assert "8-bit state: 0 of 1 optimizers pass the check (fail: Adam)" in md
    assert "bfloat16 state: 1 of 1 optimizers pass the check;" in md
    assert "training-loss tolerance: 1 of 2; outside the accuracy tolerance: 0 of 2" in md
    assert "single seeds" in md and "The control itself fails" not in md
    assert "![loss per step](state_loss.png)" in md and "Command: `cmd`" in md


def test_report_with_one_seed_has_no_ranges():
    study = _fabricated(
        losses={"float32": [0.1], "bf16": [0.1], "8bit": [0.1], CONTROL: [0.104]},
        accs={"float32": [0.97], "bf16": [0.97], "8bit": [0.966], CONTROL: [0.97]},
    )
    md = state_study.report(study)
    assert _result(md, "8bit")[VERDICT] == "**FAIL**"
    assert _result(md, "bf16")[VERDICT] == "**PASS**"
    assert _result(md, "float32")["final train loss"] == "0.1000"
    assert "The control itself fails the check for Adam" in md
    assert "## Picture" not in md


# --- the command line ---------------------------------------------------------------------------


def test_cli_runs_on_tiny_idx_files(tmp_path: Path, capsys):
    root = make_mnist(tmp_path / "mnist", {"train": 256, "test": 64})
    out = tmp_path / "out"
    argv = ["state", "--data", str(root), "--out", str(out), "--hidden", "16",
            "--families", "sgd,adam", "--seeds", "1,2", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Adam | 8-bit |" in printed and "wrote " in printed
    md = (out / "state.md").read_text(encoding="utf-8")
    assert md in printed
    assert "AdamW" not in md and "RMSprop" not in md
    assert md.index("| Adam | float32 |") < md.index("| SGD + momentum | float32 |")  # table order
    payload = json.loads((out / "state.json").read_text(encoding="utf-8"))
    assert payload["command"].startswith("python -m pyfastopt.study state --data")
    assert payload["settings"]["seeds"] == [1, 2] and payload["settings"]["hidden"] == [16]
    assert payload["settings"]["train_images"] == 256
    assert [(c["family"], c["state"]) for c in payload["cells"]] == [
        (f, v) for f in ("adam", "sgd") for v in VARIANTS
    ]
    for cell in payload["cells"]:
        assert [r["seed"] for r in cell["runs"]] == [1, 2]
        assert (cell["check"] is None) == (cell["state"] == "float32")
        assert "batch_loss" not in cell["runs"][0]
    pytest.importorskip("matplotlib")
    assert (out / "state_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_options_reach_the_study(monkeypatch, tmp_path: Path):
    seen: list[StateOptions] = []

    def fake_run(options: StateOptions) -> StateOptions:
        seen.append(options)
        return options

    def fake_write(_study: object) -> list[Path]:
        report = tmp_path / "state.md"
        report.write_text("report")
        return [report]

    monkeypatch.setattr(state_study, "run", fake_run)
    monkeypatch.setattr(state_study, "write", fake_write)
    assert cli.main(["state"]) == 0
    assert cli.main(["state", "--quick", "--seeds", "3,1,3", "--no-control", "--epochs", "2"]) == 0
    assert cli.main(["state", "--quick", "--train-size", "500", "--seed", "7"]) == 0
    default, quick, sized = seen
    assert default.seeds == (0,) and default.epochs == 1 and default.threads == 1
    assert default.train_size is None and default.test_size is None
    assert default.hidden == (512, 256) and default.batch_size == 128
    assert default.families == state_study.FAMILIES and default.control
    assert default.out == Path("study-out/state")
    assert quick.train_size == 10000 and quick.test_size == 2000
    assert quick.seeds == (3, 1) and not quick.control and quick.epochs == 2
    assert sized.train_size == 500 and sized.seeds == (7,)


def test_family_table():
    assert [(m.optimizer, m.lr, dict(m.kwargs)) for m in state_study.FAMILIES] == [
        ("Adam", 1e-3, {}),
        ("AdamW", 1e-3, {"weight_decay": 1e-2}),
        ("SGD", 0.05, {"momentum": 0.9}),
        ("RMSprop", 1e-3, {}),
    ]
    assert dict(state_study.STATES) == {"float32": None, "bf16": torch.bfloat16, "8bit": "8bit"}


# --- errors ------------------------------------------------------------------------------------


def test_missing_data_is_a_clear_error(tmp_path: Path, capsys):
    code = cli.main(["state", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("pyfastopt-study state: error:")
    assert "MNIST" in line and str(tmp_path) in line
    assert not (tmp_path / "o").exists()


def test_unset_data_names_the_environment_variable(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert cli.main(["state", "--quick", "--out", str(tmp_path / "o")]) == 2
    assert ENV_VAR in _one_error_line(capsys.readouterr().err)


def test_corrupt_data_is_a_clear_error(tmp_path: Path, capsys):
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
        (tmp_path / stem).write_bytes(b"this is not an IDX file at all")
    assert cli.main(["state", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "IDX" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "bad", [["--seeds", "a,b"], ["--seeds", "-1"], ["--families", "adam,bogus"], ["--epochs", "0"]]
)
def test_bad_arguments_exit_2(bad: list[str], capsys):
    assert cli.main(["state", *bad]) == 2
    assert "error" in capsys.readouterr().err
