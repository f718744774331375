"""Worker for test_distributed.py: one FSDP2 rank (``fully_shard``, gloo, CPU) stepping the same
model with torch.optim and with pyfastopt.

FSDP2's parameters are DTensors, which pyfastopt hands to torch's own step: the result must be
torch's bit for bit, GradScaler's in-step unscaling included (float16, ``fused=True``), and
pyfastopt's own options, which torch's step cannot honour, must be refused. Prints
``VERDICT <same> <moved>`` before tearing the process group down (see _ddp_worker.py).
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
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import pyfastopt

    mesh = init_device_mesh("cpu", (world,))

    def run(cls: type, dtype: torch.dtype, scaled: bool, **kw: object) -> list[torch.Tensor]:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        m.to(dtype)
        for layer in (m[0], m[2], m):
            fully_shard(layer, mesh=mesh)
        opt = cls(m.parameters(), lr=1e-2, **kw)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16) if scaled else None
        gen = torch.Generator().manual_seed(rank)  # each rank sees different data
        for _ in range(4):
            opt.zero_grad()
            x = (torch.randn(4, 8, generator=gen) * 1e-3).to(dtype)
            loss = m(x).float().pow(2).mean()
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        return [p.full_tensor() for p in m.parameters()]

    configs = [
        (torch.float32, False, {}),
        (torch.bfloat16, False, {"fused": True}),
        (torch.float16, True, {"fused": True}),  # GradScaler's scalars reach torch's step
    ]
    same, moved = True, True
    for dtype, scaled, kw in configs:
        ref = run(torch.optim.AdamW, dtype, scaled, **kw)
        got = run(pyfastopt.AdamW, dtype, scaled, **kw)
        same &= all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
        torch.manual_seed(0)
        start = torch.nn.Linear(8, 32).to(dtype).weight
        moved &= not torch.equal(got[0], start)
    try:
        run(pyfastopt.AdamW, torch.float32, False, state_dtype=torch.bfloat16)
        same = False  # the option would have been dropped silently
    except pyfastopt.UnsupportedError:
        pass
    print(f"VERDICT {int(same)} {int(moved)}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if same and moved else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
