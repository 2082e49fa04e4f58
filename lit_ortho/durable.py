"""Durable, atomic files and directories, and their SHA-256 checksums: the bottom layer of checkpoint IO.

Everything is written *beside* its target (same directory, so the final ``os.replace`` is a rename within one
filesystem, never a copy), flushed to disk (``os.fsync`` of the file, then of the directory), and only then moved
into place. A process killed at any point leaves either the old target or the new one, plus at worst a temporary
that :func:`remove_stale_temporaries` recognises and removes:

* ``.<name>.tmp-<pid>``: a file (or symlink) being written (:func:`temporary_path`);
* ``<name>.partial``: a sharded checkpoint directory being written by every rank
  (:class:`lit_ortho.distributed.checkpoints.AtomicCheckpointsMixin`);
* ``<name>.old``: the previous directory, moved aside for the instant in which a directory is replaced.

Checksums: a file ``X`` has a sidecar ``X.sha256`` (``sha256sum`` format: ``<hex>  X``). While ``X`` is being
replaced the sidecar lists the old and the new digest, so a kill between the two renames never makes a complete
file look corrupt. A directory holds its own manifest, ``checksums.sha256``, listing every other file in it.
A file without a sidecar (written before checksums existed, or by plain Lightning) is checked with the CRC-32s
of its zip records instead (``torch.save`` writes a zip archive; ``torch.load`` does not check them).

Imports nothing of lit_ortho but :mod:`lit_ortho.errors`, so every other module may use it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Union

from lit_ortho.errors import UsageError

__all__ = [
    "CheckpointError",
    "CHECKSUM_SUFFIX",
    "MANIFEST_NAME",
    "temporary_path",
    "is_temporary",
    "fsync_path",
    "write_file",
    "publish_file",
    "copy_file",
    "replace_directory",
    "remove_path",
    "remove_stale_temporaries",
    "checksum_path",
    "sha256_file",
    "verify_file",
    "write_manifest",
    "verify_manifest",
    "sibling_checkpoints",
    "previous_checkpoint_hint",
    "manifest_names",
]

_PathLike = Union[str, os.PathLike]
CHECKSUM_SUFFIX = ".sha256"
MANIFEST_NAME = "checksums.sha256"
_CHUNK = 8 << 20
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: missing, incomplete, or failing its checksum. The message names the
    file and (given ``path``) the previous checkpoint in the same directory; ``problem`` is the message without
    that pointer."""

    def __init__(self, problem: str, path: Optional[_PathLike] = None):
        self.problem = problem
        super().__init__(problem + (previous_checkpoint_hint(Path(path)) if path is not None else ""))


# ---- temporaries -----------------------------------------------------------------------------------------
def temporary_path(target: _PathLike) -> Path:
    """``<dir>/.<name>.tmp-<pid>``: where ``target`` is written before it is moved into place."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def is_temporary(name: str) -> bool:
    """A name :func:`remove_stale_temporaries` removes: ``.<name>.tmp-<pid>``, ``<name>.ckpt.partial``."""
    return bool(_TEMPORARY.match(name)) or name.endswith(".ckpt.partial")


def remove_path(path: _PathLike) -> None:
    """Remove a file, symlink or directory tree; nothing if it does not exist."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_stale_temporaries(directory: _PathLike) -> list[str]:
    """Remove what interrupted writes left in ``directory`` (see the module docstring) and return their names.
    A ``<name>.old`` whose ``<name>`` is missing (killed between the two renames of a directory replacement) is
    moved back into place instead. Call it once at start-up, before this run writes there."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if name.endswith(".ckpt.old") and not (directory / name[: -len(".old")]).exists():
            os.replace(entry, directory / name[: -len(".old")])
            removed.append(name)
        elif is_temporary(name) or name.endswith(".ckpt.old"):
            remove_path(entry)
            removed.append(name)
    if removed:
        fsync_path(directory)
    return removed


# ---- durable writes --------------------------------------------------------------------------------------
def fsync_path(path: _PathLike) -> None:
    """``os.fsync`` a file or a directory (a directory's entries: the renames and creations in it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - a directory cannot be opened (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that cannot fsync directories
        pass
    finally:
        os.close(fd)


def _write_temporary(target: Path, data: Union[bytes, memoryview]) -> Path:
    tmp = temporary_path(target)
    try:
        with open(tmp, "wb") as f:
            view = memoryview(data)
            for start in range(0, len(view), _CHUNK):
                f.write(view[start : start + _CHUNK])
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        remove_path(tmp)
        raise
    return tmp


def write_file(target: _PathLike, data: Union[bytes, memoryview], checksum: bool = True) -> str:
    """Write ``data`` to ``target`` atomically and durably, with its sidecar checksum; return the SHA-256."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    tmp = _write_temporary(target, data)
    publish_file(tmp, target, digest if checksum else None, checksum=checksum)
    return digest


def publish_file(tmp: _PathLike, target: _PathLike, digest: Optional[str] = None, checksum: bool = True) -> None:
    """Move a complete temporary file beside ``target`` into place: fsync it, rename it, fsync the directory,
    and (``checksum``) record its SHA-256 (``digest``, or computed here) in ``target``'s sidecar."""
    tmp, target = Path(tmp), Path(target)
    try:
        fsync_path(tmp)
        if not checksum:
            os.replace(tmp, target)
            fsync_path(target.parent)
            return
        digest = digest or sha256_file(tmp)
        sidecar = checksum_path(target)
        old = _read_digests(sidecar, target.name) if (target.exists() or target.is_symlink()) else []
        if not old and (sidecar.exists() or sidecar.is_symlink()):
            remove_path(sidecar)  # a stale one (of a file no longer there), or one that never listed it
            fsync_path(target.parent)
        if old:  # the transition: either file that may be in place below verifies
            _write_text(sidecar, _digest_lines([*old, digest], target.name))
        os.replace(tmp, target)
        fsync_path(target.parent)
        _write_text(sidecar, _digest_lines([digest], target.name))
    except BaseException:
        remove_path(tmp)
        raise


def copy_file(source: _PathLike, target: _PathLike) -> None:
    """Copy a checkpoint file and its checksum atomically (beside the target, fsync, rename)."""
    source, target = Path(source), Path(target)
    tmp = temporary_path(target)
    try:
        shutil.copyfile(source, tmp)
    except BaseException:
        remove_path(tmp)
        raise
    publish_file(tmp, target)


def replace_directory(partial: _PathLike, target: _PathLike) -> None:
    """Move a complete directory into place (a directory cannot be renamed over another one: the old one is
    moved to ``<name>.old`` first, for an instant, and removed after)."""
    partial, target = Path(partial), Path(target)
    fsync_path(partial)
    if target.exists() or target.is_symlink():
        old = target.with_name(target.name + ".old")
        remove_path(old)
        os.replace(target, old)
        os.replace(partial, target)
        fsync_path(target.parent)
        remove_path(old)
    else:
        os.replace(partial, target)
    fsync_path(target.parent)


def _write_text(path: Path, text: str) -> None:
    tmp = _write_temporary(path, text.encode())
    os.replace(tmp, path)
    fsync_path(path.parent)


# ---- checksums -------------------------------------------------------------------------------------------
def checksum_path(path: _PathLike) -> Path:
    """The sidecar of a checkpoint file: ``<file>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256_file(path: _PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _digest_lines(digests: Iterable[str], name: str) -> str:
    return "".join(f"{d}  {name}\n" for d in dict.fromkeys(digests))


def _parse_lines(text: str) -> list[tuple[str, str]]:
    rows = []
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if sep and re.fullmatch(r"[0-9a-f]{64}", digest):
            rows.append((digest, name.lstrip("*")))
    return rows


def _read_digests(sidecar: Path, name: str) -> list[str]:
    try:
        return [d for d, n in _parse_lines(sidecar.read_text()) if n == name]
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return []


_verified: dict[tuple, None] = {}  # (path, device, inode, size, mtime) of files (and sidecars) verified here


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def verify_file(path: _PathLike) -> bool:
    """Check a checkpoint file (a symlink: its target) against its sidecar checksum, or, without one, the
    CRC-32s of its zip records. Returns whether a sidecar was used; raises :class:`CheckpointError` naming the
    file if it does not verify. A file already verified by this process (same inode, size and mtime, and the
    same sidecar) is not read again."""
    shown = Path(path)
    real = shown.resolve()
    if not real.is_file():
        raise CheckpointError(f"checkpoint {str(shown)!r} is missing or not a file", shown)
    sidecar = checksum_path(real)
    key = (_stat_key(real), _stat_key(sidecar) if sidecar.is_file() else None)
    digests = _read_digests(sidecar, real.name)
    if key in _verified:
        return bool(digests)
    if digests:
        actual = sha256_file(real)
        if actual not in digests:
            raise CheckpointError(
                f"checkpoint {str(shown)!r} is corrupt: its SHA-256 {actual[:16]}... does not match "
                f"{str(sidecar)!r} ({digests[-1][:16]}...)",
                shown,
            )
    else:
        problem = _zip_problem(real)
        if problem:
            raise CheckpointError(f"checkpoint {str(shown)!r} is {problem}", shown)
    _verified[key] = None
    return bool(digests)


def _zip_problem(path: Path) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"unreadable (not a complete torch.save archive: {err})"
    return f"corrupt: record {bad!r} fails its CRC-32" if bad else None


def write_manifest(directory: _PathLike, digests: dict[str, str]) -> None:
    """Write ``directory/checksums.sha256`` (relative path -> SHA-256) durably."""
    directory = Path(directory)
    _write_text(directory / MANIFEST_NAME, "".join(f"{d}  {name}\n" for name, d in sorted(digests.items())))


def verify_manifest(directory: _PathLike, names: Optional[Iterable[str]] = None) -> bool:
    """Check the files of a checkpoint directory against its manifest (only ``names`` if given: a rank's share).
    Returns whether there is a manifest (none: a directory written before checksums existed); raises
    :class:`CheckpointError` naming the first file that is missing or does not match."""
    directory = Path(directory)
    manifest = directory / MANIFEST_NAME
    try:
        rows = dict((n, d) for d, n in _parse_lines(manifest.read_text()))
    except FileNotFoundError:
        return False
    for name in sorted(rows) if names is None else sorted(set(names) & set(rows)):
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {str(directory)!r} is incomplete: {name!r} is missing", directory)
        actual = sha256_file(file)
        if actual != rows[name]:
            raise CheckpointError(
                f"checkpoint {str(directory)!r} is corrupt: {name!r} has SHA-256 {actual[:16]}..., its manifest "
                f"says {rows[name][:16]}...",
                directory,
            )
    return True


def manifest_names(directory: _PathLike) -> Optional[list[str]]:
    """The files a checkpoint directory's manifest lists, or ``None`` without a manifest."""
    try:
        return [n for _, n in _parse_lines((Path(directory) / MANIFEST_NAME).read_text())]
    except FileNotFoundError:
        return None


# ---- a directory of checkpoints --------------------------------------------------------------------------
def sibling_checkpoints(directory: _PathLike, suffix: str = ".ckpt") -> list[Path]:
    """The checkpoints (``*.ckpt`` files, symlinks and directories) in ``directory``, newest first (by the
    modification time of what a symlink points to; ``last*`` first among equals). Temporaries and the
    ``*.consolidated.ckpt`` files ``lit-ortho consolidate`` writes beside a sharded checkpoint are left out;
    so are dangling symlinks."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        name = entry.name
        if not name.endswith(suffix) or name.endswith(".consolidated" + suffix) or is_temporary(name) or name.startswith("."):
            continue
        try:
            mtime = entry.stat().st_mtime_ns
        except OSError:  # a dangling symlink
            continue
        found.append((mtime, name.startswith("last"), entry))
    return [entry for *_, entry in sorted(found, key=lambda t: (t[0], t[1]), reverse=True)]


def previous_checkpoint_hint(path: Path) -> str:
    """``; the previous checkpoint there is '<dir>/step=50.ckpt' (--ckpt_path <it>)``: the newest checkpoint in
    the same directory older than ``path``, or else the newest other one."""
    path = Path(path)
    try:
        real, mtime = path.resolve(), path.resolve().stat().st_mtime_ns
    except OSError:
        real, mtime = None, None
    others = [o for o in sibling_checkpoints(path.parent) if o.name != path.name and (real is None or o.resolve() != real)]
    older = [o for o in others if mtime is not None and o.stat().st_mtime_ns <= mtime]
    if older:
        return f"; the previous checkpoint there is {str(older[0])!r} (--ckpt_path {older[0]})"
    if others:
        return f"; the newest other checkpoint there is {str(others[0])!r} (--ckpt_path {others[0]})"
    return "; there is no other checkpoint in that directory"
