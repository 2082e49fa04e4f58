"""Training process for the loss-curve equality test (tests/test_fsdp_multinode.py).

    python tests/scripts/fsdp_equality.py OUT_DIR NUM_NODES RUN [RUN ...]      (tests/ on PYTHONPATH: tests/launch.py)

RUN is one of ``single-32``, ``single-bf16`` (one process, no sharding, batch 8) or ``fsdp2-32``, ``fsdp2-bf16``,
``fsdp1-32``, ``fsdp1-bf16``, ``hsdp-32`` (one process per node, batch 4 each: the same global batch of 8), with
optional suffixes ``-ac`` (activation checkpointing) and ``-offload`` (FSDP2 CPU offload).
Every run trains the same tiny GPT-2 + Hermite-3 from the same initial weights on the same global batches for
20 steps and records each rank's loss per step (``OUT_DIR/RUN/losses.rank<R>.jsonl``). Sharded runs also save
a sharded checkpoint ``OUT_DIR/RUN/final.ckpt`` and the full (gathered) fp32 weights ``OUT_DIR/RUN/full.pt``.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

from _fsdp_helpers import RecordLosses, WindowDataModule
from lit_ortho.distributed import FSDP1Strategy, FSDP2Strategy
from lit_ortho.tasks import GPT2Module

STEPS, GLOBAL_BATCH = 20, 8


def module(activation_checkpointing: bool = False) -> GPT2Module:
    L.seed_everything(0)
    return GPT2Module(size="tiny", n_layer=2, n_embd=64, n_head=2, block_size=32, vocab_size=257, activation="hermite:3",
                      lr=3e-3, warmup_steps=3, activation_checkpointing=activation_checkpointing)


def strategy(kind: str, offload: bool = False):
    if kind == "single":
        return "auto"
    if kind == "fsdp2":
        return FSDP2Strategy(timeout_s=120, cpu_offload=offload)
    if kind == "hsdp":
        return FSDP2Strategy(shard_size=1, timeout_s=120)  # replicate over the 2 nodes, shard within each
    if kind == "fsdp1":
        return FSDP1Strategy(timeout_s=120)
    raise ValueError(kind)


def main(out: Path, num_nodes: int, runs: list[str]) -> None:
    for run in runs:
        kind, precision, *options = run.split("-")
        precision = {"32": "32-true", "bf16": "bf16-mixed"}[precision]
        model = module(activation_checkpointing="ac" in options)
        seen = record_compute_dtypes(model)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, num_nodes=num_nodes, strategy=strategy(kind, offload="offload" in options), precision=precision,
            max_steps=STEPS, gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, callbacks=[RecordLosses(str(out / run))],
        )
        trainer.fit(model, WindowDataModule(batch_size=GLOBAL_BATCH // num_nodes))
        if kind != "single":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            trainer.save_checkpoint(out / run / "final.ckpt")
            full = get_model_state_dict(trainer.strategy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if trainer.global_rank == 0:
                torch.save({k: v.clone() for k, v in full.items()}, out / run / "full.pt")
            if kind == "fsdp2" or kind == "hsdp":  # what fully_shard was given for the first block
                group = model.model.transformer.h[0]._get_fsdp_state()._fsdp_param_group
                seen["offload_policy"] = type(group.offload_policy).__name__
                seen["mesh_shape"] = list(group.mesh_info.mesh.shape)
            if kind == "fsdp1":  # the FSDP units: module class -> compute dtype of its parameters
                from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

                seen["units"] = sorted(
                    f"{type(m.module).__name__}:{m.mixed_precision.param_dtype}" for m in FSDP.fsdp_modules(trainer.strategy.model)
                )
            if trainer.global_rank == 0:
                (out / run / "dtypes.json").write_text(json.dumps(seen))


def record_compute_dtypes(model: GPT2Module) -> dict[str, str]:
    """The dtype each kind of parameter has *during* forward (after FSDP's all-gather and casts)."""
    seen: dict[str, str] = {}
    block = model.model.transformer.h[0]

    def hook(name, module, tensor_name):
        def pre_forward(mod, args):
            seen.setdefault(name, str(getattr(mod, tensor_name).dtype))

        module.register_forward_pre_hook(pre_forward)

    hook("activation_coefficients", block.mlp.act, "coefficients")
    hook("linear_weight", block.mlp.c_fc, "weight")
    return seen


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
    # as any script that trains through the Python API should: end the process groups while the interpreter
    # is alive (lit-ortho's CLI does this itself); left to interpreter exit, gloo can abort the rank (-6)
    from lit_ortho.distributed import end_process_groups

    end_process_groups()
