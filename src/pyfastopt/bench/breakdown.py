"""Where the fixed cost of one step goes: ``python -m pyfastopt.bench.breakdown``.

Times ``opt.step()`` of a small parameter set and, separately, its two native pieces: the cached
plan's per-step checks (``Plan.collect``) and the native call without them. The rest is Python.
Best of several repeats of many calls, so on a noisy machine the numbers are lower bounds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import pyfastopt
from pyfastopt import _core


def _best_us(fn: Callable[[], object], calls: int = 20000, repeats: int = 9) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / calls)
    return best / 1000


def breakdown(
    tensors: int = 6, numel: int = 16, calls: int = 20000, repeats: int = 9
) -> dict[str, float]:
    params = [torch.nn.Parameter(torch.randn(numel)) for _ in range(tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = pyfastopt.Adam(params, lr=1e-3)
    opt.step()
    (plan,) = opt._fastopt_plans.values()
    call = plan.single
    group = opt.param_groups[0]
    total = _best_us(opt.step, calls, repeats)
    collect = _best_us(lambda: call.source.collect(group["params"], opt.state), calls, repeats)
    native = _best_us(
        lambda: _core.adam_step(
            call.source, None, None, call.width, 0, False,
            1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 1, 1 << 15,
        ),
        calls,
        repeats,
    )  # fmt: skip
    return {
        "step_us": total,
        "collect_us": collect,
        "native_us": native,
        "python_us": total - collect - native,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyfastopt.bench.breakdown", description=__doc__
    )
    parser.add_argument("--tensors", type=int, default=6)
    parser.add_argument("--numel", type=int, default=16)
    args = parser.parse_args(argv)
    r = breakdown(args.tensors, args.numel)
    print(f"Adam, {args.tensors} tensors x {args.numel} elements, simd={_core.simd_path()}")
    print(f"  opt.step()                 {r['step_us']:6.2f} us")
    print(f"  Plan.collect (checks)      {r['collect_us']:6.2f} us")
    print(f"  native call without checks {r['native_us']:6.2f} us")
    print(f"  Python plumbing            {r['python_us']:6.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
