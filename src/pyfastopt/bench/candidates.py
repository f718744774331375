"""Benchmark candidates: one implementation of one optimizer on one workload, built from the
same deterministic start as every other candidate of its group, and the cases of a matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .impls import IMPLS, REFERENCE, Impl, for_loop_flags, unavailable
from .optimizers import OPTIMIZERS, OptimizerSpec, get_optimizer
from .parity import Parity, compare, compare_lowp, round_state, snapshot, upcast_hparams
from .training import Batches, TrainStep, make_mlp, train_step
from .workloads import Workload, as_parameters, fits, make_tensors, parse_workload


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


def exact_reference(spec: OptimizerSpec | None, workload: Workload) -> bool:
    """Whether ``spec``'s reference on ``workload`` is computed in float64 (step-only workloads of
    an optimizer with :attr:`~.optimizers.OptimizerSpec.exact_reference`)."""
    return spec is not None and spec.exact_reference and not workload.train


def is_checked(impl: Impl, workload: Workload, spec: OptimizerSpec | None = None) -> bool:
    """Whether ``impl``'s result is compared with the reference. In 16-bit workloads torch's
    own paths are the baseline of the timing but not the reference: the for-loop and foreach
    paths round every intermediate, fused SGD does not update 16-bit parameters. Nor are they
    where the reference is exact (:func:`exact_reference`): their float32 sums are what it
    corrects."""
    return not (impl.is_torch and (workload.lowp or exact_reference(spec, workload)))


def rounded_reference(
    spec: OptimizerSpec, workload: Workload, *, seed: int = 0
) -> list[torch.Tensor] | None:
    """The reference of a 16-bit workload, or of an exact-reference optimizer, after
    ``workload.parity_steps`` steps from the common start: torch's fused kernel for Adam and
    AdamW on 16-bit workloads (None where this torch has none); otherwise torch's for-loop on
    upcast values, in float64 for an exact reference (Adafactor), else in float32, its
    parameters and state rounded to the workload's dtype every step."""
    params, grads = make_tensors(workload, seed)
    steps = workload.parity_steps
    exact = exact_reference(spec, workload)
    if spec.cls_name in ("Adam", "AdamW") and not exact:
        if unavailable("torch-fused", spec.name, lowp=True):
            return None
        ps = as_parameters(params, grads)
        opt = spec.torch_cls(ps, **spec.hparams, fused=True)
        for _ in range(steps):
            opt.step()
        return snapshot(ps)
    up = torch.float64 if exact else torch.float32
    ps = as_parameters([p.to(up) for p in params], [g.to(up) for g in grads])
    hparams = upcast_hparams(spec.cls_name, spec.hparams, workload.dtype)
    opt = spec.torch_cls(ps, **hparams, **for_loop_flags(spec))
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
    16-bit workload or an exact reference: no candidate, and :func:`rounded_reference`."""
    if workload.lowp or exact_reference(spec, workload):
        return None, rounded_reference(spec, workload, seed=seed)
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
    """Every applicable case, grouped by workload then optimizer (torch's for-loop first): an
    implementation the optimizer has, on a workload with the gradients it takes."""
    impl_names = list(impls)
    return [
        Case(w, o, i)
        for w in workloads
        for o in optimizers
        for i in impl_names
        if IMPLS[i].applies(get_optimizer(o)) and fits(get_optimizer(o).sparse, parse_workload(w))
    ]
