"""Threads: results independent of the thread count, safe concurrent steps, good neighbours."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
from helpers import make_params, run_steps
from optim_db import NAMES

import pyfastopt

BIG = ((300, 500), (70000,), (3,))  # above the parallel threshold


@pytest.mark.parametrize("name", NAMES)
def test_results_do_not_depend_on_thread_count(name):
    finals = []
    for threads in (1, 2, 3):
        pyfastopt.set_num_threads(threads)
        _, b = make_params(torch.float32, shapes=BIG)
        opt = getattr(pyfastopt, name)(b, lr=0.01)
        run_steps([opt], [b], 5)
        finals.append([p.detach().clone() for p in b])
    for other in finals[1:]:
        for x, y in zip(finals[0], other):
            assert torch.equal(x, y)  # bitwise


def test_two_python_threads_stepping_at_once():
    def train(params, opt, out, barrier):
        barrier.wait()
        run_steps([opt], [params], 20)
        out.append([p.detach().clone() for p in params])

    _, b1 = make_params(torch.float32, shapes=BIG, seed=0)
    _, b2 = make_params(torch.float32, shapes=BIG, seed=1)
    o1, o2 = pyfastopt.Adam(b1, lr=0.01), pyfastopt.RMSprop(b2, lr=0.01)
    out1: list = []
    out2: list = []
    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=train, args=(b1, o1, out1, barrier)),
        threading.Thread(target=train, args=(b2, o2, out2, barrier)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert out1 and out2
    _, c1 = make_params(torch.float32, shapes=BIG, seed=0)
    _, c2 = make_params(torch.float32, shapes=BIG, seed=1)
    run_steps([pyfastopt.Adam(c1, lr=0.01)], [c1], 20)
    run_steps([pyfastopt.RMSprop(c2, lr=0.01)], [c2], 20)
    for x, y in zip(out1[0] + out2[0], c1 + c2):
        assert torch.equal(x, y.detach())


def test_set_num_threads_validation_and_default():
    pyfastopt.set_num_threads(None)
    assert pyfastopt.get_num_threads() == torch.get_num_threads()
    pyfastopt.set_num_threads(1)
    assert pyfastopt.get_num_threads() == 1
    for bad in (0, -1, 1.5, "2", True, 10**5):
        with pytest.raises(ValueError):
            pyfastopt.set_num_threads(bad)


_SIDE_EFFECTS = r"""
import numpy as np, torch
def probe():
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    return (torch.get_num_threads(), torch.get_num_interop_threads(),
            float((tiny * 0.5).item()) != 0.0, float(np.float32(1e-40) * np.float32(0.5)) != 0.0)
before = probe()
import pyfastopt
p = torch.nn.Parameter(torch.randn(100000)); p.grad = torch.randn(100000)
pyfastopt.Adam([p]).step()
after = probe()
assert before == after, (before, after)
assert before[2] and before[3], "denormals must be preserved"
maps = open("/proc/self/maps").read()
libs = {line.split()[-1] for line in maps.splitlines() if "libgomp" in line}
print(len(libs))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_import_changes_nothing_in_torch_and_shares_one_openmp_runtime(tmp_path):
    out = subprocess.run(  # cwd outside the source tree, so the installed package is imported
        [sys.executable, "-c", _SIDE_EFFECTS], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1", "a second OpenMP runtime was loaded"


def test_show_config_reports_path_and_threads(capsys):
    pyfastopt.show_config()
    text = capsys.readouterr().out
    assert pyfastopt._core.simd_path() in text
    assert "num_threads" in text
    cfg = pyfastopt._config.config()
    assert cfg["simd_path"] in cfg["simd_supported"]
