"""Worker for test_distributed.py: one DDP rank training with pyfastopt.AdamW over gloo, gradients
as views of DDP's buckets, beside a replica stepped by torch.optim.AdamW.

Prints one line, ``VERDICT <same> <moved>``, once the replicas have been compared, and only then
tears the process group down, so the test can tell a wrong result from a teardown failure.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def main(rank: int, world: int, port: int) -> int:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import pyfastopt

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(8, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 2),
        )

    # Gradients as views of DDP's buckets (one storage for several gradients; small buckets so
    # there are several, rebuilt in the gradients' ready order after the first step), beside a
    # replica stepped by torch.optim's for-loop on the same data.
    model, ref_model = make(), make()
    ddp, ref_ddp = (
        torch.nn.parallel.DistributedDataParallel(
            m, gradient_as_bucket_view=True, bucket_cap_mb=0.005
        )
        for m in (model, ref_model)
    )
    opt = pyfastopt.AdamW(ddp.parameters(), lr=0.01)
    ref = torch.optim.AdamW(ref_ddp.parameters(), lr=0.01, foreach=False)
    start = model[0].weight.detach().clone()
    gen = torch.Generator().manual_seed(rank)  # each rank sees different data
    for step in range(6):
        x = torch.randn(4, 8, generator=gen)
        for d, o in ((ddp, opt), (ref_ddp, ref)):
            o.zero_grad(set_to_none=step % 2 == 0)
            d(x).pow(2).mean().backward()
            o.step()
    w = model[0].weight.detach().clone()
    gathered = [torch.zeros_like(w) for _ in range(world)]
    dist.all_gather(gathered, w)
    same = all(torch.equal(gathered[0], x) for x in gathered)
    for p, q in zip(model.parameters(), ref_model.parameters()):  # float32 parity tolerance
        same = same and torch.allclose(p, q, rtol=1e-5, atol=1e-6)
    moved = not torch.equal(w, start)
    print(f"VERDICT {int(same)} {int(moved)}", flush=True)
    # The documented clean shutdown: both ranks leave the last collective, the DDP reducer (which
    # holds the group) goes first, then the group.
    dist.barrier()
    del ddp, ref_ddp, opt, ref
    dist.destroy_process_group()
    return 0 if same and moved else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
