"""Tokenizers for the text pipeline: GPT-2 BPE (tiktoken) and a byte-level tokenizer that needs nothing.

Both end every document with an end-of-text token (``eot_id``), as GPT-2 training data does; its text
form, :data:`EOT_TEXT`, also separates documents in plain-text inputs (see ``text.iter_documents``).
"""

from __future__ import annotations

import functools
from typing import Callable, Protocol

from lit_ortho.data._common import check_choice

__all__ = ["Tokenizer", "ByteTokenizer", "TiktokenTokenizer", "get_tokenizer", "check_tokenizer", "TOKENIZERS", "EOT_TEXT"]

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


# The one registry of tokenizer names (its order is the order error messages and the CLI list them).
_FACTORIES: dict[str, Callable[[], Tokenizer]] = {
    "gpt2": lambda: TiktokenTokenizer("gpt2"),
    "byte": ByteTokenizer,
}
TOKENIZERS = tuple(_FACTORIES)


def check_tokenizer(name: str) -> str:
    """``name`` if it is a tokenizer name, else a :class:`~lit_ortho.data.DataError` naming the choices."""
    return check_choice(name, TOKENIZERS, "tokenizer")


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str) -> Tokenizer:
    """``"gpt2"`` (GPT-2 BPE via tiktoken) or ``"byte"``."""
    return _FACTORIES[check_tokenizer(name)]()
