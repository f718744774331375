"""``python -m pyfastopt.bench`` / ``pyfastopt-bench``: optimizer step throughput against
torch.optim, interleaved in one process, with a streaming roofline measured alongside.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch

import pyfastopt

from .._progress import progress
from . import _args
from .device import gpu_lines, no_gpu_reason
from .impls import IMPLS, get_impl
from .machine import header_lines, machine_record
from .optimizers import OPTIMIZERS, OptimizerSpec, get_optimizer
from .plot import PlotUnavailable, plot_speedups, require_matplotlib
from .report import report_dict, write_json, write_text
from .results import Record, Skipped
from .runner import Settings, run_group
from .table import format_markdown, format_text
from .training import Batches, load_batches
from .workloads import DEFAULT_WORKLOADS, QUICK_WORKLOADS, Workload, fits, workload_list

PROG = "python -m pyfastopt.bench"


class NoDevice(RuntimeError):
    """``--device cuda`` on a machine without a GPU."""


#: (rounds, warm-up rounds, minimum ms per sample) of a normal and a --quick run
FULL = (20, 2, 2.0)
QUICK = (5, 1, 0.2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Time optimizer.step() of pyfastopt against torch.optim (for-loop, foreach, "
        "fused) and DeepSpeed when installed, interleaved in one process, with a streaming "
        "roofline over the same bytes.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"few rounds and the small models only (a run under a minute): "
        f"{', '.join(QUICK_WORKLOADS)}",
    )
    p.add_argument(
        "--optimizers",
        type=_args.name_list(OPTIMIZERS, "optimizer"),
        default=",".join(OPTIMIZERS),
        help="comma-separated, any case (default: %(default)s)",
    )
    p.add_argument(
        "--models",
        type=workload_list,
        default=None,
        help=f"comma-separated workloads (default: {', '.join(DEFAULT_WORKLOADS)}); "
        "forms: mlp-H1-H2, train-H1-H2, small-NxM, fixed-NxM, flat-N, embed-RxD[-P] (a "
        "sparse gradient on P%% of the rows, for SparseAdam) (K/M suffixes); "
        "a step-only workload ending in :bf16 or :fp16 runs on 16-bit parameters",
    )
    p.add_argument(
        "--impls",
        type=_args.name_list(IMPLS, "implementation"),
        default=",".join(IMPLS),
        help="comma-separated implementations (default: %(default)s; "
        "'torch' is always run as the baseline)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where parameters live and steps run (default: %(default)s). cuda: step-only "
        "workloads on the current GPU, timed with CUDA events, interleaved as on the CPU; "
        "pyfastopt runs through its CUDA module (PYFASTOPT_CUDA=1 builds), and is reported as "
        "skipped, with the reason, where that module cannot run. Without a GPU it says so and "
        "exits with status 2",
    )
    p.add_argument(
        "--threads",
        type=_args.threads,
        default=None,
        help="torch.set_num_threads and pyfastopt.set_num_threads, 1 to "
        f"{_args.MAX_THREADS} (default: torch's)",
    )
    p.add_argument(
        "--rounds",
        type=_args.positive_int,
        default=None,
        help=f"timed rounds per candidate (default {FULL[0]}, --quick {QUICK[0]})",
    )
    p.add_argument(
        "--warmup",
        type=_args.non_negative_int,
        default=None,
        help=f"warm-up rounds per candidate (default {FULL[1]}, --quick {QUICK[1]})",
    )
    p.add_argument(
        "--min-sample-ms",
        type=_args.finite_float(0.0),
        default=None,
        help="repeat short steps so that one timing sample lasts at least this long "
        f"(default {FULL[2]:g}, --quick {QUICK[2]:g})",
    )
    p.add_argument(
        "--data",
        type=_args.input_dir,
        default=None,
        help="MNIST directory for the train-* workloads (default: $PYFASTOPT_MNIST, "
        "else synthetic MNIST-shaped batches, as the report then says)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the parity check against torch's for-loop result",
    )
    p.add_argument(
        "--json", metavar="PATH", type=_args.output_file, help="write every record as JSON"
    )
    p.add_argument(
        "--markdown", metavar="PATH", type=_args.output_file, help="write the table as markdown"
    )
    p.add_argument(
        "--plot", metavar="PATH", type=_args.output_file, help="write a PNG bar chart of speedups"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    rounds, warmup, min_ms = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else rounds
    warmup = args.warmup if args.warmup is not None else warmup
    min_ms = args.min_sample_ms if args.min_sample_ms is not None else min_ms
    return Settings(rounds, warmup, min_ms * 1e6, check=not args.no_check, device=args.device)


def _workloads(args: argparse.Namespace) -> list[Workload]:
    if args.models is not None:
        return list(args.models)
    return workload_list(",".join(QUICK_WORKLOADS if args.quick else DEFAULT_WORKLOADS))


def _batches(args: argparse.Namespace, workloads: Sequence[Workload]) -> Batches | None:
    if not any(w.train for w in workloads):
        return None
    return load_batches(args.data)


def _data_note(batches: Batches | None) -> tuple[str, bool | None]:
    if batches is None:
        return "not used (no train-* workload)", None
    return batches.source, batches.real


def _groups(
    specs: Sequence[OptimizerSpec], workloads: Sequence[Workload]
) -> tuple[list[tuple[Workload, OptimizerSpec]], list[Skipped]]:
    """The (workload, optimizer) pairs that run, and the pairs left out (a sparse optimizer on
    dense gradients or the reverse); ValueError when nothing is left to run."""
    groups = [(w, s) for w in workloads for s in specs if fits(s.sparse, w)]
    if not groups:
        raise ValueError(
            "nothing to run: no optimizer of --optimizers steps a workload of --models "
            "(sparseadam steps only the embed-* workloads, every other optimizer only the "
            "others)"
        )
    skipped = [
        Skipped(s.name, w.name, "*", "SparseAdam takes the sparse gradients of embed-* workloads")
        for w in workloads
        for s in specs
        if not fits(s.sparse, w)
    ]
    return groups, skipped


def run(args: argparse.Namespace) -> int:
    """Run the matrix the parsed arguments describe; print and write the reports."""
    settings = _settings(args)
    if settings.device == "cuda":
        why = no_gpu_reason()
        if why:
            raise NoDevice(why)
    specs = [get_optimizer(n) for n in args.optimizers]
    impls = [get_impl(n).name for n in args.impls]
    workloads = _workloads(args)
    if settings.device != "cpu" and any(w.train for w in workloads):
        raise ValueError("--device cuda: the train-* workloads run on the CPU only")
    groups, skipped = _groups(specs, workloads)
    _args.distinct_outputs({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot})
    if args.plot:
        require_matplotlib()
    if args.threads is not None:  # in 1..MAX_THREADS (checked when the arguments were read)
        torch.set_num_threads(args.threads)
        pyfastopt.set_num_threads(args.threads)
    batches = _batches(args, workloads)
    data, real = _data_note(batches)
    machine = machine_record(data, real)
    header = header_lines(machine)
    if settings.device == "cuda":
        machine["gpu"] = gpu_lines()
        header += machine["gpu"]
    print("\n".join(header), flush=True)

    records: list[Record] = []
    for workload, spec in progress(
        groups, total=len(groups), desc="benchmark", enabled=not args.no_progress
    ):
        group = run_group(spec, workload, impls, settings, batches)
        records += group.records
        skipped += group.skipped

    text = format_text(records, skipped)
    print()
    print(text)
    command = _args.command_line("pyfastopt.bench", args.argv)
    meta: dict[str, Any] = {
        "argv": list(args.argv),
        "command": command,
        "interleaved": True,
        "rounds": settings.rounds,
        "warmup": settings.warmup,
        "min_sample_ms": settings.min_sample_ns / 1e6,
        "parity_checked": settings.check,
        "device": settings.device,
        "impls": impls,
        "optimizers": [s.name for s in specs],
        "models": [w.name for w in workloads],
        "optimizer_hparams": {s.name: dict(s.hparams) for s in specs},
    }
    if args.json:
        write_json(args.json, report_dict(machine, meta, records, skipped))
    if args.markdown:
        lines = [*header, f"command: `{command}`"]
        write_text(args.markdown, format_markdown(records, skipped, lines))
    if args.plot:
        plot_speedups(records, args.plot, title=header[0])
    failures = [r for r in records if r.parity_ok is False]
    for r in failures:
        print(
            f"parity FAILED: {r.optimizer} {r.model} {r.impl}: max abs diff "
            f"{r.parity_max_abs:.3g} after {r.parity_steps} steps",
            file=sys.stderr,
        )
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0, 1 when a parity check failed, 2 on bad arguments or when
    ``--device cuda`` finds no GPU (it says so on stderr and runs nothing), 130 when
    interrupted (Ctrl-C), 141 when stdout is a pipe closed early (``| head``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    saved = (torch.get_num_threads(), pyfastopt._config._num_threads)
    try:
        return _args.guarded(
            PROG,
            lambda: run(args),
            expected=(ValueError, OSError, PlotUnavailable, NoDevice),
        )
    finally:
        torch.set_num_threads(saved[0])
        pyfastopt.set_num_threads(saved[1])
