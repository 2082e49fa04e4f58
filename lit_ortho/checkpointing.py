"""Checkpoints that are never lost: Lightning's checkpoint IO, ``ModelCheckpoint`` and ``ckpt_path="last"`` on
top of :mod:`lit_ortho.durable` (sharded checkpoint directories: :mod:`lit_ortho.distributed.checkpoints`).

* :class:`AtomicCheckpointIO`: a ``CheckpointIO`` plugin. Each single-file checkpoint is written beside its
  target (``.<name>.tmp-<pid>``), fsynced, renamed into place, and given a ``<name>.sha256`` sidecar; loading
  checks it. (Lightning's own ``TorchCheckpointIO`` writes through a temporary file in ``$TMPDIR``: on another
  filesystem its final move is a copy, so a kill leaves a truncated checkpoint; on the same one, the temporary.)
  ``lit-ortho`` installs it in every Trainer (see :func:`install_checkpoint_io`).
* :class:`ModelCheckpoint`: Lightning's, plus: stale temporaries of its directory are removed at start-up,
  ``save_last="link"`` replaces ``last.ckpt`` atomically, and ``ckpt_path="last"`` means
  :func:`find_resume_checkpoint`. ``lit-ortho`` uses it wherever a configuration names Lightning's.
* :func:`find_resume_checkpoint`: the newest complete checkpoint of a directory (``last.ckpt`` when it is the
  newest and verifies; otherwise the newest one that does, said in one line).
* :func:`verify_checkpoint` / :func:`read_checkpoint_metadata`: the checks and the verified read that
  ``--ckpt_path`` and :class:`VerifiedLoading` (``load_from_checkpoint``) go through.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_ortho import durable
from lit_ortho.distributed.checkpoints import is_sharded_checkpoint, verify_sharded_checkpoint
from lit_ortho.durable import CheckpointError

__all__ = [
    "AtomicCheckpointIO",
    "ModelCheckpoint",
    "VerifiedLoading",
    "CheckpointError",
    "find_resume_checkpoint",
    "verify_checkpoint",
    "read_checkpoint_metadata",
    "install_checkpoint_io",
    "link_checkpoint",
    "note",
    "checkpoint_directories",
    "use_atomic_model_checkpoint",
    "same_class",
    "same_value",
]

_PathLike = Union[str, os.PathLike]


@rank_zero_only
def note(message: str) -> None:
    """One line on stderr, from rank 0: what lit-ortho decided about a checkpoint."""
    print(f"lit-ortho: {message}", file=sys.stderr, flush=True)


def _local(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and _is_local_file_protocol(str(path))


# ---- checks and reads ------------------------------------------------------------------------------------
def verify_checkpoint(path: _PathLike, shards: bool = True) -> None:
    """Raise :class:`CheckpointError` (naming the file and the previous checkpoint) unless ``path`` is a complete
    checkpoint that matches its checksums: a file against its sidecar (or its zip CRCs), a sharded directory
    against its manifest (``shards=False``: only that it is complete; the strategy checks the shards on load)."""
    path = Path(path)
    if path.is_dir():
        if shards or not is_sharded_checkpoint(path):
            verify_sharded_checkpoint(path)  # (incomplete: raises, naming what is missing)
    else:
        durable.verify_file(path)


def read_checkpoint_metadata(path: _PathLike) -> dict[str, Any]:
    """A verified checkpoint's contents without reading its tensors into memory: the whole file (memory-mapped),
    or a sharded directory's ``meta.pt`` (hyperparameters, loops, callbacks)."""
    path = Path(path)
    verify_checkpoint(path, shards=False)
    if path.is_dir():
        return torch.load(path / _METADATA_FILENAME, map_location="cpu", weights_only=False)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def find_resume_checkpoint(directories: Iterable[_PathLike]) -> tuple[Optional[Path], Optional[str]]:
    """What ``ckpt_path="last"`` means: the newest complete checkpoint in ``directories`` (``last.ckpt``, a
    ``step=N.ckpt`` file, or a sharded directory), and a one-line note when that is not simply ``last.ckpt``
    (it is missing, unreadable, fails its checksum, or a newer checkpoint was written after it). Checkpoints
    are taken newest first by modification time; the first one that verifies is the answer (``None`` if none)."""
    dirs = [Path(d) for d in dict.fromkeys(str(d) for d in directories)]
    candidates = sorted(
        (c for d in dirs for c in durable.sibling_checkpoints(d)),
        key=lambda c: (c.stat().st_mtime_ns, c.name.startswith("last")),
        reverse=True,
    )
    skipped: list[tuple[Path, str]] = []
    seen, chosen = set(), None
    for candidate in candidates:
        real = candidate.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            verify_checkpoint(candidate, shards=False)
        except CheckpointError as err:
            skipped.append((candidate, err.problem))
            continue
        chosen = candidate
        break
    where = ", ".join(str(d) for d in dirs)
    reasons = [problem for _, problem in skipped]
    if chosen is None:
        return None, (f"--ckpt_path last: no complete checkpoint in {where} ({'; '.join(reasons)})" if reasons else None)
    if chosen.name.startswith("last") and not skipped:
        return chosen, None
    if not chosen.name.startswith("last"):
        lasts = [c for c in candidates if c.name.startswith("last")]
        if not lasts:
            reasons.append(f"there is no last.ckpt in {where}")
        elif not any(c in lasts for c, _ in skipped):
            reasons.append(f"it is newer than {lasts[0]} (a save was interrupted after writing it)")
    return chosen, f"--ckpt_path last: using the newest complete checkpoint {chosen}: {'; '.join(reasons)}"


# ---- writing ---------------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that never leaves a partial or unverifiable checkpoint (local paths; other
    filesystems go through Lightning's own code). Give it to a Trainer with ``plugins=[AtomicCheckpointIO()]``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialised completely before anything is written
        durable.write_file(path, buffer.getbuffer())

    def load_checkpoint(self, path: _PathLike, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if _local(path):
            verify_checkpoint(path)
        return super().load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: _PathLike) -> None:
        super().remove_checkpoint(path)
        if _local(path):
            durable.remove_path(durable.checksum_path(path))


def install_checkpoint_io(trainer: "pl.Trainer") -> bool:
    """Make ``trainer`` write through :class:`AtomicCheckpointIO` unless it was given a checkpoint IO plugin of its
    own (Lightning's default, alone or inside ``AsyncCheckpointIO``, is replaced). Returns whether it did."""
    strategy = trainer.strategy
    current = strategy._checkpoint_io
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    if isinstance(current, _WrappingCheckpointIO) and (current.checkpoint_io is None or type(current.checkpoint_io) is TorchCheckpointIO):
        current._checkpoint_io = AtomicCheckpointIO()
        current._base_checkpoint_io_configured = True
        return True
    return False


def link_checkpoint(filepath: _PathLike, linkpath: _PathLike) -> None:
    """Point ``linkpath`` (``last.ckpt``) at ``filepath`` atomically: a relative symlink made beside it and renamed
    over it; where symlinks cannot be made, an atomic copy (files with their checksum; directories whole)."""
    source, target = Path(filepath), Path(linkpath)
    tmp = durable.temporary_path(target)
    durable.remove_path(tmp)
    try:
        os.symlink(os.path.relpath(source, target.parent), tmp)
    except OSError:  # e.g. Windows without the privilege
        if source.is_dir():
            import shutil

            partial = target.with_name(target.name + ".partial")
            durable.remove_path(partial)
            shutil.copytree(source, partial)
            durable.replace_directory(partial, target)
        else:
            durable.copy_file(source, target)
        return
    if target.is_dir() and not target.is_symlink():  # a sharded last.ckpt directory
        durable.replace_directory(tmp, target)
    else:
        os.replace(tmp, target)
        durable.fsync_path(target.parent)
    durable.remove_path(durable.checksum_path(target))  # a link is checked with its target's checksum


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (same arguments), with checkpoints that survive a kill at any point:

    * at start-up of ``fit``, the temporaries that interrupted saves left in its directory are removed;
    * ``save_last="link"`` replaces ``last.ckpt`` atomically (never a moment without one);
    * ``ckpt_path="last"`` resumes from :func:`find_resume_checkpoint`: the newest complete checkpoint of the
      directory, also when ``last.ckpt`` is missing, unreadable, fails its checksum, or is older than a
      ``step=N.ckpt`` written after it.

    The files themselves are written by the Trainer's checkpoint IO: :class:`AtomicCheckpointIO` (``lit-ortho``
    installs it), or an FSDP strategy's atomic sharded save.
    """

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and _local(self.dirpath):
            removed = durable.remove_stale_temporaries(self.dirpath)
            if removed:
                note(f"removed what interrupted saves left in {self.dirpath}: {', '.join(removed)}")
        trainer.strategy.barrier("lit_ortho_checkpoint_setup")

    @staticmethod
    def _link_checkpoint(trainer: "pl.Trainer", filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            link_checkpoint(filepath, linkpath)
        trainer.strategy.barrier()

    def _find_last_checkpoints(self, trainer: "pl.Trainer") -> set[str]:
        dirpath = self.dirpath or self._ModelCheckpoint__resolve_ckpt_dir(trainer)  # type: ignore[attr-defined]
        if not _local(dirpath):
            return super()._find_last_checkpoints(trainer)
        path, message = find_resume_checkpoint([dirpath])
        if message:
            note(message)
        return {os.path.normpath(path)} if path is not None else set()


# ---- loading a module --------------------------------------------------------------------------------------
class VerifiedLoading:
    """Mixin for a ``LightningModule`` (before it in the bases): ``load_from_checkpoint`` first checks the file
    (its checksum or zip CRCs; a sharded directory: its manifest) and fails with :class:`CheckpointError`, naming
    the file and the previous checkpoint, instead of loading corrupt weights."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        if _local(checkpoint_path):
            verify_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]


# ---- for the CLI: configurations (jsonargparse namespaces, dicts or objects) -------------------------------
_LIGHTNING_MODEL_CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"
_ATOMIC_MODEL_CHECKPOINT = f"{__name__}.ModelCheckpoint"


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict) or hasattr(obj, "get"):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _import(class_path: str) -> Optional[type]:
    import importlib

    module, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None


def _callbacks(trainer_config: Any) -> list[Any]:
    callbacks = _get(trainer_config, "callbacks") if trainer_config is not None else None
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


def _is_model_checkpoint(callback: Any) -> bool:
    if isinstance(callback, _LightningModelCheckpoint):
        return True
    cls = _import(_get(callback, "class_path") or "")
    return isinstance(cls, type) and issubclass(cls, _LightningModelCheckpoint)


def checkpoint_directories(trainer_config: Any) -> list[str]:
    """The ``dirpath`` of each ``ModelCheckpoint`` in a Trainer configuration (those that name one)."""
    dirs = []
    for callback in _callbacks(trainer_config):
        if _is_model_checkpoint(callback):
            dirpath = callback.dirpath if isinstance(callback, _LightningModelCheckpoint) else _get(_get(callback, "init_args") or {}, "dirpath")
            if dirpath:
                dirs.append(str(dirpath))
    return dirs


def use_atomic_model_checkpoint(trainer_config: Any) -> None:
    """Make a Trainer configuration use :class:`ModelCheckpoint` where it names Lightning's (same arguments)."""
    for callback in _callbacks(trainer_config):
        if not isinstance(callback, _LightningModelCheckpoint) and _get(callback, "class_path") == _LIGHTNING_MODEL_CHECKPOINT:
            if isinstance(callback, dict):
                callback["class_path"] = _ATOMIC_MODEL_CHECKPOINT
            else:
                callback.class_path = _ATOMIC_MODEL_CHECKPOINT


def same_class(a: str, b: str) -> bool:
    """Whether two class paths name the same class (``lit_ortho.modules.X`` is ``lit_ortho.tasks.X``)."""
    if a == b:
        return True
    ca, cb = _import(a), _import(b)
    return ca is not None and ca is cb


def _plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def same_value(a: Any, b: Any, key: str = "") -> bool:
    """Hyperparameter equality across YAML, command line and checkpoint: tuples are lists, 3e-3 is 0.003, and
    for an activation spec (``key`` names an activation) ``hermite:3`` is the ``{name: hermite, degree: 3, ...}``
    a module records of itself."""
    a, b = _plain(a), _plain(b)
    if a == b:
        return True
    if "activation" not in key:
        return False
    try:
        from lit_ortho.activations import build_activation
        from lit_ortho.activations.spec import spec_of

        return spec_of(build_activation(a)) == spec_of(build_activation(b))
    except Exception:  # not one spec each (a per-layer mapping, an unknown name): they differ as written
        return False
