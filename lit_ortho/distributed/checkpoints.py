"""Sharded checkpoints: written atomically by the FSDP strategies, with a checksum of every shard, verified
when loaded, recognised, and consolidated into one file.

The file-level mechanics (writing beside the target, fsync, rename, checksums) are :mod:`lit_ortho.durable`'s;
single-file checkpoints and ``--ckpt_path last`` are :mod:`lit_ortho.checkpointing`'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME, _load_distributed_checkpoint

from lit_ortho import durable
from lit_ortho.durable import CheckpointError

__all__ = [
    "AtomicCheckpointsMixin",
    "is_sharded_checkpoint",
    "verify_sharded_checkpoint",
    "consolidate_checkpoint",
    "TRAINING_STATE_KEYS",
]

TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "MixedPrecision", "native_amp_scaling_state")


def is_sharded_checkpoint(path: Union[str, Path]) -> bool:
    """A complete Lightning sharded checkpoint: a directory with the DCP index and Lightning's ``meta.pt``."""
    path = Path(path)
    return path.is_dir() and (path / _METADATA_FILENAME).is_file() and (path / ".metadata").is_file()


def _remove(path: Path) -> None:
    durable.remove_path(path)


def _owner(name: str, world_size: int) -> int:
    """The rank that hashes (and verifies) a file of a sharded checkpoint: the writer of a DCP shard
    ``__<rank>_<n>.distcp``, rank 0 for the rest."""
    match = re.match(r"__(\d+)_", name)
    return int(match.group(1)) % world_size if match else 0


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != durable.MANIFEST_NAME)


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def verify_sharded_checkpoint(path: Union[str, Path], rank: int = 0, world_size: int = 1) -> bool:
    """Check a sharded checkpoint directory: complete (index and ``meta.pt``) and, where it has a manifest, every
    file's SHA-256 (this rank's share of the files, of ``world_size``). Returns whether there is a manifest;
    raises :class:`~lit_ortho.durable.CheckpointError` naming the directory and the bad file."""
    path = Path(path)
    if not is_sharded_checkpoint(path):
        missing = [n for n in (".metadata", _METADATA_FILENAME) if not (path / n).is_file()]
        raise CheckpointError(f"checkpoint {str(path)!r} is incomplete (missing {', '.join(missing)})", path)
    names = durable.manifest_names(path)
    if names is None:
        return False
    return durable.verify_manifest(path, [n for n in names if _owner(Path(n).name, world_size) == rank])


class AtomicCheckpointsMixin:
    """Atomic, checksummed sharded checkpoints for a Lightning strategy (put it before the strategy class in the
    bases).

    A sharded checkpoint is written by every rank to ``<name>.partial`` beside its target; then each rank fsyncs
    and hashes its own shards, rank 0 writes the manifest (``checksums.sha256``) into the directory and renames it
    into place once every rank is done. A crash mid-save (a killed rank, a node failure) never leaves a half-written
    ``last.ckpt``: ``--ckpt_path last`` then resumes from the previous complete checkpoint. Loading checks the
    manifest first (each rank its share of the files), and a single-file checkpoint its sidecar checksum. The
    strategy says whether it saves sharded checkpoints (:meth:`_saves_sharded`); ``_atomic_checkpoints = False``
    turns the renaming (and the checksums) off.
    """

    _atomic_checkpoints: bool = True

    def _saves_sharded(self) -> bool:
        raise NotImplementedError

    def _rank_and_world(self) -> tuple[int, int]:
        return int(getattr(self, "global_rank", 0) or 0), int(getattr(self, "world_size", 1) or 1)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Optional[Any] = None) -> None:
        if not (self._atomic_checkpoints and self._saves_sharded()) or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # type: ignore[misc]
        path = Path(self.broadcast(filepath))  # type: ignore[attr-defined]
        partial = path.with_name(path.name + ".partial")
        if self.is_global_zero:  # type: ignore[attr-defined]
            _remove(partial)
        self.barrier("lit_ortho_ckpt_start")  # type: ignore[attr-defined]
        super().save_checkpoint(checkpoint, partial)  # type: ignore[misc]
        self.barrier("lit_ortho_ckpt_written")  # type: ignore[attr-defined]
        rank, world = self._rank_and_world()
        mine = {}
        for name in _files(partial):  # every rank sees every file by now (a filesystem all nodes share)
            if _owner(Path(name).name, world) == rank:
                durable.fsync_path(partial / name)
                mine[name] = durable.sha256_file(partial / name)
        digests = {k: v for part in _gather(mine, world) for k, v in part.items()}
        if self.is_global_zero:  # type: ignore[attr-defined]
            durable.write_manifest(partial, digests)
            durable.replace_directory(partial, path)
        self.barrier("lit_ortho_ckpt_done")  # type: ignore[attr-defined]

    def load_checkpoint(self, checkpoint_path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._atomic_checkpoints:
            path = Path(self.broadcast(checkpoint_path))  # type: ignore[attr-defined]
            rank, world = self._rank_and_world()
            try:
                if path.is_dir():
                    verify_sharded_checkpoint(path, rank, world)
                elif rank == 0:
                    durable.verify_file(path)
                problem = None
            except CheckpointError as err:
                problem = str(err)
            problems = [p for p in _gather(problem, world) if p]
            if problems:
                raise CheckpointError(problems[0])
        return super().load_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]


def consolidate_checkpoint(
    checkpoint_dir: Union[str, Path],
    output_file: Optional[Union[str, Path]] = None,
    weights_only: bool = False,
    overwrite: bool = False,
) -> Path:
    """Turn a sharded checkpoint directory (FSDP2 or FSDP1, any number of ranks) into one ``.ckpt`` file.

    The result is an ordinary Lightning checkpoint: ``GPT2Module.load_from_checkpoint(file)`` reads it, a
    single-device or DDP ``Trainer.fit(ckpt_path=file)`` resumes from it (optimizer moments, LR schedule and
    loop counters included), and FSDP strategies accept it too. ``weights_only`` keeps the weights,
    hyperparameters and module extras and drops the training state (optimizer, schedulers, loops, callbacks):
    a smaller file for inference or fine-tuning. Runs on one CPU process; needs the full model in memory.
    """
    src = Path(checkpoint_dir).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"checkpoint not found: {str(src)!r}")
    if not src.is_dir():
        raise ValueError(f"{str(src)!r} is a file: already a consolidated (single-file) checkpoint")
    if not is_sharded_checkpoint(src):
        missing = [n for n in (".metadata", _METADATA_FILENAME) if not (src / n).is_file()]
        raise ValueError(
            f"{str(src)!r} is not a complete sharded Lightning checkpoint (missing {', '.join(missing)}); "
            "an interrupted save leaves '<name>.partial': use an earlier checkpoint"
        )
    verify_sharded_checkpoint(src)  # every shard against the manifest (a directory written before checksums: skipped)
    out = Path(output_file).expanduser() if output_file is not None else src.with_name(src.name.removesuffix(".ckpt") + ".consolidated.ckpt")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} already exists: choose another output path or pass overwrite")
    checkpoint = _load_distributed_checkpoint(src)
    if "model" in checkpoint and "state_dict" not in checkpoint:  # FSDP1 layout
        checkpoint["state_dict"] = checkpoint.pop("model")
    optimizer_keys = sorted((k for k in checkpoint if re.fullmatch(r"optimizer_\d+", k)), key=lambda k: int(k.split("_")[1]))
    if optimizer_keys:
        checkpoint["optimizer_states"] = [checkpoint.pop(k) for k in optimizer_keys]
    if weights_only:
        for key in TRAINING_STATE_KEYS:
            checkpoint.pop(key, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = durable.temporary_path(out)
    try:
        torch.save(checkpoint, tmp)
    except BaseException:
        _remove(tmp)
        raise
    durable.publish_file(tmp, out)  # fsync, rename into place, sidecar checksum
    return out
