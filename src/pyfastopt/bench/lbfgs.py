"""L-BFGS and BFGS against torch.optim.LBFGS: ``python -m pyfastopt.bench.lbfgs``.

Times one L-BFGS iteration on the parameter shapes of the MNIST MLPs: ``step(closure)`` with
``max_iter=1`` and no line search, which evaluates the closure once, updates the memory, computes
the direction (the two-loop recursion over a full history) and adds it to the parameters. The
closure is the same cheap one for both (the gradient of a quadratic with random diagonal
curvature, plus a fresh noise vector each call, so the iterates never converge and every pair
enters the history); its own time is timed apart and subtracted (*iteration* column). Also BFGS,
whose dense inverse Hessian limits it to small problems, on a small MLP beside both L-BFGS.

torch.optim.LBFGS, pyfastopt.LBFGS (and BFGS) run interleaved in one process, each on its own
copy of the parameters with the same closures; medians of ``--rounds`` samples. Before timing,
the two L-BFGS runs are checked to agree after ``PARITY_STEPS`` steps.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence

import torch

import pyfastopt
from pyfastopt.optim.bfgs import MAX_NUMEL as BFGS_MAX_NUMEL

from . import _args
from .harness import Timing, interleaved
from .workloads import Workload, workload_list

PROG = "python -m pyfastopt.bench.lbfgs"

#: steps both L-BFGS runs take from the same start before their parameters are compared
PARITY_STEPS = 12
#: noise vectors the closures cycle through
_POOL = 8
#: the L-BFGS step size: small enough for the noisy quadratic to stay bounded
LR = 0.2

Shapes = Sequence[tuple[int, ...]]


class Problem:
    """Parameters, and a closure giving the gradient of 0.5 * sum(a * (p - c)**2) plus noise."""

    def __init__(self, shapes: Shapes, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        self.curv = [torch.rand(s, generator=g) * 1.5 + 0.5 for s in shapes]
        self.centre = [torch.randn(s, generator=g) for s in shapes]
        self.noise = [[torch.randn(s, generator=g) * 0.1 for s in shapes] for _ in range(_POOL)]
        self.calls = 0

    def closure(self) -> torch.Tensor:
        noise = self.noise[self.calls % _POOL]
        self.calls += 1
        with torch.no_grad():
            for p, a, c, n in zip(self.params, self.curv, self.centre, noise):
                p.grad = torch.addcmul(n, a, p - c)
        return torch.zeros(())


class Run:
    """One optimizer on its own copy of a problem; ``step()`` takes one iteration."""

    def __init__(self, make: Callable[[list], torch.optim.Optimizer], shapes: Shapes) -> None:
        self.problem = Problem(shapes)
        self.opt = make(self.problem.params)

    def step(self) -> None:
        self.opt.step(self.problem.closure)

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.problem.params])


def lbfgs_makers(history: int) -> dict[str, Callable[[list], torch.optim.Optimizer]]:
    kw = {"lr": LR, "max_iter": 1, "history_size": history}
    return {
        "torch LBFGS": lambda ps: torch.optim.LBFGS(ps, **kw),
        "pyfastopt LBFGS": lambda ps: pyfastopt.LBFGS(ps, **kw),
    }


def parity(shapes: Shapes, history: int, steps: int = PARITY_STEPS) -> float:
    """Largest |difference| between torch's and pyfastopt's parameters after ``steps`` steps,
    relative to the largest parameter; raises if it exceeds float32 rounding (1e-4)."""
    runs = [Run(make, shapes) for make in lbfgs_makers(history).values()]
    for _ in range(steps):
        for r in runs:
            r.step()
    a, b = (r.flat() for r in runs)
    diff = float((a - b).abs().max() / a.abs().max())
    if not diff <= 1e-4:
        raise AssertionError(f"pyfastopt.LBFGS left torch's iterates: relative difference {diff}")
    return diff


def time_case(
    makers: dict[str, Callable[[list], torch.optim.Optimizer]],
    shapes: Shapes,
    rounds: int,
    warm_steps: int,
) -> tuple[dict[str, Timing], Timing]:
    """Timings of one step per maker (after ``warm_steps`` steps fill the history), and of the
    closure alone."""
    runs = {name: Run(make, shapes) for name, make in makers.items()}
    for r in runs.values():
        for _ in range(warm_steps):  # the history fills up (a noisy pair may be skipped)
            r.step()
    alone = Problem(shapes)
    candidates: dict[str, Callable[[], object]] = {n: r.step for n, r in runs.items()}
    candidates["closure"] = alone.closure
    timed = interleaved(candidates, rounds=rounds)
    return {n: timed[n] for n in runs}, timed["closure"]


def report(model: str, what: str, timed: dict[str, Timing], closure: Timing, base: str) -> None:
    c = closure.median_ns
    base_net = timed[base].median_ns - c
    for impl, t in timed.items():
        net = t.median_ns - c
        print(
            f"{model:<14} {what:<12} {impl:<18} {t.median_ns / 1e3:>10.1f} {net / 1e3:>11.1f} "
            f"{base_net / net if net > 0 else float('nan'):>7.2f}x"
        )


_models = functools.partial(workload_list, step_only=True, float32_only=True)


def bfgs_workload(text: str) -> Workload | None:
    """``type`` of ``--bfgs-model``: one float32 step-only workload small enough for BFGS's
    dense inverse Hessian, or None for ``''``."""
    if not text.strip():
        return None
    workloads = _models(text)
    if len(workloads) > 1:
        raise argparse.ArgumentTypeError(f"one workload, not {len(workloads)}: {text!r}")
    (workload,) = workloads
    if workload.numel > BFGS_MAX_NUMEL:
        raise argparse.ArgumentTypeError(
            f"{workload.name} has {workload.numel:,} elements; BFGS takes at most "
            f"{BFGS_MAX_NUMEL:,} (pyfastopt.optim.bfgs.MAX_NUMEL)"
        )
    return workload


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--models",
        type=_models,
        default="mlp-128,mlp-512-256",
        help="comma-separated L-BFGS workloads: mlp-H1[-H2...], small-NxM, fixed-NxM, flat-N "
        "(sizes may end in K or M) (default: %(default)s)",
    )
    parser.add_argument(
        "--history",
        type=_args.int_list(1, unique=True, example="10,100"),
        default="10,100",
        help="history sizes, comma-separated, each at least 1 (default: %(default)s)",
    )
    _args.add_rounds(parser)
    parser.add_argument(
        "--bfgs-model",
        type=bfgs_workload,
        default="mlp-8",
        help=f"one workload of at most {BFGS_MAX_NUMEL} elements "
        "(pyfastopt.optim.bfgs.MAX_NUMEL) for BFGS ('' for none; default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _args.guarded(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    print(
        f"torch {torch.__version__}, threads torch {torch.get_num_threads()} pyfastopt "
        f"{pyfastopt.get_num_threads()}, simd {pyfastopt._core.simd_path()}, median of "
        f"{args.rounds} interleaved rounds; one iteration = step(closure), max_iter=1, lr={LR}, "
        "no line search"
    )
    print(
        f"{'model':<14} {'case':<12} {'impl':<18} {'step us':>10} {'iteration us':>11} {'speed':>8}"
    )
    for workload in args.models:
        model, shapes = workload.name, workload.shapes
        for history in args.history:
            diff = parity(shapes, history)
            timed, closure = time_case(lbfgs_makers(history), shapes, args.rounds, history + 5)
            report(model, f"history {history}", timed, closure, "torch LBFGS")
            print(f"{model:<14} {f'history {history}':<12} parity: max relative diff {diff:.1e}")
    if args.bfgs_model is not None:
        workload = args.bfgs_model
        shapes = workload.shapes
        numel = sum(torch.Size(s).numel() for s in shapes)
        makers = {
            **lbfgs_makers(10),
            "pyfastopt BFGS": lambda ps: pyfastopt.BFGS(ps, lr=LR, max_iter=1),
        }
        timed, closure = time_case(makers, shapes, args.rounds, 12)
        report(f"{workload.name} ({numel})", "BFGS/hist 10", timed, closure, "torch LBFGS")
    print("closure alone is subtracted in the iteration column; speed: torch's iteration / each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
