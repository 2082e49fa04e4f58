"""Token streams for language modelling: ``prepare_text`` (files -> litdata chunks) and ``TextDataModule``.

A prepared directory holds ``train/`` and ``val/`` litdata token chunks (one token array per document,
each ending with the end-of-text token) and ``lit_ortho.json`` (tokenizer, vocabulary, token counts).
Training reads ``seq_length + 1`` token windows with ``TokensLoader``; ``StreamingDataLoader`` makes
the read position part of the checkpoint, so a resumed run continues where it stopped.
"""

from __future__ import annotations

import bz2
import codecs
import functools
import gzip
import io
import json
import lzma
import os
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import lightning as L
import torch

from lit_ortho.data._common import (
    DataError,
    DataWarning,
    EpochStreamingDataLoader,
    lightning_batches_done,
    build_and_replace,
    build_once,
    cache_root,
    check_chunks,
    check_not_overlapping,
    check_output_dir,
    check_positive_int,
    check_val_fraction,
    default_workers,
    load_meta,
    new_meta,
    read_meta,
    run_optimize,
    skip_or_refuse,
    some,
    write_meta,
)
from lit_ortho.data.tokenizers import EOT_TEXT, check_tokenizer, get_tokenizer

__all__ = [
    "TextDataModule",
    "prepare_text",
    "prepare_embedded_text",
    "embedded_text_dir",
    "find_text_files",
    "scan_text_inputs",
    "TEXT_SUFFIXES",
    "TEXT_CHUNK_BYTES",
    "TEXT_VAL_FRACTION",
    "EMBEDDED_TOKENIZER",
]

PLAIN_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSION_SUFFIXES = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
TEXT_SUFFIXES = PLAIN_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
SUPPORTED_TEXT = f"{', '.join(TEXT_SUFFIXES)} (all but .parquet optionally {', '.join(COMPRESSION_SUFFIXES)} compressed)"
TEXT_CHUNK_BYTES = "64MB"  # default litdata chunk size of prepare_text
TEXT_VAL_FRACTION = 0.0005  # default held-out share of documents (nanoGPT's)
EMBEDDED_TOKENIZER = "byte"  # the built-in corpus' default tokenizer: works offline
PREPARE_TEXT_HINT = "lit-ortho prepare-text <text/jsonl/parquet files or folders> --output-dir <dir>"


# ---- reading documents ---------------------------------------------------------------------------
def _kind(path: str) -> tuple[Optional[str], Optional[str]]:
    """(format, compression) from the file name, e.g. ``a.jsonl.gz`` -> ("jsonl", ".gz")."""
    name = path.lower()
    compression = next((c for c in COMPRESSION_SUFFIXES if name.endswith(c)), None)
    if compression:
        name = name[: -len(compression)]
    for fmt, suffixes in (("plain", PLAIN_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if name.endswith(suffixes):
            if fmt == "parquet" and compression:
                return None, None
            return fmt, compression
    return None, None


def scan_text_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Expand files and folders (recursively) into ``(supported text files, files not read)``, both sorted
    per input. A folder with no supported file, an unsupported file named directly, or a missing input
    is an error; the files of a folder that are not read (other suffixes) are returned to be reported.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise DataError("prepare-text needs at least one input file or folder")
    files: list[str] = []
    unread: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            every = sorted(str(p) for p in path.rglob("*") if p.is_file())
            found = [f for f in every if _kind(f)[0]]
            if not found:
                raise DataError(f"no text files in folder {str(path)!r}; supported: {SUPPORTED_TEXT}")
            files.extend(found)
            unread.extend(f for f in every if not _kind(f)[0])
        elif path.is_file():
            if not _kind(str(path))[0]:
                raise DataError(f"unsupported text file {str(path)!r}; supported: {SUPPORTED_TEXT}")
            files.append(str(path))
        else:
            raise DataError(f"input not found: {str(path)!r}")
    return files, unread


def find_text_files(inputs: Sequence[str]) -> list[str]:
    """Expand files and folders (recursively) into the supported text files, sorted (see :func:`scan_text_inputs`)."""
    return scan_text_inputs(inputs)[0]


def _open_text(path: str, compression: Optional[str]) -> io.TextIOBase:
    opener = COMPRESSION_SUFFIXES[compression] if compression else open
    return opener(path, "rt", encoding="utf-8", errors=_COUNT_BAD_UTF8)


# Invalid UTF-8 is read as U+FFFD, like errors="replace", and the replaced bytes are counted (per process:
# every litdata worker reads its files one at a time) so that prepare_text can report them.
_COUNT_BAD_UTF8 = "lit_ortho.replace_counting"
_bad_utf8_bytes = [0]


def _replace_counting(err: UnicodeError):
    if not isinstance(err, UnicodeDecodeError):
        raise err
    _bad_utf8_bytes[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error(_COUNT_BAD_UTF8, _replace_counting)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def iter_documents(
    path: str,
    text_key: str = "text",
    shard: int = 0,
    num_shards: int = 1,
    strict: bool = False,
    on_bad_utf8: Optional[Callable[[str, int], None]] = None,
) -> Iterator[tuple[int, str]]:
    """Yield ``(document index, text)`` of one file; with ``num_shards``, only this shard's documents.

    Plain text: the file is one document, or several separated by ``EOT_TEXT`` (``<|endoftext|>``). JSON lines: one
    document per line (an object's ``text_key`` or a bare string). Parquet: the ``text_key`` column,
    sharded by row group (needs pyarrow).

    Invalid UTF-8 (plain text, JSON lines) is read as U+FFFD; once the file is read, ``on_bad_utf8(path,
    bytes)`` is called with the number of bytes replaced, or with ``strict`` a :class:`DataError` is raised.
    """
    fmt, compression = _kind(path)

    def check_utf8(start: int) -> None:
        bad = _bad_utf8_bytes[0] - start
        if not bad:
            return
        if strict:
            raise DataError(f"{path}: invalid UTF-8 ({_plural(bad, 'byte')} would be read as U+FFFD); re-encode it as UTF-8 (refused: strict)")
        if on_bad_utf8 is not None:
            on_bad_utf8(path, bad)

    if fmt == "plain":
        start = _bad_utf8_bytes[0]
        with _open_text(path, compression) as f:
            text = f.read()
        check_utf8(start)
        for i, doc in enumerate(text.split(EOT_TEXT)):
            if i % num_shards == shard and doc.strip():
                yield i, doc
    elif fmt == "jsonl":
        start = _bad_utf8_bytes[0]
        with _open_text(path, compression) as f:
            for i, line in enumerate(f):
                if i % num_shards != shard or not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{i + 1}: not a JSON line ({err})") from None
                if isinstance(record, dict):
                    if text_key not in record:
                        raise DataError(f"{path}:{i + 1}: no {text_key!r} field (fields: {sorted(record)}); set --text-key")
                    record = record[text_key]
                if not isinstance(record, str):
                    raise DataError(f"{path}:{i + 1}: the text must be a string, got {type(record).__name__}")
                yield i, record
        check_utf8(start)
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"reading {path!r} needs pyarrow: pip install pyarrow") from None
        pf = pq.ParquetFile(path)
        if text_key not in pf.schema_arrow.names:
            raise DataError(f"{path}: no {text_key!r} column (columns: {pf.schema_arrow.names}); set --text-key")
        start = 0
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if g % num_shards == shard:
                column = pf.read_row_group(g, columns=[text_key]).column(0).to_pylist()
                for j, doc in enumerate(column):
                    if doc:
                        yield start + j, doc
            start += rows
    else:
        raise DataError(f"unsupported text file {path!r}")


def in_validation(path: str, index: int, val_fraction: float) -> bool:
    """Deterministic document-level split: a stable hash of (file name, document index)."""
    if val_fraction <= 0:
        return False
    h = zlib.crc32(f"{os.path.basename(path)}:{index}".encode()) / 2**32
    return h < val_fraction


class _TokenizeDocuments:
    """The ``litdata.optimize`` function: a (file, shard, num_shards) input -> token arrays of its documents."""

    def __init__(self, tokenizer: str, keep: str, val_fraction: float, text_key: str, strict: bool = False, report_dir: Optional[str] = None):
        # keep: "train" / "val" (documents on that side of the hash split) or "all"
        self.tokenizer, self.keep, self.val_fraction, self.text_key = tokenizer, keep, val_fraction, text_key
        # strict: invalid UTF-8 is an error; else each file's count goes to report_dir/<pid>.jsonl
        self.strict, self.report_dir = strict, report_dir

    def _report(self, path: str, bad_bytes: int) -> None:
        if self.report_dir is not None:
            with open(Path(self.report_dir) / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"path": path, "bad_bytes": bad_bytes}) + "\n")

    def __call__(self, item: tuple[str, int, int]) -> Iterator[torch.Tensor]:
        path, shard, num_shards = item
        tok = get_tokenizer(self.tokenizer)
        dtype = torch.uint16 if tok.vocab_size <= 2**16 else torch.int32
        for i, doc in iter_documents(path, self.text_key, shard, num_shards, strict=self.strict, on_bad_utf8=self._report):
            if self.keep != "all" and in_validation(path, i, self.val_fraction) != (self.keep == "val"):
                continue
            ids = tok.encode(doc)
            if ids:
                ids.append(tok.eot_id)
                yield torch.tensor(ids, dtype=dtype)


def _read_utf8_reports(report_dir: Path) -> dict[str, int]:
    """Bytes of invalid UTF-8 per file, from the workers' reports (every shard reads its whole file: max)."""
    found: dict[str, int] = {}
    for report in sorted(report_dir.glob("*.jsonl")):
        for line in report.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            found[entry["path"]] = max(found.get(entry["path"], 0), int(entry["bad_bytes"]))
    return found


def prepare_text(
    inputs: Sequence[str],
    output_dir: str,
    tokenizer: str = "gpt2",
    val_fraction: float = TEXT_VAL_FRACTION,
    val_inputs: Optional[Sequence[str]] = None,
    num_workers: Optional[int] = None,
    text_key: str = "text",
    chunk_bytes: str = TEXT_CHUNK_BYTES,
    overwrite: bool = False,
    verbose: bool = True,
    strict: bool = False,
) -> dict:
    """Tokenise text/jsonl/parquet files (OpenWebText included) into litdata chunks under ``output_dir``.

    Documents go to ``val/`` with probability ``val_fraction`` (a stable hash of file name and document
    index; nanoGPT's 0.0005 by default), the rest to ``train/``; or, with ``val_inputs``, those files
    are the validation split and every input document trains. Returns the metadata written to
    ``output_dir/lit_ortho.json``.

    Guarantees:

    * Inputs are only read. An ``output_dir`` that is, contains or lies inside any input or validation
      input (symlinks resolved) is refused before anything is touched; the error names both paths.
    * The output is built in a scratch directory beside ``output_dir`` (``.<name>.tmp-*``) and renamed into
      place only once complete. With ``overwrite`` a previous output (a directory holding ``lit_ortho.json``;
      any other non-empty directory is refused) stays intact until then: it is renamed aside, the new one
      renamed into place, then the old one deleted, so at any moment a complete old or new directory
      exists. On any failure the previous output is unchanged, the scratch directory is removed, and
      the error names ``output_dir``.
    * Nothing is dropped silently: files of an input folder with an unsupported suffix, and invalid UTF-8
      (read as U+FFFD), are reported in a :class:`~lit_ortho.data.DataWarning` that names the first few
      and counts them. With ``strict`` each is a :class:`DataError` instead, raised before any output
      is written (``output_dir`` is never created or changed).
    """
    from litdata import TokensLoader

    tok = get_tokenizer(check_tokenizer(tokenizer))  # fail now (e.g. tiktoken offline), not inside a worker
    check_val_fraction(val_fraction)
    input_list = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs or [])
    val_list = [val_inputs] if isinstance(val_inputs, (str, os.PathLike)) else list(val_inputs or [])
    check_not_overlapping(output_dir, input_list + val_list)  # before reading anything
    files, unread = scan_text_inputs(input_list)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(f"empty corpus: every input file is empty ({', '.join(files)})")
    val_files, val_unread = scan_text_inputs(val_list) if val_list else ([], [])
    if val_files:
        val_fraction = 0.0
    out = check_output_dir(output_dir, overwrite, input_list + val_list)
    unread += val_unread
    if unread:
        skip_or_refuse(f"{len(unread):,} file(s) in the input folders are not read (supported: {SUPPORTED_TEXT}): {some(unread)}", strict)
    num_workers = num_workers or default_workers()

    def shards_of(paths: list[str]) -> list[tuple[str, int, int]]:
        shards = max(1, -(-num_workers // len(paths)))  # split big files so every worker has work
        return [(f, s, shards) for f in paths for s in range(shards)]

    plan = {"train": (shards_of(files), "train" if val_fraction else "all")}
    if val_files:
        plan["val"] = (shards_of(val_files), "all")
    elif val_fraction:
        plan["val"] = (plan["train"][0], "val")

    def build(scratch: Path) -> None:
        counts = {}
        reports = scratch / ".utf8"
        reports.mkdir()
        for split, (work, keep) in plan.items():
            summary = run_optimize(
                _TokenizeDocuments(tokenizer, keep, val_fraction, text_key, strict=strict, report_dir=str(reports)),
                work,
                scratch / split,
                num_workers=num_workers,
                chunk_bytes=chunk_bytes,
                item_loader=TokensLoader(),
                verbose=verbose,
            )
            if summary is None:
                if split == "train" or val_files:
                    raise DataError(f"empty corpus: no text found in {', '.join(files if split == 'train' else val_files)}")
                warnings.warn(f"no document fell in the validation split (val_fraction={val_fraction}); no val/ written", DataWarning)
                continue
            counts[split] = {"documents": summary["items"], "tokens": summary["dims"]}
        bad = _read_utf8_reports(reports)
        shutil.rmtree(reports)
        if bad:  # strict raised inside the worker already
            listed = [f"{p!r} ({_plural(n, 'byte')})" for p, n in sorted(bad.items())]
            shown = ", ".join(listed[:5]) + (f" and {len(listed) - 5:,} more" if len(listed) > 5 else "")
            warnings.warn(
                f"{len(bad):,} input file(s) hold invalid UTF-8, read as U+FFFD: {shown} "
                "(strict=True / --strict makes this an error)",
                DataWarning,
                stacklevel=4,  # prepare_text's caller (build <- build_and_replace <- prepare_text)
            )
        meta = new_meta(
            "text",
            tokenizer=tokenizer,
            vocab_size=tok.vocab_size,
            eot_id=tok.eot_id,
            val_fraction=val_fraction,
            splits=counts,
            sources=files + val_files,
        )
        write_meta(scratch, meta)

    build_and_replace(out, build)
    return load_meta(out)


def embedded_text_dir(tokenizer: str = EMBEDDED_TOKENIZER, root: Optional[Path] = None) -> Path:
    """Where the built-in corpus is prepared for ``tokenizer``: ``<root>/pydoc-topics-<tokenizer>``,
    ``root`` defaulting to ``<cache>/text``."""
    return (Path(root) if root is not None else cache_root() / "text") / f"pydoc-topics-{tokenizer}"


def prepare_embedded_text(tokenizer: str = EMBEDDED_TOKENIZER, root: Optional[Path] = None, verbose: bool = False) -> Path:
    """The built-in corpus: Python's own documentation topics (``pydoc_data.topics``, ~465 KB of English
    that ships with every CPython), prepared once under the cache (or ``root``) and reused.
    """
    import pydoc_data.topics as topics

    final = embedded_text_dir(tokenizer, root)

    def build(scratch: Path) -> None:
        # 79 topics; every tenth (starting at the sixth, sorted by name) validates: 8 topics, ~8 % of the text
        source = scratch / "source"
        source.mkdir(parents=True)
        with open(source / "train.jsonl", "w", encoding="utf-8") as train, open(source / "val.jsonl", "w", encoding="utf-8") as val:
            for i, key in enumerate(sorted(topics.topics)):
                (val if i % 10 == 5 else train).write(json.dumps({"topic": key, "text": topics.topics[key]}) + "\n")
        prepare_text(
            [str(source / "train.jsonl")],
            str(scratch / "data"),
            tokenizer=tokenizer,
            val_inputs=[str(source / "val.jsonl")],
            num_workers=1,
            verbose=verbose,
        )
        for item in (scratch / "data").iterdir():
            item.rename(scratch / item.name)
        meta = load_meta(scratch)
        meta["sources"] = ["pydoc_data.topics (CPython documentation topics)"]
        write_meta(scratch, meta)

    return build_once(final, build)


class TextDataModule(L.LightningDataModule):
    """Token windows from a prepared directory, or the built-in corpus when ``data_dir`` is None.

    Args:
        data_dir: output of ``lit-ortho prepare-text`` (``None``: Python's documentation topics,
            prepared on first use under ``$LIT_ORTHO_CACHE`` or ``~/.cache/lit_ortho``).
        tokenizer: for the built-in corpus, ``byte`` (default, offline) or ``gpt2``; for ``data_dir``
            the tokenizer is read from the directory (giving a different one is an error).
        seq_length: tokens per training sequence (windows of ``seq_length + 1`` for the shifted targets);
            at most the model's ``block_size``.
        batch_size, val_batch_size: sequences per batch and process.
        num_workers: DataLoader worker processes.
        seed: shuffling seed (litdata reshuffles every epoch).
    """

    def __init__(
        self,
        data_dir: Optional[str] = None,
        tokenizer: Optional[str] = None,
        seq_length: int = 256,
        batch_size: int = 16,
        val_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 42,
    ):
        super().__init__()
        if tokenizer is not None:
            check_tokenizer(tokenizer)
        check_positive_int(seq_length, "seq_length")
        check_positive_int(batch_size, "batch_size")
        self.save_hyperparameters()
        self.data_dir = None if data_dir is None else Path(data_dir).expanduser()
        self.seq_length = seq_length
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.meta: Optional[dict] = None
        self.has_val: Optional[bool] = None
        if self.data_dir is not None:
            self._read_meta()  # fail at configuration time on a missing or wrong directory

    # ---- metadata --------------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        return self.data_dir is None

    @property
    def tokenizer_name(self) -> str:
        if self.meta is not None:
            return self.meta["tokenizer"]
        return self.hparams.tokenizer or EMBEDDED_TOKENIZER

    @property
    def tokenizer(self):
        return get_tokenizer(self.tokenizer_name)

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"] if self.meta is not None else self.tokenizer.vocab_size

    def _read_meta(self) -> dict:
        directory = self.root
        meta = read_meta(directory, "text", PREPARE_TEXT_HINT)
        wanted = self.hparams.tokenizer
        if wanted is not None and wanted != meta["tokenizer"]:
            raise DataError(
                f"{str(directory)!r} was tokenised with {meta['tokenizer']!r}, not tokenizer={wanted!r}; "
                "drop the tokenizer argument or prepare the data again"
            )
        self.meta = meta
        return meta

    @property
    def root(self) -> Path:
        """The prepared directory: ``data_dir``, or where the built-in corpus is prepared."""
        return self.data_dir if self.data_dir is not None else embedded_text_dir(self.hparams.tokenizer or EMBEDDED_TOKENIZER)

    # ---- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.embedded:
            prepare_embedded_text(self.hparams.tokenizer or EMBEDDED_TOKENIZER)

    def setup(self, stage: Optional[str] = None) -> None:
        meta = self._read_meta()
        train = check_chunks(self.root / "train")
        windows = train["dims"] // (self.seq_length + 1)
        if windows < self.batch_size:
            raise DataError(
                f"{str(self.root / 'train')!r} holds {train['dims']} tokens = {windows} windows of seq_length+1="
                f"{self.seq_length + 1}, fewer than one batch (batch_size={self.batch_size}): add text or lower them"
            )
        self.has_val = "val" in meta.get("splits", {}) and (self.root / "val").is_dir()
        if self.has_val:
            check_chunks(self.root / "val")

    def _loader(self, split: str, shuffle: bool, batch_size: int, drop_last: bool):
        from litdata import StreamingDataset, TokensLoader

        # Built here, after the process group exists, so every rank reads its own share.
        dataset = StreamingDataset(
            str(self.root / split),
            item_loader=TokensLoader(block_size=self.seq_length + 1),
            shuffle=shuffle,
            drop_last=drop_last,
            seed=self.seed,
        )
        # Training: a resumed run goes on into the next epoch as the uninterrupted run does (see there).
        return EpochStreamingDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            drop_last=drop_last,
            pin_memory=torch.cuda.is_available(),
            batches_done_in_epoch=functools.partial(lightning_batches_done, self) if split == "train" else None,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True, batch_size=self.batch_size, drop_last=True)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Still on the CPU here: a cheap check that turns a corrupt chunk into a clear error instead of
        # an embedding index error (or silent garbage) on the accelerator.
        if not isinstance(batch, torch.Tensor):
            return batch
        batch = batch.long()  # chunks store uint16; embeddings want int64
        if batch.numel() and int(batch.max()) >= self.vocab_size:
            raise DataError(
                f"token id {int(batch.max())} in {str(self.root)!r} is outside the tokenizer's vocabulary "
                f"({self.tokenizer_name}, {self.vocab_size}): a corrupt chunk; prepare the data again"
            )
        return batch

    def val_dataloader(self):
        if self.has_val is None:
            self.setup("validate")
        if not self.has_val:
            return []
        return self._loader("val", shuffle=False, batch_size=self.val_batch_size, drop_last=False)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()
