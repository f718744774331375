"""torch's own optimizer test data (torch.testing._internal.common_optimizers.optim_db).

Every CPU configuration torch tests pyfastopt's optimizers with (including the global foreach/fused
variants) must give torch's for-loop results, and every error input torch expects must raise the
same exception type and message (or warning) from pyfastopt. SparseAdam steps on sparse
gradients (an embedding's: some rows of each parameter).
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

ALL_NAMES = NAMES + SPARSE_NAMES
INFOS = {
    info.optim_cls.__name__: info for info in co.optim_db if info.optim_cls.__name__ in ALL_NAMES
}
DTYPES = [torch.float32, torch.float64]


def _inputs(dtype: torch.dtype) -> list[tuple[str, dict]]:
    out = []
    for name in ALL_NAMES:
        info = INFOS[name]
        for oi in co._get_optim_inputs_including_global_cliquey_kwargs(
            "cpu", dtype, info, skip=("differentiable",)
        ):
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
    start = [p.detach().clone() for p in b]
    ref = getattr(torch.optim, name)(a, **_reference_kwargs(name, kwargs))
    fast = getattr(pyfastopt, name)(b, **kwargs)
    grads = sparse_grad_stream(a) if name in SPARSE_NAMES else None
    run_steps([ref, fast], [a, b], steps=20, grads=grads)
    for pa, pb, p0 in zip(a, b, start):
        torch.testing.assert_close(pb, pa, **TOL[dtype])
        assert not torch.equal(pb.detach(), p0)  # the step moved it


def _error_cases() -> list[tuple[str, int]]:
    out = []
    for name in ALL_NAMES:
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
