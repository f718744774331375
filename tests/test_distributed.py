"""torch.distributed: DDP over gloo keeps replicas identical when pyfastopt steps them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

WORKER = Path(__file__).with_name("_ddp_worker.py")
FSDP2_WORKER = Path(__file__).with_name("_fsdp2_worker.py")

# gloo's own teardown (torch's C++ process group, after the ranks have compared their replicas)
# has aborted with this message in some of this project's CI runs (about one in three), and in none
# of 300 runs of the same two ranks outside pytest, with or without load. It is not the optimizer's
# doing: by then every step has run and the verdict is printed. Such a run is repeated, once;
# a wrong verdict or any other failure is not.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(tmp_path: Path, worker: Path, world: int = 2) -> list[tuple[int, str, str]]:
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(rank), str(world), str(port)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in range(world)
    ]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{worker.name}: the ranks did not finish in 120 s")
        results.append((p.returncode, out, err))
    return results


def _verdict(out: str) -> tuple[bool, bool] | None:
    for line in out.splitlines():
        if line.startswith("VERDICT "):
            _, same, moved = line.split()
            return same == "1", moved == "1"
    return None


def _teardown_abort(rc: int, out: str, err: str) -> bool:
    return rc == -6 and _verdict(out) is not None and err.strip().endswith(GLOO_TEARDOWN_ABORT)


def _two_ranks(tmp_path: Path, worker: Path, what: str) -> None:
    for attempt in range(2):
        results = _run_ranks(tmp_path, worker)
        for rank, (rc, out, err) in enumerate(results):
            verdict = _verdict(out)
            assert verdict is not None, f"rank {rank} gave no verdict (exit {rc}):\n{err[-2000:]}"
            same, moved = verdict
            assert same, f"rank {rank}: {what}"
            assert moved, f"rank {rank}: the parameters did not move"
        aborted = [r for r, (rc, out, err) in enumerate(results) if _teardown_abort(rc, out, err)]
        if aborted and attempt == 0:
            continue  # gloo's teardown, not the step: run once more (see GLOO_TEARDOWN_ABORT)
        for rank, (rc, _, err) in enumerate(results):
            assert rc == 0, f"rank {rank} exited with {rc}:\n{err[-2000:]}"
        return


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_ddp_two_ranks(tmp_path):
    _two_ranks(
        tmp_path, WORKER, "the replicas differ, or differ from torch.optim's, after 6 DDP steps"
    )


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_fsdp2_two_ranks_is_torchs_step(tmp_path):
    pytest.importorskip("torch.distributed.fsdp", reason="no FSDP2")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no torch.distributed.fsdp.fully_shard")
    _two_ranks(
        tmp_path,
        FSDP2_WORKER,
        "FSDP2 parameters stepped unlike torch (float32, bfloat16, float16 with GradScaler), "
        "or state_dtype not refused for them",
    )
