"""Training process of the callback tests' 2-process runs (tests/test_callbacks.py).

    python tests/scripts/callback_ranks.py ddp|fsdp1|fsdp2|hsdp OUT_DIR      (tests/ on PYTHONPATH: tests/launch.py)

Trains ``_callback_helpers.TinyNet`` with the monitors at every step on 2 CPU processes (gloo, Lightning starts the
second one), each with half of every global batch, and writes TensorBoard events and each rank's shard report to
``OUT_DIR``; the tests compare them with 1 process. ``hsdp``: FSDP2 on a (replicate 2, shard 1) mesh, so every
parameter is replicated and the shard statistics must not add the replicas. Each rank also writes which ranks
the ParameterUpdateMonitor pooled each parameter over (``peers-rank<R>.json``).
"""

import json
import sys
from pathlib import Path

import torch

import _callback_helpers as helpers


def main(mode: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    if mode == "ddp":
        strategy = "ddp"
    elif mode == "fsdp1":
        strategy = helpers.cpu_fsdp1_strategy()
    else:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    callbacks = helpers.distributed_run_callbacks() + [helpers.ShardReport(Path(out_dir))]
    trainer = helpers.trainer(Path(out_dir), callbacks, max_steps=3, devices=2, strategy=strategy, use_distributed_sampler=False)
    model = helpers.distributed_run_model()
    model.hsdp = mode == "hsdp"
    trainer.fit(model, helpers.loader(helpers.GLOBAL_BATCH // 2, distributed=True))
    monitor = next(c for c in callbacks if type(c).__name__ == "ParameterUpdateMonitor")
    peers = dict(zip(monitor._stats.names, monitor._stats.peers))
    # W0 in the checkpoint state (a collective when sharded), then taken back by every rank
    initial = [t.clone() for t in monitor._stats.initial]
    state = monitor.state_dict()["initial"]
    why = monitor._stats.load_initial(state)
    same = all(torch.equal(a, b) for a, b in zip(initial, monitor._stats.initial))
    report = {"peers": peers, "saved_parts": len(state["parts"]), "reloaded": why is None and same}
    (Path(out_dir) / f"peers-rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # as any script that trains through the Python API should: end the process groups while the interpreter
    # is alive (lit-ortho's CLI does this itself); left to interpreter exit, gloo can abort the rank (-6)
    from lit_ortho.distributed import end_process_groups

    end_process_groups()
