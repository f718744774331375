"""Worker for test_distributed.py: one DDP rank training with pyfastopt.AdamW over gloo.

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

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = pyfastopt.AdamW(ddp.parameters(), lr=0.01)
    start = model[0].weight.detach().clone()
    gen = torch.Generator().manual_seed(rank)  # each rank sees different data
    for _ in range(5):
        x = torch.randn(4, 8, generator=gen)
        opt.zero_grad()
        ddp(x).pow(2).mean().backward()
        opt.step()
    w = model[0].weight.detach().clone()
    gathered = [torch.zeros_like(w) for _ in range(world)]
    dist.all_gather(gathered, w)
    same = all(torch.equal(gathered[0], x) for x in gathered)
    moved = not torch.equal(w, start)
    print(f"VERDICT {int(same)} {int(moved)}", flush=True)
    # The documented clean shutdown: both ranks leave the last collective, the DDP reducer (which
    # holds the group) goes first, then the group.
    dist.barrier()
    del ddp, opt
    dist.destroy_process_group()
    return 0 if same and moved else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
