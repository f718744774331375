"""The tables behind the benchmarks: bytes per step, workload names, interleaving, parity."""

from __future__ import annotations

import pytest
import torch

from pyfastopt.bench.candidates import build_candidate, is_checked, rounded_reference
from pyfastopt.bench.harness import interleaved
from pyfastopt.bench.impls import IMPLS
from pyfastopt.bench.optimizers import OPTIMIZERS, state_buffers, streams
from pyfastopt.bench.parity import compare, compare_lowp
from pyfastopt.bench.roofline import STREAMS, stream_elements
from pyfastopt.bench.workloads import DEFAULT_WORKLOADS, make_tensors, parse_workload

OPTION_CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("Adagrad", {}),
    ("Adadelta", {}),
    ("RMSprop", {}),
    ("RMSprop", {"momentum": 0.9, "centered": True}),
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("AdamW", {"amsgrad": True, "weight_decay": 0.1}),
    ("NAdam", {}),
    ("RAdam", {}),
    ("Adamax", {}),
    ("ASGD", {}),
    ("Rprop", {}),
]


@pytest.mark.parametrize("cls_name, hparams", OPTION_CASES)
def test_traffic_table_matches_torch_state(cls_name, hparams):
    p = torch.nn.Parameter(torch.randn(10))
    p.grad = torch.randn(10)
    opt = getattr(torch.optim, cls_name)([p], **hparams)
    opt.step()
    buffers = {k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.shape == p.shape}
    assert set(state_buffers(cls_name, hparams)) == buffers
    assert streams(cls_name, hparams) == 3 + 2 * len(buffers)


def test_traffic_of_adafactor_and_sparse_adam():
    # a matrix's factored state is rows + cols values: only p and g are full-size arrays
    p = torch.nn.Parameter(torch.randn(6, 5))
    p.grad = torch.randn(6, 5)
    opt = torch.optim.Adafactor([p])
    opt.step()
    assert not [k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.shape == p.shape]
    assert OPTIMIZERS["adafactor"].bytes_per_step(1000) == 3 * 1000 * 4
    # SparseAdam: Adam's seven arrays, over the elements its gradient lists
    w = parse_workload("embed-100Kx64")
    assert w.step_numel == 1024 * 64 and w.numel == 102_400 * 64
    assert OPTIMIZERS["sparseadam"].bytes_per_step(w.step_numel) == 7 * 1024 * 64 * 4


def test_sparse_workloads_pair_with_sparse_optimizers_only():
    from pyfastopt.bench.candidates import cases

    got = {(c.workload, c.optimizer, c.impl) for c in cases(["embed-1Kx8", "mlp-128"])}
    assert ("embed-1Kx8", "sparseadam", "pyfastopt") in got
    assert ("embed-1Kx8", "sparseadam", "torch") in got
    assert ("embed-1Kx8", "sparseadam", "torch-foreach") not in got  # torch has no foreach
    assert not any(w == "embed-1Kx8" and o != "sparseadam" for w, o, _ in got)
    assert not any(w == "mlp-128" and o == "sparseadam" for w, o, _ in got)
    assert ("mlp-128", "adafactor", "torch-foreach") in got
    params, grads = make_tensors(parse_workload("embed-1Kx8-5"))
    g = grads[0]
    assert g.is_sparse and not g.is_coalesced() and g.coalesce()._nnz() == 51
    assert params[0].shape == g.shape == (1024, 8)


def test_adam_moves_seven_arrays():
    assert OPTIMIZERS["adam"].bytes_per_step(1000) == 7 * 1000 * 4
    assert OPTIMIZERS["sgd"].bytes_per_step(1000) == 5 * 1000 * 4  # momentum 0.9


@pytest.mark.parametrize(
    "name, numel, tensors, train",
    [
        ("mlp-128", 101_770, 4, False),
        ("mlp-512-256", 535_818, 6, False),
        ("mlp-2048-2048", 5_824_522, 6, False),
        ("small-500x1k", 512_000, 500, False),
        ("flat-32M", 1 << 25, 1, False),
        ("fixed-6x16", 96, 6, False),
        ("train-512-256", 535_818, 6, True),
        ("embed-100Kx64", 6_553_600, 1, False),
        ("embed-1Kx8-5", 8192, 1, False),
    ],
)
def test_workload_names(name, numel, tensors, train):
    w = parse_workload(name)
    assert (w.numel, w.tensors, w.train) == (numel, tensors, train)
    assert w.parity_steps >= 1


def test_defaults_parse():
    assert all(parse_workload(n).name == n for n in DEFAULT_WORKLOADS)


@pytest.mark.parametrize(
    "name",
    ["", "mlp", "mlp-", "flat-", "small-10", "cnn-3", "flat-2G", "embed-10x", "embed-8x4-0"],
)
def test_bad_workload_names(name):
    with pytest.raises(ValueError, match="unknown model"):
        parse_workload(name)


def test_interleaved_is_round_robin():
    calls: list[str] = []
    cands = {name: (lambda n=name: calls.append(n)) for name in "ABC"}
    timings = interleaved(cands, rounds=4, warmup=1, min_sample_ns=0)
    assert calls == list("ABC") * 5  # one warm-up round, then four timed rounds
    for t in timings.values():
        assert len(t.samples_ns) == 4 and t.calls_per_sample == 1
        assert t.min_ns <= t.median_ns and t.iqr_ns >= 0


def test_roofline_moves_the_same_bytes():
    assert STREAMS * stream_elements(7 * 4 * 999) * 4 == 7 * 4 * 999


def test_parity_follows_assert_close():
    ref = [torch.ones(5), torch.zeros(3)]
    assert compare(ref, [torch.ones(5) + 5e-6, torch.zeros(3) + 5e-7], steps=1).ok
    bad = compare(ref, [torch.ones(5) + 5e-5, torch.zeros(3)], steps=1)
    assert not bad.ok and "not close" in bad.message and bad.max_abs == pytest.approx(5e-5, 0.1)
    nan = torch.ones(5)
    nan[2] = float("nan")
    assert not compare(ref, [nan, torch.zeros(3)], steps=1).ok
    inf = [torch.full((5,), float("inf")), torch.zeros(3)]
    assert compare(inf, [t.clone() for t in inf], steps=1).ok
    assert not compare(ref, [torch.ones(4), torch.zeros(3)], steps=1).ok


def test_fixed_cost_breakdown_adds_up():
    from pyfastopt.bench.breakdown import breakdown

    r = breakdown(tensors=3, numel=8, calls=200, repeats=2)
    assert r["step_us"] > 0 and r["collect_us"] > 0 and r["native_us"] > 0
    assert abs(r["step_us"] - (r["collect_us"] + r["native_us"] + r["python_us"])) < 1e-9


def test_sixteen_bit_workloads():
    w = parse_workload("mlp-2048-2048:bf16")
    assert (w.dtype, w.lowp, w.itemsize, w.numel) == (torch.bfloat16, True, 2, 5_824_522)
    assert parse_workload("small-4x100:FP16").dtype == torch.float16
    assert not parse_workload("mlp-128").lowp and parse_workload("mlp-128").itemsize == 4
    params, grads = make_tensors(parse_workload("fixed-2x8:bf16"))
    assert all(t.dtype == torch.bfloat16 for t in params + grads)
    assert OPTIMIZERS["adam"].bytes_per_step(1000, 2) == 7 * 1000 * 2


@pytest.mark.parametrize("name", ["mlp-128:bf8", "train-128:bf16", "mlp-128:", "flat-1K:f32"])
def test_bad_sixteen_bit_names(name):
    with pytest.raises(ValueError, match="unknown model"):
        parse_workload(name)


def test_lowp_parity_allows_one_ulp_on_a_tiny_share():
    ref = torch.randn(10_000).to(torch.bfloat16)
    assert compare_lowp([ref], [ref.clone()], steps=1).ok
    one = ref.clone()
    one.view(torch.int16)[5] += 1  # one unit in the last place, one element in 10,000
    p = compare_lowp([ref], [one], steps=1)
    assert p.ok and p.max_abs > 0
    two = ref.clone()
    two.view(torch.int16)[5] += 2
    assert not compare_lowp([ref], [two], steps=1).ok
    many = ref.clone()
    many.view(torch.int16)[:20] += 1  # 0.2% of the elements
    assert not compare_lowp([ref], [many], steps=1).ok
    nan = torch.full((4,), float("nan"), dtype=torch.bfloat16)
    assert compare_lowp([nan], [nan.clone()], steps=1).ok
    assert not compare_lowp([ref], [ref.to(torch.float16)], steps=1).ok


@pytest.mark.parametrize("opt", ["adam", "sgd", "adagrad"])
def test_lowp_reference_is_the_readme_reference(opt):
    """Adam: torch's fused kernel on the 16-bit tensors; SGD/Adagrad: torch's float32 for-loop
    on upcast values rounded every step, which pyfastopt matches and torch's for-loop does not."""
    w = parse_workload("fixed-3x1000:bf16")
    spec = OPTIMIZERS[opt]
    ref = rounded_reference(spec, w)
    assert ref is not None and all(t.dtype == torch.bfloat16 for t in ref)
    fast = build_candidate(spec, w, IMPLS["pyfastopt"])
    fast.advance(w.parity_steps)
    assert fast.check(ref, w.parity_steps).ok
    assert is_checked(IMPLS["pyfastopt"], w) and not is_checked(IMPLS["torch"], w)
    assert is_checked(IMPLS["torch"], parse_workload("fixed-3x1000"))
