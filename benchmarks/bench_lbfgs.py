"""One L-BFGS iteration on the MNIST MLPs' parameters: pyfastopt.LBFGS beside torch.optim.LBFGS,
and BFGS on a small MLP (its dense inverse Hessian limits it to small problems).

Each case first checks that pyfastopt's iterates follow torch's (``bench.lbfgs.parity``), then
times ``step(closure)`` with ``max_iter=1``, a full history and the benchmark's cheap closure
(the gradient of a noisy quadratic: ``python -m pyfastopt.bench.lbfgs`` subtracts its time).
"""

from __future__ import annotations

import pytest
import torch

from pyfastopt.bench.lbfgs import Run, lbfgs_makers, parity
from pyfastopt.bench.workloads import parse_workload
from pyfastopt.optim.bfgs import MAX_NUMEL

# (workload, history): torch's default history of 100 on the small MLP only (filling it takes
# 100 iterations, which the suite pays even with timing off); the CLI times both on both
CASES = (("mlp-128", 10), ("mlp-128", 100), ("mlp-512-256", 10))


@pytest.mark.parametrize("impl", ["torch LBFGS", "pyfastopt LBFGS"])
@pytest.mark.parametrize(("workload", "history"), CASES)
def test_lbfgs_iteration(benchmark, workload, history, impl):
    benchmark.group = f"lbfgs-{workload}-history{history}"
    shapes = parse_workload(workload).shapes
    if impl != "torch LBFGS":
        assert parity(shapes, history, steps=6) < 1e-4
    run = Run(lbfgs_makers(history)[impl], shapes)
    state = run.opt.state[run.problem.params[0]]
    for _ in range(3 * history):  # until the history is full (a noisy pair may be skipped)
        run.step()
        if len(state["old_dirs"]) == history:
            break
    assert len(state["old_dirs"]) == history
    benchmark(run.step)
    assert torch.isfinite(run.flat()).all()


def test_bfgs_iteration(benchmark):
    benchmark.group = "bfgs-mlp-8"
    shapes = parse_workload("mlp-8").shapes
    assert sum(torch.Size(s).numel() for s in shapes) <= MAX_NUMEL
    import pyfastopt

    run = Run(lambda ps: pyfastopt.BFGS(ps, lr=0.2, max_iter=1), shapes)
    for _ in range(3):
        run.step()
    state = run.opt.state[run.problem.params[0]]
    assert state["H"] is not None and state["H"].dtype == torch.float64
    benchmark.pedantic(run.step, rounds=3, iterations=1)
    assert torch.isfinite(run.flat()).all()
