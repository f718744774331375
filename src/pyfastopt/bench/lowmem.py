"""Low-memory optimizer state against torch's float32 step: ``python -m pyfastopt.bench.lowmem``.

For each optimizer and model, times ``opt.step()`` with fixed float32 gradients: torch's fused
(or foreach) float32 step, pyfastopt with float32, bfloat16 (nearest and stochastic rounding)
and 8-bit state (blocks of 256 and 2048), bfloat16 parameters with 8-bit state, and
bitsandbytes' and torchao's 8-bit optimizers where they are installed (a line says why not
otherwise). Also a streaming kernel moving the bytes the 8-bit step moves (its roofline) and,
with ``--per-param``, the same model stepped by one optimizer per parameter. All interleaved in
one process; medians of ``--rounds`` samples; speed as a multiple of the torch baseline; state
bytes per parameter as the optimizer holds them after a step.
"""

from __future__ import annotations

import argparse
import functools
import importlib
from collections.abc import Callable, Sequence

import torch

import pyfastopt
from pyfastopt.optim._lowmem import state_bytes

from . import _args
from .harness import interleaved
from .lowp import roofline_share
from .roofline import streaming_kernel
from .workloads import workload_list

PROG = "python -m pyfastopt.bench.lowmem"

Shapes = Sequence[tuple[int, ...]]
Make = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
KW = {
    "Adam": {"lr": 1e-3},
    "AdamW": {"lr": 1e-3},
    "SGD": {"lr": 1e-3, "momentum": 0.9},
    "RMSprop": {"lr": 1e-3},
}
BUFFERS = {"Adam": 2, "AdamW": 2, "SGD": 1, "RMSprop": 1}
FUSED = ("Adam", "AdamW", "SGD")
#: the 8-bit classes of other libraries, by pyfastopt name: (module, class)
BNB = {"Adam": "Adam8bit", "AdamW": "AdamW8bit", "SGD": "SGD8bit", "RMSprop": "RMSprop8bit"}
TORCHAO = {"AdamW": "AdamW8bit", "Adam": "Adam8bit"}
#: the other libraries ``--others`` may name
OTHERS = ("bitsandbytes", "torchao")


def bytes_moved_8bit(numel: int, buffers: int, block: int = 256) -> float:
    """Bytes an 8-bit step moves: float32 param read+write and grad read, each buffer's codes
    read+write and its scales read+write."""
    return numel * (12 + buffers * (2 + 8 / block))


class Built:
    """An optimizer over its own copy of the model, stepped with fixed gradients."""

    def __init__(self, make: Make, shapes: Shapes, dtype: torch.dtype, per_param: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
        for p in self.params:
            p.grad = (torch.randn(p.shape, generator=g) * 1e-2).to(dtype)
        self.opts = [make([p]) for p in self.params] if per_param else [make(self.params)]
        self.step()
        numel = sum(p.numel() for p in self.params)
        self.bytes_per_param = sum(state_bytes(o.state) for o in self.opts) / max(numel, 1)

    def step(self) -> None:
        for o in self.opts:
            o.step()


def other_library(lib: str, name: str) -> tuple[Make | None, str]:
    """(builder, '') for bitsandbytes' or torchao's 8-bit class, or (None, why not)."""
    if lib not in OTHERS:
        return None, f"unknown library {lib!r}; choose from {', '.join(OTHERS)}"
    table = BNB if lib == "bitsandbytes" else TORCHAO
    if name not in table:
        return None, f"{lib} has no 8-bit {name}"
    module = "bitsandbytes.optim" if lib == "bitsandbytes" else "torchao.optim"
    try:
        cls = getattr(importlib.import_module(module), table[name])
    except Exception as exc:  # not installed, or its import fails on this machine
        return None, f"{lib} not usable here ({type(exc).__name__}: {str(exc)[:80]})"
    kw = KW[name]
    return (lambda ps: cls(ps, **kw)), ""


def candidates(
    name: str, shapes: Shapes, per_param: bool, others: Sequence[str]
) -> tuple[dict[str, Built], list[str]]:
    kw = KW[name]
    tcls, fcls = getattr(torch.optim, name), getattr(pyfastopt, name)
    f32, bf16 = torch.float32, torch.bfloat16
    flag = {"fused": True} if name in FUSED else {"foreach": True}
    makes: dict[str, tuple[Make, torch.dtype]] = {
        f"torch-{next(iter(flag))}": (lambda ps: tcls(ps, **flag, **kw), f32),
        "pyfastopt": (lambda ps: fcls(ps, **kw), f32),
        "pyfastopt bf16 state": (lambda ps: fcls(ps, state_dtype=bf16, **kw), f32),
        "pyfastopt bf16 state+sr": (
            lambda ps: fcls(ps, state_dtype=bf16, state_stochastic_rounding=True, **kw),
            f32,
        ),
        "pyfastopt 8bit": (lambda ps: fcls(ps, state_dtype="8bit", **kw), f32),
        "pyfastopt 8bit/2048": (
            lambda ps: fcls(ps, state_dtype="8bit", block_size=2048, **kw),
            f32,
        ),
        "pyfastopt bf16 params+8bit": (lambda ps: fcls(ps, state_dtype="8bit", **kw), bf16),
    }
    notes = []
    for lib in others:
        make, why = other_library(lib, name)
        if make is None:
            notes.append(f"skipped {lib}: {why}")
        else:
            makes[f"{lib} 8bit"] = (make, f32)
    built = {k: Built(m, shapes, dt, per_param) for k, (m, dt) in makes.items()}
    return built, notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--models",
        type=functools.partial(workload_list, step_only=True, float32_only=True),
        default="mlp-512-256,fixed-2x16M",
        help="comma-separated float32 workloads: mlp-H1[-H2...], small-NxM, fixed-NxM, flat-N "
        "(sizes may end in K or M) (default: %(default)s)",
    )
    _args.add_optimizers(parser, KW, "AdamW,SGD")
    _args.add_rounds(parser)
    parser.add_argument("--per-param", action="store_true", help="one optimizer per parameter")
    parser.add_argument(
        "--others",
        type=_args.name_list(OTHERS, "library", allow_empty=True),
        default=",".join(OTHERS),
        help=f"other libraries' 8-bit optimizers to time where installed, from "
        f"{', '.join(OTHERS)} ('' for none; default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _args.guarded(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    others = args.others
    print(
        f"torch {torch.__version__}, threads torch {torch.get_num_threads()} pyfastopt "
        f"{pyfastopt.get_num_threads()}, simd {pyfastopt._core.simd_path()}, median of "
        f"{args.rounds} interleaved rounds" + (", one optimizer per parameter" * args.per_param)
    )
    head = (
        f"{'optimizer':<8} {'model':<14} {'impl':<28} {'median us':>10} {'speed':>7} {'B/param':>8}"
    )
    print(head)
    for workload in args.models:
        model, shapes = workload.name, workload.shapes
        numel = sum(torch.Size(s).numel() for s in shapes)
        for name in args.optimizers:
            built, notes = candidates(name, shapes, args.per_param, others)
            steps: dict[str, Callable[[], object]] = {k: b.step for k, b in built.items()}
            steps["roofline"] = streaming_kernel(int(bytes_moved_8bit(numel, BUFFERS[name])))
            timed = interleaved(steps, rounds=args.rounds)
            base_name = next(k for k in built if k.startswith("torch"))
            base = timed[base_name].median_ns
            for impl, b in built.items():
                us = timed[impl].median_ns / 1e3
                speed = base / timed[impl].median_ns
                print(f"{name:<8} {model:<14} {impl:<28} {us:>10.1f} {speed:>6.2f}x "
                      f"{b.bytes_per_param:>8.3f}")  # fmt: skip
            share = roofline_share(timed["roofline"], timed["pyfastopt 8bit"])
            print(f"{name:<8} {model:<14} {'8-bit roofline':<28} "
                  f"{timed['roofline'].median_ns / 1e3:>10.1f}   pyfastopt 8bit at {share:.0%} "
                  "of the streaming rate of its bytes")  # fmt: skip
            for note in notes:
                print(f"{name:<8} {model:<14} {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
