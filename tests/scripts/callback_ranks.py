"""Training process of the callback tests' 2-process runs (tests/test_callbacks.py).

    python tests/scripts/callback_ranks.py ddp|fsdp1|fsdp2 OUT_DIR      (tests/ on PYTHONPATH: tests/launch.py)

Trains ``_callback_helpers.TinyNet`` with the monitors at every step on 2 CPU processes (gloo, Lightning starts the
second one), each with half of every global batch, and writes TensorBoard events and each rank's shard report to
``OUT_DIR``; the tests compare them with 1 process.
"""

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
    trainer.fit(helpers.distributed_run_model(), helpers.loader(helpers.GLOBAL_BATCH // 2, distributed=True))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
