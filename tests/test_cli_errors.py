"""Careless usage of the command-line tools (``python -m pyfastopt.bench`` and its
sub-benchmarks, ``python -m pyfastopt.study``): bad input is a clear error on stderr with exit
status 2 before any work starts; never a crash, a hang, a traceback or a silently different run.
Ctrl-C is ``interrupted`` and 130; a pipe closed early (``| head``) a quiet 141.

Most tests run the tools in this process on the smallest settings; a few start ``python -m`` in
a subprocess (what a crash or a signal needs). No test asserts a timing, and none needs MNIST:
whether ``PYFASTOPT_MNIST`` is set or not, each test sets or removes it as it needs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import idx_files
import pytest
import torch

from pyfastopt._config import MAX_THREADS
from pyfastopt.bench import _args, breakdown, lbfgs, lowmem, lowp
from pyfastopt.bench import cli as bench_cli
from pyfastopt.bench.workloads import parse_workload
from pyfastopt.data import ENV_VAR
from pyfastopt.study import cli as study_cli
from pyfastopt.study import precision_study, surface_study, sweep
from pyfastopt.study.lockstep import VariantResult
from pyfastopt.study.mnist_run import MnistData, RunResult

FAST = ["--rounds", "1", "--warmup", "0", "--min-sample-ms", "0", "--no-progress"]
TINY = ["--models", "fixed-6x16", "--optimizers", "sgd", "--impls", "torch", *FAST]
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
STUDY_COMMANDS = ("mnist", "sweep", "precision", "state")


def _error_line(err: str, prog: str) -> str:
    """The one error line (after argparse's usage lines, if any); no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith(f"{prog}: error: "), err
    return lines[-1]


def _bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = bench_cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _python_m(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def no_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


# --- 1. thread counts ----------------------------------------------------------------------------


@pytest.mark.parametrize("tool", [["pyfastopt.bench"], ["pyfastopt.study", "mnist"]])
def test_a_huge_thread_count_is_refused_not_a_crash(tool: list[str]):
    """100000 threads used to reach torch.set_num_threads and kill the process (exit 139)."""
    done = _python_m(*tool, "--threads", "100000")
    assert done.returncode == 2, done.stderr
    assert f"from 1 to {MAX_THREADS}" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("value", ["0", "-3", str(MAX_THREADS + 1), "two"])
def test_every_tool_checks_threads_with_the_shared_rule(value: str, capsys):
    rc, out, err = _bench(["--threads", value, *TINY], capsys)
    assert rc == 2 and out == ""
    assert "--threads" in _error_line(err, "python -m pyfastopt.bench")
    for command in STUDY_COMMANDS:
        assert study_cli.main([command, "--threads", value]) == 2
        assert "--threads" in _error_line(capsys.readouterr().err, f"pyfastopt-study {command}")


def test_the_thread_limit_is_pyfastopts():
    assert _args.threads(str(MAX_THREADS)) == MAX_THREADS
    with pytest.raises(argparse.ArgumentTypeError):
        _args.threads(str(MAX_THREADS + 1))


# --- 2. output paths, checked before any work ----------------------------------------------------


def _bad_output(kind: str, tmp_path: Path) -> str:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {
        "empty": "",
        "stdout": "-",
        "directory": str(tmp_path),
        "no parent": str(tmp_path / "absent" / "out"),
        "below a file": str(a_file / "out"),
    }[kind]


@pytest.mark.parametrize("option", ["--json", "--markdown", "--plot"])
@pytest.mark.parametrize("kind", ["empty", "stdout", "directory", "no parent", "below a file"])
def test_bench_outputs_are_checked_before_the_run(option, kind, tmp_path, capsys):
    path = _bad_output(kind, tmp_path)
    rc, out, err = _bench([*TINY, option, path], capsys)
    assert rc == 2
    assert out == ""  # not even the header: nothing ran
    assert option in _error_line(err, "python -m pyfastopt.bench")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.skipif(ROOT, reason="root may write anywhere")
def test_bench_output_in_an_unwritable_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    rc, out, err = _bench([*TINY, "--json", str(locked / "b.json")], capsys)
    assert rc == 2 and out == "" and "not writable" in err


def test_bench_outputs_naming_one_file_twice(tmp_path, capsys):
    same = str(tmp_path / "out")
    rc, out, err = _bench([*TINY, "--json", same, "--markdown", same], capsys)
    assert rc == 2 and out == ""
    assert "same file" in _error_line(err, "python -m pyfastopt.bench")


@pytest.mark.parametrize("command", STUDY_COMMANDS + ("surfaces",))
@pytest.mark.parametrize("kind", ["empty", "a file", "below a file"])
def test_study_out_is_checked_before_training(command, kind, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    out = {"empty": "", "a file": str(a_file), "below a file": str(a_file / "sub")}[kind]
    assert study_cli.main([command, "--out", out]) == 2
    assert "--out" in _error_line(capsys.readouterr().err, f"pyfastopt-study {command}")
    assert a_file.read_text() == "x"


@pytest.mark.skipif(ROOT, reason="root may write anywhere")
def test_study_out_in_an_unwritable_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert study_cli.main(["surfaces", "--out", str(locked / "new")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_study_creates_a_nested_out_folder(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "a" / "b" / "c"
    argv = ["surfaces", "--steps", "5", "--functions", "saddle", "--no-progress", "--out", str(out)]
    assert study_cli.main(argv) == 0
    assert (out / "report.md").is_file() and (out / "saddle.png").is_file()


@pytest.mark.parametrize("command", ["mnist", "sweep", "precision", "state"])
def test_an_empty_data_folder_name_is_not_the_current_folder(command, capsys):
    assert study_cli.main([command, "--data", ""]) == 2
    assert "--data" in _error_line(capsys.readouterr().err, f"pyfastopt-study {command}")


def test_bench_empty_data_name(capsys):
    rc, out, err = _bench([*TINY, "--data", ""], capsys)
    assert rc == 2 and out == "" and "--data" in err


# --- 3. Ctrl-C, closed pipes, atomic outputs -----------------------------------------------------


def _sigint_as_a_terminal_sends_it() -> None:
    """In the child before exec: SIGINT's default disposition. A process started in the
    background by a shell without job control (``cmd &`` in a script, nohup, some CI runners)
    inherits SIGINT ignored, and Python then ignores Ctrl-C too, as it should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handling in this process for the test (see above), restored after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_the_bench_is_one_line_and_130(tmp_path):
    """A real SIGINT once the run is under way (the header is out; rounds without end)."""
    js = tmp_path / "b.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyfastopt.bench", "--models", "fixed-6x16", "--optimizers",
         "sgd", "--impls", "torch", "--rounds", "1000000000", "--warmup", "0",
         "--min-sample-ms", "0", "--no-progress", "--json", str(js)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_sigint_as_a_terminal_sends_it,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("CPU:")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["python -m pyfastopt.bench: interrupted"]
    assert list(tmp_path.iterdir()) == []  # no output, whole or partial


def _swallowed_sigint() -> None:
    """A real SIGINT to this process, swallowed as careless code swallows it."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000_000):  # the handler runs at the next bytecode boundaries
            pass
    except BaseException:  # noqa: BLE001, S110  (the point: third-party code doing this)
        pass


def test_a_ctrl_c_that_code_swallows_is_raised_again_by_the_loops(capsys, python_sigint):
    """Python raises a SIGINT as a KeyboardInterrupt in whatever code runs; code that swallows
    exceptions (a C extension clearing a Python call's error, a bare except) can lose it. Under
    the tools' guard the handler also records it and the loops (the benchmark's rounds, the
    progress iterator) raise it again: the tool stops with its own line and 130."""
    from pyfastopt.bench.harness import interleaved

    calls = []

    def careless() -> None:
        calls.append(1)
        if len(calls) == 3:
            _swallowed_sigint()

    rc = _args.guarded(
        "tool", lambda: len(interleaved({"a": careless}, rounds=2000, min_sample_ns=0))
    )
    assert rc == 130 and len(calls) < 10
    assert capsys.readouterr().err == "tool: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    from pyfastopt._progress import progress

    seen = []

    def study() -> int:
        for i in progress(range(2000), enabled=False):
            seen.append(i)
            if i == 2:
                _swallowed_sigint()
        return 0

    assert _args.guarded("tool", study) == 130 and seen == [0, 1, 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigint_handler_of_the_program_is_left_alone(python_sigint):
    got = []
    previous = signal.signal(signal.SIGINT, lambda *a: got.append(a[0]))
    try:
        assert _args.guarded("tool", lambda: os.kill(os.getpid(), signal.SIGINT) or 0) == 0
        assert got == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_an_exec_still_exits_130(tmp_path):
    """A Ctrl-C that lands in an ``exec`` of source text (dataclasses' methods, during one of
    torch's lazy imports) once made ``python -m`` die by SIGINT after the tool handled it."""
    (tmp_path / "interrupted_tool.py").write_text(
        "import sys\n"
        "from pyfastopt.bench import _args\n"
        "sys.exit(_args.guarded('tool', lambda: exec('raise KeyboardInterrupt')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "interrupted_tool"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == ["tool: interrupted"]


def test_ctrl_c_in_the_bench_run(monkeypatch, capsys):
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_cli, "run_group", interrupt)
    before = torch.get_num_threads()
    rc, _, err = _bench([*TINY, "--threads", "1"], capsys)
    assert rc == 130 and err.strip() == "python -m pyfastopt.bench: interrupted"
    assert torch.get_num_threads() == before  # the thread setting is restored


@pytest.mark.parametrize(
    ("module", "target", "argv"),
    [
        (lowp, "interleaved", ["--models", "fixed-2x16", "--optimizers", "sgd", "--rounds", "1"]),
        (lowmem, "interleaved", ["--models", "fixed-2x16", "--optimizers", "sgd", "--others", ""]),
        (lbfgs, "parity", ["--models", "fixed-2x16", "--history", "2", "--bfgs-model", ""]),
        (breakdown, "breakdown", ["--tensors", "2", "--numel", "4"]),
    ],
    ids=["lowp", "lowmem", "lbfgs", "breakdown"],
)
def test_ctrl_c_in_a_sub_benchmark(module, target, argv, monkeypatch, capsys):
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(module, target, interrupt)
    assert module.main(argv) == 130
    assert capsys.readouterr().err.strip() == f"{module.PROG}: interrupted"


def test_ctrl_c_in_the_study(monkeypatch, tmp_path, capsys):
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(surface_study, "run", interrupt)
    monkeypatch.setattr(study_cli, "require_matplotlib", lambda: None)
    assert study_cli.main(["surfaces", "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err.strip() == "pyfastopt-study surfaces: interrupted"


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text("old")

    def interrupt(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_args.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _args.write_json(path, {"new": 1})
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_bench_writes_through_the_atomic_helper(tmp_path, monkeypatch, capsys, no_mnist):
    def interrupt(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_args.os, "replace", interrupt)
    rc, _, err = _bench([*TINY, "--json", str(tmp_path / "b.json")], capsys)
    assert rc == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "tool",
    [["pyfastopt.bench", *TINY], ["pyfastopt.bench.breakdown", "--tensors", "1", "--numel", "1"]],
    ids=["bench", "breakdown"],
)
def test_a_closed_pipe_is_a_quiet_exit(tool: list[str]):
    """``... | head``: the reader is gone before the first line; no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *tool], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the tool (still importing torch) writes anything
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == _args.EXIT_BROKEN_PIPE, err
    assert err == ""


# --- 4. argument errors are usage errors, not tracebacks ------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ["--min-sample-ms", "inf"],
        ["--min-sample-ms", "nan"],
        ["--min-sample-ms", "-1"],
        ["--models", "train-0"],
        ["--warmup", "-1"],
        ["--rounds", "x"],
        ["--optimizers", "Foo"],
    ],
)
def test_bench_usage_errors(bad, capsys):
    rc, out, err = _bench([*TINY, *bad], capsys)
    assert rc == 2 and out == ""
    assert bad[0] in _error_line(err, "python -m pyfastopt.bench")


@pytest.mark.parametrize(
    ("module", "bad"),
    [
        (lowp, ["--optimizers", "Foo"]),
        (lowp, ["--optimizers", ""]),
        (lowp, ["--rounds", "0"]),
        (lowp, ["--impls", ""]),
        (lowp, ["--models", "train-16"]),
        (lowp, ["--models", "fixed-2x16:fp16", "--dtype", "bf16"]),
        (lowmem, ["--optimizers", "Foo"]),
        (lowmem, ["--optimizers", ","]),
        (lowmem, ["--rounds", "0"]),
        (lowmem, ["--models", "mlp-16:bf16"]),
        (lowmem, ["--others", "foo"]),
        (lbfgs, ["--rounds", "0"]),
        (lbfgs, ["--history", "abc"]),
        (lbfgs, ["--history", "0"]),
        (lbfgs, ["--history", "-5"]),
        (lbfgs, ["--history", ""]),
        (lbfgs, ["--bfgs-model", "mlp-512"]),
        (lbfgs, ["--bfgs-model", "mlp-8,small-2x10"]),
        (lbfgs, ["--models", "mlp-128:bf16"]),
        (breakdown, ["--tensors", "0"]),
        (breakdown, ["--tensors", "-2"]),
        (breakdown, ["--numel", "-1"]),
        (breakdown, ["--optimizer", "Foo"]),
    ],
)
def test_sub_benchmark_usage_errors(module, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(bad)
    assert exc.value.code == 2
    _error_line(capsys.readouterr().err, module.PROG)


def test_sub_benchmarks_take_names_in_any_case():
    assert lowp.build_parser().parse_args(["--optimizers", "sgd,ADAM,SGD"]).optimizers == [
        "SGD",
        "Adam",
    ]
    assert lowp.build_parser().parse_args(["--impls", "Torch-Fused"]).impls == ["torch-fused"]
    assert lowmem.build_parser().parse_args(["--optimizers", "adamw"]).optimizers == ["AdamW"]
    parsed = lbfgs.build_parser().parse_args(["--history", "3,3,1", "--bfgs-model", ""])
    assert parsed.history == (3, 1) and parsed.bfgs_model is None
    assert lbfgs.build_parser().parse_args([]).bfgs_model.name == "mlp-8"
    # a 16-bit model agreeing with --dtype is fine, and labelled as what runs
    args = lowp.build_parser().parse_args(["--models", "fixed-2x16:fp16", "--dtype", "fp16"])
    assert args.models[0].name == "fixed-2x16:fp16"


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (lowp, ["Adadelta", "torch-fused", "pyfastopt-sr", "default"]),
        (lowmem, ["RMSprop", "bitsandbytes, torchao", "default"]),
        (lbfgs, ["8192", "default"]),
        (breakdown, ["Adadelta", "default"]),
    ],
)
def test_sub_benchmark_help_lists_names_and_defaults(module, names, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in names:
        assert name in text


@pytest.mark.parametrize(
    "bad",
    [
        ["mnist", "--seed", str(2**64)],
        ["mnist", "--seed", "-1"],
        ["sweep", "--seed", str(2**63)],
        ["precision", "--seed", str(2**70)],
        ["state", "--seeds", f"1,{2**64}"],
        ["precision", "--lr", "-1"],
        ["precision", "--lr", "nan"],
        ["precision", "--lr", "inf"],
        ["precision", "--lr", "0"],
        ["mnist", "--target-loss", "nan"],
        ["precision", "--hidden", "512,0"],
    ],
)
def test_study_usage_errors(bad, capsys):
    assert study_cli.main(bad) == 2
    assert bad[1] in _error_line(capsys.readouterr().err, f"pyfastopt-study {bad[0]}")


def test_study_extra_words_get_the_sub_command_usage(capsys):
    assert study_cli.main(["mnist", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: pyfastopt-study mnist")
    assert _error_line(err, "pyfastopt-study mnist").endswith("unrecognized arguments: foo")


# --- 5. empty and degenerate selections ----------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ["--models", ""],
        ["--models", ","],
        ["--optimizers", ""],
        ["--optimizers", ","],
        ["--impls", ""],
        ["--optimizers", "sparseadam", "--models", "fixed-6x16"],
        ["--optimizers", "sgd", "--models", "embed-1Kx4"],
    ],
)
def test_bench_refuses_an_empty_selection(bad, tmp_path, capsys):
    js, md = tmp_path / "b.json", tmp_path / "b.md"
    rc, out, err = _bench([*FAST, "--impls", "torch", *bad, "--json", str(js), "--markdown",
                           str(md)], capsys)  # fmt: skip
    assert rc == 2 and out == ""  # said before any work: no header, no table
    _error_line(err, "python -m pyfastopt.bench")
    assert not js.exists() and not md.exists()


def test_bench_drops_repeated_names(tmp_path, capsys, no_mnist):
    js = tmp_path / "b.json"
    argv = [*FAST, "--optimizers", "sgd,sgd,SGD", "--models", "fixed-6x16,fixed-6x16",
            "--impls", "torch,pyfastopt,PYFASTOPT", "--json", str(js)]  # fmt: skip
    rc, _, _ = _bench(argv, capsys)
    assert rc == 0
    report = json.loads(js.read_text())
    settings = report["settings"]
    assert settings["optimizers"] == ["sgd"] and settings["models"] == ["fixed-6x16"]
    assert settings["impls"] == ["torch", "pyfastopt"]
    assert sorted(r["impl"] for r in report["results"]) == ["pyfastopt", "torch"]


def test_study_drops_repeated_names():
    parser = study_cli.build_parser()
    assert parser.parse_args(["surfaces", "--functions", "saddle,SADDLE,saddle"]).functions == [
        "saddle"
    ]
    assert parser.parse_args(["mnist", "--methods", "adam,gd,adam"]).methods == ["adam", "gd"]
    assert parser.parse_args(["state", "--families", "sgd,sgd"]).families == ["sgd"]


@pytest.mark.parametrize("name", ["flat-0", "fixed-3x0", "small-0x16", "mlp-0", "mlp-16-0",
                                  "train-0", "embed-0x4", "mlp-0:bf16"])  # fmt: skip
def test_models_of_size_zero_are_refused_by_name(name):
    with pytest.raises(ValueError, match="has a size of 0") as info:
        parse_workload(name)
    assert f"model '{name.split(':')[0]}" in str(info.value)


# --- 6. the MNIST folder the user named must exist -----------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "file", "no MNIST inside"])
def test_bench_env_var_naming_no_mnist_is_an_error(kind, tmp_path, monkeypatch, capsys):
    path = tmp_path / "mnist"
    if kind == "file":
        path.write_text("x")
    elif kind == "no MNIST inside":
        path.mkdir()
    monkeypatch.setenv(ENV_VAR, str(path))
    js = tmp_path / "b.json"
    rc, out, err = _bench([*FAST, "--models", "train-16", "--optimizers", "sgd", "--json",
                           str(js)], capsys)  # fmt: skip
    assert rc == 2 and out == "" and not js.exists()  # not a silent synthetic run
    line = _error_line(err, "python -m pyfastopt.bench")
    assert str(path) in line
    if kind == "file":
        assert "is a file, not a directory" in line


def test_bench_data_option_naming_a_file(tmp_path, capsys):
    a_file = tmp_path / "mnist.gz"
    a_file.write_text("x")
    rc, out, err = _bench([*TINY, "--data", str(a_file)], capsys)
    assert rc == 2 and out == ""
    assert "is a file, not a directory" in _error_line(err, "python -m pyfastopt.bench")


@pytest.mark.parametrize("command", ["mnist", "sweep", "precision", "state"])
def test_study_data_naming_a_file_or_nothing(command, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "mnist.gz"
    a_file.write_text("x")
    assert study_cli.main([command, "--data", str(a_file)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    monkeypatch.setattr(study_cli, "require_matplotlib", lambda: None)
    out = tmp_path / "out"
    assert study_cli.main([command, "--no-progress", "--out", str(out)]) == 2
    assert f"{ENV_VAR}={tmp_path / 'absent'}" in _error_line(
        capsys.readouterr().err, f"pyfastopt-study {command}"
    )
    assert not out.exists()


# --- 7. strict JSON ------------------------------------------------------------------------------


def _strict(text: str) -> object:
    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": (2, {"d": math.nan})}
    assert _strict(_args.dumps_json(value)) == {"a": None, "b": [None, None, 1.5],
                                                "c": [2, {"d": None}]}  # fmt: skip


def _diverged() -> VariantResult:
    return VariantResult("bf16", [2.3, math.nan], [0.1, math.nan], 0.5, 1.0, [math.inf])


def test_precision_json_is_strict(tmp_path):
    options = precision_study.PrecisionOptions(out=tmp_path, lr=1e38, command="cmd")
    written = precision_study.write(options, [_diverged()])
    payload = _strict((tmp_path / "precision.json").read_text())
    assert payload["results"][0]["train_loss"] == [2.3, None]
    assert payload["lr"] == 1e38
    assert all(p.exists() for p in written)


def test_sweep_json_is_strict_and_says_where_it_came_from(tmp_path):
    method = study_cli.method_table.BY_NAME["sgd"]
    runs = [RunResult("sgd", "pyfastopt", lr, [2.3, math.nan], [0.1, math.nan], diverged=True)
            for lr in (0.1, 0.3)]  # fmt: skip
    options = sweep.SweepOptions([method], tmp_path, command="python -m pyfastopt.study sweep")
    sweep.write({"sgd": runs}, options)
    payload = _strict((tmp_path / "sweep.json").read_text())
    assert payload["command"] == "python -m pyfastopt.study sweep"
    assert payload["machine"]["torch"] == torch.__version__
    assert payload["runs"]["sgd"][0]["train_loss"] == [2.3, None]


def test_bench_json_is_strict(tmp_path):
    from pyfastopt.bench.report import write_json

    write_json(tmp_path / "b.json", {"results": [{"parity_max_abs": math.nan}]})
    assert _strict((tmp_path / "b.json").read_text()) == {"results": [{"parity_max_abs": None}]}


# --- 8. provenance -------------------------------------------------------------------------------


def test_bench_markdown_records_the_command(tmp_path, capsys, no_mnist):
    md = tmp_path / "b.md"
    rc, _, _ = _bench([*TINY, "--markdown", str(md)], capsys)
    assert rc == 0
    text = md.read_text()
    assert "command: `python -m pyfastopt.bench --models fixed-6x16" in text


def _tiny_mnist(tmp_path: Path) -> Path:
    return idx_files.make_mnist(tmp_path / "mnist", {"train": 128, "test": 32})


def test_precision_cli_records_command_machine_and_mnist(tmp_path, capsys):
    root = _tiny_mnist(tmp_path)
    out = tmp_path / "out"
    argv = ["precision", "--data", str(root), "--out", str(out), "--hidden", "8",
            "--epochs", "1", "--batch-size", "64", "--quick", "--no-progress"]  # fmt: skip
    assert study_cli.main(argv) == 0
    payload = _strict((out / "precision.json").read_text())
    assert payload["command"].startswith("python -m pyfastopt.study precision --data")
    assert payload["machine"]["mnist"] == str(root.absolute())
    assert payload["machine"]["torch"] == torch.__version__
    assert f"MNIST: {root.absolute()}" in (out / "precision.md").read_text()
    assert "precision, epochs" not in capsys.readouterr().err  # --no-progress


def test_state_cli_records_the_mnist_folder(tmp_path):
    root = _tiny_mnist(tmp_path)
    out = tmp_path / "out"
    argv = ["state", "--data", str(root), "--out", str(out), "--hidden", "8",
            "--families", "sgd", "--no-control", "--no-progress"]  # fmt: skip
    assert study_cli.main(argv) == 0
    payload = _strict((out / "state.json").read_text())
    assert payload["machine"]["mnist"] == str(root.absolute())
    assert f"MNIST: {root.absolute()}" in (out / "state.md").read_text()


# --- 9. the rest ---------------------------------------------------------------------------------


def test_precision_quick_and_no_progress_reach_the_options(monkeypatch, tmp_path):
    seen: list[precision_study.PrecisionOptions] = []

    def fake_run(options, data=None):
        seen.append(options)
        return []

    data = MnistData(torch.zeros(4, 784), torch.zeros(4), torch.zeros(2, 784), torch.zeros(2))
    monkeypatch.setattr(study_cli, "load_data", lambda *a: data)
    monkeypatch.setattr(precision_study, "run", fake_run)
    monkeypatch.setattr(precision_study, "report", lambda *a: "")
    monkeypatch.setattr(precision_study, "write", lambda *a: [])
    assert study_cli.main(["precision", "--quick", "--no-progress"]) == 0
    assert study_cli.main(["precision", "--quick", "--train-size", "50"]) == 0
    quick, sized = seen
    assert quick.train_size == 10000 and quick.test_size == 2000 and not quick.show_progress
    assert sized.train_size == 50 and sized.show_progress


def test_outputs_follow_links_and_write_special_files_in_place(tmp_path):
    """An output path that is a symbolic link keeps the link (its target is replaced); one that
    is not a regular file (a FIFO, /dev/null) is written in place, never renamed over: as root
    the rename used to turn /dev/null or /dev/full into a plain file."""
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    _args.atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    _args.atomic_write(fifo, "through the fifo")
    assert reader.communicate(timeout=30)[0] == b"through the fifo"
    assert fifo.is_fifo()
    _args.atomic_write(os.devnull, "discarded")
    assert Path(os.devnull).is_char_device()


def test_a_workload_larger_than_memory_is_a_one_line_error(capsys):
    assert bench_cli.main(["--models", "flat-99999999999", "--optimizers", "adam", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "not enough memory" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        breakdown.main(["--tensors", "100000000", "--numel", "100000000"])
    assert info.value.code == 2 and "GiB of memory" in capsys.readouterr().err
