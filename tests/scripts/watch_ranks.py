"""2-process run of tests/test_watch.py: callbacks.watch.StepStatistics in a plain torch.distributed loop.

    python tests/scripts/watch_ranks.py ddp|fsdp2 OUT_DIR      (MASTER_ADDR, MASTER_PORT set; tests/ on PYTHONPATH)

Two processes (gloo) train _callback_helpers.TinyNet (Hermite in block 2) for 3 steps, rank r reading samples
r, r + 2, ... of each global batch; rank 0 writes every step's statistics to OUT_DIR/results.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import _callback_helpers as helpers


def worker(rank: int, mode: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from lit_ortho.distributed import end_process_groups

    try:
        from callbacks.watch import StepStatistics
        from lit_ortho.activations import HermiteActivation

        model = helpers.TinyNet(act2=HermiteActivation(3))
        if mode == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (2,))
            for module in (model.block1, model.block2, model.head):
                fully_shard(module, mesh=mesh)
            fully_shard(model, mesh=mesh)
        optimizer = torch.optim.SGD(model.parameters(), lr=helpers.LR)
        stats = StepStatistics(model)
        x_all, y_all = helpers.make_data()
        results = []
        for step in range(3):
            rows = slice(step * helpers.GLOBAL_BATCH + rank, (step + 1) * helpers.GLOBAL_BATCH, 2)
            with stats.record(optimizer) as result:
                F.mse_loss(model(x_all[rows]), y_all[rows]).backward()
                optimizer.step()
                optimizer.zero_grad()
            results.append(result.flat())
        if rank == 0:
            (Path(out_dir) / "results.json").write_text(json.dumps(results))
    except BaseException:
        dist.destroy_process_group()
        raise
    # As a user's script should (README, "Your own script"): wait for the other rank, end every group, and have
    # the groups' last holders (the sharded model, the device mesh) collected before the interpreter finalizes;
    # a bare destroy_process_group() leaves gloo's threads to be killed at exit (SIGABRT, seen once in CI).
    end_process_groups()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2]), nprocs=2)
