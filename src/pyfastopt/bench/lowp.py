"""bfloat16/float16 steps against torch's: ``python -m pyfastopt.bench.lowp``.

For each optimizer and MNIST MLP, times ``opt.step()`` on 16-bit parameters with fixed 16-bit
gradients: torch's for-loop, foreach and fused implementations, pyfastopt (torch's layout),
pyfastopt with master weights and with stochastic rounding, and a streaming kernel moving the
bytes pyfastopt's default step moves (the roofline). All interleaved in one process; medians
of ``--rounds`` samples; ratios against the best torch implementation; the share of the
streaming rate as the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable, Sequence

import torch

import pyfastopt

from . import _args
from .harness import Timing, interleaved
from .roofline import streaming_kernel
from .workloads import workload_list

PROG = "python -m pyfastopt.bench.lowp"

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: bytes a step moves per element in torch's layout (16-bit param, grad and state):
#: param read+write, grad read, each buffer read+write
BUFFERS = {"Adam": 2, "AdamW": 2, "SGD": 1, "Adagrad": 1, "RMSprop": 1, "Adadelta": 2}
KW = {
    "Adam": {"lr": 1e-3},
    "AdamW": {"lr": 1e-3},
    "SGD": {"lr": 1e-3, "momentum": 0.9},
    "Adagrad": {"lr": 1e-3},
    "RMSprop": {"lr": 1e-3},
    "Adadelta": {"lr": 1e-3},
}
FUSED_OK = ("Adam", "AdamW")  # torch's fused SGD and Adagrad are wrong for 16-bit parameters


Shapes = Sequence[tuple[int, ...]]


def _step_of(
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    shapes: Shapes,
    dtype: torch.dtype,
) -> Callable[[], object]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-2).to(dtype)
    opt = make(params)
    opt.step()
    return opt.step


#: the implementations timed, in the order they run in each round
IMPLS = ("torch", "torch-foreach", "torch-fused", "pyfastopt", "pyfastopt-master", "pyfastopt-sr")


def candidates(
    name: str, shapes: Shapes, dtype: torch.dtype, impls: Sequence[str] = IMPLS
) -> dict[str, Callable[[], object]]:
    """The steps to time (those of ``impls`` that apply; pyfastopt's always) and the roofline.
    Only these are built: an implementation left out allocates and runs nothing."""
    kw = KW[name]
    tcls, fcls = getattr(torch.optim, name), getattr(pyfastopt, name)
    makers: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
        "torch": lambda ps: tcls(ps, foreach=False, **kw),
        "torch-foreach": lambda ps: tcls(ps, foreach=True, **kw),
    }
    if name in FUSED_OK:
        makers["torch-fused"] = lambda ps: tcls(ps, fused=True, **kw)
    makers["pyfastopt"] = lambda ps: fcls(ps, **kw)
    makers["pyfastopt-master"] = lambda ps: fcls(ps, master_weights=True, **kw)
    if dtype == torch.bfloat16:
        makers["pyfastopt-sr"] = lambda ps: fcls(ps, stochastic_rounding=True, **kw)
    keep = set(impls) | {"pyfastopt"}
    out = {k: _step_of(make, shapes, dtype) for k, make in makers.items() if k in keep}
    numel = sum(torch.Size(s).numel() for s in shapes)
    moved = numel * 2 * (2 + 1 + 2 * BUFFERS[name])
    out["roofline"] = streaming_kernel(moved)
    return out


def roofline_share(roofline: Timing, step: Timing) -> float:
    """The median over rounds of (streaming time / step time), each pair timed back to back:
    steadier than a ratio of medians when other tenants' load comes in bursts."""
    return statistics.median(r / s for r, s in zip(roofline.samples_ns, step.samples_ns))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--models",
        type=functools.partial(workload_list, step_only=True),
        default="mlp-128,mlp-512-256,mlp-2048-2048",
        help="comma-separated workloads: mlp-H1[-H2...], small-NxM, fixed-NxM, flat-N (sizes may "
        "end in K or M), optionally ending in the --dtype's :bf16 or :fp16 (default: "
        "%(default)s)",
    )
    _args.add_optimizers(parser, KW, "Adam,AdamW,SGD")
    parser.add_argument(
        "--dtype",
        default="bf16",
        choices=sorted(DTYPES),
        help="parameter, gradient and state dtype (default: %(default)s)",
    )
    _args.add_rounds(parser)
    parser.add_argument(
        "--impls",
        type=_args.name_list(IMPLS, "implementation"),
        default=",".join(IMPLS),
        help=f"implementations to time, comma-separated, from {', '.join(IMPLS)} (default: all; "
        "pyfastopt and the roofline always run); the others are not even built, which saves "
        "memory and time at large sizes",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype]
    for w in args.models:
        if w.lowp and w.dtype != dtype:
            parser.error(
                f"--models: {w.name!r} names another dtype than --dtype {args.dtype}: drop "
                "its suffix or change --dtype"
            )
    return _args.guarded(PROG, lambda: _run(args, dtype))


def _run(args: argparse.Namespace, dtype: torch.dtype) -> int:
    print(
        f"torch {torch.__version__}, threads torch {torch.get_num_threads()} pyfastopt "
        f"{pyfastopt.get_num_threads()}, simd {pyfastopt._core.simd_path()}, {args.dtype}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'optimizer':<9} {'model':<14} {'impl':<17} {'median us':>10} {'vs best torch':>14}")
    for workload in args.models:
        model, shapes = workload.name, workload.shapes
        for name in args.optimizers:
            cands = candidates(name, shapes, dtype, args.impls)
            timed = interleaved(cands, rounds=args.rounds)
            times = {k: v.median_ns / 1e3 for k, v in timed.items()}
            best = min((v for k, v in times.items() if k.startswith("torch")), default=None)
            for impl, us in times.items():
                if impl == "roofline":
                    share = roofline_share(timed["roofline"], timed["pyfastopt"])
                    print(f"{name:<9} {model:<14} {impl:<17} {us:>10.1f} {'':>14} "
                          f"pyfastopt at {share:.0%} of streaming rate")  # fmt: skip
                else:
                    ratio = f"{best / us:>13.2f}x" if best is not None else f"{'':>14}"
                    print(f"{name:<9} {model:<14} {impl:<17} {us:>10.1f} {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
