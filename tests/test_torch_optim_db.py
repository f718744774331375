"""torch's own optimizer test data (torch.testing._internal.common_optimizers.optim_db).

Every CPU configuration torch tests pyfastopt's optimizers with (including the global
foreach/fused variants, and ``differentiable=True``, which is torch's own step) must give torch's
for-loop results, and every error input torch expects must raise the same exception type and
message (or warning) from pyfastopt. SparseAdam steps on sparse gradients (an embedding's: some
rows of each parameter); LBFGS takes step(closure).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import make_params, run_steps, sparse_grad_stream
from optim_db import NAMES, SPARSE_NAMES, TOL

import pyfastopt

pytest.importorskip("expecttest", reason="torch's internal test data needs expecttest")
co = pytest.importorskip("torch.testing._internal.common_optimizers")

#: step(closure) only: their own configuration test below
CLOSURE_NAMES = ("LBFGS",)
ALL_NAMES = NAMES + SPARSE_NAMES
INFOS = {
    info.optim_cls.__name__: info
    for info in co.optim_db
    if info.optim_cls.__name__ in ALL_NAMES + CLOSURE_NAMES
}
DTYPES = [torch.float32, torch.float64]


def _inputs(dtype: torch.dtype, names: tuple[str, ...] = ALL_NAMES) -> list[tuple[str, dict]]:
    out = []
    for name in names:
        info = INFOS[name]
        for oi in co._get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, info, skip=()):
            out.append((name, dict(oi.kwargs)))
    return out


def _reference_kwargs(name: str, kwargs: dict) -> dict:
    ref = {k: v for k, v in kwargs.items() if k not in ("foreach", "fused")}
    if name not in SPARSE_NAMES:  # SparseAdam has a for-loop only
        ref["foreach"] = False
    return ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "name,kwargs", _inputs(torch.float32), ids=lambda x: x if isinstance(x, str) else str(x)
)
def test_torch_optim_inputs_match_forloop(name, kwargs, dtype):
    a, b = make_params(dtype, shapes=((10, 5), (5,), (3, 4, 2)))
    if kwargs.get("differentiable"):  # (torch's step then updates non-leaf tensors only)
        a, b = [p * 1 for p in a], [p * 1 for p in b]
    start = [p.detach().clone() for p in b]
    ref = getattr(torch.optim, name)(a, **_reference_kwargs(name, kwargs))
    fast = getattr(pyfastopt, name)(b, **kwargs)
    grads = sparse_grad_stream(a) if name in SPARSE_NAMES else None
    run_steps([ref, fast], [a, b], steps=20, grads=grads)
    for pa, pb, p0 in zip(a, b, start):
        torch.testing.assert_close(pb, pa, **TOL[dtype])
        assert not torch.equal(pb.detach(), p0)  # the step moved it


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "name,kwargs",
    _inputs(torch.float32, CLOSURE_NAMES),
    ids=lambda x: x if isinstance(x, str) else str(x),
)
def test_torch_optim_inputs_match_closure_steps(name, kwargs, dtype):
    """LBFGS's configurations: three step(closure) calls on a smooth, well-conditioned loss
    (up to max_iter iterations each), the iterates within the parity table's tolerance scaled as
    in tests/test_lbfgs.py (dot products summed in another order)."""
    a, b = make_params(dtype, shapes=((10, 5), (5,), (3, 4, 2)))
    gen = torch.Generator().manual_seed(2)
    targets = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in a]
    start = [p.detach().clone() for p in b]

    def closure_for(opt: torch.optim.Optimizer, params: list[torch.Tensor]):
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = sum(((p - t) ** 2).sum() + 0.1 * (p**4).sum() for p, t in zip(params, targets))
            loss.backward()
            return loss

        return closure

    ref = getattr(torch.optim, name)(a, **kwargs)
    fast = getattr(pyfastopt, name)(b, **kwargs)
    for _ in range(3):
        ref.step(closure_for(ref, a))
        fast.step(closure_for(fast, b))
    tol = TOL[dtype]
    for pa, pb, p0 in zip(a, b, start):
        torch.testing.assert_close(pb, pa, rtol=tol["rtol"] * 30, atol=tol["atol"] * 30)
        assert not torch.equal(pb.detach(), p0)  # the step moved it
    assert fast.state_dict()["state"][0]["n_iter"] == ref.state_dict()["state"][0]["n_iter"]


def _error_cases() -> list[tuple[str, int]]:
    out = []
    for name in ALL_NAMES + CLOSURE_NAMES:
        n = len(INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32))
        out.extend((name, i) for i in range(n))
    return out


@pytest.mark.parametrize("name,index", _error_cases())
def test_torch_error_inputs(name, index):
    info = INFOS[name]
    err = info.optim_error_inputs_func(device="cpu", dtype=torch.float32)[index]
    oi = err.optimizer_error_input
    params = oi.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2, 3))]
    cls = getattr(pyfastopt, name)
    construction = err.error_on == co.OptimizerErrorEnum.CONSTRUCTION_ERROR
    if issubclass(err.error_type, Warning):
        with pytest.warns(err.error_type, match=err.error_regex):
            opt = cls(params, **oi.kwargs)
            if not construction:
                opt.step()
        return
    with pytest.raises(err.error_type, match=err.error_regex):
        opt = cls(params, **oi.kwargs)
        if not construction:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt.step()


def test_torch_data_is_not_empty():
    """Both tables are populated, so the tests above check something."""
    assert len(_error_cases()) > 20
    assert len(_inputs(torch.float32)) > 40
