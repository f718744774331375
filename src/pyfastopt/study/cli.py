"""``pyfastopt-study`` / ``python -m pyfastopt.study``: the command line of the optimizer study.

``mnist`` trains the MNIST MLP with every method (pyfastopt and torch.optim); ``surfaces`` draws
the methods' paths on 2-D test functions; ``sweep`` re-runs the learning-rate sweep behind the
method table; ``precision`` trains a bfloat16 MLP plainly, with stochastic rounding and with
master weights, against float32; ``state`` trains an MLP with Adam, AdamW, SGD and RMSprop keeping
their state in float32, bfloat16 and 8 bits. Expected failures (bad arguments, no or corrupt
MNIST files, missing matplotlib, an unwritable output folder) end with a one-line message on
stderr and exit code 2, before any training where they can be known then; Ctrl-C with
``interrupted`` and 130 (:func:`pyfastopt.bench._args.guarded`, shared with the benchmarks).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..bench import _args
from ..data import ENV_VAR, MnistFormatError
from . import methods as method_table
from . import mnist_study, precision_study, state_study, surface_study, sweep
from .machine import command_line, machine
from .mnist_run import load_data
from .plots import MissingDependencyError, require_matplotlib
from .surfaces import BY_NAME as SURFACES_BY_NAME

PROG = "pyfastopt-study"

#: What ``--quick`` changes, unless the option is given explicitly.
QUICK_MNIST = {"epochs": 3, "train_size": 10000, "test_size": 2000, "target_loss": 0.3}
FULL_MNIST = {"epochs": 10, "train_size": None, "test_size": None, "target_loss": 0.05}
QUICK_STEPS, FULL_STEPS = 300, 2000
#: What ``--quick`` changes for ``state`` and ``precision``, unless given explicitly.
QUICK_SIZES = state_study.QUICK

_positive = _args.positive_int
#: comma-separated seeds, each 0 to 2**63 - 1, repeats dropped
_seeds = _args.int_list(0, _args.MAX_SEED, unique=True, example="1,2,3")
#: comma-separated hidden sizes (a size may repeat: one layer each)
_sizes = _args.int_list(1, example="512,256")


def _data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="DIR",
        type=_args.input_dir,
        help=f"MNIST IDX folder (default: ${ENV_VAR})",
    )


def _out_option(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=_args.output_dir,
        default=f"study-out/{name}",
        help=f"output folder, created if missing (default study-out/{name})",
    )


def _threads_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--threads", type=_args.threads, default=1, help=text)


def _training_options() -> argparse.ArgumentParser:
    """Options shared by ``mnist`` and ``sweep``."""
    common = argparse.ArgumentParser(add_help=False)
    _data_option(common)
    common.add_argument(
        "--seed", type=_args.seed, default=0, help="weights and batch order (default 0)"
    )
    common.add_argument("--batch-size", type=_positive, default=128)
    common.add_argument("--hidden", type=_positive, default=128, help="hidden units (default 128)")
    common.add_argument("--train-size", type=_positive, help="use the first N training images")
    common.add_argument(
        "--methods",
        type=_args.name_list(method_table.BY_NAME, "method"),
        help="comma-separated subset of " + ",".join(method_table.BY_NAME),
    )
    _threads_option(
        common,
        f"torch (and so pyfastopt) threads during training, 1 to {_args.MAX_THREADS} (default "
        "1: steadier timings on a shared machine)",
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Compare gradient-based optimizers (pyfastopt and torch.optim)."
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{mnist,surfaces,sweep,precision,state}"
    )
    common = _training_options()

    mn = sub.add_parser(
        "mnist",
        parents=[common],
        help="train an MNIST MLP with every method; loss, accuracy, time, pictures",
        description="Train the same MNIST MLP with GD, SGD, momentum, Nesterov, Adagrad, "
        "Adadelta, RMSprop, Adam, AdamW, NAdam, RAdam, Adamax, Adafactor, ASGD, Rprop and "
        "L-BFGS (pyfastopt and torch.optim) and report.",
    )
    _out_option(mn, "mnist")
    mn.add_argument("--epochs", type=_positive, help="epochs (default 10; --quick: 3)")
    mn.add_argument(
        "--quick",
        action="store_true",
        help="small run: 10000 training and 2000 test images, 3 epochs, target loss 0.3",
    )
    mn.add_argument("--no-torch", action="store_true", help="skip the torch.optim comparison runs")
    mn.add_argument(
        "--no-control",
        action="store_true",
        help="skip the control run (torch.optim from weights one ulp away) that measures how "
        "far rounding alone moves a trajectory",
    )
    mn.add_argument(
        "--target-loss",
        type=_args.finite_float(0.0, inclusive=False),
        help="report when each run reaches this training loss (default 0.05; --quick: 0.3)",
    )
    mn.add_argument("--test-size", type=_positive, help="use the first N test images")
    mn.set_defaults(func=_mnist, parser=mn)

    sf = sub.add_parser(
        "surfaces",
        help="draw each method's path on 2-D test functions",
        description="Trace GD, momentum, Nesterov, Adagrad, Adadelta, RMSprop, Adam and AdamW "
        "on Rosenbrock, a saddle and Beale's function; contour plots and a report.",
    )
    _out_option(sf, "surfaces")
    sf.add_argument(
        "--steps",
        type=_positive,
        help=f"steps per path (default {FULL_STEPS}; --quick: {QUICK_STEPS})",
    )
    sf.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps per path")
    sf.add_argument(
        "--functions",
        type=_args.name_list(SURFACES_BY_NAME, "function"),
        help="comma-separated subset of " + ",".join(SURFACES_BY_NAME),
    )
    sf.add_argument("--no-progress", action="store_true", help="no progress bar")
    sf.set_defaults(func=_surfaces, parser=sf)

    sw = sub.add_parser(
        "sweep",
        parents=[common],
        help="re-run the learning-rate sweep behind the method table (pyfastopt only)",
        description="Train each method at its table lr and two half-decade neighbours on "
        "each side; sweep.md lists the training loss per epoch.",
    )
    _out_option(sw, "sweep")
    sw.add_argument("--epochs", type=_positive, default=5, help="epochs per trial (default 5)")
    sw.set_defaults(func=_sweep, parser=sw)

    pr = sub.add_parser(
        "precision",
        help="Adam on a bfloat16 MLP: plain, stochastic rounding, master weights, float32",
        description="Train one MNIST MLP (784-512-256-10) with Adam in float32, in bfloat16, in "
        "bfloat16 with stochastic rounding, in bfloat16 with float32 master weights, and with "
        "torch's fused bfloat16 Adam; final loss, accuracy and time side by side.",
    )
    _data_option(pr)
    _out_option(pr, "precision")
    pr.add_argument("--epochs", type=_positive, default=3, help="epochs (default 3)")
    pr.add_argument(
        "--quick",
        action="store_true",
        help=f"small run: the first {QUICK_SIZES['train_size']} training and "
        f"{QUICK_SIZES['test_size']} test images",
    )
    pr.add_argument(
        "--hidden", type=_sizes, default=(512, 256), help="hidden sizes (default 512,256)"
    )
    pr.add_argument(
        "--lr",
        type=_args.finite_float(0.0, inclusive=False),
        default=1e-3,
        help="Adam's lr, above 0 (default 1e-3)",
    )
    pr.add_argument(
        "--seed", type=_args.seed, default=0, help="weights and batch order (default 0)"
    )
    pr.add_argument("--batch-size", type=_positive, default=128)
    pr.add_argument("--train-size", type=_positive, help="use the first N training images")
    pr.add_argument("--test-size", type=_positive, help="use the first N test images")
    _threads_option(pr, f"torch threads, 1 to {_args.MAX_THREADS} (default 1)")
    pr.add_argument("--no-progress", action="store_true", help="no progress lines")
    pr.set_defaults(func=_precision, parser=pr)

    st = sub.add_parser(
        "state",
        help="Adam, AdamW, SGD, RMSprop with float32, bfloat16 and 8-bit optimizer state",
        description="Train one MNIST MLP (784-512-256-10) with Adam, AdamW, SGD with momentum "
        "and RMSprop, each keeping its state in float32, bfloat16 and 8 bits (state_dtype), "
        "from the same weights on the same batches; final loss, accuracy, state bytes, and "
        "whether the low-memory state stays within 1 % of float32's training loss and 0.3 "
        "points of its test accuracy.",
    )
    _data_option(st)
    _out_option(st, "state")
    st.add_argument("--epochs", type=_positive, default=1, help="epochs (default 1)")
    st.add_argument(
        "--quick",
        action="store_true",
        help=f"small run: the first {QUICK_SIZES['train_size']} training and "
        f"{QUICK_SIZES['test_size']} test images",
    )
    st.add_argument(
        "--seeds",
        "--seed",
        type=_seeds,
        default=(0,),
        metavar="N[,N...]",
        help="comma-separated seeds, each a set of initial weights and a batch order "
        "(default 0); several: mean and range",
    )
    st.add_argument(
        "--families",
        type=_args.name_list(state_study.BY_NAME, "family"),
        help="comma-separated subset of " + ",".join(state_study.BY_NAME),
    )
    st.add_argument(
        "--hidden", type=_sizes, default=(512, 256), help="hidden sizes (default 512,256)"
    )
    st.add_argument("--batch-size", type=_positive, default=128)
    st.add_argument("--train-size", type=_positive, help="use the first N training images")
    st.add_argument("--test-size", type=_positive, help="use the first N test images")
    _threads_option(st, f"torch threads, 1 to {_args.MAX_THREADS} (default 1)")
    st.add_argument(
        "--no-control",
        action="store_true",
        help="skip the control run per family (float32 from weights one ulp away)",
    )
    st.add_argument("--no-progress", action="store_true", help="no progress lines")
    st.set_defaults(func=_state, parser=st)
    return parser


def _pick(given: object, quick: bool, key: str) -> object:
    if given is not None:
        return given
    return (QUICK_MNIST if quick else FULL_MNIST)[key]


def _mnist(args: argparse.Namespace, argv: Sequence[str]) -> list[Path]:
    require_matplotlib()  # fail before training, not after
    options = mnist_study.MnistOptions(
        methods=method_table.select(args.methods),
        out=args.out,
        data=args.data,
        epochs=_pick(args.epochs, args.quick, "epochs"),  # type: ignore[arg-type]
        batch_size=args.batch_size,
        hidden=args.hidden,
        seed=args.seed,
        target_loss=_pick(args.target_loss, args.quick, "target_loss"),  # type: ignore[arg-type]
        train_size=_pick(args.train_size, args.quick, "train_size"),  # type: ignore[arg-type]
        test_size=_pick(args.test_size, args.quick, "test_size"),  # type: ignore[arg-type]
        torch_runs=not args.no_torch,
        control=not args.no_control,
        threads=args.threads,
        show_progress=not args.no_progress,
        command=command_line(argv),
    )
    return mnist_study.write(mnist_study.run(options))


def _surfaces(args: argparse.Namespace, argv: Sequence[str]) -> list[Path]:
    require_matplotlib()
    names = args.functions or list(SURFACES_BY_NAME)
    options = surface_study.SurfaceOptions(
        surfaces=[SURFACES_BY_NAME[n] for n in names],
        out=args.out,
        steps=args.steps or (QUICK_STEPS if args.quick else FULL_STEPS),
        show_progress=not args.no_progress,
        command=command_line(argv),
    )
    return surface_study.write(surface_study.run(options), options)


def _sweep(args: argparse.Namespace, argv: Sequence[str]) -> list[Path]:
    options = sweep.SweepOptions(
        methods=method_table.select(args.methods),
        out=args.out,
        data=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        hidden=args.hidden,
        seed=args.seed,
        train_size=args.train_size,
        threads=args.threads,
        show_progress=not args.no_progress,
        command=command_line(argv),
    )
    data = load_data(options.data, options.train_size, sweep.TEST_SIZE)
    found = sweep.run(options, data)
    return sweep.write(found, options, machine(options.threads, data.source))


def _precision(args: argparse.Namespace, argv: Sequence[str]) -> list[Path]:
    quick = QUICK_SIZES if args.quick else {}
    options = precision_study.PrecisionOptions(
        out=args.out,
        data=args.data,
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        train_size=args.train_size or quick.get("train_size"),
        test_size=args.test_size or quick.get("test_size"),
        threads=args.threads,
        show_progress=not args.no_progress,
        command=command_line(argv),
    )
    data = load_data(options.data, options.train_size, options.test_size)
    results = precision_study.run(options, data)
    info = machine(options.threads, data.source)
    print(precision_study.report(options, results, info))
    return precision_study.write(options, results, info)


def _state(args: argparse.Namespace, argv: Sequence[str]) -> list[Path]:
    quick = QUICK_SIZES if args.quick else {}
    families = args.families or list(state_study.BY_NAME)
    options = state_study.StateOptions(
        out=args.out,
        data=args.data,
        hidden=args.hidden,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=args.seeds,
        train_size=args.train_size or quick.get("train_size"),
        test_size=args.test_size or quick.get("test_size"),
        threads=args.threads,
        families=tuple(f for f in state_study.FAMILIES if f.name in families),
        control=not args.no_control,
        show_progress=not args.no_progress,
        command=command_line(argv),
    )
    written = state_study.write(state_study.run(options))
    print(written[0].read_text(encoding="utf-8"))  # the report
    return written


def main(argv: list[str] | None = None) -> int:
    """Run the study; returns the exit status (0 ok, 2 bad input or missing data, 130 when
    interrupted, 141 when stdout is a pipe closed early)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # the sub-command's usage, not the top-level one
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    start = time.perf_counter()

    def body() -> int:
        written = args.func(args, argv)
        elapsed = time.perf_counter() - start
        print(f"wrote {', '.join(str(p) for p in written)} ({elapsed:.1f} s)")
        return 0

    return _args.guarded(
        f"{PROG} {args.command}",
        body,
        expected=(OSError, MnistFormatError, MissingDependencyError),
    )
