"""Where the fixed cost of one step goes: ``python -m pyfastopt.bench.breakdown``.

Times ``opt.step()`` of a small parameter set and, separately, its native pieces: the cached
plan's per-step checks (``Plan.collect``: every tensor's signature re-read, the state objects'
identity, the gradients), the native call without them (which includes the version-counter bump)
and the bump alone; the rest is Python. Then the cost of each signature read, per tensor. Best of
several repeats of many calls, so on a noisy machine the numbers are lower bounds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import pyfastopt
from pyfastopt import _core
from pyfastopt.optim._base import _bump_versions


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyfastopt.bench.breakdown", description=__doc__
    )
    parser.add_argument("--tensors", type=int, default=6)
    parser.add_argument("--numel", type=int, default=16)
    names = ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adadelta"]
    parser.add_argument("--optimizer", default="Adam", choices=names)
    args = parser.parse_args(argv)
    r = breakdown(args.tensors, args.numel, args.optimizer)
    print(
        f"{args.optimizer}, {args.tensors} tensors x {args.numel} elements, "
        f"{int(r['tensors_checked'])} tensors checked per step, simd={_core.simd_path()}"
    )
    print(f"  opt.step()                          {r['step_us']:6.2f} us")
    print(f"  Plan.collect (every check)          {r['collect_us']:6.2f} us")
    print(f"  native call incl. version bump      {r['native_us']:6.2f} us")
    print(f"    of which the version bump         {r['bump_us']:6.2f} us")
    print(f"  Python plumbing                     {r['python_us']:6.2f} us")
    print("  one signature read, per tensor:")
    for key, value in r.items():
        if key.startswith("read_"):
            print(f"    {key[5:-3]:<34}{value:6.1f} ns")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
