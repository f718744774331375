"""``pyfastopt.clip_grad_norm_`` against ``torch.nn.utils.clip_grad_norm_``.

The total norm is compared with torch's and with an exact reference of torch's formula (a norm
of per-gradient norms, each rounded to its dtype, computed here in float64); the scaled gradients
are compared bit for bit with torch's own ``mul_`` by torch's own coefficient computed from the
returned total norm. Every case also checks whether the native core or torch's fallback ran.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from torch.nn.utils import clip_grad_norm_ as torch_clip

import pyfastopt
from pyfastopt import _config, clip

INF = float("inf")
NORM_TYPES = [2.0, 1.0, INF, -INF, 0.0, 3.0, 0.5, -1.0]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
MLP = ((128, 784), (128,), (10, 128), (10,))  # MNIST 784-128-10: 101,770 elements
SMALL = ((40, 30), (30,), (7, 3, 5), (1,), (5000,))


@pytest.fixture
def fallbacks(monkeypatch):
    """Counts the calls that went to torch's own clip_grad_norm_."""
    calls: list[tuple] = []
    real = clip._torch_clip_grad_norm_

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(clip, "_torch_clip_grad_norm_", counted)
    return calls


def make_grads(shapes, dtype, seed=0, scale=1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype) for s in shapes]


def with_grads(grads: list[torch.Tensor | None]) -> list[torch.nn.Parameter]:
    params = []
    for g in grads:
        if g is None:
            params.append(torch.nn.Parameter(torch.zeros(3)))
            continue
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype))
        p.grad = g.clone()
        params.append(p)
    return params


def reference_total(grads: list[torch.Tensor], p: float) -> float:
    """torch's formula, exactly: per-gradient norms in float64 rounded to their dtype, then their
    norm in float64 rounded to the promoted dtype."""
    norms = [torch.linalg.vector_norm(g.double(), p).to(g.dtype).double() for g in grads]
    out = grads[0].dtype
    for g in grads[1:]:
        out = torch.promote_types(out, g.dtype)
    return torch.linalg.vector_norm(torch.stack(norms), p).to(out).item()


def torch_scaled(grads: list[torch.Tensor], total: torch.Tensor, max_norm: float):
    """The gradients as torch's second pass scales them by a given total norm."""
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g.clone().mul_(coef) for g in grads]


def ulp(x: float, dtype: torch.dtype) -> float:
    """The spacing of ``dtype``'s values at ``x`` (subnormals included)."""
    info = torch.finfo(dtype)
    if not math.isfinite(x):
        return 0.0
    exponent = max(math.frexp(abs(x))[1] - 1, math.frexp(info.tiny)[1] - 1)
    return 2.0**exponent * info.eps


def within_ulps(actual: float, expected: float, dtype: torch.dtype, n: float = 1) -> bool:
    return actual == expected or abs(actual - expected) <= n * ulp(expected, dtype)


def assert_same_bits(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=0, atol=0, equal_nan=True)


# ---- parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", NORM_TYPES)
def test_parity_with_torch(dtype, p, fallbacks):
    grads = make_grads(MLP, dtype, seed=1)
    ref = reference_total(grads, p)
    max_norm = ref / 2 if ref > 0 else 1.0  # so that it really clips
    ours, theirs = with_grads(grads), with_grads(grads)
    total = pyfastopt.clip_grad_norm_(ours, max_norm, p)
    expected = torch_clip(theirs, max_norm, p)
    assert not fallbacks
    assert (
        total.dtype == expected.dtype == dtype and total.shape == () and total.device.type == "cpu"
    )
    # torch's formula computed in float64, to the last bit of the dtype (float64: within the
    # rounding of two float64 sums of 1e5 terms); float16 norms may overflow, as in torch
    n = 1e-12 / torch.finfo(dtype).eps if dtype == torch.float64 else 1
    assert within_ulps(total.item(), ref, dtype, n), (total.item(), ref)
    # torch's own reduction carries its float rounding (hundreds of ulps at this size)
    # (bfloat16 / float16: torch sums in float, so it is within 1 ulp of the stored type)
    if dtype in (torch.float32, torch.float64):
        rtol = 1e-4 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(total, expected, rtol=rtol, atol=0)
    else:
        assert within_ulps(total.item(), expected.item(), dtype), (total, expected)
    # the second pass is torch's mul_ by torch's coefficient of our total, bit for bit
    assert_same_bits([q.grad for q in ours], torch_scaled(grads, total, max_norm))
    if dtype != torch.float16:  # (float16: some of these norms overflow or underflow)
        assert total.item() > max_norm  # it clipped: the gradients shrank
        assert ours[0].grad.double().abs().sum() < grads[0].double().abs().sum()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("p", NORM_TYPES)
def test_low_precision_within_one_ulp_of_float32(dtype, p):
    # against torch computing on float32 upcasts, rounded once: 1 ulp of the stored type
    for seed in range(5):
        grads = make_grads(SMALL, dtype, seed=seed)
        total = pyfastopt.clip_grad_norm_(with_grads(grads), INF, p)
        upcast = torch_clip(with_grads([g.float() for g in grads]), INF, p).to(dtype).item()
        assert within_ulps(total.item(), upcast, dtype), (seed, total.item(), upcast)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_coefficient_and_scaling_bit_for_bit(dtype):
    # torch rounds max_norm / (total + 1e-6) and its clamp op by op in the total's dtype
    gen = torch.Generator().manual_seed(7)
    for i in range(150):
        n = 1 + int(torch.randint(1, 40, (), generator=gen))
        scale = 10.0 ** float(torch.empty(()).uniform_(-7, 3, generator=gen))
        grads = make_grads(((n,), (3,)), dtype, seed=i, scale=scale)
        max_norm = 10.0 ** float(torch.empty(()).uniform_(-7, 3, generator=gen))
        if i % 5 == 0:
            max_norm = -max_norm  # torch flips the gradients then
        ours = with_grads(grads)
        total = pyfastopt.clip_grad_norm_(ours, max_norm)
        assert_same_bits([q.grad for q in ours], torch_scaled(grads, total, max_norm))


@pytest.mark.parametrize(
    "dtypes, expected",
    [
        ((torch.bfloat16, torch.float32), torch.float32),
        ((torch.float16, torch.bfloat16), torch.float32),
        ((torch.float32, torch.float64, torch.float32), torch.float64),
        ((torch.bfloat16, torch.float16, torch.float64), torch.float64),
    ],
    ids=str,
)
@pytest.mark.parametrize("p", [2.0, 1.0, INF, 0.0, 3.0])
def test_mixed_dtypes(dtypes, expected, p, fallbacks):
    grads = [make_grads(((300, 20),), dt, seed=i)[0] for i, dt in enumerate(dtypes)]
    ref = reference_total(grads, p)
    max_norm = ref / 3 if ref > 0 else 1.0
    ours, theirs = with_grads(grads), with_grads(grads)
    total = pyfastopt.clip_grad_norm_(ours, max_norm, p)
    assert not fallbacks
    assert total.dtype == torch_clip(theirs, max_norm, p).dtype == expected
    n = 1e-12 / torch.finfo(expected).eps if expected == torch.float64 else 1
    assert within_ulps(total.item(), ref, expected, n)
    assert_same_bits([q.grad for q in ours], torch_scaled(grads, total, max_norm))
    for q, t in zip(ours, theirs):
        torch.testing.assert_close(q.grad, t.grad, rtol=1e-2, atol=1e-6)


# ---- the reduction order ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, INF])
def test_independent_of_thread_count(dtype, p):
    shapes = ((512, 784), (512,), (256, 512), (256,), (10, 256), (10,))
    grads = make_grads(shapes, dtype, seed=3)
    assert sum(g.numel() for g in grads) > 4 * _config.PARALLEL_MIN_ELEMENTS
    results = []
    for threads in (1, 2, 3):
        pyfastopt.set_num_threads(threads)
        ps = with_grads(grads)
        total = pyfastopt.clip_grad_norm_(ps, 1.0, p)
        results.append((total, [q.grad for q in ps]))
    for total, gs in results[1:]:
        assert total.item() == results[0][0].item()
        assert_same_bits(gs, results[0][1])
    assert results[0][0].item() > 1.0  # it clipped


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_independent_of_simd_path(dtype):
    # the lane structure is fixed in the source, so every SIMD build sums in the same order
    grads = make_grads(((300, 300), (77,), (5, 999)), dtype, seed=5)
    paths = pyfastopt._core.supported_simd()
    results: dict[tuple[str, float], tuple[float, list[torch.Tensor]]] = {}
    try:
        for path in paths:
            _config.set_simd(path)
            for p in (2.0, 1.0, 3.0, -INF):
                ps = with_grads(grads)
                total = pyfastopt.clip_grad_norm_(ps, 1e-3, p).item()
                results[path, p] = (total, [q.grad for q in ps])
    finally:
        _config.set_simd("auto")
    assert "baseline" in paths
    for (path, p), (total, gs) in results.items():
        first_total, first_grads = results[paths[0], p]
        assert total == first_total, (path, p)
        assert_same_bits(gs, first_grads)


# ---- torch's semantics --------------------------------------------------------------------------


def test_matches_torch_on_mnist_mlp_float32():
    grads = make_grads(((512, 784), (512,), (256, 512), (256,), (10, 256), (10,)), torch.float32)
    ours, theirs = with_grads(grads), with_grads(grads)
    total = pyfastopt.clip_grad_norm_(ours, 1.0)
    expected = torch_clip(theirs, 1.0)
    torch.testing.assert_close(total, expected, rtol=1e-4, atol=0)
    for q, t in zip(ours, theirs):
        torch.testing.assert_close(q.grad, t.grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("p", [2.0, 1.0, INF])
def test_error_if_nonfinite(p, fallbacks):
    grads = make_grads(SMALL, torch.float32)
    grads[2][1, 1, 1] = INF
    ours, theirs = with_grads(grads), with_grads(grads)
    with pytest.raises(RuntimeError) as ours_err:
        pyfastopt.clip_grad_norm_(ours, 1.0, p, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as torch_err:
        torch_clip(theirs, 1.0, p, error_if_nonfinite=True)
    assert str(ours_err.value) == str(torch_err.value)
    assert f"order {p}" in str(ours_err.value)
    assert_same_bits([q.grad for q in ours], grads)  # nothing scaled, as in torch
    assert not fallbacks
    # without the flag: an infinite norm, a zero coefficient, NaN where the gradient was inf
    total = pyfastopt.clip_grad_norm_(ours, 1.0, p)
    expected = torch_clip(theirs, 1.0, p)
    assert total.item() == expected.item() == INF
    assert_same_bits([q.grad for q in ours], [t.grad for t in theirs])


def test_nan_gradient_gives_nan_norm_and_nan_gradients():
    grads = make_grads(SMALL, torch.float32)
    grads[0][3, 4] = float("nan")
    for p in (2.0, INF, -INF, 3.0):
        ours, theirs = with_grads(grads), with_grads(grads)
        total = pyfastopt.clip_grad_norm_(ours, 1.0, p)
        assert math.isnan(total.item()) and math.isnan(torch_clip(theirs, 1.0, p).item())
        assert_same_bits([q.grad for q in ours], [t.grad for t in theirs])
        with pytest.raises(RuntimeError, match="non-finite"):
            pyfastopt.clip_grad_norm_(with_grads(grads), 1.0, p, error_if_nonfinite=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_float_range_like_torch(dtype):
    # torch accumulates float32 and bfloat16 in float: squares past 3.4e38 make an infinite norm,
    # squares below the subnormals a zero one. The double accumulator must not be "better".
    for value, p in ((1e20, 2.0), (1e37, 1.0), (1e-25, 2.0), (1e-30, 3.0)):
        grads = [torch.full((100,), value, dtype=dtype), torch.full((7,), value, dtype=dtype)]
        ours, theirs = with_grads(grads), with_grads(grads)
        total = pyfastopt.clip_grad_norm_(ours, 1.0, p)
        expected = torch_clip(theirs, 1.0, p)
        assert total.item() == expected.item(), (value, p, total, expected)
        assert_same_bits([q.grad for q in ours], [t.grad for t in theirs])
    with pytest.raises(RuntimeError, match="non-finite"):
        pyfastopt.clip_grad_norm_(with_grads([torch.full((4,), 1e20)]), 1.0, 2.0, True)


def test_float16_norm_overflows_as_in_torch():
    grads = [torch.full((1000,), 100.0, dtype=torch.float16)]  # 1-norm 1e5 > 65504
    total = pyfastopt.clip_grad_norm_(with_grads(grads), 1.0, 1.0)
    assert total.dtype == torch.float16
    assert total.item() == torch_clip(with_grads(grads), 1.0, 1.0).item() == INF


def test_empty_and_none():
    assert pyfastopt.clip_grad_norm_([], 1.0).item() == 0.0
    total = pyfastopt.clip_grad_norm_([], 1.0)
    assert total.dtype == torch.get_default_dtype() == torch_clip([], 1.0).dtype
    params = with_grads([None, None])
    assert pyfastopt.clip_grad_norm_(params, 1.0, INF).item() == 0.0
    assert all(q.grad is None for q in params)
    with pytest.warns(UserWarning, match="empty generator"):
        pyfastopt.clip_grad_norm_((q for q in []), 1.0)
    with pytest.raises(ValueError):
        pyfastopt.clip_grad_norm_([], 1.0, norm_type="two")  # torch converts before


@pytest.mark.parametrize("max_norm", [None, "abc", torch.tensor([1.0, 2.0])])
def test_bad_max_norm_raises_without_gradients(max_norm):
    # torch converts max_norm before its own early return when no parameter has a gradient
    for params in ([], with_grads([None])):
        with pytest.raises((TypeError, ValueError)) as theirs:
            torch_clip(params, max_norm)
        with pytest.raises(type(theirs.value), match=re.escape(str(theirs.value))):
            pyfastopt.clip_grad_norm_(params, max_norm)


def test_empty_generator_warning_points_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyfastopt.clip_grad_norm_((x for x in ()), 1.0)
    assert caught and caught[0].filename == __file__


def test_none_grads_are_skipped(fallbacks):
    grads = make_grads(SMALL, torch.float32)
    ours = with_grads([grads[0], None, grads[1], None, grads[2]])
    theirs = with_grads([grads[0], None, grads[1], None, grads[2]])
    total = pyfastopt.clip_grad_norm_(ours, 0.5)
    expected = torch_clip(theirs, 0.5)
    assert not fallbacks
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)
    assert ours[1].grad is None and ours[3].grad is None
    assert_same_bits([ours[i].grad for i in (0, 2, 4)], torch_scaled(grads[:3], total, 0.5))


def test_single_tensor_and_generator(fallbacks):
    g = make_grads(((64, 64),), torch.float32)[0]
    (p,) = with_grads([g])
    total = pyfastopt.clip_grad_norm_(p, 1.0)
    torch.testing.assert_close(total, torch.linalg.vector_norm(g), rtol=1e-6, atol=0)
    torch.testing.assert_close(
        torch.linalg.vector_norm(p.grad), torch.tensor(1.0), rtol=1e-5, atol=0
    )
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    model(torch.randn(3, 5)).sum().backward()
    expected = torch.linalg.vector_norm(torch.stack([q.grad.norm() for q in model.parameters()]))
    assert pyfastopt.clip_grad_norm_(model.parameters(), 1e-3).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    assert not fallbacks


def test_arguments_as_torch_takes_them(fallbacks):
    grads = make_grads(SMALL, torch.float32)
    for args in (
        dict(max_norm=torch.tensor(0.5), norm_type="inf"),
        dict(max_norm=2, norm_type=1),
        dict(max_norm=0.5, foreach=True),
        dict(max_norm=0.5, foreach=False),
        dict(max_norm=-0.5),
        dict(max_norm=INF),
        dict(max_norm=float("nan")),
    ):
        ours, theirs = with_grads(grads), with_grads(grads)
        total = pyfastopt.clip_grad_norm_(ours, **args)
        expected = torch_clip(theirs, **args)
        torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)
        for q, t in zip(ours, theirs):
            torch.testing.assert_close(q.grad, t.grad, rtol=1e-5, atol=1e-8, equal_nan=True)
    assert not fallbacks


def test_coefficient_one_leaves_gradients_and_bumps_versions():
    grads = make_grads(SMALL, torch.float32)
    ours, theirs = with_grads(grads), with_grads(grads)
    before = [q.grad._version for q in ours]
    before_t = [t.grad._version for t in theirs]
    pyfastopt.clip_grad_norm_(ours, 1e9)
    torch_clip(theirs, 1e9)
    assert_same_bits([q.grad for q in ours], grads)
    assert [q.grad._version - b for q, b in zip(ours, before)] == [
        t.grad._version - b for t, b in zip(theirs, before_t)
    ]
    assert all(q.grad._version > b for q, b in zip(ours, before))


def test_dense_non_contiguous_gradients_stay_native(fallbacks):
    base = make_grads(((30, 40), (2, 3, 5, 7)), torch.float32, seed=4)
    transposed = base[0].t()  # (40, 30), strides (1, 40)
    channels_last = base[1].contiguous(memory_format=torch.channels_last)
    assert not transposed.is_contiguous() and not channels_last.is_contiguous()
    grads = [transposed, channels_last]
    ours, theirs = with_grads([]), with_grads([])
    for g in grads:
        for lst in (ours, theirs):
            q = torch.nn.Parameter(torch.zeros(g.shape))
            q.grad = g.clone(memory_format=torch.preserve_format)
            lst.append(q)
    assert not ours[0].grad.is_contiguous()
    total = pyfastopt.clip_grad_norm_(ours, 0.5)
    expected = torch_clip(theirs, 0.5)
    assert not fallbacks
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    assert ours[0].grad.stride() == theirs[0].grad.stride()
    assert_same_bits([q.grad for q in ours], torch_scaled(grads, total, 0.5))


def test_flat_buffer_views_stay_native(fallbacks):
    # gradients that are disjoint views of one buffer (as DDP buckets make them) do not overlap
    flat = make_grads(((2000,),), torch.float32)[0]
    views = [flat[:1200].view(40, 30), flat[1200:]]
    params = [torch.nn.Parameter(torch.zeros(v.shape)) for v in views]
    for q, v in zip(params, views):
        q.grad = v
    theirs = with_grads([v.clone() for v in views])
    total = pyfastopt.clip_grad_norm_(params, 0.5)
    expected = torch_clip(theirs, 0.5)
    assert not fallbacks
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        flat, torch.cat([t.grad.flatten() for t in theirs]), rtol=1e-6, atol=0
    )


# ---- what goes to torch -------------------------------------------------------------------------


def _compare_fallback(ours, theirs, *args, **kwargs):
    total = pyfastopt.clip_grad_norm_(ours, *args, **kwargs)
    expected = torch_clip(theirs, *args, **kwargs)
    assert total.dtype == expected.dtype and total.device == expected.device
    assert type(total) is type(expected)
    if total.device.type != "meta":
        assert_same_bits([total], [expected])
        assert_same_bits([q.grad for q in ours], [t.grad for t in theirs])
    return total


def test_fallback_gapped_gradient(fallbacks):
    grads = make_grads(((40, 60),), torch.float32)
    ours, theirs = with_grads([torch.zeros(40, 30)]), with_grads([torch.zeros(40, 30)])
    ours[0].grad = grads[0][:, ::2]
    theirs[0].grad = grads[0].clone()[:, ::2]
    _compare_fallback(ours, theirs, 0.5)
    assert len(fallbacks) == 1


def test_fallback_aliased_gradients(fallbacks):
    # one gradient tensor on two parameters: torch counts it twice and scales it twice
    g = make_grads(((50,),), torch.float32)[0]
    ours = [torch.nn.Parameter(torch.zeros(50)) for _ in range(2)]
    theirs = [torch.nn.Parameter(torch.zeros(50)) for _ in range(2)]
    shared_o, shared_t = g.clone(), g.clone()
    for q in ours:
        q.grad = shared_o
    for t in theirs:
        t.grad = shared_t
    _compare_fallback(ours, theirs, 0.5)
    assert len(fallbacks) == 1
    torch.testing.assert_close(
        shared_o, g * (0.5 / (g.norm() * math.sqrt(2))) ** 2, rtol=1e-4, atol=0
    )


def test_fallback_overlapping_views(fallbacks):
    flat = make_grads(((100,),), torch.float32)[0]
    ours = [torch.nn.Parameter(torch.zeros(60)) for _ in range(2)]
    theirs = [torch.nn.Parameter(torch.zeros(60)) for _ in range(2)]
    fo, ft = flat.clone(), flat.clone()
    ours[0].grad, ours[1].grad = fo[:60], fo[40:]
    theirs[0].grad, theirs[1].grad = ft[:60], ft[40:]
    _compare_fallback(ours, theirs, 0.5)
    assert len(fallbacks) == 1
    assert_same_bits([fo], [ft])


def test_fallback_subclass_and_complex(fallbacks):
    class Sub(torch.Tensor):
        pass

    g = make_grads(((20,),), torch.float32)[0]
    ours, theirs = with_grads([g]), with_grads([g])
    ours[0].grad = g.clone().as_subclass(Sub)
    theirs[0].grad = g.clone().as_subclass(Sub)
    total = _compare_fallback(ours, theirs, 0.5)
    assert type(total) is Sub
    c = torch.randn(10, dtype=torch.complex64)
    _compare_fallback(with_grads([c]), with_grads([c]), 0.5)
    assert len(fallbacks) == 2


def test_fallback_raises_what_torch_raises(fallbacks):
    # sparse gradients: torch's vector_norm refuses them
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(NotImplementedError):
        torch_clip(emb.parameters(), 0.1)
    with pytest.raises(NotImplementedError):
        pyfastopt.clip_grad_norm_(emb.parameters(), 0.1)
    # a neg view: torch's foreach mul_ refuses it
    x = torch.nn.Parameter(torch.zeros(4))
    x.grad = torch._neg_view(torch.arange(4.0))
    with pytest.raises(RuntimeError, match="negation"):
        pyfastopt.clip_grad_norm_([x], 1.0)
    # an inference tensor: torch's mul_ writes it, then refuses to bump its version
    with torch.inference_mode():
        ig, ig_torch = torch.ones(3), torch.ones(3)
    y, y_torch = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    y.grad, y_torch.grad = ig, ig_torch
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        pyfastopt.clip_grad_norm_([y], 0.1)
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        torch_clip([y_torch], 0.1)
    assert_same_bits([ig], [ig_torch])
    assert len(fallbacks) == 3


@pytest.mark.parametrize("p", [INF, -INF, -1.0])
def test_fallback_empty_gradient_without_identity(p, fallbacks):
    params = with_grads([torch.zeros(0), torch.ones(3)])
    with pytest.raises(RuntimeError, match="empty tensor"):
        pyfastopt.clip_grad_norm_(params, 1.0, p)
    assert len(fallbacks) == 1
    # with a norm that has an identity the empty gradient is native and counts as 0
    total = pyfastopt.clip_grad_norm_(with_grads([torch.zeros(0), torch.ones(3)]), 1.0, 2.0)
    assert total.item() == pytest.approx(math.sqrt(3))
    assert len(fallbacks) == 1


def test_fallback_nan_norm_type(fallbacks):
    grads = make_grads(SMALL, torch.float32)
    total = _compare_fallback(with_grads(grads), with_grads(grads), 1.0, float("nan"))
    assert math.isnan(total.item())
    assert len(fallbacks) == 1


def test_fallback_other_devices(fallbacks):
    p = torch.nn.Parameter(torch.empty(3, device="meta"))
    p.grad = torch.empty(3, device="meta")
    total = pyfastopt.clip_grad_norm_([p], 1.0)
    assert total.device.type == "meta" and total.dtype == torch.float32
    assert len(fallbacks) == 1


# ---- the native core's own checks ---------------------------------------------------------------


def test_core_refuses_malformed_tables():
    out = torch.empty(())
    g = torch.ones(8)
    core = pyfastopt._core.clip_grad_norm
    ok = [8, 0, g.data_ptr()]
    assert core(ok, 2.0, 1.0, 0, out.data_ptr(), False, False, 1, 1 << 15)[0] == 0
    assert out.item() == pytest.approx(math.sqrt(8))
    for table, dtype_code, addr, p in (
        ([8, 0], 0, out.data_ptr(), 2.0),  # not a multiple of 3
        ([8, 9, g.data_ptr()], 0, out.data_ptr(), 2.0),  # bad dtype code
        ([-1, 0, g.data_ptr()], 0, out.data_ptr(), 2.0),  # negative count
        ([8, 0, 0], 0, out.data_ptr(), 2.0),  # null address
        ([8, 0, g.data_ptr() + 1], 0, out.data_ptr(), 2.0),  # misaligned
        (ok, 0, 0, 2.0),  # null output
        (ok, 7, out.data_ptr(), 2.0),  # bad output dtype
        (ok, 0, out.data_ptr(), float("nan")),  # NaN norm type
        ([0, 0, 0], 0, out.data_ptr(), INF),  # the inf norm of an empty gradient
    ):
        with pytest.raises(ValueError):
            core(table, p, 1.0, dtype_code, addr, True, False, 1, 1 << 15)
    assert g.sum().item() == 8.0  # nothing written


def test_core_reports_overlap_without_touching_anything():
    out = torch.full((), 5.0)
    g = torch.ones(8)
    status, _, scaled = pyfastopt._core.clip_grad_norm(
        [8, 0, g.data_ptr(), 4, 0, g.data_ptr() + 16],
        2.0,
        0.1,
        0,
        out.data_ptr(),
        True,
        False,
        1,
        1,
    )
    assert (status, scaled) == (1, False)
    assert out.item() == 5.0 and g.sum().item() == 8.0


def test_fallback_under_torch_compile(fallbacks, monkeypatch):
    # torch.compile traces torch's own function; the native call would be opaque to it
    monkeypatch.setattr(clip, "_is_compiling", lambda: True)
    grads = make_grads(SMALL, torch.float32)
    _compare_fallback(with_grads(grads), with_grads(grads), 0.5)
    assert len(fallbacks) == 1
