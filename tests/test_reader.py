"""The metadata reader: torch's C entry points against its Python accessors (pyfastopt._reader).

The C reader is proven by a probe that reads sample tensors both ways and compares every field;
these tests feed the probe many more layouts, check that it refuses a probe that proves nothing,
and that switching readers in the middle of training changes no number.
"""

from __future__ import annotations

import os

import pytest
import torch

import pyfastopt
from pyfastopt import _core, _reader

DEFAULT_ON = os.environ.get("PYFASTOPT_TORCH_ABI", "1") != "0"
#: torch releases the C reader was checked on (its probe passed; the full suite ran with it)
CHECKED = ("2.5.", "2.13.")


@pytest.fixture(autouse=True)
def _restore_reader():
    yield
    _reader.use_torch_abi(DEFAULT_ON)


def _many_layouts() -> list[torch.Tensor]:
    base = torch.randn(4, 6, 5)
    z = torch.complex(torch.randn(3, 4), torch.randn(3, 4))
    return [
        base,
        base.transpose(0, 2),
        base[1:, ::2, 1:4],  # offset and gaps
        base.permute(2, 0, 1).contiguous(),
        torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        torch.randn(3, 1).expand(3, 7),  # stride 0
        torch.randn(1, 5)[:, :],
        torch.tensor(2.0),
        torch.empty(0, 3),
        torch.ones(5, dtype=torch.bfloat16),
        torch.ones(5, dtype=torch.float16),
        torch.ones(5, dtype=torch.bool),
        torch.arange(7, dtype=torch.int32)[::3],
        torch.nn.Parameter(torch.randn(3, 3, dtype=torch.float64)),
        torch.randn(10).as_strided((3, 2), (2, 3), 1),
        z,
        z.conj(),
        z.conj().t(),
        z.conj().imag,
        torch.view_as_real(z),
        torch.randn(2, 2, requires_grad=True) * 2,  # a non-leaf with autograd history
    ]


def test_the_c_reader_is_on_in_checked_torch_releases():
    if not DEFAULT_ON:
        pytest.skip("switched off with PYFASTOPT_TORCH_ABI=0")
    if not torch.__version__.startswith(CHECKED):
        pytest.skip(f"torch {torch.__version__}: the probe decides; not checked here")
    assert _reader.torch_abi_enabled()


def test_both_readers_agree_on_many_layouts():
    if not DEFAULT_ON:
        pytest.skip("switched off with PYFASTOPT_TORCH_ABI=0")
    # the probe reads every field of every sample both ways and demands agreement
    assert _core.use_torch_abi(_many_layouts(), True)


def test_a_probe_that_proves_nothing_leaves_the_c_reader_off():
    plain = [torch.randn(3), torch.randn(2, 2), torch.randn(4), torch.randn(1)]
    assert not _core.use_torch_abi(plain, True)  # no neg or conj bit was seen set
    assert not _reader.torch_abi_enabled()
    assert not _core.use_torch_abi([], True)
    assert not _core.use_torch_abi([torch.randn(3)] * 10, False)


def test_a_probe_with_a_subclass_is_refused():
    class MyTensor(torch.Tensor):
        pass

    samples = _reader._samples() + [torch.randn(3).as_subclass(MyTensor)]
    assert _core.use_torch_abi(samples, True) is _core.use_torch_abi(_reader._samples(), True)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_switching_readers_between_steps_matches_torch(name):
    kw = {"SGD": {"lr": 0.1, "momentum": 0.9}, "Adam": {"lr": 0.01}, "RMSprop": {"lr": 0.01}}[name]
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(7, generator=g)]
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    ref = getattr(torch.optim, name)(a, foreach=False, **kw)
    fast = getattr(pyfastopt, name)(b, **kw)
    plans = set()
    for i in range(8):
        grads = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in init]
        for p, q, gr in zip(a, b, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        _reader.use_torch_abi(i % 4 < 2 and DEFAULT_ON)
        ref.step()
        fast.step()
        plans.update(id(p) for p in fast._fastopt_plans.values())
        for p, q in zip(a, b):  # the suite's parity tolerances
            tol = (1e-11, 1e-12) if p.dtype == torch.float64 else (1e-5, 1e-6)
            torch.testing.assert_close(q.detach(), p.detach(), rtol=tol[0], atol=tol[1])
    if DEFAULT_ON:
        assert len(plans) >= 3  # each switch sent the plans back to the general path


def test_c_reader_timing_entry_is_reported():
    if not _reader.torch_abi_enabled():
        pytest.skip("the C reader is off")
    names = dict(_core.time_signature_reads(torch.randn(4), 100))
    assert names["C reader (every field)"] > 0
