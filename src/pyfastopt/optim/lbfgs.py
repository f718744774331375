"""L-BFGS: torch.optim.LBFGS with its vector work done natively over the parameters in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import StateError
from ._base import _unwrap, step_lock
from ._layout import check_storage
from ._quasi_newton import run_step, scalar
from ._vectors import Grad, Space, _span

_Tensor = torch.Tensor


class LBFGS(torch.optim.LBFGS):
    """torch.optim.LBFGS (same arguments, defaults, state and results within rounding) whose
    gradient handling, parameter updates and two-loop recursion run as native passes over the
    parameters and their gradients in place.

    The step is torch's line for line (:mod:`pyfastopt.optim._quasi_newton`), with the same
    closure protocol, ``history_size``, ``tolerance_grad``, ``tolerance_change``, ``max_iter``,
    ``max_eval`` and ``line_search_fn=None | 'strong_wolfe'``, and the same state (``func_evals``,
    ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``, ``H_diag``, ``prev_flat_grad``,
    ``prev_loss``, ``al``), so checkpoints load both ways. What changes:

    - gradients are read where the closure's backward left them (no ``torch.cat`` per
      evaluation); the line search copies one out only where torch clones it;
    - ``p += t*d`` and the line search's trial points are one native pass over all parameters;
    - the two-loop recursion is ``2*m + 1`` passes over the elements for ``m`` history pairs,
      each applying one update and taking the next dot product in the same loop (torch: ``4*m``
      passes and about ``6*m`` small tensor ops); it also copies the gradient into
      ``prev_flat_grad`` and takes ``g.d``, ``sum |g|`` and ``max |d|`` on its last pass;
    - dot products and sums accumulate in double in an order fixed by the element count (not
      by the thread count), so the iterates match torch's within float rounding, not bit for bit.

    Complex parameters are taken as their real views, as torch flattens them. Parameters that
    are not dense CPU float32/float64 (or complex64/complex128) tensors of one real dtype
    (bfloat16, other devices, non-contiguous, conjugate views, overlapping), and a state that
    does not fit them, take torch's own step.
    """

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
            space = Space.of(self._params)
            if space is None or not _state_fits(space, self.state.get(self._params[0])):
                return _unwrap(torch.optim.LBFGS.step)(self, closure)
            return run_step(self, torch.enable_grad()(closure), space, _LbfgsDirection())


class _LbfgsDirection:
    """torch's L-BFGS memory and its direction (``_quasi_newton.Direction``)."""

    keys = ("d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss")

    def load(self, state: dict) -> dict:
        return {k: state.get(k) for k in self.keys}

    def store(self, state: dict, mem: dict) -> None:
        for k in self.keys:
            state[k] = mem[k]

    def compute(self, mem: dict, state: dict, space: Space, g: Grad, group: dict) -> tuple:
        history_size = group["history_size"]
        first = state["n_iter"] == 1
        if first:
            mem["old_dirs"], mem["old_stps"], mem["ro"], mem["H_diag"] = [], [], [], 1
        else:
            # do lbfgs update (update memory)
            y, s = space.new(), space.new()
            ys, yy = space.run(
                ("sub", y, g, mem["prev_flat_grad"]),
                ("scale", s, mem["t"], mem["d"]),
                ("dot", y, s),
                ("dot", y, y),
            )
            ys = scalar(space, ys)  # y*s
            old_dirs, old_stps, ro = mem["old_dirs"], mem["old_stps"], mem["ro"]
            if ys > 1e-10:
                # updating memory
                if len(old_dirs) == history_size:
                    # shift history by one (limited-memory)
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)

                # store new direction/step
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)

                # update scale of initial Hessian approximation
                mem["H_diag"] = ys / scalar(space, yy)  # (y*y)

            if "al" not in state:
                state["al"] = [None] * history_size
            if len(old_dirs) > len(state["al"]):  # where torch's `al[i] = ...` fails
                raise IndexError("list assignment index out of range")
        d = space.new()
        prev = mem["prev_flat_grad"]
        if prev is None:
            prev = mem["prev_flat_grad"] = space.new()
        dirs, stps = mem["old_dirs"], mem["old_stps"]
        al, gtd, sum_abs_g, max_abs_d = space.direction(
            g, d, prev, dirs, stps, [float(r) for r in mem["ro"]], float(mem["H_diag"]), first
        )
        if al:
            state["al"][: len(al)] = torch.tensor(al, dtype=space.dtype).unbind()
        mem["d"] = d
        return gtd, sum_abs_g, max_abs_d


def _scalar_of(v: object, dtype: torch.dtype | None) -> bool:
    """A Python number, or a 0-d CPU tensor of ``dtype`` (None: of any floating dtype, for a
    value that only ever multiplies a vector, where torch rounds it to the vector's dtype)."""
    if isinstance(v, _Tensor):
        return (
            type(v) is _Tensor
            and v.is_cpu
            and v.dim() == 0
            and (v.dtype == dtype if dtype is not None else v.is_floating_point())
        )
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _state_fits(space: Space, state: dict | None) -> bool:
    """Whether the state (from earlier steps or a checkpoint) is what the native step expects;
    if not, torch's step runs, and does with it whatever torch does."""
    if not state:
        return True
    n_iter = state.get("n_iter", 0)
    if not isinstance(n_iter, int) or isinstance(n_iter, bool):
        return False
    flats: list[_Tensor] = []
    prev = state.get("prev_flat_grad")
    if prev is not None:
        flats.append(prev)
    al = state.get("al")
    if al is not None and type(al) is not list:
        return False
    if n_iter != 0:  # the next iteration updates the memory: all of it must be there
        d, dirs, stps, ro = (state.get(k) for k in ("d", "old_dirs", "old_stps", "ro"))
        if (
            prev is None
            or d is None
            or type(dirs) is not list
            or type(stps) is not list
            or type(ro) is not list
            or not len(dirs) == len(stps) == len(ro)
            or not all(_scalar_of(r, space.dtype) for r in ro)
            or not _scalar_of(state.get("H_diag"), space.dtype)
            or not _scalar_of(state.get("t"), None)  # a tensor lr is kept as it is
        ):
            return False
        flats += [d, *dirs, *stps]
    for t in flats:  # torch's step would read and write past such a storage: refused
        if isinstance(t, _Tensor):
            check_storage(t, "a state tensor", StateError, "LBFGS state")
    if not all(space.fits(t) for t in flats):
        return False
    spans = [_span(t) for t in flats] + [_span(p) for p in space.params]
    spans.sort()
    return all(spans[i][0] >= spans[i - 1][1] for i in range(1, len(spans)))
