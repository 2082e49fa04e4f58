"""Helpers for the multi-node / FSDP tests: recording losses per rank, killing a rank on purpose, and a
map-style data module whose global batches do not depend on the world size. (Processes are started by
tests/launch.py.)

Imported by tests/test_fsdp_multinode.py, and by the training processes it starts (``tests/`` is put on
their PYTHONPATH, so YAML can name ``_fsdp_helpers.RecordLosses``)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch


# ---- callbacks used inside the training processes -----------------------------------------------------
class RecordLosses(L.Callback):
    """Appends one JSON line per optimizer step to ``<out_dir>/losses.rank<R>.jsonl``: the step, this rank's
    loss, the learning rate, and when the step ended (``time.time()``; flushed each step, so a killed run
    leaves what it did)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_fit_start(self, trainer, pl_module):  # each run starts its own file (a resumed run: another out_dir)
        path = os.path.join(self.out_dir, f"losses.rank{trainer.global_rank}.jsonl")
        if os.path.exists(path):
            os.remove(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        os.makedirs(self.out_dir, exist_ok=True)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        row = {"step": trainer.global_step - 1, "loss": float(outputs["loss"]), "lr": lr, "batch0": int(batch[0, 0]), "t": time.time()}
        with open(os.path.join(self.out_dir, f"losses.rank{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


class KillRank(L.Callback):
    """Fault injection at the start of optimizer step ``step`` on rank ``rank``: ``mode="exit"`` ends the process
    abruptly (``os._exit(1)``, no cleanup), as a crashed node would; ``mode="hang"`` stops it answering (sleeps),
    as a stuck node would. The other ranks are left waiting in their next collective."""

    def __init__(self, rank: int = 1, step: int = -1, mode: str = "exit"):
        self.rank, self.step, self.mode = rank, step, mode

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            sys.stderr.write(f"KillRank: rank {self.rank} {'exits' if self.mode == 'exit' else 'hangs'} at step {self.step} t={time.time():.3f}\n")
            sys.stderr.flush()
            if self.mode == "exit":
                os._exit(1)
            time.sleep(3600)


def read_losses(out_dir: Path, rank: int) -> list[dict]:
    path = Path(out_dir) / f"losses.rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- map-style data: global batch t is the same set of windows whatever the world size ------------------
class WindowDataset(torch.utils.data.Dataset):
    """Fixed windows of a byte corpus in a fixed random order. With :class:`WindowDataModule` each of W ranks
    reads items r, r+W, ..., so with batch_size b per rank the W batches of step t hold exactly items
    [t*W*b, (t+1)*W*b), which one process with batch_size W*b reads as its batch t."""

    def __init__(self, n: int = 640, seq_length: int = 32, seed: int = 0):
        from pydoc_data.topics import topics

        data = torch.frombuffer(bytearray("".join(topics[k] for k in sorted(topics)).encode()), dtype=torch.uint8).long()
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, data.numel() - seq_length - 1, (n,), generator=g)
        self.windows = torch.stack([data[s : s + seq_length + 1] for s in starts.tolist()])

    def __len__(self):
        return len(self.windows)

    def __getitem__(self, i):
        return self.windows[i]


class WindowDataModule(L.LightningDataModule):
    vocab_size = 257
    tokenizer_name = "byte"

    def __init__(self, batch_size: int = 4, seq_length: int = 32, n: int = 640):
        super().__init__()
        self.batch_size, self.seq_length, self.n = batch_size, seq_length, n

    def train_dataloader(self):
        # Needs Trainer(use_distributed_sampler=False): Lightning's own sampler would reshuffle the training set.
        dataset = WindowDataset(self.n, self.seq_length)
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=torch.distributed.get_world_size(), rank=torch.distributed.get_rank(), shuffle=False
            )
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, shuffle=False, drop_last=True)
