"""Helpers for the multi-node / FSDP tests: launching "nodes" as local processes, recording losses per rank,
killing a rank on purpose, and a map-style data module whose global batches do not depend on the world size.

Imported by tests/test_fsdp_multinode.py, and by the training processes it starts (``tests/`` is put on
their PYTHONPATH, so YAML can name ``_fsdp_helpers.RecordLosses``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = {"MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"}


# ---- callbacks used inside the training processes -----------------------------------------------------
class RecordLosses(L.Callback):
    """Appends one JSON line per optimizer step to ``<out_dir>/losses.rank<R>.jsonl``: the step, this rank's
    loss, and the learning rate (flushed each step, so a killed run leaves what it did)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_fit_start(self, trainer, pl_module):  # each run starts its own file (a resumed run: another out_dir)
        path = os.path.join(self.out_dir, f"losses.rank{trainer.global_rank}.jsonl")
        if os.path.exists(path):
            os.remove(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        os.makedirs(self.out_dir, exist_ok=True)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        row = {"step": trainer.global_step - 1, "loss": float(outputs["loss"]), "lr": lr, "batch0": int(batch[0, 0])}
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


# ---- launching ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus what an earlier distributed run left in it, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("PL_", "TORCHELASTIC", "SLURM_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
        OMP_NUM_THREADS="1",
        LITDATA_DISABLE_VERSION_CHECK="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Launched:
    def __init__(self, procs: list[subprocess.Popen], logs: list[Path]):
        self.procs, self.logs = procs, logs
        self.returncodes: list[Optional[int]] = [None] * len(procs)
        self.exit_times: list[Optional[float]] = [None] * len(procs)

    def wait(self, timeout: float, ranks: Optional[Sequence[int]] = None) -> "Launched":
        """Wait for every process (or those of ``ranks``); after ``timeout`` seconds kill what is left (returncode
        -9) so a hang fails a test instead of blocking it."""
        deadline = time.monotonic() + timeout
        waited = list(range(len(self.procs))) if ranks is None else list(ranks)
        while any(self.returncodes[i] is None for i in waited):
            for i, p in enumerate(self.procs):
                if self.returncodes[i] is None and p.poll() is not None:
                    self.returncodes[i], self.exit_times[i] = p.returncode, time.time()
            if time.monotonic() > deadline:
                self.kill()
                break
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        for i, p in enumerate(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
                self.returncodes[i] = -9
            elif self.returncodes[i] is None:
                self.returncodes[i] = p.returncode

    def output(self, rank: int, tail: int = 4000) -> str:
        return self.logs[rank].read_text(errors="replace")[-tail:]

    def describe(self) -> str:
        return "\n".join(f"--- rank {r} (exit {rc}) ---\n{self.output(r)}" for r, rc in enumerate(self.returncodes))


def launch_nodes(argv: Sequence[str], cwd: Path, num_nodes: int = 2, tag: str = "run", **env_extra: str) -> Launched:
    """Start ``num_nodes`` processes of ``argv`` as the nodes of one job on loopback (MASTER_ADDR=127.0.0.1, a
    free MASTER_PORT, NODE_RANK=0..n-1), each in its own process group, output in ``<cwd>/<tag>.node<R>.log``."""
    port = str(free_port())
    procs, logs = [], []
    for node in range(num_nodes):
        env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), **env_extra)
        log = Path(cwd) / f"{tag}.node{node}.log"
        with open(log, "w") as f:
            procs.append(subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True))
        logs.append(log)
    return Launched(procs, logs)


def run_single(argv: Sequence[str], cwd: Path, timeout: float, tag: str = "single", **env_extra: str) -> Launched:
    log = Path(cwd) / f"{tag}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=clean_env(**env_extra), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return Launched([proc], [log]).wait(timeout)
