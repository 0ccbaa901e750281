"""Vocab: characters <-> integer ids, in three kinds.

- ``corpus``: the distinct characters of the training text, sorted (the smallest vocabulary).
- ``printable``: the lecture's ``string.printable``, 100 characters in that order.
- ``bytes``: the 256 byte values of the UTF-8 encoding, so any text in any language round-trips.

In ``bytes`` mode one "character" of the model is one byte of UTF-8; a multi-byte character
(an accented letter, a CJK character, an emoji) is several steps.

A vocabulary for documents mode (``documents=True``) has one more symbol, the end of a
document, with the id after every character's (``bytes``: 256). It is an id, not a character, so
no text can contain it: encoding a text never yields it, and decoding leaves it out.
"""

from __future__ import annotations

import codecs
import functools
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import CharloomError

VOCAB_KINDS = ("corpus", "printable", "bytes")

#: Largest vocabulary a saved config may claim (unicode has ~1.1M code points).
MAX_VOCAB = 1_114_112
#: From this size on, a corpus vocabulary gets a note suggesting ``--vocab bytes``
#: (:meth:`Vocab.size_note`): the output layer then costs more than the rest of the model.
LARGE_VOCAB = 1000
#: What ``unknown=`` may say about characters outside the vocabulary in a text to read.
UNKNOWN_CHOICES = ("error", "skip")


def _show(chars) -> str:
    return ", ".join(repr(c) for c in chars)


@dataclass
class Vocab:
    """A fixed mapping between characters and ids ``0..size-1``."""

    kind: str
    chars: tuple[str, ...] = ()
    #: Whether the vocabulary has the end-of-document symbol (id :attr:`end`).
    documents: bool = False
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in VOCAB_KINDS:
            raise CharloomError(
                f"unknown vocabulary {self.kind!r}; choose one of: {', '.join(VOCAB_KINDS)}"
            )
        if self.kind == "bytes":
            self.chars = ()
        else:
            self.chars = tuple(self.chars)
            if not self.chars:
                raise CharloomError("a vocabulary needs at least one character")
            if len(self.chars) > MAX_VOCAB:
                raise CharloomError(f"vocabulary of {len(self.chars)} characters is too large")
            if any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
                raise CharloomError("every vocabulary entry must be a single character")
            self._index = {c: i for i, c in enumerate(self.chars)}
            if len(self._index) != len(self.chars):
                raise CharloomError("the vocabulary lists a character twice")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, kind: str, text: str = "", documents: bool = False) -> Vocab:
        """A vocabulary of ``kind``; ``corpus`` takes the characters of ``text``; with
        ``documents``, the end-of-document symbol after them."""
        if kind == "corpus":
            if not text:
                raise CharloomError("a corpus vocabulary needs a non-empty text")
            return cls("corpus", tuple(sorted(set(text))), documents)
        if kind == "printable":
            return cls("printable", tuple(string.printable), documents)
        return cls(kind, documents=documents)

    # --- properties ---------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Ids in the vocabulary: the characters (or 256 bytes), plus the end symbol if any."""
        return self.chars_size + int(self.documents)

    @property
    def chars_size(self) -> int:
        """Ids that stand for characters (bytes): ``0..chars_size-1``."""
        return 256 if self.kind == "bytes" else len(self.chars)

    @property
    def end(self) -> int | None:
        """The id of the end-of-document symbol (one past the characters), or None."""
        return self.chars_size if self.documents else None

    def __len__(self) -> int:
        return self.size

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned integer type that holds every id."""
        return np.dtype(np.uint8 if self.size <= 256 else np.int32)

    # --- encode / decode ----------------------------------------------------------------
    def unknown(self, text: str) -> list[str]:
        """Characters of ``text`` this vocabulary cannot encode, sorted."""
        if self.kind == "bytes":
            return []
        return sorted(set(text) - self._index.keys())

    def check(self, text: str, what: str = "text", advice: str = "") -> None:
        """Raise a :class:`CharloomError` listing the characters of ``text`` that are unknown
        (``advice``: how the caller's user can go on, added to the message)."""
        bad = self.unknown(text)
        if bad:
            shown = _show(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
            hint = " (try --ascii)" if self.kind == "printable" else ""
            raise CharloomError(
                f"the {what} has {len(bad)} character(s) outside the model's vocabulary: "
                f"{shown}{hint}{'; ' + advice if advice else ''}"
            )

    def known_only(self, text: str) -> tuple[str, int]:
        """``text`` without the characters this vocabulary cannot encode, and how many were
        dropped. What ``unknown="skip"`` reads: the rest of the text, joined up, so the state
        flows from the character before a dropped one straight to the one after it."""
        bad = self.unknown(text)
        if not bad:
            return text, 0
        kept = text.translate(dict.fromkeys(map(ord, bad)))
        return kept, len(text) - len(kept)

    def size_note(self) -> str | None:
        """A one-line note when a corpus vocabulary is large enough that ``--vocab bytes``
        would serve better, else None. Not an error: a text in a script of thousands of
        characters may want exactly this vocabulary."""
        if self.kind != "corpus" or self.size < LARGE_VOCAB:
            return None
        return (
            f"note: the corpus vocabulary has {self.size:,} symbols, so the output layer takes "
            "most of the time and memory; --vocab bytes (256 symbols, reads any text) is "
            "usually faster"
        )

    def encode(self, text: str, what: str = "text") -> np.ndarray:
        """Ids of ``text``: shape ``(n,)`` with ``n = len(text)`` (bytes: the UTF-8 length)."""
        if self.kind == "bytes":
            return np.frombuffer(text.encode("utf-8", errors="surrogatepass"), dtype=np.uint8)
        self.check(text, what)
        if self.size <= 256 and all(ord(c) < 256 for c in self.chars):
            # Fast path: a byte-wide lookup table over latin-1 encoded text.
            table = np.zeros(256, dtype=np.uint8)
            for i, c in enumerate(self.chars):
                table[ord(c)] = i
            return table[np.frombuffer(text.encode("latin-1"), dtype=np.uint8)]
        index = self._index
        return np.fromiter((index[c] for c in text), dtype=self.dtype, count=len(text))

    def encode_documents(self, documents: Sequence[str], what: str = "text") -> np.ndarray:
        """Ids of ``documents`` joined by the end symbol, with one before the first and one
        after the last: ``E d1 E d2 ... E dn E``, shape ``(n,)``. The end symbol ends each
        document and, as the symbol before it, marks where the next one starts."""
        if self.end is None:
            raise CharloomError("this vocabulary has no end-of-document symbol")
        end = np.array([self.end], dtype=self.dtype)
        parts = [end]
        for doc in documents:
            parts.append(self.encode(doc, what).astype(self.dtype, copy=False))
            parts.append(end)
        return np.concatenate(parts)

    def decode(self, ids) -> str:
        """Text of ``ids`` (any iterable of ints); in bytes mode invalid UTF-8 becomes U+FFFD.
        The end-of-document symbol is not a character: it is left out."""
        ids = [int(i) for i in ids if i != self.end]
        if self.kind == "bytes":
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)

    def decoder(self) -> StreamDecoder:
        """An incremental decoder: feed ids one step at a time, get text as it completes."""
        return StreamDecoder(self)

    # --- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict = {"kind": self.kind, "size": self.size}
        if self.kind != "bytes":
            d["chars"] = "".join(self.chars)
        if self.documents:
            d["end"] = self.end  # a vocabulary saved before documents mode has no "end"
        return d

    @classmethod
    def from_dict(cls, d: object) -> Vocab:
        if not isinstance(d, dict):
            raise CharloomError("the saved vocabulary is not an object")
        kind = d.get("kind")
        if kind not in VOCAB_KINDS:
            raise CharloomError(f"the saved vocabulary has an unknown kind {kind!r}")
        chars = d.get("chars", "")
        if kind != "bytes" and not isinstance(chars, str):
            raise CharloomError("the saved vocabulary's characters are not a string")
        end = d.get("end")
        if end is not None and (isinstance(end, bool) or not isinstance(end, int)):
            raise CharloomError(f"the saved vocabulary's end symbol {end!r} is not an id")
        vocab = cls(kind, tuple(chars) if kind != "bytes" else (), end is not None)
        if end is not None and end != vocab.end:
            raise CharloomError(
                f"the saved vocabulary's end symbol is {end}, not the id after its characters"
            )
        if "size" in d and d["size"] != vocab.size:
            raise CharloomError(
                f"the saved vocabulary says size {d['size']!r} but holds {vocab.size} entries"
            )
        return vocab


@functools.lru_cache(maxsize=16)
def _code_points(chars: tuple[str, ...]) -> np.ndarray:
    """``(V,)`` uint32: each character's code point, so ids decode as UTF-32 in one lookup."""
    return np.array([ord(c) for c in chars], dtype="<u4")


class StreamDecoder:
    """Turns ids into text as they are drawn, for one sample; in bytes mode it holds back an
    incomplete UTF-8 sequence until its last byte arrives, so a caller never shows half a
    character (and counts characters, not bytes)."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._utf8 = (
            codecs.getincrementaldecoder("utf-8")("replace") if vocab.kind == "bytes" else None
        )
        self._codes = _code_points(vocab.chars) if self._utf8 is None else None

    def feed(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text that ``ids`` (the next ids of the sample, any number; a list or a 1-D
        integer array) complete; feeding a block gives the same text as feeding its ids one by
        one. End symbols are left out."""
        end = self.vocab.end
        if isinstance(ids, np.ndarray) and (end is None or not (ids == end).any()):
            # A block of a sample in one lookup, without a Python object per character.
            if self._codes is not None:
                return self._codes[ids].tobytes().decode("utf-32-le")
            assert self._utf8 is not None
            return self._utf8.decode(ids.astype(np.uint8).tobytes())
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        if end is not None and end in ids:
            ids = [t for t in ids if t != end]
        if self._utf8 is None:
            chars = self.vocab.chars
            return "".join([chars[t] for t in ids])
        return self._utf8.decode(bytes(ids))
