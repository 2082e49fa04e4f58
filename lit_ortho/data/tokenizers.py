"""Tokenizers for the text pipeline: GPT-2 BPE (tiktoken), a byte-level tokenizer that needs nothing, and
the byte-level BPE of a local Hugging Face tokenizer directory (``tokenizer.json``, or ``vocab.json`` +
``merges.txt``: a pretrained GPT-2's own files, read offline).

Both end every document with an end-of-text token (``eot_id``), as GPT-2 training data does; its text
form, :data:`EOT_TEXT`, also separates documents in plain-text inputs (see ``text.iter_documents``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Optional, Protocol

from lit_ortho.data._common import check_choice

__all__ = ["Tokenizer", "ByteTokenizer", "TiktokenTokenizer", "HFTokenizer", "get_tokenizer", "check_tokenizer",
           "hf_tokenizer_dir", "TOKENIZERS", "EOT_TEXT"]

EOT_TEXT = "<|endoftext|>"  # GPT-2's end-of-text token, as text


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus :data:`EOT_TEXT` = 256 (vocabulary 257). Works offline."""

    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        out, run = [], bytearray()
        for i in ids:
            if i == self.eot_id:
                out.append(run.decode("utf-8", errors="replace"))
                out.append(EOT_TEXT)
                run = bytearray()
            elif 0 <= i < self.eot_id:
                run.append(i)
            else:
                raise ValueError(f"token id {i} is outside the byte tokenizer's vocabulary (0..{self.vocab_size - 1})")
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class TiktokenTokenizer:
    """GPT-2 BPE through tiktoken (vocabulary 50257, ``<|endoftext|>`` = 50256).

    tiktoken fetches its encoding files once and caches them (``TIKTOKEN_CACHE_DIR``); offline, put the
    cached files there or use the ``byte`` tokenizer.
    """

    def __init__(self, encoding: str = "gpt2"):
        try:
            import tiktoken
        except ImportError as err:  # pragma: no cover - tiktoken is optional
            raise ValueError("tokenizer 'gpt2' needs tiktoken: pip install tiktoken (or use tokenizer 'byte')") from err
        try:
            self._enc = tiktoken.get_encoding(encoding)
        except Exception as err:  # no network and no cached encoding file
            raise ValueError(
                f"tiktoken could not load the {encoding!r} encoding ({type(err).__name__}: {err}). It downloads its "
                "files on first use; offline, copy tiktoken's cache into TIKTOKEN_CACHE_DIR, or use tokenizer 'byte'"
            ) from None
        self.name = encoding
        self.vocab_size = self._enc.n_vocab
        self.eot_id = self._enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(list(ids))


# GPT-2's pre-tokenizer (tiktoken's r50k pattern), which Hugging Face's byte-level BPE tokenizers share.
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte in vocab files."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in chars.items()}


def hf_tokenizer_dir(path) -> Optional[Path]:
    """The directory of ``path`` (a model directory or a file in it) when it holds Hugging Face tokenizer
    files (``tokenizer.json``, or ``vocab.json`` and ``merges.txt``), else None."""
    directory = Path(path).expanduser()
    directory = directory if directory.is_dir() else directory.parent
    if (directory / "tokenizer.json").is_file() or ((directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()):
        return directory.resolve()
    return None


class HFTokenizer:
    """The byte-level BPE of a local Hugging Face tokenizer directory, run by tiktoken: the same ids as
    ``transformers``' GPT-2 tokenizer on the same files, offline. The end-of-text token is ``<|endoftext|>``."""

    def __init__(self, directory):
        import tiktoken

        found = hf_tokenizer_dir(directory)
        if found is None:
            raise ValueError(f"{str(directory)!r} holds no Hugging Face tokenizer (tokenizer.json, or vocab.json + merges.txt)")
        specials: dict[str, int] = {}
        if (found / "tokenizer.json").is_file():
            data = json.loads((found / "tokenizer.json").read_text(encoding="utf-8"))
            model = data.get("model", {})
            if model.get("type") != "BPE":
                raise ValueError(f"{str(found / 'tokenizer.json')!r} is a {model.get('type')!r} tokenizer; lit-ortho reads byte-level BPE")
            vocab = model["vocab"]
            specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
        else:
            vocab = json.loads((found / "vocab.json").read_text(encoding="utf-8"))
        decode = _byte_decoder()
        ranks: dict[bytes, int] = {}
        for token, index in vocab.items():
            if token in specials or (token.startswith("<|") and token.endswith("|>")):
                specials.setdefault(token, int(index))
                continue
            try:
                ranks[bytes(decode[c] for c in token)] = int(index)
            except KeyError:
                raise ValueError(f"{str(found)!r}: token {token!r} is not byte-level BPE (GPT-2 style)") from None
        if EOT_TEXT not in specials:
            raise ValueError(f"{str(found)!r} has no {EOT_TEXT!r} token, which documents end with")
        self._enc = tiktoken.Encoding(name=f"hf:{found}", pat_str=_GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
        self.name = str(found)
        self.vocab_size = max(max(ranks.values()), max(specials.values())) + 1
        self.eot_id = specials[EOT_TEXT]

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(list(ids))


# The one registry of tokenizer names (its order is the order error messages and the CLI list them).
_FACTORIES: dict[str, Callable[[], Tokenizer]] = {
    "gpt2": lambda: TiktokenTokenizer("gpt2"),
    "byte": ByteTokenizer,
}
TOKENIZERS = tuple(_FACTORIES)


def check_tokenizer(name: str) -> str:
    """``name`` if it is a tokenizer name or a Hugging Face tokenizer directory, else a
    :class:`~lit_ortho.data.DataError` naming the choices."""
    if name not in _FACTORIES and hf_tokenizer_dir(name) is not None:
        return name
    return check_choice(name, TOKENIZERS + ("<a Hugging Face tokenizer directory>",), "tokenizer")


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str) -> Tokenizer:
    """``"gpt2"`` (GPT-2 BPE via tiktoken), ``"byte"``, or the path of a Hugging Face tokenizer directory."""
    name = check_tokenizer(name)
    return _FACTORIES[name]() if name in _FACTORIES else HFTokenizer(name)
