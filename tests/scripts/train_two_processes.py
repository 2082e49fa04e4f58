"""Training process of tests/test_modules.py's 2-process runs: GPT2Module on 2 CPU processes (Lightning starts
the second), DDP in fp32 or FSDP2 (ModelParallelStrategy) in bf16-mixed, 3 steps of the built-in corpus.

    python tests/scripts/train_two_processes.py ddp|fsdp OUT      (the repository on PYTHONPATH: tests/launch.py)

Each rank writes ``OUT.<rank>.json``: its synchronised validation loss, its share and the full value of the first
block's activation coefficients, their dtype and the final step.
"""

import json
import sys

import lightning as L
from lightning.pytorch.strategies import ModelParallelStrategy

from lit_ortho.data import TextDataModule
from lit_ortho.tasks import GPT2Module


def main(kind: str, out: str) -> None:
    L.seed_everything(0)
    strategy = "ddp" if kind == "ddp" else ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    module = GPT2Module(size="tiny", n_layer=2, n_embd=64, n_head=2, block_size=32, activation="hermite:3", lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=3, limit_val_batches=2,
                        val_check_interval=3, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                        precision="bf16-mixed" if kind == "fsdp" else "32-true")  # fmt: skip
    trainer.fit(module, TextDataModule(seq_length=32, batch_size=4))
    coef = module.model.transformer.h[0].mlp.act.coefficients
    local = coef.to_local() if hasattr(coef, "to_local") else coef
    full = coef.full_tensor() if hasattr(coef, "full_tensor") else coef
    result = dict(rank=trainer.global_rank, val=float(trainer.callback_metrics["val/loss"]),
                  local=local.numel(), full=full.tolist(), dtype=str(coef.dtype), step=trainer.global_step)  # fmt: skip
    with open(f"{out}.{trainer.global_rank}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # as any script that trains through the Python API should: end the process groups while the interpreter
    # is alive (lit-ortho's CLI does this itself); left to interpreter exit, gloo can abort the rank (-6)
    from lit_ortho.distributed import end_process_groups

    end_process_groups()
