"""BFGS for small problems: a dense inverse-Hessian approximation, L-BFGS's step and line search."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from ..errors import StateError, UnsupportedError
from ._base import step_lock
from ._layout import fits_storage
from ._quasi_newton import run_step
from ._vectors import Grad, Space

_Tensor = torch.Tensor

#: The most elements BFGS takes: its inverse Hessian is a dense float64 matrix of numel**2
#: elements, 512 MiB at 8192, and every iteration reads it five times and writes it three times
#: (matrix-vector products for the update and the direction, three rank-one updates): 4 GiB of
#: memory traffic per iteration at the limit, most of a second on a desktop CPU, where the
#: parameters' own vectors cost nothing. Beyond that, L-BFGS (pyfastopt.LBFGS) is the tool.
MAX_NUMEL = 8192


class BFGS(torch.optim.Optimizer):
    """BFGS with a dense inverse-Hessian approximation, for small problems (at most
    :data:`MAX_NUMEL` elements in all; larger ones raise :class:`~pyfastopt.UnsupportedError`).

    It takes torch.optim.LBFGS's arguments apart from ``history_size`` and runs its step: the
    same closure protocol, evaluation counts, first step size, stopping tests and strong-Wolfe
    line search (``line_search_fn=None | 'strong_wolfe'``); only the direction differs. The
    inverse Hessian ``H`` (float64) starts as the identity, is scaled by ``y.s / y.y`` before its
    first update (Nocedal & Wright, eq. 6.20, as L-BFGS scales its diagonal), and is updated by

        H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T,   rho = 1 / y.s

    whenever the curvature condition ``y.s > 1e-10`` holds (else the pair is skipped, as L-BFGS
    skips it). The direction is ``d = -H g``, rounded to the parameters' dtype.

    State (on the first parameter, like LBFGS): ``func_evals``, ``n_iter``, ``d``, ``t``, ``H``
    (None until the first update), ``prev_flat_grad``, ``prev_loss``. ``H`` stays float64 through
    ``load_state_dict`` even for float32 parameters.

    Parameters must be dense CPU float32/float64 tensors of one dtype, or complex64/complex128
    ones, taken as their real views (``torch.view_as_real``) as LBFGS flattens them.

    Args:
        params (iterable): iterable of parameters to optimize (one parameter group).
        lr (float, optional): learning rate (default: 1)
        max_iter (int, optional): maximal number of iterations per optimization step
            (default: 20)
        max_eval (int, optional): maximal number of function evaluations per optimization
            step (default: max_iter * 1.25).
        tolerance_grad (float, optional): termination tolerance on first order optimality
            (default: 1e-7).
        tolerance_change (float, optional): termination tolerance on function
            value/parameter changes (default: 1e-9).
        line_search_fn (str, optional): either 'strong_wolfe' or None (default: None).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | _Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        line_search_fn: str | None = None,
    ) -> None:
        if isinstance(lr, _Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:  # NaN too
            raise ValueError(f"Invalid learning rate: {lr}")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = {
            "lr": lr,
            "max_iter": max_iter,
            "max_eval": max_eval,
            "tolerance_grad": tolerance_grad,
            "tolerance_change": tolerance_change,
            "line_search_fn": line_search_fn,
        }
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("BFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        _space(self._params)  # refuse what a step would refuse, now

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Perform a single optimization step.

        Args:
            closure (Callable): A closure that reevaluates the model and returns the loss.
        """
        with step_lock(self):
            if len(self.param_groups) != 1:
                raise AssertionError(
                    f"Expected exactly one param_group, but got {len(self.param_groups)}"
                )
            space = _space(self._params)
            _check_state(space, self.state.get(self._params[0]))
            return run_step(self, torch.enable_grad()(closure), space, _BfgsDirection())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict``, keeping ``H`` in float64 (torch casts every floating
        state tensor to its parameter's dtype)."""
        saved = {
            k: v["H"]
            for k, v in state_dict.get("state", {}).items()
            if isinstance(v, dict) and isinstance(v.get("H"), _Tensor)
        }
        super().load_state_dict(state_dict)
        ids = [p for g in self.param_groups for p in g["params"]]
        for k, h in saved.items():
            if isinstance(k, int) and 0 <= k < len(ids):
                self.state[ids[k]]["H"] = h.detach().to("cpu", torch.float64)


def _space(params: list[_Tensor]) -> Space:
    space = Space.of(params)
    if space is None:
        raise UnsupportedError(
            "BFGS takes dense (contiguous) CPU float32 or float64 parameters (complex: their "
            "real views) of one real dtype, at least one element in all, sharing no memory; got "
            + ", ".join(f"{tuple(p.shape)} {p.dtype} on {p.device}" for p in params[:4])
        )
    if space.numel > MAX_NUMEL:
        raise UnsupportedError(
            f"BFGS keeps a dense {space.numel} x {space.numel} float64 inverse Hessian "
            f"({space.numel**2 * 8 / 2**20:.0f} MiB): it takes at most {MAX_NUMEL} parameter "
            "elements; use pyfastopt.LBFGS for larger problems"
        )
    return space


def _check_state(space: Space, state: dict | None) -> None:
    if not state:
        return
    where = "BFGS state"
    n = space.numel
    h = state.get("H")
    if h is not None and not (
        type(h) is _Tensor
        and h.dtype == torch.float64
        and h.is_cpu
        and h.layout == torch.strided
        and tuple(h.shape) == (n, n)
        and fits_storage(h)  # not shrunk in place under its sizes (torch.mv would read past it)
    ):
        raise StateError(
            f"{where}: 'H' must be None or a float64 CPU tensor of shape ({n}, {n}) inside its "
            "storage"
        )
    for key in ("d", "prev_flat_grad"):
        v = state.get(key)
        if v is not None and not space.fits(v):
            raise StateError(
                f"{where}: {key!r} must be a contiguous CPU tensor of {n} {space.dtype} elements"
            )
    if state.get("n_iter", 0) and any(state.get(k) is None for k in ("d", "t", "prev_flat_grad")):
        raise StateError(f"{where}: 'd', 't' and 'prev_flat_grad' must be set after the first step")


class _BfgsDirection:
    """The dense inverse Hessian and its direction (``_quasi_newton.Direction``)."""

    keys = ("d", "t", "H", "prev_flat_grad", "prev_loss")

    def load(self, state: dict) -> dict:
        return {k: state.get(k) for k in self.keys}

    def store(self, state: dict, mem: dict) -> None:
        for k in self.keys:
            state[k] = mem[k]

    def compute(self, mem: dict, state: dict, space: Space, g: Grad, group: dict) -> tuple:
        d = space.new()
        prev = mem["prev_flat_grad"]
        if prev is None:
            prev = mem["prev_flat_grad"] = space.new()
        if state["n_iter"] == 1:
            mem["H"] = None
        else:
            y, s = space.new(), space.new()
            ys, yy = space.run(
                ("sub", y, g, prev), ("scale", s, mem["t"], mem["d"]), ("dot", y, s), ("dot", y, y)
            )
            if ys > 1e-10:  # the curvature condition: else H stays positive definite unchanged
                _update(mem, y.double(), s.double(), ys, yy)
        h = mem["H"]
        mem["d"] = d
        if h is None:  # no curvature seen yet: steepest descent, as L-BFGS without history
            _, gtd, sum_abs_g, max_abs_d = space.direction(g, d, prev, [], [], [], 1.0, True)
            return gtd, sum_abs_g, max_abs_d
        g64 = space.keep(g).double()
        d.copy_(torch.mv(h, g64).neg_())  # -H g, rounded to the parameters' dtype
        gtd, sum_abs_g, max_abs_d = space.run(
            ("copy", prev, g), ("dot", g, d), ("sum_abs", g), ("max_abs", d)
        )
        return gtd, sum_abs_g, max_abs_d


def _update(mem: dict, y: _Tensor, s: _Tensor, ys: float, yy: float) -> None:
    """The BFGS update of ``mem['H']`` with the pair (y, s), y.s = ``ys`` > 0, in place:
    H - rho (H y s^T + s y^T H) + (rho^2 y^T H y + rho) s s^T, which is the product form for a
    symmetric H."""
    h = mem["H"]
    if h is None:  # the identity, scaled to the curvature seen along s
        h = mem["H"] = torch.eye(y.numel(), dtype=torch.float64).mul_(ys / yy)
    rho = 1.0 / ys
    hy = torch.mv(h, y)
    yhy = float(y.dot(hy))
    h.addr_(hy, s, alpha=-rho)
    h.addr_(s, hy, alpha=-rho)
    h.addr_(s, s, alpha=rho * rho * yhy + rho)
