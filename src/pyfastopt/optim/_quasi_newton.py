"""The step of torch.optim.LBFGS with its vector work native, shared by LBFGS and BFGS.

:func:`run_step` is torch.optim.LBFGS.step (torch 2.13) line for line: the same closure protocol,
evaluation counts, step sizes, stopping tests and strong-Wolfe line search, the same scalars as
the same kinds of values (0-d tensors of the parameters' dtype where torch has them, so every
comparison rounds as torch's does). What differs is where the vectors live:

- the gradient of an evaluation stays in the parameters' ``.grad`` (:class:`~._vectors.Grad`)
  and is read there, instead of being concatenated into a new flat tensor each time;
- ``_add_grad`` and ``_directional_evaluate`` write ``p = x + t*d`` into the parameters in one
  native pass; after an evaluation the parameters are put back at ``x`` only when something
  else would see them (torch copies them back after every evaluation, and the next evaluation
  or the step after the search overwrites them at once);
- the direction (for L-BFGS the two-loop recursion) and the products torch takes of it run in
  native passes over all elements (:meth:`~._vectors.Space.direction`, ``Space.run``).

The algorithm-specific part (how the direction is computed and what the state keeps) is a
:class:`Direction`: torch's L-BFGS memory, or BFGS's dense inverse Hessian.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from ._line_search import strong_wolfe
from ._state import to_scalar
from ._vectors import Grad, Space

_Tensor = torch.Tensor


class Direction(Protocol):
    """What an algorithm adds to the shared step."""

    def load(self, state: dict) -> dict:
        """The state entries the step reads (torch's local variables), by name."""

    def compute(self, mem: dict, state: dict, space: Space, g: Grad, group: dict) -> tuple:
        """Set ``mem['d']`` (and ``mem['prev_flat_grad'] = g``) from the gradient ``g`` and the
        memory; returns (g . d, sum |g|, max |d|) as doubles."""

    def store(self, state: dict, mem: dict) -> None:
        """Write the memory back to the state at the end of the step."""


class _Evaluator:
    """``_directional_evaluate`` of the line search: the closure at ``x + t*d``. The first
    evaluation also takes ``x`` (torch's ``_clone_param``), in the same pass."""

    def __init__(self, space: Space, closure: Callable[[], Any]) -> None:
        self.space = space
        self.closure = closure
        self.displaced = False  # params hold x + t*d of a finished evaluation, not x
        self.cloned = False

    def __call__(self, x: _Tensor, t: Any, d: _Tensor) -> tuple[float, Grad]:
        self.displaced = False
        if self.cloned:
            self.space.run(("axpy", self.space, t, d, x))
        else:
            self.space.run(("copy", x, self.space), ("axpy", self.space, t, d, x))
            self.cloned = True
        loss = float(self.closure())
        flat_grad = self.space.grad()
        self.displaced = True
        return loss, flat_grad


class _LineVectors:
    """The vector operations of the line search (``_line_search.Vectors``)."""

    def __init__(self, space: Space, d_norm: _Tensor) -> None:
        self.space = space
        self.d_norm = d_norm

    def dot(self, g: Grad | _Tensor, d: _Tensor) -> _Tensor:
        return scalar(self.space, self.space.run(("dot", g, d))[0])

    def keep(self, g: Grad | _Tensor) -> _Tensor:
        return self.space.keep(g)


def scalar(space: Space, value: float) -> _Tensor:
    """``value`` as the 0-d tensor torch's reduction would have returned."""
    return torch.tensor(value, dtype=space.dtype)


def _max_abs(space: Space, g: Grad | _Tensor) -> _Tensor:
    return scalar(space, space.run(("max_abs", g))[0])


def run_step(
    opt: torch.optim.Optimizer, closure: Callable[[], Any], space: Space, algo: Direction
) -> Any:
    """torch.optim.LBFGS.step over ``space`` (the caller checked the parameter groups, wrapped
    the closure in ``torch.enable_grad`` and runs this under ``torch.no_grad``)."""
    group = opt.param_groups[0]
    lr = to_scalar(group["lr"])
    max_iter = group["max_iter"]
    max_eval = group["max_eval"]
    tolerance_grad = group["tolerance_grad"]
    tolerance_change = group["tolerance_change"]
    line_search_fn = group["line_search_fn"]

    # NOTE: the state is registered for the first param, as torch does
    state = opt.state[space.params[0]]
    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)

    # evaluate initial f(x) and df/dx
    orig_loss = closure()
    loss = float(orig_loss)
    current_evals = 1
    state["func_evals"] += 1

    flat_grad = space.grad()
    opt_cond = _max_abs(space, flat_grad) <= tolerance_grad

    # optimal condition
    if opt_cond:
        return orig_loss

    mem = algo.load(state)

    n_iter = 0
    # optimize for a max of max_iter iterations
    while n_iter < max_iter:
        # keep track of nb of iterations
        n_iter += 1
        state["n_iter"] += 1

        # compute the direction d, prev_flat_grad = flat_grad, and the products taken of them
        gtd, sum_abs_g, max_abs_d = algo.compute(mem, state, space, flat_grad, group)
        d = mem["d"]
        d_norm = scalar(space, max_abs_d)  # d.abs().max()
        mem["prev_loss"] = loss

        # reset initial guess for step size
        if state["n_iter"] == 1:  # noqa: SIM108 (torch's code)
            t = min(1.0, 1.0 / scalar(space, sum_abs_g)) * lr
        else:
            t = lr
        mem["t"] = t

        # directional derivative
        gtd = scalar(space, gtd)  # g * d

        # directional derivative is below tolerance
        if gtd > -tolerance_change:
            break

        # optional line search: user function
        ls_func_evals = 0
        if line_search_fn is not None:
            # perform line search, using user function
            if line_search_fn != "strong_wolfe":
                raise RuntimeError("only 'strong_wolfe' is supported")
            else:
                x_init = space.new()  # _clone_param, as one flat vector (the first evaluation
                evaluate = _Evaluator(space, closure)  # fills it)
                try:
                    loss, flat_grad, t, ls_func_evals = strong_wolfe(
                        evaluate,
                        x_init,
                        t,
                        d,
                        loss,
                        flat_grad,
                        gtd,
                        _LineVectors(space, d_norm),
                        max_ls=max_eval - current_evals,
                    )
                except BaseException:
                    if evaluate.displaced:  # torch's evaluation had put them back at x
                        space.run(("copy", space, x_init))
                    raise
                mem["t"] = t
            # _add_grad(t, d) on the parameters, which torch has put back at x_init, and
            # flat_grad.abs().max() in the same pass
            (max_abs_g,) = space.run(("axpy", space, t, d, x_init), ("max_abs", flat_grad))
            opt_cond = scalar(space, max_abs_g) <= tolerance_grad
        else:
            # no line search, simply move with fixed-step
            space.run(("axpy", space, t, d, space))
            if n_iter != max_iter:
                # re-evaluate function only if not in last iteration
                # the reason we do this: in a stochastic setting,
                # no use to re-evaluate that function here
                with torch.enable_grad():
                    loss = closure()
                loss = float(loss)
                flat_grad = space.grad()
                opt_cond = _max_abs(space, flat_grad) <= tolerance_grad
                ls_func_evals = 1

        # update func eval
        current_evals += ls_func_evals
        state["func_evals"] += ls_func_evals

        ############################################################
        # check conditions
        ############################################################
        if n_iter == max_iter:
            break

        if current_evals >= max_eval:
            break

        # optimal condition
        if opt_cond:
            break

        # lack of progress: d.mul(t).abs().max(), rounding being monotonic
        if (d_norm * t).abs() <= tolerance_change:
            break

        if abs(loss - mem["prev_loss"]) < tolerance_change:
            break

    algo.store(state, mem)

    return orig_loss
