"""Documents mode: a text as many short documents (names, titles, poems), each learned whole.

``--documents lines`` takes one document per line, ``paragraphs`` one per blank-line-separated
paragraph, ``files`` one per file. The documents are encoded joined by the vocabulary's
end-of-document symbol, with one before the first (``E d1 E d2 ... E``, see
``Vocab.encode_documents``): the end symbol ends a document, and, since the model reads it just
before the next document's first character, it also marks where a document starts. A sample
then starts from that symbol and stops when the model draws it again.

This module splits text into documents (:class:`DocumentSplitter`, streamed, so that
``charloom prepare`` can split a text larger than memory), counts what it skipped, and keeps
the fingerprints of the training documents that ``charloom sample --novel`` checks samples
against (a text file of hashes; never a pickle).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CharloomError

#: ``--documents`` values; ``off``: the text is one stream.
DOCUMENT_MODES = ("off", "lines", "paragraphs", "files")
#: Where a run keeps the fingerprints of its training documents (one hex digest a line).
HASHES_FILE = "documents.sha256"
_HEX = 16  # hex digits kept of each SHA-256: 64 bits, no collision in any realistic list

# Blank lines: a newline, then one or more lines of nothing but spaces or tabs.
_BLANK = re.compile(r"\n(?:[ \t\r\f\v]*\n)+")


def check_mode(mode: str) -> None:
    """Refuse a ``--documents`` value that is not one of :data:`DOCUMENT_MODES`."""
    if mode not in DOCUMENT_MODES:
        raise CharloomError(f"--documents must be one of {', '.join(DOCUMENT_MODES)}, not {mode!r}")


@dataclass
class SplitCounts:
    """What splitting a text found: documents kept, empty ones skipped, and whether any break
    was seen at all (a ``lines`` text with no newline is one document)."""

    documents: int = 0
    empty: int = 0
    breaks: int = 0

    def notes(self, mode: str) -> list[str]:
        """One line for each thing a user should know about the split."""
        out = []
        if self.empty:
            out.append(f"note: skipped {self.empty:,} empty document(s) (blank {_UNIT[mode]}s)")
        if mode in ("lines", "paragraphs") and self.breaks == 0 and self.documents == 1:
            what = "no line break" if mode == "lines" else "no blank line"
            out.append(f"note: the text has {what}, so it is one document")
        return out


_UNIT = {"lines": "line", "paragraphs": "paragraph", "files": "file"}


@dataclass
class DocumentSplitter:
    """Splits text fed in pieces into documents by ``mode``; each file's text ends with
    :meth:`end_file`. Empty documents (nothing but white space) are skipped and counted."""

    mode: str
    counts: SplitCounts = field(default_factory=SplitCounts)
    _held: str = ""

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.mode == "off":
            raise CharloomError("documents mode is off: there is nothing to split")

    def feed(self, text: str) -> list[str]:
        """The documents that ``text`` (the next piece) completes."""
        held = self._held + text
        if self.mode == "files":
            self._held = held
            return []
        parts = held.split("\n") if self.mode == "lines" else _BLANK.split(held)
        # The last part may go on in the next piece (a paragraph break may too: hold a
        # trailing newline so that "\n" + "\n" across two pieces is still a blank line).
        self._held = parts.pop()
        self.counts.breaks += len(parts)
        return self._keep(parts)

    def end_file(self) -> list[str]:
        """The document the current file's text ends (in every mode a file ends a document:
        files are joined by a line break, and in ``files`` mode a file is a document)."""
        held, self._held = self._held, ""
        if self.mode == "paragraphs":
            held = held.strip("\n")
        return self._keep([held]) if held or self.mode == "files" else []

    def _keep(self, parts: Iterable[str]) -> list[str]:
        out = []
        for part in parts:
            if self.mode == "paragraphs":
                part = part.strip("\n")
            if part.strip():
                out.append(part)
            else:
                self.counts.empty += 1
        self.counts.documents += len(out)
        return out


def split_text(text: str, mode: str) -> tuple[list[str], SplitCounts]:
    """The documents of ``text`` (one file's text, or all files joined) by ``mode``."""
    splitter = DocumentSplitter(mode)
    docs = splitter.feed(text)
    docs += splitter.end_file()
    return docs, splitter.counts


def split_pieces(
    files: Iterable[Iterable[str]], mode: str
) -> tuple[Iterator[list[str]], SplitCounts]:
    """Documents of several files' texts, each given in pieces: an iterator of lists of
    documents (as they complete) and the counts, complete once the iterator is exhausted."""
    splitter = DocumentSplitter(mode)

    def run() -> Iterator[list[str]]:
        for pieces in files:
            for piece in pieces:
                docs = splitter.feed(piece)
                if docs:
                    yield docs
            yield splitter.end_file()

    return run(), splitter.counts


def long_note(ids: np.ndarray, end: int, seq_len: int) -> str | None:
    """A note when documents in ``ids (n,)`` are longer than one training sequence: they are
    learned in pieces of ``seq_len`` (not an error)."""
    lengths = np.diff(np.flatnonzero(ids == end)) - 1
    long = int((lengths > seq_len).sum())
    if not long:
        return None
    return (
        f"note: {long:,} document(s) are longer than one training sequence ({seq_len} chars; "
        f"the longest has {int(lengths.max()):,}): each is learned in pieces of {seq_len}"
    )


def portion_starts(ids: np.ndarray, end: int, seq_len: int) -> np.ndarray:
    """Where a portion of ``seq_len + 1`` ids may start so that it starts a document: every
    end symbol (the start marker of the document after it), and inside a document longer than
    ``seq_len`` every ``seq_len`` ids further (its pieces). Only starts with a whole portion
    after them: shape ``(k,)`` int64, possibly empty."""
    marks = np.flatnonzero(ids == end)
    pieces = [marks]
    for a, b in zip(marks[:-1], marks[1:]):
        if b - a > seq_len:
            pieces.append(np.arange(a + seq_len, b, seq_len))
    out = np.unique(np.concatenate(pieces)).astype(np.int64)
    return out[out + seq_len + 1 <= len(ids)]


# --- fingerprints, for --novel -----------------------------------------------------------------
def fingerprint(ids: Iterable[int]) -> str:
    """A document's fingerprint: from its ids (not its decoded text, so that a bytes model's
    partial characters compare exactly), without end symbols."""
    data = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype="<i4")
    return hashlib.sha256(data.tobytes()).hexdigest()[:_HEX]


def fingerprints(ids: np.ndarray, end: int) -> set[str]:
    """The fingerprints of every document in ``ids (n,)`` (documents between end symbols)."""
    ids = np.asarray(ids)
    marks = np.flatnonzero(ids == end)
    bounds = np.concatenate([[-1], marks, [len(ids)]])
    out = set()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a > 1:
            out.add(fingerprint(ids[a + 1 : b]))
    return out


def write_fingerprints(path: str | os.PathLike, found: set[str]) -> None:
    """Write ``found`` to ``path``: one hex digest a line, sorted."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text("".join(f"{h}\n" for h in sorted(found)), encoding="ascii")
    os.replace(tmp, path)


def read_fingerprints(path: str | os.PathLike) -> set[str]:
    """The fingerprints :func:`write_fingerprints` wrote; a damaged file is an error."""
    try:
        lines = Path(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise CharloomError(f"cannot read {path}: {exc}") from None
    if any(len(h) != _HEX or not re.fullmatch(r"[0-9a-f]+", h) for h in lines):
        raise CharloomError(f"{path} is damaged: it is not a list of document fingerprints")
    return set(lines)
