"""``python -m pyfastopt.bench`` run in-process on tiny configurations. No test asserts a
timing: a slow or busy machine must never fail here."""

from __future__ import annotations

import importlib
import json
import sys

import idx_files
import pytest
import torch

from pyfastopt.bench.cli import main
from pyfastopt.bench.impls import unavailable
from pyfastopt.data import ENV_VAR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--quick", "--rounds", "3", "--warmup", "1", "--min-sample-ms", "0", "--no-progress"]
MODELS, OPTIMIZERS = ["fixed-6x16", "mlp-128"], ["adam", "sgd"]
TORCH_IMPLS = ["torch", "torch-foreach", "torch-fused"]


def expected_impls(optimizer: str) -> list[str]:
    return [i for i in [*TORCH_IMPLS, "pyfastopt"] if unavailable(i, optimizer) is None]


@pytest.fixture
def no_mnist(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def run_json(tmp_path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "bench.json"
    rc = main([*QUICK, *args, "--json", str(out)])
    return rc, json.loads(out.read_text()) if out.exists() else {}


def test_reports_every_impl_with_machine_record(tmp_path, capsys, no_mnist):
    md = tmp_path / "bench.md"
    rc, report = run_json(
        tmp_path,
        "--models", ",".join(MODELS),
        "--optimizers", ",".join(OPTIMIZERS),
        "--markdown", str(md),
    )  # fmt: skip
    assert rc == 0
    machine = report["machine"]
    for key in ("cpu", "physical_cores", "logical_cpus", "simd_path", "torch", "pyfastopt"):
        assert key in machine
    assert machine["simd_path"] and machine["torch"] == torch.__version__
    assert machine["torch_threads"] >= 1 and machine["pyfastopt_threads"] >= 1
    assert report["settings"]["interleaved"] is True and report["settings"]["rounds"] == 3

    results = report["results"]
    keys = {(r["optimizer"], r["model"], r["impl"]) for r in results}
    for opt in OPTIMIZERS:
        assert "torch-fused" in expected_impls(opt)  # torch has fused SGD and Adam on CPU
        for model in MODELS:
            for impl in expected_impls(opt):
                assert (opt, model, impl) in keys
    for r in results:
        assert r["median_us"] > 0 and r["min_us"] <= r["median_us"] and r["iqr_us"] >= 0
        assert r["params"] == (96 if r["model"] == "fixed-6x16" else 101_770)
        assert r["speedup_vs_torch"] > 0 and r["speedup_vs_best_torch"] > 0
        assert r["gbps"] > 0 and r["roofline_us"] > 0 and r["roofline_share"] > 0
        assert r["bytes_per_step"] == r["params"] * 4 * (7 if r["optimizer"] == "adam" else 5)
        assert r["parity_ok"] is True and r["parity_steps"] >= 1
        assert r["best_torch_impl"] in TORCH_IMPLS
        if r["impl"] == "torch":
            assert r["speedup_vs_torch"] == pytest.approx(1.0)

    text = md.read_text()
    assert "| optimizer | model | params | impl | median µs |" in text
    assert text.count("| adam | mlp-128 |") == len(expected_impls("adam"))
    assert machine["cpu"] in text and machine["simd_path"] in text

    out = capsys.readouterr().out
    assert "CPU:" in out and "SIMD path" in out and "vs best torch" in out
    assert "not used" in report["machine"]["data"]  # no train-* workload


def test_bf16_rows_check_pyfastopt_against_the_16_bit_reference(tmp_path, no_mnist):
    """bf16 groups: torch's three paths are timed as the baseline (fused SGD, which does not
    update 16-bit parameters, is reported as not run); pyfastopt is checked bit for bit."""
    rc, report = run_json(tmp_path, "--models", "mlp-128:bf16", "--optimizers", "adam,sgd")
    assert rc == 0
    rows = {(r["optimizer"], r["impl"]): r for r in report["results"]}
    for opt in ("adam", "sgd"):
        fast = rows[(opt, "pyfastopt")]
        assert fast["parity_ok"] is True and fast["model"] == "mlp-128:bf16"
        assert fast["bytes_per_step"] == 101_770 * 2 * (7 if opt == "adam" else 5)
        assert rows[(opt, "torch")]["parity_ok"] is None
        assert rows[(opt, "torch-foreach")]["parity_ok"] is None
    assert ("adam", "torch-fused") in rows and ("sgd", "torch-fused") not in rows
    reasons = [s["reason"] for s in report["skipped"] if s["impl"] == "torch-fused"]
    assert any("does not update bfloat16" in r for r in reasons)


def test_plot_is_a_png(tmp_path, no_mnist):
    pytest.importorskip("matplotlib")
    png = tmp_path / "speedups.png"
    rc = main([*QUICK, "--models", "fixed-6x16", "--optimizers", "sgd", "--plot", str(png)])
    assert rc == 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "speedups.png"
    rc = main([*QUICK, "--models", "fixed-6x16", "--optimizers", "sgd", "--plot", str(png)])
    assert rc == 2 and not png.exists()
    assert "matplotlib" in capsys.readouterr().err


def test_training_reports_forward_backward(tmp_path, no_mnist):
    rc, report = run_json(
        tmp_path,
        "--models", "train-32",
        "--optimizers", "adam",
        "--impls", "torch,torch-fused,pyfastopt",
    )  # fmt: skip
    assert rc == 0
    assert report["machine"]["data_real"] is False
    assert "synthetic" in report["machine"]["data"]
    rows = {r["impl"]: r for r in report["results"]}
    assert set(rows) == {"torch", "torch-fused", "pyfastopt", "fwd-bwd-only"}
    for impl in ("torch", "torch-fused", "pyfastopt"):
        assert rows[impl]["train"] is True and rows[impl]["fwd_bwd_us"] > 0
        assert rows[impl]["parity_ok"] is True
    assert rows["fwd-bwd-only"]["fwd_bwd_us"] == rows["fwd-bwd-only"]["median_us"]


def test_data_option_reads_mnist(tmp_path, no_mnist):
    data = idx_files.make_mnist(tmp_path / "mnist" / "MNIST" / "raw", {"train": 2048})
    rc, report = run_json(
        tmp_path, "--models", "train-16", "--optimizers", "sgd", "--impls", "pyfastopt",
        "--data", str(tmp_path / "mnist"),
    )  # fmt: skip
    assert rc == 0
    assert report["machine"]["data_real"] is True
    assert str(data) in report["machine"]["data"]


def test_env_var_names_the_data(tmp_path, monkeypatch):
    idx_files.make_mnist(tmp_path / "mnist", {"train": 2048})
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "mnist"))
    rc, report = run_json(tmp_path, "--models", "train-16", "--optimizers", "sgd")
    assert rc == 0 and report["machine"]["data_real"] is True


def test_missing_data_directory_is_an_error(tmp_path, capsys):
    rc = main([*QUICK, "--models", "train-16", "--data", str(tmp_path / "absent")])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["--models", "mlp-"], ["--optimizers", "no-such-opt"], ["--impls", "jax"], ["--rounds", "0"]],
)
def test_bad_arguments(args, capsys):
    assert main([*QUICK, *args]) == 2
    assert "error" in capsys.readouterr().err


def test_threads_option_is_recorded_and_restored(tmp_path, no_mnist):
    before = torch.get_num_threads()
    rc, report = run_json(
        tmp_path, "--models", "fixed-6x16", "--optimizers", "sgd", "--threads", "1"
    )
    assert rc == 0
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["pyfastopt_threads"] == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("tool", ["lowp", "lowmem", "lbfgs"])
def test_side_tools_refuse_an_unknown_model_as_a_usage_error(tool, capsys):
    module = importlib.import_module(f"pyfastopt.bench.{tool}")
    with pytest.raises(SystemExit) as exc:
        module.main(["--models", "mlp-128,bogus"])
    assert exc.value.code == 2
    assert "unknown model 'bogus'" in capsys.readouterr().err


def test_lowp_times_only_the_implementations_asked_for(capsys):
    from pyfastopt.bench import lowp

    rc = lowp.main(["--models", "fixed-2x64", "--optimizers", "Adam", "--rounds", "1",
                    "--impls", "torch-fused"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    impls = [line.split()[2] for line in out.splitlines()[2:]]
    assert impls == ["torch-fused", "pyfastopt", "roofline"]
    with pytest.raises(SystemExit) as exc:
        lowp.main(["--impls", "torch,bogus"])
    assert exc.value.code == 2 and "bogus" in capsys.readouterr().err
