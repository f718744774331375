"""The precision study (``python -m pyfastopt.study precision``) on a small synthetic problem."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pyfastopt.study import cli, precision_study
from pyfastopt.study.mnist_run import MnistData


def _data() -> MnistData:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(784, 10, generator=g)
    x = torch.rand(512, 784, generator=g)
    xt = torch.rand(128, 784, generator=g)
    return MnistData(x, (x @ w).argmax(1), xt, (xt @ w).argmax(1))


def test_every_variant_trains_and_is_reported(tmp_path: Path):
    options = precision_study.PrecisionOptions(
        out=tmp_path / "out", hidden=(32,), epochs=2, batch_size=64, lr=1e-3
    )
    results = precision_study.run(options, data=_data())
    assert [r.name for r in results] == list(precision_study.VARIANTS)
    for r in results:
        assert len(r.train_loss) == 3 and len(r.test_accuracy) == 3
        assert r.train_loss[-1] < r.train_loss[0], r.name  # every variant learns
        assert r.step_seconds > 0 and r.train_seconds >= r.step_seconds
    written = precision_study.write(options, results)
    md = (tmp_path / "out" / "precision.md").read_text()
    for name in precision_study.VARIANTS:
        assert f"| {name} |" in md
    payload = json.loads((tmp_path / "out" / "precision.json").read_text())
    assert [r["name"] for r in payload["results"]] == list(precision_study.VARIANTS)
    assert all(p.exists() for p in written)


def test_bf16_master_weights_keep_float32_state(tmp_path: Path):
    options = precision_study.PrecisionOptions(
        out=tmp_path, hidden=(16,), epochs=1, variants=("bf16+master",)
    )
    (r,) = precision_study.run(options, data=_data())
    assert r.train_loss[-1] < r.train_loss[0]


def test_bad_hidden_sizes_exit_2(capsys):
    assert cli.main(["precision", "--hidden", "a,b", "--out", "x"]) == 2
