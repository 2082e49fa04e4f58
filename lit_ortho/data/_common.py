"""Shared plumbing of the data modules: the cache, metadata files, argument checks, litdata checks and writes.

The one home of what text and images share: where built-ins are cached, the ``lit_ortho.json`` format,
``val_fraction`` / output-directory / choice checks (all raising :class:`DataError`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lit_ortho import errors

# Before anything imports litdata: lit_ortho/data/__init__.py imports this module first, so every
# lit_ortho.data submodule (even one imported directly) sees it.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

from litdata import StreamingDataLoader  # noqa: E402  (after the variable above)

__all__ = [
    "DataError",
    "DataWarning",
    "skip_or_refuse",
    "some",
    "warnings_as_lines",
    "check_output_dir",
    "check_not_overlapping",
    "build_and_replace",
    "cache_root",
    "META_FILE",
    "new_meta",
    "read_meta",
    "write_meta",
    "load_meta",
    "check_choice",
    "check_positive_int",
    "check_val_fraction",
    "check_chunks",
    "build_once",
    "run_optimize",
    "default_workers",
    "EpochStreamingDataLoader",
    "lightning_batches_done",
]

META_FILE = "lit_ortho.json"
META_VERSION = 1


class DataError(errors.UsageError):
    """Bad data on disk or a bad data argument; the message names the path or value (a ValueError)."""


def cache_root() -> Path:
    """Where built-in data sets are prepared: ``$LIT_ORTHO_CACHE``, else ``~/.cache/lit_ortho``."""
    return Path(os.environ.get("LIT_ORTHO_CACHE") or Path.home() / ".cache" / "lit_ortho").expanduser()


# ---- argument checks (lit_ortho.errors' helpers, raising DataError) ---------------------------------
def check_choice(value: Any, choices: Iterable[Any], what: str) -> Any:
    """:func:`lit_ortho.errors.check_choice` raising :class:`DataError`."""
    try:
        return errors.check_choice(value, choices, what)
    except errors.UsageError as err:
        raise DataError(*err.args) from None


def check_positive_int(value: Any, what: str) -> int:
    """:func:`lit_ortho.errors.check_positive_int` raising :class:`DataError`."""
    try:
        return errors.check_positive_int(value, what)
    except errors.UsageError as err:
        raise DataError(*err.args) from None


def check_val_fraction(val_fraction: float) -> float:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    return val_fraction


def check_not_overlapping(output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output directory that is, contains or lies inside any input path (symlinks resolved).

    Preparing there would read its own output, and ``--overwrite`` would replace the input.
    """
    given_out = Path(output_dir).expanduser()
    out = given_out.resolve()
    for item in inputs:
        given = Path(item).expanduser()
        real = given.resolve()
        if real == out:
            relation = "is"
        elif out in real.parents:
            relation = "contains"
        elif real in out.parents:
            relation = "lies inside"
        else:
            continue
        # name where a symlink leads (not merely the absolute form of a relative path)
        resolved = [f"{str(g)!r} -> {str(r)!r}" for g, r in ((given_out, out), (given, real)) if os.path.abspath(g) != str(r)]
        note = f" (symlinks resolved: {'; '.join(resolved)})" if resolved else ""
        raise DataError(
            f"output directory {str(given_out)!r} {relation} the input {str(given)!r}{note}: "
            "nothing was written; choose an output directory outside every input"
        )


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """``output_dir`` as a Path, after checking that :func:`build_and_replace` may write it. Touches nothing.

    Refused: an output overlapping an input (:func:`check_not_overlapping`), a file, a non-empty directory
    without ``overwrite``, and (even with ``overwrite``) a non-empty directory that is not a prepared
    lit-ortho directory (no ``lit_ortho.json``), so ``--overwrite`` only ever replaces earlier output.
    """
    check_not_overlapping(output_dir, inputs)
    out = Path(output_dir).expanduser()
    if out.exists():
        if not out.is_dir():
            raise DataError(f"output directory {str(out)!r} is a file")
        if any(out.iterdir()):
            if not overwrite:
                raise DataError(f"output directory {str(out)!r} is not empty; pass --overwrite to replace it")
            if not (out / META_FILE).is_file():
                raise DataError(
                    f"output directory {str(out)!r} is not a prepared lit-ortho directory (no {META_FILE}), so "
                    "--overwrite does not replace it: choose another output directory, or empty it yourself"
                )
    return out


# ---- things preparation skips: a warning, or with strict an error --------------------------------------
class DataWarning(UserWarning):
    """Input that preparation skips or alters (files not read, empty class folders, invalid UTF-8).

    ``strict=True`` (``--strict``) turns each into a :class:`DataError` raised before any output is written.
    """


def some(items: Sequence[Any], n: int = 5) -> str:
    """``'a', 'b', 'c' and 7 more``: the first ``n`` items (repr), then how many are left."""
    shown = ", ".join(repr(str(i)) for i in items[:n])
    return shown + (f" and {len(items) - n:,} more" if len(items) > n else "")


def skip_or_refuse(message: str, strict: bool, stacklevel: int = 3) -> None:
    """Say that something is skipped: a :class:`DataWarning`, or with ``strict`` a :class:`DataError`."""
    if strict:
        raise DataError(f"{message} (refused: strict)")
    warnings.warn(f"{message} (strict=True / --strict makes this an error)", DataWarning, stacklevel=stacklevel)


@contextlib.contextmanager
def warnings_as_lines(prog: str):
    """For the CLI: print each :class:`DataWarning` as one ``<prog>: warning: ...`` line on stderr, every time."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DataWarning):
                print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


# ---- lit_ortho.json ----------------------------------------------------------------------------------
def _format(kind: str) -> str:
    return f"lit-ortho-{kind}"


def new_meta(kind: str, **fields: Any) -> dict[str, Any]:
    """The metadata of a prepared ``kind`` (``text``, ``images``) directory: format and version first."""
    return {"format": _format(kind), "version": META_VERSION, **fields}


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (Path(directory) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``lit_ortho.json`` of a directory this package just wrote (no checks: see :func:`read_meta`)."""
    return json.loads((Path(directory) / META_FILE).read_text())


def read_meta(directory: str | os.PathLike, kind: str, prepare_hint: str) -> dict[str, Any]:
    """Read ``lit_ortho.json`` of a prepared directory, with errors that name the path and the fix."""
    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"data directory not found: {str(directory)!r}. Create it with: {prepare_hint}")
    if not directory.is_dir():
        raise DataError(f"data directory {str(directory)!r} is not a directory")
    path = directory / META_FILE
    if not path.is_file():
        raise DataError(
            f"{str(directory)!r} is not a prepared lit-ortho {kind} directory (no {META_FILE}). Create it with: {prepare_hint}"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {str(path)!r}: {err}") from None
    if meta.get("format") != _format(kind):
        raise DataError(f"{str(directory)!r} holds {meta.get('format')!r} data, not {_format(kind)}")
    return meta


def check_chunks(directory: str | os.PathLike) -> dict[str, Any]:
    """Check a litdata directory before streaming it: ``index.json`` readable, every chunk present and
    of the size the index records. Returns ``{"items": ..., "dims": ...}`` (dims: tokens for token data).
    """
    directory = Path(directory)
    index_path = directory / "index.json"
    if not index_path.is_file():
        raise DataError(f"no litdata index at {str(index_path)!r}: the directory is missing or was not fully written")
    try:
        index = json.loads(index_path.read_text())
        chunks = index["chunks"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"corrupt litdata index {str(index_path)!r}: {err}") from None
    items = dims = 0
    for chunk in chunks:
        path = directory / chunk["filename"]
        if not path.is_file():
            raise DataError(f"missing data chunk {str(path)!r} (listed in {str(index_path)!r})")
        size = path.stat().st_size
        if size != chunk["chunk_bytes"]:
            raise DataError(
                f"corrupt data chunk {str(path)!r}: {size} bytes on disk, {chunk['chunk_bytes']} expected; prepare the data again"
            )
        items += int(chunk.get("chunk_size") or 0)
        dims += int(chunk.get("dim") or 0)
    return {"items": items, "dims": dims}


def _scratch_name(final: Path, tag: str) -> Path:
    return final.parent / f".{final.name}.{tag}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _scratch_dir(final: Path, shown: Optional[Path] = None):
    """A fresh directory beside ``final`` (same filesystem: renames are atomic), removed on exit.

    Errors raised inside name ``shown`` (default ``final``), the directory the user gave, instead of it.
    """
    scratch = _scratch_name(final, "tmp")
    scratch.mkdir(parents=True)
    try:
        yield scratch
    except BaseException as err:
        _rename_in_error(err, scratch, Path(shown) if shown is not None else final)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _rename_in_error(err: BaseException, scratch: Path, shown: Path) -> None:
    """Replace the scratch directory's path (and name) by ``shown`` in an exception's message, in place."""

    def fix(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        return text.replace(str(scratch), str(shown)).replace(scratch.name, shown.name)

    try:
        err.args = tuple(fix(a) for a in err.args)
        for attr in ("filename", "filename2"):
            if isinstance(getattr(err, attr, None), str):
                setattr(err, attr, fix(getattr(err, attr)))
    except (AttributeError, TypeError):  # an exception type that does not allow it: keep its message
        pass


def _swap_into_place(scratch: Path, final: Path) -> None:
    """Move the complete ``scratch`` to ``final``; a previous ``final`` is renamed aside first and deleted
    last, so a crash at any point leaves a complete old or new directory (the old one possibly aside)."""
    if not os.path.lexists(final):
        os.rename(scratch, final)
        return
    aside = _scratch_name(final, "old")
    os.rename(final, aside)
    try:
        os.rename(scratch, final)
    except BaseException:
        os.rename(aside, final)  # put the previous output back
        raise
    shutil.rmtree(aside, ignore_errors=True)
    if os.path.lexists(aside):
        warnings.warn(f"could not delete the previous output, moved aside to {str(aside)!r}; delete it yourself", DataWarning)


def build_and_replace(output_dir: str | os.PathLike, build: Callable[[Path], Any]) -> Path:
    """``build(scratch)`` in a scratch directory beside ``output_dir``, then swap it into place.

    A previous ``output_dir`` stays untouched until the new directory is complete; if ``build`` fails
    (or the swap does), it is intact, the scratch directory is removed, and the error names
    ``output_dir`` rather than the scratch directory. A symlinked ``output_dir`` is replaced where it
    points. Check the directory first with :func:`check_output_dir`.
    """
    shown = Path(output_dir).expanduser()
    final = shown.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    with _scratch_dir(final, shown) as scratch:
        build(scratch)
        _swap_into_place(scratch, final)
    return shown


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory atomically: ``build(scratch)`` then rename to ``final`` (skipped when it exists).

    Several processes may race (one per node, or two runs sharing a cache): the first rename wins and
    the others discard their copy.
    """
    final = Path(final)
    if (final / META_FILE).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _scratch_dir(final) as scratch:
        build(scratch)
        try:
            os.rename(scratch, final)
        except OSError:
            if not (final / META_FILE).is_file():
                raise
    return final


def run_optimize(
    fn: Callable,
    inputs: Sequence[Any],
    output_dir: Path,
    *,
    num_workers: int,
    chunk_bytes: str,
    item_loader: Any = None,
    verbose: bool = True,
) -> Optional[dict[str, Any]]:
    """``litdata.optimize`` into ``output_dir``; returns the chunk summary, or None when nothing was written."""
    import multiprocessing

    from litdata import optimize

    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        optimize(
            fn=fn,
            inputs=list(inputs),
            output_dir=str(output_dir),
            num_workers=max(1, min(int(num_workers), len(inputs))),
            chunk_bytes=chunk_bytes,
            item_loader=item_loader,
            verbose=verbose,
            mode="overwrite",
            # fork, like PyTorch's DataLoader on Linux: fast, and no `if __name__ == "__main__"` needed
            start_method="fork" if sys.platform.startswith("linux") else None,
        )
    except RuntimeError as err:  # a worker failed: surface our own message (it names the file)
        text = str(err)
        if "DataError: " in text:
            raise DataError(text.rsplit("DataError: ", 1)[1].splitlines()[0]) from None
        raise
    finally:  # litdata sets the process-wide start method (to spawn); put it back for DataLoader workers
        if multiprocessing.get_start_method(allow_none=True) != previous:
            multiprocessing.set_start_method(previous, force=True)
    if not (Path(output_dir) / "index.json").is_file():
        return None
    summary = check_chunks(output_dir)
    return summary if summary["items"] else None


def default_workers() -> int:
    """Worker processes when none are given: every CPU core."""
    return max(1, (os.cpu_count() or 1))


# ---- the training loader ---------------------------------------------------------------------------
class EpochStreamingDataLoader(StreamingDataLoader):
    """A :class:`litdata.StreamingDataLoader` whose restored position (``load_state_dict``) continues the
    interrupted epoch only, so that ``Trainer.fit(ckpt_path=...)`` sees the batches of the uninterrupted run.

    litdata replays a restored position on every ``iter()`` until an iteration runs to its end (only there
    does it clear ``restore`` and the dataset's loaded state). Lightning never runs the training loader to
    its end: an epoch stops after ``len(loader)`` (or ``limit_train_batches``) batches, before the loader
    raises ``StopIteration``. Left alone, the epoch after a resumed one replayed the restored position (as
    last saved: litdata updates the loaded state in place at every ``state_dict()``) with the old epoch's
    shuffle instead of starting the next epoch, and a checkpoint taken on the last
    batch of a ``limit_train_batches`` epoch continued the old epoch as the new one.

    Here the restored position is dropped (litdata's ``restore`` cleared: the next epoch starts, with its
    epoch counter and shuffle, as in the uninterrupted run) when ``iter()`` is called

    * after an iteration of the restored epoch has yielded a batch (the restored epoch is over), or
    * when ``batches_done_in_epoch()`` (the data module passes Lightning's count of this epoch's batches)
      is 0 while the restored position is inside an epoch: Lightning starts a new epoch there.

    An iteration abandoned before its first batch leaves the restored position in place.
    """

    def __init__(self, *args: Any, batches_done_in_epoch: Optional[Callable[[], Optional[int]]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done_in_epoch = batches_done_in_epoch
        self._restored_epoch_begun = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._restored_epoch_begun = False

    def _new_epoch_begins(self) -> bool:
        if self._restored_epoch_begun:
            return True
        done = self._batches_done_in_epoch() if self._batches_done_in_epoch is not None else None
        return done == 0 and self._num_samples_yielded_streaming > 0

    def __iter__(self) -> Any:
        # runs at the first next(), as litdata's own check of `restore` does: Lightning's count is final then
        if self.restore and self._new_epoch_begins():
            self.restore = False
        self._restored_epoch_begun = False
        resuming = self.restore
        for batch in super().__iter__():
            if resuming:
                self._restored_epoch_begun = True
                resuming = False
            yield batch


def lightning_batches_done(datamodule: Any) -> Optional[int]:
    """Batches of the current training epoch Lightning has fetched (None outside ``Trainer.fit`` training):
    for :class:`EpochStreamingDataLoader`'s ``batches_done_in_epoch``."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None or not trainer.training:
        return None
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready
