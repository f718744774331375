"""Benchmark candidates: one implementation of one optimizer on one workload, built from the
same deterministic start as every other candidate of its group, and the cases of a matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .impls import IMPLS, REFERENCE, Impl, unavailable
from .optimizers import OPTIMIZERS, OptimizerSpec, get_optimizer
from .parity import Parity, compare, compare_lowp, round_state, snapshot
from .training import Batches, TrainStep, make_mlp, train_step
from .workloads import Workload, as_parameters, make_tensors, parse_workload


@dataclass
class Candidate:
    """A ready-to-time step (``step()``) and the parameters it updates."""

    impl: Impl
    step: Callable[[], object]
    params: Sequence[torch.Tensor]
    train: TrainStep | None = None

    def advance(self, steps: int) -> None:
        """Take ``steps`` steps on the workload's gradients (restored first where the
        implementation overwrites them; a training step computes its own)."""
        keep = self.impl.clobbers_grads and self.train is None
        saved = [p.grad.clone() for p in self.params if p.grad is not None] if keep else []
        for _ in range(steps):
            for p, g in zip(self.params, saved):
                p.grad.copy_(g)
            self.step()

    def check(self, reference: Sequence[torch.Tensor], steps: int) -> Parity:
        """Compare this candidate, after ``steps`` steps, with the reference after as many
        (on the host, wherever either lives)."""
        reference = [t.detach().cpu() for t in reference]
        params = [p.detach().cpu() for p in self.params]
        if params and params[0].dtype in (torch.bfloat16, torch.float16):
            return compare_lowp(reference, params, steps=steps)
        return compare(reference, params, steps=steps, rtol=self.impl.rtol, atol=self.impl.atol)


def is_checked(impl: Impl, workload: Workload) -> bool:
    """Whether ``impl``'s result is compared with the reference. In 16-bit workloads torch's
    own paths are the baseline of the timing but not the reference: the for-loop and foreach
    paths round every intermediate, fused SGD does not update 16-bit parameters."""
    return not (workload.lowp and impl.is_torch)


def lowp_reference(
    spec: OptimizerSpec, workload: Workload, *, seed: int = 0
) -> list[torch.Tensor] | None:
    """The 16-bit reference after ``workload.parity_steps`` steps from the common start: torch's
    fused kernel for Adam and AdamW (None where this torch has none), otherwise torch's float32
    for-loop on upcast values, parameters and state rounded to the 16-bit dtype every step."""
    params, grads = make_tensors(workload, seed)
    steps = workload.parity_steps
    if spec.cls_name in ("Adam", "AdamW"):
        if unavailable("torch-fused", spec.name, lowp=True):
            return None
        ps = as_parameters(params, grads)
        opt = spec.torch_cls(ps, **spec.hparams, fused=True)
        for _ in range(steps):
            opt.step()
        return snapshot(ps)
    ps = as_parameters([p.float() for p in params], [g.float() for g in grads])
    opt = spec.torch_cls(ps, **spec.hparams, foreach=False)
    round_state(opt, workload.dtype)  # Adagrad's initial accumulator
    for _ in range(steps):
        opt.step()
        round_state(opt, workload.dtype)
    return [p.detach().to(workload.dtype) for p in ps]


def build_candidate(
    spec: OptimizerSpec,
    workload: Workload,
    impl: Impl,
    *,
    seed: int = 0,
    batches: Batches | None = None,
    device: str = "cpu",
) -> Candidate:
    """``impl``'s optimizer on fresh parameters (and model, for training) from ``seed``, on
    ``device`` (step-only workloads)."""
    if workload.train:
        if batches is None:
            raise ValueError(f"{workload.name} needs training batches")
        if device != "cpu":
            raise ValueError(f"{workload.name}: training workloads run on the CPU only")
        model = make_mlp(workload.hidden, seed)
        ts = train_step(model, batches.items, lambda ps: impl.build(spec, ps))
        return Candidate(impl, ts, ts.parameters(), ts)
    params = as_parameters(*make_tensors(workload, seed), device=device)
    return Candidate(impl, impl.build(spec, params).step, params)


def reference_run(
    spec: OptimizerSpec,
    workload: Workload,
    *,
    seed: int = 0,
    batches: Batches | None = None,
) -> tuple[Candidate | None, list[torch.Tensor] | None]:
    """torch's for-loop candidate after ``workload.parity_steps`` steps from the common start,
    and a copy of its parameters then (what every other candidate is compared with). For a
    16-bit workload: no candidate, and :func:`lowp_reference`."""
    if workload.lowp:
        return None, lowp_reference(spec, workload, seed=seed)
    ref = build_candidate(spec, workload, IMPLS[REFERENCE], seed=seed, batches=batches)
    ref.advance(workload.parity_steps)
    return ref, snapshot(ref.params)


@dataclass(frozen=True)
class Case:
    """One optimizer × workload × implementation of a benchmark matrix."""

    workload: str
    optimizer: str
    impl: str

    @property
    def id(self) -> str:
        return f"{self.workload}-{self.optimizer}-{self.impl}"

    @property
    def group(self) -> str:
        """The benchmark group: every implementation of one optimizer on one workload."""
        return f"{self.optimizer} {self.workload}"

    @property
    def spec(self) -> OptimizerSpec:
        return get_optimizer(self.optimizer)

    @property
    def model(self) -> Workload:
        return parse_workload(self.workload)


def cases(
    workloads: Iterable[str],
    optimizers: Iterable[str] = tuple(OPTIMIZERS),
    impls: Iterable[str] = tuple(IMPLS),
) -> list[Case]:
    """Every applicable case, grouped by workload then optimizer (torch's for-loop first)."""
    impl_names = list(impls)
    return [
        Case(w, o, i)
        for w in workloads
        for o in optimizers
        for i in impl_names
        if IMPLS[i].applies(get_optimizer(o))
    ]
