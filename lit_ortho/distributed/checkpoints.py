"""Sharded checkpoints: written atomically by the FSDP strategies, recognised, and consolidated into one file."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME, _load_distributed_checkpoint

__all__ = ["AtomicCheckpointsMixin", "is_sharded_checkpoint", "consolidate_checkpoint", "TRAINING_STATE_KEYS"]

TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "MixedPrecision", "native_amp_scaling_state")


def is_sharded_checkpoint(path: Union[str, Path]) -> bool:
    """A complete Lightning sharded checkpoint: a directory with the DCP index and Lightning's ``meta.pt``."""
    path = Path(path)
    return path.is_dir() and (path / _METADATA_FILENAME).is_file() and (path / ".metadata").is_file()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class AtomicCheckpointsMixin:
    """Atomic sharded checkpoints for a Lightning strategy (put it before the strategy class in the bases).

    A sharded checkpoint is written to ``<name>.partial`` and renamed into place once every rank is done, so a
    crash mid-save (a killed rank, a node failure) never leaves a half-written ``last.ckpt``: ``--ckpt_path last``
    then resumes from the previous complete checkpoint. The strategy says whether it saves sharded checkpoints
    (:meth:`_saves_sharded`); ``_atomic_checkpoints = False`` turns the renaming off.
    """

    _atomic_checkpoints: bool = True

    def _saves_sharded(self) -> bool:
        raise NotImplementedError

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
        if self.is_global_zero:  # type: ignore[attr-defined]
            if path.exists() or path.is_symlink():
                old = path.with_name(path.name + ".old")
                _remove(old)
                os.replace(path, old)
                os.replace(partial, path)
                _remove(old)
            else:
                os.replace(partial, path)
        self.barrier("lit_ortho_ckpt_done")  # type: ignore[attr-defined]


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
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, out)
    return out
