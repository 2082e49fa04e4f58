"""One uninterrupted run, then runs resumed from checkpoints taken during it; every training batch is recorded.

    python tests/scripts/resume_run.py OUT_DIR '<json config>'

Config keys: ``data`` ("text" | "images"), ``data_args`` (data module arguments), ``strategy`` ("single" | "ddp" |
"fsdp2"), ``max_steps``, ``limit_train_batches``, ``val_check_interval`` (None: validation off), ``save_steps``
(global steps after which a checkpoint is written, as ModelCheckpoint(every_n_train_steps) does it, in
``on_train_batch_end``).

Two processes (ddp, fsdp2) are two "nodes" of one device each (tests/launch.py ``launch_nodes``). Writes
``OUT_DIR/records.rank<R>.json``: ``{"full": [...], "resumed": {checkpoint name: [...]}}``, each record
``[global_step, epoch, batch_idx, digest of the batch]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


def digest(batch) -> str:
    h = hashlib.sha1()
    for t in batch if isinstance(batch, (list, tuple)) else [batch]:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


class Tiny(L.LightningModule):
    """A few parameters trained with AdamW, so checkpoints carry model and optimizer state."""

    def __init__(self, kind: str, fsdp2: bool = False):
        super().__init__()
        self.kind, self.fsdp2 = kind, fsdp2
        if kind == "text":
            self.emb = nn.Embedding(257, 8)
            self.head = nn.Linear(8, 257)
        else:
            self.emb = nn.Identity()
            self.head = nn.Linear(3, 10)

    def configure_model(self):
        if self.fsdp2:
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for module in (self.emb, self.head, self):
                if any(True for _ in module.parameters()):
                    fully_shard(module, mesh=mesh)

    def forward(self, batch):  # through __call__: FSDP2 gathers the parameters in its forward hooks
        if self.kind == "text":
            x, y = batch[:, :-1], batch[:, 1:]
            return F.cross_entropy(self.head(self.emb(x)).flatten(0, 1), y.flatten())
        images, labels = batch
        return F.cross_entropy(self.head(images.mean(dim=(2, 3))), labels)

    def training_step(self, batch, batch_idx):
        return self(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self(batch), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class Record(L.Callback):
    def __init__(self):
        self.rows: list[list] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append([trainer.global_step, trainer.current_epoch, batch_idx, digest(batch)])


class SaveAt(L.Callback):
    def __init__(self, directory: Path, steps):
        self.directory, self.steps = directory, set(steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in self.steps:
            trainer.save_checkpoint(self.directory / f"step{trainer.global_step}.ckpt")


def make_data(cfg):
    from lit_ortho.data import ImageDataModule, TextDataModule

    cls = TextDataModule if cfg["data"] == "text" else ImageDataModule
    return cls(**cfg.get("data_args", {}))


def fit(cfg, out: Path, ckpt_path=None, save: bool = False) -> list[list]:
    L.seed_everything(1234)
    strategy, devices = cfg.get("strategy", "single"), {}
    if strategy == "ddp":
        devices = dict(strategy="ddp", devices=1, num_nodes=2)
    elif strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        devices = dict(strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1), devices=1, num_nodes=2)
    else:
        devices = dict(devices=1)
    record = Record()
    callbacks = [record]
    if save:
        callbacks.append(SaveAt(out / "ckpt", cfg["save_steps"]))
    val = cfg.get("val_check_interval")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=cfg["max_steps"],
        limit_train_batches=cfg.get("limit_train_batches", 1.0),
        limit_val_batches=2 if val else 0,
        val_check_interval=val,
        check_val_every_n_epoch=None if val else 1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=str(out),
        **devices,
    )
    trainer.fit(Tiny(cfg["data"], fsdp2=strategy == "fsdp2"), make_data(cfg), ckpt_path=ckpt_path)
    return record.rows


def main() -> None:
    out, cfg = Path(sys.argv[1]), json.loads(sys.argv[2])
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    result = {"full": fit(cfg, out, save=True), "resumed": {}}
    for step in cfg["save_steps"]:
        result["resumed"][f"step{step}"] = fit(cfg, out, ckpt_path=str(out / "ckpt" / f"step{step}.ckpt"))
    rank = int(os.environ.get("NODE_RANK", "0"))
    (out / f"records.rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    # as any script that trains through the Python API should: end the process groups while the interpreter
    # is alive (lit-ortho's CLI does this itself); left to interpreter exit, gloo can abort the rank (-6)
    from lit_ortho.distributed import end_process_groups

    end_process_groups()
