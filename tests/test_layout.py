"""Non-contiguous parameters, gradients and state give torch's for-loop results."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_state, grad_stream
from optim_db import TOL, case_id, cases, make_pair


def _transposed() -> torch.Tensor:
    return torch.randn(12, 7).t()


def _channels_last() -> torch.Tensor:
    return torch.randn(3, 4, 5, 6).to(memory_format=torch.channels_last)


def _strided_slice() -> torch.Tensor:
    return torch.randn(10, 12)[:, ::3]  # gaps between elements: not dense


def _expanded_dim() -> torch.Tensor:
    return torch.randn(5, 1, 4).permute(2, 1, 0)


MAKERS = {
    "transposed": _transposed,
    "channels_last": _channels_last,
    "strided_slice": _strided_slice,
    "permuted": _expanded_dim,
}

GRAD_LAYOUTS = {
    "grad_contiguous": lambda g: g.contiguous(),
    "grad_like_param": lambda g: g,
    "grad_transposed_storage": lambda g: g.t().contiguous().t() if g.dim() == 2 else g,
}


@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
@pytest.mark.parametrize("layout", MAKERS)
@pytest.mark.parametrize("case", cases()[::3], ids=case_id)
def test_non_contiguous_params(case, layout, grad_layout):
    name, kw = case
    torch.manual_seed(0)
    base = MAKERS[layout]()
    a = [base.clone(memory_format=torch.preserve_format).requires_grad_()]
    if layout == "strided_slice":
        a = [torch.randn(10, 12)[:, ::3].requires_grad_()]
    b = [a[0].detach().clone(memory_format=torch.preserve_format).requires_grad_()]
    if layout == "strided_slice":  # keep the gaps in pyfastopt's copy too
        holder = torch.zeros(10, 12)
        holder[:, ::3] = a[0].detach()
        b = [holder[:, ::3].requires_grad_()]
        assert not b[0].is_contiguous()
    ref, fast = make_pair(name, kw, a, b)
    grads = grad_stream(a)
    for _ in range(25):
        g = grads()[0]
        a[0].grad = g.clone()
        b[0].grad = GRAD_LAYOUTS[grad_layout](g.clone(memory_format=torch.preserve_format))
        ref.step()
        fast.step()
    torch.testing.assert_close(b[0], a[0], **TOL[torch.float32])
    assert_same_state(ref, fast, **TOL[torch.float32])


def test_grad_layout_change_between_steps():
    a = [_channels_last().requires_grad_()]
    b = [a[0].detach().clone(memory_format=torch.preserve_format).requires_grad_()]
    ref, fast = make_pair("Adam", {"lr": 0.01}, a, b)
    grads = grad_stream(a)
    for i in range(12):
        g = grads()[0]
        a[0].grad = g.clone()
        b[0].grad = g.contiguous() if i % 3 == 0 else g.clone(memory_format=torch.channels_last)
        ref.step()
        fast.step()
    torch.testing.assert_close(b[0], a[0], **TOL[torch.float32])


def test_state_with_another_layout_is_relaid_out():
    a = [_channels_last().requires_grad_()]
    b = [a[0].detach().clone(memory_format=torch.preserve_format).requires_grad_()]
    ref, fast = make_pair("Adam", {"lr": 0.01}, a, b)
    grads = grad_stream(a)
    for i in range(10):
        g = grads()[0]
        a[0].grad, b[0].grad = g.clone(), g.clone()
        ref.step()
        fast.step()
        if i == 4:  # a checkpoint stored the buffers contiguous
            fast.load_state_dict(
                {
                    "state": {
                        0: {k: v.contiguous() for k, v in fast.state_dict()["state"][0].items()}
                    },
                    "param_groups": fast.state_dict()["param_groups"],
                }
            )
    torch.testing.assert_close(b[0], a[0], **TOL[torch.float32])
