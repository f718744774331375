"""The parameters of an L-BFGS / BFGS step as one vector, and the native operations on it.

torch.optim.LBFGS works on flat vectors: each evaluation concatenates the gradients
(``_gather_flat_grad``), and ``_add_grad`` adds a slice of a flat direction to each parameter.
Here the parameters and their gradients stay where they are: a :class:`Space` describes a
group's parameters as the segments of one vector of ``numel`` elements, and each native call
(``_core.vector_program``, ``_core.lbfgs_direction``) reads and writes the parameters, the
gradients and flat vectors (``d``, ``prev_flat_grad``, the history) side by side, segment by
segment, with reductions whose order does not depend on the thread count
(csrc/include/pyfastopt/vector_ops.h).

This module is the trust boundary of those calls: every address handed to the core comes from a
tensor checked here immediately before the call (plain CPU-strided, the group's dtype,
contiguous, of the expected number of elements), and no operand a call writes may share memory
with another operand of the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

from .. import _config, _core
from ..errors import OperandError
from ._base import _bump_versions
from ._layout import check_storage, fits_storage, spans_overlap

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter

#: dtype -> the native code (vector_ops.h VecDType)
CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.float64: 1}

# instruction codes (vector_ops.h VecOp)
_COPY, _SCALE, _AXPY, _SUB, _DOT, _SUM_ABS, _MAX_ABS = range(7)
_OPS = {
    "copy": _COPY,
    "scale": _SCALE,
    "axpy": _AXPY,
    "sub": _SUB,
    "dot": _DOT,
    "sum_abs": _SUM_ABS,
    "max_abs": _MAX_ABS,
}
_WRITES = {"copy", "scale", "axpy", "sub"}


class Grad:
    """The gradient of the last evaluation: the parameters' ``.grad`` where they are (``flat`` is
    None), or one flat tensor where they could not be used in place. Valid until the next
    evaluation (``generation``)."""

    __slots__ = ("flat", "generation")

    def __init__(self, generation: int, flat: _Tensor | None) -> None:
        self.generation = generation
        self.flat = flat


Operand = Union[_Tensor, Grad, "Space"]


def native_param(p: _Tensor) -> bool:
    """A parameter the vector operations can update in place."""
    tp = type(p)
    return (
        (tp is _Tensor or tp is _Parameter)
        and p.is_cpu
        and p.layout == torch.strided
        and p.dtype.to_real() in CODES
        and p.is_contiguous()
        and not p.is_neg()
        and not p.is_conj()
        and not p.is_inference()
    )


def real_numel(p: _Tensor) -> int:
    """Elements of ``p`` as the flat vectors hold them: a complex parameter is its real view
    (``torch.view_as_real``), as torch.optim.LBFGS flattens it."""
    return p.numel() * 2 if p.is_complex() else p.numel()


def gather_flat_grad(params: Sequence[_Tensor]) -> _Tensor:
    """torch.optim.LBFGS's ``_gather_flat_grad`` (zeros for a missing gradient)."""
    views = []
    for p in params:
        if p.grad is None:
            view = p.new(p.numel()).zero_()
        elif p.grad.is_sparse:
            view = p.grad.to_dense().view(-1)
        else:
            view = p.grad.view(-1)
        if torch.is_complex(view):
            view = torch.view_as_real(view).view(-1)
        views.append(view)
    return torch.cat(views, 0)


class Space:
    """One param group's parameters as the segments of one vector (see the module docstring).

    Build it with :meth:`of`, which returns None for parameters the native operations do not
    take (the caller then runs torch's own step). ``self`` is also the operand "the parameters".
    """

    def __init__(self, params: list[_Tensor]) -> None:
        self.params = params
        self.dtype = params[0].dtype.to_real()  # complex parameters: their real views
        self.code = CODES[self.dtype]
        self.numels = [real_numel(p) for p in params]
        self.numel = sum(self.numels)
        self.generation = 0
        self._zeros: _Tensor | None = None

    @classmethod
    def of(cls, params: list[_Tensor]) -> Space | None:
        """The space of ``params``, or None unless they are dense CPU float32/float64 tensors
        (or complex64/complex128: their real views) of one real dtype, contiguous, with at least
        one element, sharing no memory."""
        if not params or not all(native_param(p) for p in params):
            return None
        if len({p.dtype.to_real() for p in params}) != 1:
            return None
        space = cls(params)
        if space.numel == 0 or spans_overlap([_span(p) for p in params]):
            return None
        return space

    # ---- operands ------------------------------------------------------------------------
    def new(self) -> _Tensor:
        """A new flat vector (uninitialised), as torch's out-of-place ops would allocate."""
        return torch.empty(self.numel, dtype=self.dtype)

    def fits(self, t: object) -> bool:
        """Whether ``t`` can serve as a flat vector of this space."""
        return (
            type(t) is _Tensor
            and t.dtype == self.dtype
            and t.is_cpu
            and t.layout == torch.strided
            and t.is_contiguous()
            and t.numel() == self.numel
            and not t.is_neg()
            and not t.is_inference()
            and fits_storage(t)  # not shrunk in place: the native passes trust its size
        )

    def _param_addrs(self) -> list[int]:
        out = []
        for p, n in zip(self.params, self.numels):
            if not native_param(p) or p.dtype.to_real() != self.dtype or real_numel(p) != n:
                raise OperandError(
                    "a parameter changed its dtype, shape, layout or device during the "
                    f"optimizer step (now {tuple(p.shape)}, {p.dtype}, {p.device})"
                )
            check_storage(p, "a parameter", OperandError, "L-BFGS/BFGS")
            out.append(p.data_ptr())
        return out

    def _grad_tensors(self, apart: bool = True) -> list[_Tensor] | None:
        """The gradients as they can be read in place, or None where one cannot (sparse,
        non-contiguous, a tensor subclass, with ``apart`` memory shared with a parameter or
        another gradient, ...)."""
        grads: list[_Tensor] = []
        missing = 0
        for p, n in zip(self.params, self.numels):
            g = p.grad
            if g is None:
                missing = max(missing, n)
                grads.append(None)  # type: ignore[arg-type]
                continue
            if g.is_complex() and type(g) is _Tensor and not g.is_conj() and g.dtype == p.dtype:
                g = torch.view_as_real(g)  # (a complex gradient of a complex parameter)
            if (
                type(g) is not _Tensor
                or not g.is_cpu
                or g.layout != torch.strided
                or g.dtype != self.dtype
                or not g.is_contiguous()
                or g.numel() != n
                or g.is_neg()
            ):
                return None
            check_storage(g, "a gradient", OperandError, "L-BFGS/BFGS")
            grads.append(g)
        if missing:
            z = self._zeros
            if z is None or z.numel() < missing:
                z = self._zeros = torch.zeros(missing, dtype=self.dtype)
            grads = [z if g is None else g for g in grads]
        if apart:  # torch's gather copies such a gradient before anything writes
            spans = [_span(p) for p in self.params] + [
                _span(g) for g, n in zip(grads, self.numels) if g is not self._zeros and n
            ]
            if spans_overlap(spans):
                return None
        return grads

    def grad(self) -> Grad:
        """The gradient the closure just computed (call it after each evaluation)."""
        self.generation += 1
        if self._grad_tensors() is not None:
            return Grad(self.generation, None)
        flat = gather_flat_grad(self.params)  # torch's own gather: its errors, its copies
        if not self.fits(flat):
            raise OperandError(
                "the gradients do not form a vector like the parameters "
                f"({flat.numel()} elements of {flat.dtype}, expected {self.numel} of {self.dtype})"
            )
        return Grad(self.generation, flat)

    def keep(self, g: Grad | _Tensor) -> _Tensor:
        """A flat copy of ``g`` (torch's ``clone``), valid after the next evaluation too."""
        out = self.new()
        self.run(("copy", out, g))
        return out

    # ---- calls ---------------------------------------------------------------------------
    def _resolve(
        self, ops: list[Operand], written: set[int]
    ) -> tuple[list[int], int, list[int], list[int]]:
        """The core's view of operands ``ops`` (``written``: the indices of those the call
        writes): (rows, number of list operands, flat addresses, each operand's core index)."""
        lists: list[list[int]] = []
        flats: list[int] = []
        ids: list[int] = []
        spans: list[tuple[int, int, int]] = []  # (lo, hi, operand)
        esize = 4 if self.code == 0 else 8
        for k, o in enumerate(ops):
            addrs: list[int] | None = None
            if o is self:
                addrs = self._param_addrs()
            elif isinstance(o, Grad):
                if o.generation != self.generation:
                    raise RuntimeError("pyfastopt: internal error: a stale gradient was used")
                if o.flat is None:  # memory shared with what the call writes: _check_writes
                    grads = self._grad_tensors(apart=False)
                    if grads is None:
                        raise OperandError("a gradient changed during the optimizer step")
                    addrs = [g.data_ptr() for g in grads]
                else:
                    o = o.flat
            if addrs is not None:
                ids.append(len(lists))
                lists.append(addrs)
                if written:
                    spans += [(a, a + n * esize, k) for a, n in zip(addrs, self.numels) if n]
                continue
            if not self.fits(o):
                raise OperandError(
                    "a flat vector of the optimizer (state or temporary) does not fit the "
                    f"parameters: expected a contiguous CPU tensor of {self.numel} {self.dtype} "
                    f"elements, got {_describe(o)}"
                )
            a = o.data_ptr()  # type: ignore[union-attr]
            ids.append(-1 - len(flats))
            flats.append(a)
            spans.append((a, a + self.numel * esize, k))
        if written:
            _check_writes(spans, written)
        nl = len(lists)
        rows: list[int] = []
        for r, n in enumerate(self.numels):
            rows.append(n)
            rows += [lst[r] for lst in lists]
        return rows, nl, flats, [i if i >= 0 else nl - 1 - i for i in ids]

    def run(self, *program: tuple) -> list[float]:
        """One native pass of ``program``: tuples ``("copy", out, a)``, ``("scale", out, s, a)``
        (out = s*a), ``("axpy", out, s, a, b)`` (out = s*a + b), ``("sub", out, a, b)``,
        ``("dot", a, b)``, ``("sum_abs", a)``, ``("max_abs", a)``. Operands: flat tensors, a
        :class:`Grad`, or the space itself (the parameters). Returns the reductions' results
        (double) in program order."""
        ops: list[Operand] = []
        slot: dict[int, int] = {}  # id(operand) -> its index in ops

        def operand(o: Operand) -> int:
            k = slot.setdefault(id(o), len(ops))
            if k == len(ops):
                ops.append(o)
            return k

        code: list[int] = []
        scalars: list[float] = []
        written: set[int] = set()
        nres = 0
        for ins in program:
            name = ins[0]
            op = _OPS[name]
            if name in _WRITES:
                out = operand(ins[1])
                written.add(out)
                if name == "scale" or name == "axpy":
                    scalars.append(float(ins[2]))
                    a = operand(ins[3])
                    b = operand(ins[4]) if name == "axpy" else 0
                    code += (op, out, a, b, len(scalars) - 1)
                else:
                    a = operand(ins[2])
                    b = operand(ins[3]) if name == "sub" else 0
                    code += (op, out, a, b, 0)
            else:
                a = operand(ins[1])
                b = operand(ins[2]) if name == "dot" else 0
                code += (op, 0, a, b, nres)
                nres += 1
        rows, nl, flats, ids = self._resolve(ops, written)
        for i in range(0, len(code), 5):  # operand slots -> the core's operand indices
            code[i + 1] = ids[code[i + 1]]
            code[i + 2] = ids[code[i + 2]]
            code[i + 3] = ids[code[i + 3]]
        results = _core.vector_program(
            rows,
            nl,
            flats,
            self.code,
            code,
            scalars,
            nres,
            _config.get_num_threads(),
            _config.PARALLEL_MIN_ELEMENTS,
        )
        if any(ops[k] is self for k in written):  # torch's in-place add_ bumps them
            _bump_versions(self.params)
        return results

    def direction(
        self,
        g: Grad,
        d: _Tensor,
        prev: _Tensor,
        dirs: Sequence[_Tensor],
        stps: Sequence[_Tensor],
        ro: Sequence[float],
        h_diag: float,
        first: bool,
    ) -> tuple[list[float], float, float, float]:
        """torch.optim.LBFGS's direction into ``d`` (vector_ops.h LbfgsDirection), with
        ``prev = g``. Returns (al, g.d, sum |g|, max |d|)."""
        ops: list[Operand] = [g, d, prev, *dirs, *stps]
        rows, nl, flats, ids = self._resolve(ops, {1, 2})
        m = len(dirs)
        out = _core.lbfgs_direction(
            rows,
            nl,
            flats,
            self.code,
            ids[0],
            ids[1],
            ids[2],
            ids[3 : 3 + m],
            ids[3 + m :],
            list(ro),
            float(h_diag),
            first,
            _config.get_num_threads(),
            _config.PARALLEL_MIN_ELEMENTS,
        )
        _bump_versions([prev])  # torch's prev_flat_grad.copy_(flat_grad)
        return out


def _span(t: _Tensor) -> tuple[int, int]:
    """The bytes of a dense tensor."""
    lo = t.data_ptr()
    return lo, lo + t.numel() * t.element_size()


def _describe(t: object) -> str:
    if isinstance(t, _Tensor):
        return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device})"
    return type(t).__name__


def _check_writes(spans: list[tuple[int, int, int]], written: set[int]) -> None:
    """Refuse a call in which memory that it writes is also reached through another operand, or
    through another segment of the same one (the same operand in two roles, ``p = p + t*d``, is
    elementwise in place and fine; so are read-only operands that share memory, like the zeros
    that stand for every missing gradient). ``spans``: (first byte, end, operand) per segment."""
    for i, (lo, hi, k) in enumerate(spans):
        if k not in written:
            continue
        for j, (lo2, hi2, _k2) in enumerate(spans):
            if j != i and lo < hi2 and lo2 < hi:
                raise OperandError(
                    "a tensor the optimizer writes shares memory with another tensor of the "
                    "same operation (a gradient that is a view of a parameter or of the "
                    "optimizer's state, or two parameters that became views of one tensor?)"
                )
