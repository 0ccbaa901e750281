"""Prepared data: a text encoded once into a file of ids that training memory-maps.

``charloom prepare TEXT... --out DATA`` reads the text in pieces (constant memory, whatever its
size), normalises and encodes it exactly as training from the text would, and writes::

    DATA/
      ids.bin     the ids, raw: one uint8 per character where the vocabulary fits, int16 up to
                  32,768 symbols, int32 beyond; readable with numpy.fromfile or numpy.memmap
      meta.json   the vocabulary, dtype, length, normalisation, source files and the SHA-256 of
                  ids.bin (a run trained on the folder records it, to resume on the same ids)

``charloom train DATA`` maps ``ids.bin`` instead of reading it: batches only touch the pages
they index, so a corpus larger than memory trains at the speed of a small one.

A ``corpus`` vocabulary needs the text's character set before the first id can be written, so
it takes two passes over the text (one to collect the set, one to encode); ``bytes`` and
``printable`` take one. The folder appears complete or not at all: it is written under a
temporary name and renamed into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._version import __version__
from .checkpoint import write_json
from .corpus import AsciiNormaliser, TextSource, expand_paths, iter_text, load_builtin
from .documents import DOCUMENT_MODES, SplitCounts, split_pieces
from .errors import CharloomError
from .vocab import VOCAB_KINDS, Vocab

#: Version of the prepared-data layout; a newer one is refused rather than guessed at.
FORMAT = 1
KIND = "charloom-prepared"
IDS_FILE = "ids.bin"
META_FILE = "meta.json"
#: Bytes read from the text at a time: the memory ``prepare`` needs, whatever the text's size.
CHUNK_BYTES = 1 << 22
#: Training from prepared data evaluates on at most this many characters of the held-out part
#: (the first ones), so that evaluating a held-out tenth of gigabytes stays quick.
MAX_EVAL_CHARS = 1 << 20

_MAX_META_BYTES = 64 * 1024 * 1024
_CODE_POINTS = 0x110000


@dataclass(frozen=True)
class PreparedCorpus:
    """What ``meta.json`` says about a prepared folder."""

    path: Path
    vocab: Vocab
    ascii: bool
    dtype: np.dtype
    length: int  # ids in ids.bin
    sha256: str  # of ids.bin
    source: dict  # the files it was prepared from, their encoding and error handling
    documents: str = "off"  # the documents mode; the ids then hold the end symbols

    @property
    def ids_path(self) -> Path:
        return self.path / IDS_FILE

    def ids(self) -> torch.Tensor:
        """``(length,)`` ids, memory-mapped: nothing is read until it is indexed."""
        # Copy-on-write mapping: writable as torch wants, shared with the page cache as long as
        # nothing writes to it (nothing does).
        mm = np.memmap(self.ids_path, dtype=self.dtype, mode="c", shape=(self.length,))
        return torch.from_numpy(mm)

    @classmethod
    def open(cls, path: str | os.PathLike) -> PreparedCorpus:
        """The prepared folder ``path``, checked: its meta.json complete and its ids.bin the size
        the meta says."""
        path = Path(path)
        meta_path = path / META_FILE
        if not is_prepared_folder(path):
            raise CharloomError(f"{str(path)!r} is not a folder written by charloom prepare")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        fmt = meta.get("format")
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise CharloomError(
                f"{meta_path} was written by a newer charloom ({meta.get('charloom_version')}); "
                "upgrade charloom to read it"
            )
        try:
            vocab = Vocab.from_dict(meta["vocab"])
            dtype = np.dtype(meta["dtype"])
            length = meta["length"]
            if dtype != ids_dtype(vocab) or not isinstance(length, int) or length < 1:
                raise ValueError("the dtype or length is not valid")
            prepared = cls(
                path=path,
                vocab=vocab,
                ascii=meta.get("ascii") is True,
                dtype=dtype,
                length=length,
                sha256=str(meta["sha256"]),
                source=dict(meta.get("source") or {}),
                documents=meta.get("documents", "off"),
            )
            if prepared.documents not in DOCUMENT_MODES or (
                (prepared.documents != "off") != vocab.documents
            ):
                raise ValueError("the documents mode does not match the vocabulary")
        except (KeyError, TypeError, ValueError, CharloomError) as exc:
            raise CharloomError(f"{meta_path} is damaged ({exc}); prepare the text again") from None
        size = prepared.ids_path.stat().st_size if prepared.ids_path.is_file() else None
        if size != length * dtype.itemsize:
            raise CharloomError(
                f"{prepared.ids_path} holds {size} bytes, not the {length * dtype.itemsize} its "
                "meta.json says; prepare the text again"
            )
        return prepared


# --- encoding ---------------------------------------------------------------------------------
def ids_dtype(vocab: Vocab) -> np.dtype:
    """The narrowest type for ``vocab``'s ids on disk: uint8, int16 or int32 (types every torch
    version indexes; a corpus vocabulary of thousands of characters takes 2 bytes, not 4)."""
    if vocab.size <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.int16 if vocab.size <= 1 << 15 else np.int32)


def _code_points(text: str) -> np.ndarray:
    """``(len(text),)`` code points of ``text``: uint8 when it is Latin-1, else uint32."""
    try:
        return np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    except UnicodeEncodeError:
        return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


class _Encoder:
    """Text pieces -> ids with a fixed vocabulary, at numpy speed: one lookup in a table over
    every code point (4.5 MB, whatever the text)."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab, self.dtype = vocab, ids_dtype(vocab)
        if vocab.kind != "bytes":
            self._table = np.full(_CODE_POINTS, -1, dtype=np.int32)
            self._table[[ord(c) for c in vocab.chars]] = np.arange(vocab.chars_size, dtype=np.int32)

    def __call__(self, text: str) -> np.ndarray:
        """``(n,)`` ids of ``text`` (bytes vocabulary: its ``n`` UTF-8 bytes)."""
        if self.vocab.kind == "bytes":
            return np.frombuffer(text.encode("utf-8", errors="surrogatepass"), dtype=np.uint8)
        ids = self._table[_code_points(text)]
        if len(ids) and ids.min() < 0:
            self.vocab.check(text, what="text")  # names the characters outside the vocabulary
        return ids.astype(self.dtype)


def _character_set(pieces: Iterable[str]) -> set[str]:
    """The distinct characters of the text ``pieces`` make up."""
    seen = np.zeros(_CODE_POINTS, dtype=bool)
    trim = _heap_trimmer()
    for piece in pieces:
        seen[_code_points(piece)] = True
        trim()
    return {chr(c) for c in np.flatnonzero(seen)}


def _heap_trimmer() -> Callable[[], object]:
    """A function that hands memory the C allocator holds free back to the system.

    Each piece of text passes through a few buffers of megabytes, allocated and freed again.
    glibc serves them from its heap, which fragments: without this, the memory ``prepare``
    takes grows by ~0.1 MB per MB of text (measured in bench/prepare_bench.py); with it, it
    stays flat, for ~1 ms per piece. Elsewhere (no ``malloc_trim``) it does nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


# --- writing ----------------------------------------------------------------------------------
def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CharloomError(f"--out {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_prepared_folder(out):
            raise CharloomError(
                f"{str(out)!r} is not empty and is not charloom prepared data; "
                "give a new or empty folder as --out"
            )
        if not overwrite:
            raise CharloomError(
                f"{str(out)!r} already holds prepared data; use --overwrite to replace it"
            )


def prepare(
    paths: Sequence[str] = (),
    out: str | os.PathLike = "data",
    vocab: str = "corpus",
    ascii: bool = False,
    corpus: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    overwrite: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
    progress: bool = False,
    documents: str = "off",
) -> PreparedCorpus:
    """Encode the text of ``paths`` (files, folders, globs) or of the built-in ``corpus`` into
    the prepared folder ``out``, in constant memory; ``vocab``, ``ascii`` and ``documents`` as
    for training (documents: the ids hold the end symbols, as training from the text would).

    Everything is checked before anything is written; on failure ``out`` is left as it was."""
    if vocab not in VOCAB_KINDS:
        raise CharloomError(f"--vocab must be one of {', '.join(VOCAB_KINDS)}, not {vocab!r}")
    if ascii and vocab == "bytes":
        raise CharloomError("--ascii goes with --vocab printable or corpus, not bytes")
    if documents not in DOCUMENT_MODES:
        raise CharloomError(
            f"--documents must be one of {', '.join(DOCUMENT_MODES)}, not {documents!r}"
        )
    paths = tuple(str(p) for p in paths)
    if paths and corpus:
        raise CharloomError("give either text files or --corpus, not both")
    if not paths and not corpus:
        raise CharloomError("give the text to prepare: files, folders or glob patterns")
    out = Path(out)
    _check_out(out, overwrite)
    files = expand_paths(paths) if paths else []
    # The files as found now, so that both passes and the record read the same list.
    source = TextSource(paths=tuple(files), corpus=corpus, encoding=encoding, errors=errors)
    total = sum(os.path.getsize(f) for f in files) if files else None

    def text(what: str) -> Iterator[str]:
        pieces = (
            iter([load_builtin(corpus)])
            if corpus
            else iter_text(files, encoding, errors, chunk_bytes)
        )
        if ascii:
            normaliser = AsciiNormaliser()
            pieces = (normaliser.feed(p) for p in pieces)
        return _progress(pieces, total, what, encoding) if progress else pieces

    def by_file() -> Iterator[Iterator[str]]:
        """Each file's text in pieces (normalised per file), for splitting into documents."""
        for one in [None] if corpus else files:
            pieces = (
                iter([load_builtin(corpus)])
                if corpus
                else iter_text([str(one)], encoding, errors, chunk_bytes)
            )
            if ascii:
                normaliser = AsciiNormaliser()
                pieces = (normaliser.feed(p) for p in pieces)
            yield pieces

    def docs() -> Iterator[str]:
        chunks, _ = split_pieces(by_file(), documents)
        return ("".join(chunk) for chunk in chunks)

    on = documents != "off"
    if vocab == "corpus":
        chars = _character_set(docs() if on else text("reading"))
        if not chars:
            raise CharloomError(f"the text from {source.describe()} is empty")
        v = Vocab("corpus", tuple(sorted(chars)), on)
    else:
        v = Vocab.build(vocab, documents=on)
    counts = SplitCounts()
    if on:
        chunks, counts = split_pieces(by_file(), documents)
        arrays = _document_ids(_Encoder(v), chunks)
    else:
        arrays = map(_Encoder(v), text("encoding"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        length, digest = _write_ids(tmp / IDS_FILE, ids_dtype(v), arrays)
        if length == 0 or (on and counts.documents == 0):
            raise CharloomError(f"the text from {source.describe()} is empty")
        meta = {
            "format": FORMAT,
            "kind": KIND,
            "charloom_version": __version__,
            "vocab": v.to_dict(),
            "ascii": ascii,
            "dtype": ids_dtype(v).name,
            "length": length,
            "sha256": digest,
            "documents": documents,
            "split": {"documents": counts.documents, "empty": counts.empty},
            "source": {
                "paths": list(files),
                "corpus": corpus,
                "encoding": encoding,
                "errors": errors,
                "bytes": total,
            },
        }
        write_json(tmp / META_FILE, meta)
        _put_in_place(tmp, out)
    except OSError as exc:
        raise CharloomError(f"cannot write prepared data to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedCorpus.open(out)


def _document_ids(encode: _Encoder, chunks: Iterable[list[str]]) -> Iterator[np.ndarray]:
    """The ids of documents as training encodes them (``Vocab.encode_documents``): an end
    symbol first, then each document's ids followed by an end symbol."""
    assert encode.vocab.end is not None
    end = np.array([encode.vocab.end], dtype=encode.dtype)
    yield end
    for chunk in chunks:
        for doc in chunk:
            yield np.concatenate([encode(doc), end])


def _write_ids(path: Path, dtype: np.dtype, arrays: Iterable[np.ndarray]) -> tuple[int, str]:
    """Write the ids ``arrays`` to ``path``; their count and SHA-256."""
    digest, length = hashlib.sha256(), 0
    trim = _heap_trimmer()
    with open(path, "wb") as fh:
        for ids in arrays:
            data = ids.astype(dtype, copy=False).tobytes()
            digest.update(data)
            fh.write(data)
            length += len(data) // dtype.itemsize
            trim()
        fh.flush()
        os.fsync(fh.fileno())
    return length, digest.hexdigest()


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the complete folder ``tmp`` to ``out``, replacing an empty or prepared one."""
    old = out.parent / f".{out.name}.old{os.getpid()}"
    if out.is_dir() and any(out.iterdir()):
        os.replace(out, old)
    elif out.is_dir():
        out.rmdir()
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _progress(pieces: Iterator[str], total: int | None, what: str, encoding: str):
    """``pieces``, with a progress bar in input bytes on an interactive stderr."""
    from tqdm.auto import tqdm  # a widget in Jupyter (with ipywidgets), text elsewhere

    ascii_like = encoding.lower().replace("-", "").replace("_", "") in ("utf8", "ascii", "latin1")
    with tqdm(
        total=total, desc=what, unit="B", unit_scale=True, file=sys.stderr, disable=None
    ) as bar:
        for piece in pieces:
            # Characters, not bytes, for non-ASCII text: close enough for a progress bar.
            bar.update(len(piece) if ascii_like else len(piece.encode(encoding, "replace")))
            yield piece


# --- reading ----------------------------------------------------------------------------------
def is_prepared_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`prepare`."""
    meta = Path(path) / META_FILE
    if not meta.is_file() or meta.stat().st_size > _MAX_META_BYTES:
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def find_prepared(paths: Sequence[str], corpus: str | None = None) -> Path | None:
    """The prepared folder among training inputs ``paths`` (``None`` if they are text)."""
    found = [p for p in paths if os.path.isdir(p) and is_prepared_folder(p)]
    if not found:
        return None
    if len(paths) > 1 or corpus:
        raise CharloomError(
            f"{found[0]} is prepared data: train on it alone, or prepare all the text together"
        )
    return Path(found[0])
