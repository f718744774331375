"""Where the fixed cost of one step goes: ``python -m pyfastopt.bench.breakdown``.

Times ``opt.step()`` of a small parameter set and, separately, its native pieces: the cached
plan's per-step checks (``Plan.collect``: every tensor's signature re-read, the state objects'
identity, the gradients), the native call without them (which includes the version-counter bump)
and the bump through torch's Python entry point; the rest is Python. Then the cost of each
signature read, per tensor. With the C reader on (``pyfastopt._reader``) the checks and the bump
go through torch's C entry points; ``--python-reader`` times the Python accessors instead. Best
of several repeats of many calls, so on a noisy machine the numbers are lower bounds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import pyfastopt
from pyfastopt import _core, _reader
from pyfastopt.optim._base import _bump_versions

from . import _args

PROG = "python -m pyfastopt.bench.breakdown"
#: the optimizers ``--optimizer`` takes
OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta")


def _best_us(fn: Callable[[], object], calls: int = 20000, repeats: int = 9) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / calls)
    return best / 1000


def breakdown(
    tensors: int = 6, numel: int = 16, optimizer: str = "Adam", calls: int = 20000, repeats: int = 9
) -> dict[str, float]:
    params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = getattr(pyfastopt, optimizer)(params, lr=1e-3)
    opt.step()
    (plan,) = opt._fastopt_plans.values()
    call = plan.single
    group = opt.param_groups[0]
    plan_tensors = list(call.written)
    total = _best_us(opt.step, calls, repeats)
    collect = _best_us(lambda: call.source.collect(group["params"], opt.state), calls, repeats)
    native = _best_us(lambda: opt._native_step(call, None, None, group, 1), calls, repeats)
    bump = _best_us(lambda: _bump_versions(plan_tensors), calls, repeats)
    reads = dict(_core.time_signature_reads(params[0], calls))
    return {
        "tensors_checked": float(len(plan_tensors) + tensors),
        "step_us": total,
        "collect_us": collect,
        "native_us": native,
        "bump_us": bump,
        "python_us": total - collect - native,
        **{f"read_{k}_ns": v for k, v in reads.items()},
    }


def compare_readers(
    tensors: int = 6, numel: int = 16, rounds: int = 7, calls: int = 20000
) -> dict[str, dict[str, float]]:
    """opt.step() of each optimizer with each reader, interleaved in one process: the median
    over ``rounds`` of the best of 3 x ``calls`` steps, in microseconds."""
    setups = {
        "SGD": {"lr": 1e-3},
        "SGD momentum": {"lr": 1e-3, "momentum": 0.9},
        "Adam": {"lr": 1e-3},
        "AdamW": {"lr": 1e-3},
        "Adagrad": {"lr": 1e-3},
        "RMSprop": {"lr": 1e-3},
        "Adadelta": {"lr": 1e-3},
    }
    times: dict[str, dict[str, list[float]]] = {}
    for name, kw in setups.items():
        params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(tensors)]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = getattr(pyfastopt, name.split()[0])(params, **kw)
        runs = times.setdefault(name, {"C": [], "Python": []})
        for _ in range(rounds):
            for reader in ("C", "Python"):
                _reader.use_torch_abi(reader == "C")
                opt.step()  # the general path once, then the plan
                runs[reader].append(_best_us(opt.step, calls, 3))
    _reader.use_torch_abi(True)
    return {n: {k: sorted(v)[len(v) // 2] for k, v in r.items()} for n, r in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--tensors",
        type=_args.positive_int,
        default=6,
        help="parameter tensors (default: %(default)s)",
    )
    parser.add_argument(
        "--numel",
        type=_args.positive_int,
        default=16,
        help="elements per tensor (default: %(default)s)",
    )
    parser.add_argument(
        "--optimizer",
        type=_args.one_name(OPTIMIZERS, "optimizer"),
        default="Adam",
        help=f"any case, one of {', '.join(OPTIMIZERS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--python-reader", action="store_true", help="read metadata through the Python accessors"
    )
    parser.add_argument(
        "--compare-readers",
        action="store_true",
        help="time every optimizer's step with both readers, interleaved",
    )
    args = parser.parse_args(argv)
    need = args.tensors * args.numel * 4 * 5  # float32 parameters, gradients and Adam's state
    memory = _args.physical_memory()
    if memory is not None and need > memory:  # (the OOM killer would end the run instead)
        parser.error(
            f"--tensors {args.tensors} x --numel {args.numel} needs about {need / 2**30:.0f} GiB "
            f"of memory; this machine has {memory / 2**30:.0f} GiB"
        )
    return _args.guarded(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    pyfastopt.set_num_threads(1)
    if args.compare_readers:
        print(f"opt.step(), {args.tensors} tensors x {args.numel} elements, 1 thread, median of 7")
        print(f"{'optimizer':<14}{'C reader':>10}{'Python':>10}  us")
        for name, r in compare_readers(args.tensors, args.numel).items():
            print(f"{name:<14}{r['C']:>10.2f}{r['Python']:>10.2f}")
        return 0
    c_reader = _reader.use_torch_abi(not args.python_reader)
    r = breakdown(args.tensors, args.numel, args.optimizer)
    print(
        f"{args.optimizer}, {args.tensors} tensors x {args.numel} elements, "
        f"{int(r['tensors_checked'])} tensors checked per step, simd={_core.simd_path()}, "
        f"reader={'C' if c_reader else 'Python accessors'}, 1 thread"
    )
    print(f"  opt.step()                          {r['step_us']:6.2f} us")
    print(f"  Plan.collect (every check)          {r['collect_us']:6.2f} us")
    print(f"  native call incl. version bump      {r['native_us']:6.2f} us")
    if c_reader:
        print(f"  (bump via torch._C._increment_version {r['bump_us']:6.2f} us, not used)")
    else:
        print(f"    of which the version bump         {r['bump_us']:6.2f} us")
    print(f"  Python plumbing                     {r['python_us']:6.2f} us")
    print("  one signature read, per tensor:")
    for key, value in r.items():
        if key.startswith("read_"):
            print(f"    {key[5:-3]:<34}{value:6.1f} ns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
