"""Workloads ("models"): which parameter tensors an optimizer steps, named as on the CLI.

Names: ``mlp-H1-H2...`` (an MNIST MLP 784-H1-H2-...-10, ``optimizer.step()`` alone on fixed
gradients), ``train-H1-...`` (forward, backward and step of that MLP on MNIST batches),
``small-NxM`` and ``fixed-NxM`` (N tensors of M elements), ``flat-N`` (one tensor of N
elements), ``embed-RxD[-P]`` (an embedding table of R rows of D elements whose gradient is
sparse: P percent of the rows, default 1, as ``nn.Embedding(sparse=True)`` hands SparseAdam).
Sizes take a K (×1024) or M (×1024²) suffix: ``flat-32M`` is 33,554,432 elements.
A ``:bf16`` or ``:fp16`` suffix runs a step-only workload on 16-bit parameters, gradients and
state (``mlp-2048-2048:bf16``); otherwise they are float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

IN_FEATURES, CLASSES = 784, 10
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20}

#: every workload, the order the CLI runs them in
DEFAULT_WORKLOADS = (
    "fixed-6x16",
    "mlp-128",
    "mlp-512-256",
    "mlp-2048-2048",
    "small-500x1k",
    "flat-32M",
    "train-512-256",
    "mlp-128:bf16",
    "mlp-512-256:bf16",
    "mlp-2048-2048:bf16",
    "embed-100Kx64",
)
#: what ``--quick`` runs unless ``--models`` says otherwise (the small, fast ones)
QUICK_WORKLOADS = (
    "fixed-6x16",
    "mlp-128",
    "mlp-512-256",
    "small-500x1k",
    "train-512-256",
    "mlp-512-256:bf16",
    "embed-100Kx64",
)
#: the 16-bit suffixes of a workload name
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Workload:
    """A named set of parameter shapes; ``train`` workloads also run forward and backward."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    train: bool = False
    hidden: tuple[int, ...] = ()
    #: steps taken before comparing with torch's result: fewer on huge tensors (each step
    #: costs), one when training (the next gradients then differ by the rounding of the step,
    #: which e.g. RMSprop amplifies where gradients are tiny, so later steps prove little)
    parity_steps: int = 2
    #: the dtype of parameters, gradients and state
    dtype: torch.dtype = torch.float32
    #: the share of the (single) tensor's rows a sparse gradient touches; 0: dense gradients
    sparse: float = 0.0

    @property
    def lowp(self) -> bool:
        """16-bit parameters (checked against the 16-bit reference, see bench/parity.py)."""
        return self.dtype in (torch.bfloat16, torch.float16)

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def numel(self) -> int:
        return sum(_prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)

    @property
    def touched_rows(self) -> int:
        """Rows a sparse gradient lists (distinct ones); 0 for dense gradients."""
        if not self.sparse:
            return 0
        return max(1, round(self.shapes[0][0] * self.sparse))

    @property
    def step_numel(self) -> int:
        """Elements a step updates: all, or those a sparse gradient lists."""
        if not self.sparse:
            return self.numel
        return self.touched_rows * _prod(self.shapes[0][1:])


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmM]?)", text)
    if not m:
        raise ValueError(f"bad size {text!r}")
    return int(m.group(1)) * _SUFFIX[m.group(2).lower()]


def mlp_shapes(hidden: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Parameter shapes of ``nn.Linear`` layers 784-hidden...-10 (weight then bias)."""
    sizes = [IN_FEATURES, *hidden, CLASSES]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        shapes += [(fan_out, fan_in), (fan_out,)]
    return tuple(shapes)


def parse_workload(name: str) -> Workload:
    """The workload a CLI name describes, or ValueError explaining the accepted forms."""
    key = name.strip()
    base, _, suffix = key.partition(":")
    if suffix:
        if suffix.lower() not in DTYPES or base.startswith("train"):
            raise ValueError(
                f"unknown model {name!r}: a step-only workload may end in :bf16 or :fp16"
            )
        return dataclasses.replace(parse_workload(base), name=key, dtype=DTYPES[suffix.lower()])
    kind, _, rest = key.partition("-")
    found: Workload | None = None
    try:
        if kind in ("mlp", "train") and rest:
            hidden = tuple(_size(h) for h in rest.split("-"))
            train = kind == "train"
            steps = 1 if train else 2
            found = Workload(key, mlp_shapes(hidden), train, hidden, parity_steps=steps)
        elif kind in ("small", "fixed") and "x" in rest:
            count, size = (_size(t) for t in rest.split("x", 1))
            found = Workload(key, ((size,),) * count)
        elif kind == "flat" and rest:
            size = _size(rest)
            found = Workload(key, ((size,),), parity_steps=1 if size >= 1 << 24 else 2)
        elif kind == "embed" and "x" in rest:
            dims, _, pct = rest.partition("-")
            rows, dim = (_size(t) for t in dims.split("x", 1))
            share = float(pct) / 100 if pct else 0.01
            if 0 < share <= 1:
                found = Workload(key, ((rows, dim),), sparse=share)
    except ValueError:
        pass
    if found is not None:
        if not found.shapes or 0 in (d for s in found.shapes for d in s):
            raise ValueError(f"model {name!r} has a size of 0: every size must be at least 1")
        return found
    raise ValueError(
        f"unknown model {name!r}: use mlp-H1[-H2...], train-H1[-H2...], small-NxM, fixed-NxM, "
        f"flat-N or embed-RxD[-P] (sizes may end in K or M), e.g. {', '.join(DEFAULT_WORKLOADS)}"
    )


def workload_list(
    text: str, *, step_only: bool = False, float32_only: bool = False
) -> list[Workload]:
    """``type`` of a command line's comma-separated ``--models``: each name parsed, so an
    unknown one is a usage error (argparse's message and exit status 2), not a traceback; an
    empty list too; a name given twice counts once (first-seen order kept). ``step_only``:
    refuse the train-* and embed-* workloads (a tool that steps dense tensors only);
    ``float32_only``: refuse the :bf16/:fp16 ones (a tool that picks the dtypes itself)."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"no model named in {text!r}; e.g. mlp-128,fixed-6x16")
    try:
        workloads = [parse_workload(n) for n in names]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    for w in workloads:
        if step_only and (w.train or w.sparse):
            raise argparse.ArgumentTypeError(
                f"model {w.name!r}: this tool steps dense parameters only (mlp-H1[-H2...], "
                "small-NxM, fixed-NxM, flat-N), not train-* or embed-*"
            )
        if float32_only and w.dtype != torch.float32:
            raise argparse.ArgumentTypeError(
                f"model {w.name!r}: this tool chooses the dtypes itself; drop the :bf16/:fp16"
            )
    return workloads


def fits(sparse_optimizer: bool, workload: Workload) -> bool:
    """Whether an optimizer steps on this workload's gradients: sparse ones (SparseAdam) on
    embed-* workloads only, every other optimizer on the dense ones."""
    return sparse_optimizer == bool(workload.sparse)


@functools.lru_cache(maxsize=1)
def make_tensors(
    workload: Workload, seed: int = 0
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Deterministic start values and fixed gradients for a step-only workload, in its dtype
    (drawn in float32 and rounded, so every dtype starts from the same values).

    The latest result is cached (every candidate of a group starts from it): never modify the
    tensors in place; :func:`as_parameters` copies them.
    """
    gen = torch.Generator().manual_seed(seed)
    dt = workload.dtype
    params = tuple(torch.randn(s, generator=gen).mul_(0.05).to(dt) for s in workload.shapes)
    if workload.sparse:  # distinct rows in no particular order: the step coalesces them
        (rows, *dense), k = workload.shapes[0], workload.touched_rows
        idx = torch.randperm(rows, generator=gen)[:k].unsqueeze(0)
        vals = torch.randn((k, *dense), generator=gen).mul_(0.01).to(dt)
        return params, (torch.sparse_coo_tensor(idx, vals, (rows, *dense), check_invariants=True),)
    grads = tuple(torch.randn(s, generator=gen).mul_(0.01).to(dt) for s in workload.shapes)
    return params, grads


def as_parameters(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], device: str = "cpu"
) -> list[torch.nn.Parameter]:
    """Fresh parameters copied from ``params`` (onto ``device``), each with its own copy of its
    gradient."""
    out = []
    for p, g in zip(params, grads):
        param = torch.nn.Parameter(p.to(device, copy=True))
        param.grad = g.to(device, copy=True)
        out.append(param)
    return out
