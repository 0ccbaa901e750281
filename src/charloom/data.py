"""Training data: a text (or a prepared corpus) as ids, split into training and validation.

The last ``val_fraction`` of the text is held out, so validation measures how well the model
continues text it has not seen. Everything is checked here, before any run directory exists.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .corpus import AsciiNormaliser, TextSource, expand_paths, iter_text, normalise_ascii, read_text
from .documents import (
    HASHES_FILE,
    SplitCounts,
    fingerprints,
    long_note,
    portion_starts,
    split_pieces,
    split_text,
    write_fingerprints,
)
from .errors import CharloomError
from .prepared import MAX_EVAL_CHARS, PreparedCorpus, find_prepared
from .vocab import Vocab

# The smallest validation split worth evaluating (characters).
MIN_VAL_CHARS = 2


#: The most training ids :meth:`TrainData.log_frequencies` counts.
UNIGRAM_SAMPLE = 1 << 23


@dataclass
class TrainData:
    """The encoded training and validation text and the vocabulary."""

    vocab: Vocab
    train: torch.Tensor  # (N_train,) ids
    val: torch.Tensor  # (N_val,) ids; empty when there is no validation split
    source: TextSource | None
    sha256: str  # of the ids: a resumed run must train on the same ones
    text_chars: int = 0  # characters of the text as given (what budget sizing counts)
    #: Lines to tell the user about the data (documents skipped or split, ...).
    notes: list[str] = field(default_factory=list)

    @property
    def has_validation(self) -> bool:
        return len(self.val) >= MIN_VAL_CHARS

    def portion_starts(self, seq_len: int) -> torch.Tensor | None:
        """Documents mode: where training portions start (documents' starts, and pieces of
        long documents), ``(k,)``; None otherwise (anywhere)."""
        if self.vocab.end is None:
            return None
        return torch.from_numpy(portion_starts(self.train.numpy(), self.vocab.end, seq_len))

    def log_frequencies(self, most: int = UNIGRAM_SAMPLE) -> torch.Tensor:
        """``(V,)`` float: the log of each symbol's share of the training ids, counted with one
        added to every symbol (so one never seen is rare, not impossible); counted over at most
        ``most`` ids, in 16 evenly spaced pieces when there are more, so a large corpus is not
        read whole for it. The output layer's starting bias (``head_bias="unigram"``)."""
        n, size = len(self.train), self.vocab.size
        pieces = [self.train]
        if n > most:
            starts = torch.linspace(0, n - most // 16, 16).long().tolist()
            pieces = [self.train[start : start + most // 16] for start in starts]
        counts = torch.ones(size, dtype=torch.float64)
        for piece in pieces:
            counts += torch.bincount(piece.long(), minlength=size)[:size].double()
        return (counts / counts.sum()).log().float()

    def write_fingerprints(self, run_dir: str | os.PathLike) -> None:
        """Documents mode: keep the fingerprints of every document of the text in
        ``run_dir``, for ``sample --novel`` (the training and validation parts: the whole
        text; of prepared data, what is read of it)."""
        if self.vocab.end is None:
            return
        ids = torch.cat([self.train, self.val]).numpy()
        os.makedirs(run_dir, exist_ok=True)
        write_fingerprints(Path(run_dir) / HASHES_FILE, fingerprints(ids, self.vocab.end))


def validation_size(n: int, val_fraction: float) -> int:
    """How many of ``n`` characters are held out, at the end of the text, for validation."""
    n_val = int(n * val_fraction)
    return n_val if n_val >= MIN_VAL_CHARS else 0


def encode_text(
    config: TrainConfig,
    text: str,
    source: TextSource | None = None,
    vocab: Vocab | None = None,
) -> TrainData:
    """Normalise, encode and split ``text`` as ``config`` says (``vocab``: reuse a saved one)."""
    given = len(text)
    if config.ascii:
        if config.vocab == "bytes":
            raise CharloomError("--ascii goes with --vocab printable or corpus, not bytes")
        text = normalise_ascii(text)
    if not text:
        raise CharloomError("the text is empty")
    if config.documents != "off":
        docs, counts = split_text(text, config.documents)
        return encode_documents(config, docs, counts, source, vocab, given)
    vocab = vocab or Vocab.build(config.vocab, text)
    return _split(config, vocab, vocab.encode(text, what="training text"), source, given)


def encode_documents(
    config: TrainConfig,
    docs: list[str],
    counts: SplitCounts,
    source: TextSource | None = None,
    vocab: Vocab | None = None,
    given: int = 0,
) -> TrainData:
    """Encode ``docs`` (already normalised) joined by the end symbol, and split them: the
    validation part starts at a document's start where it can."""
    if not docs:
        raise CharloomError(
            f"the text has no documents ({counts.empty:,} empty {config.documents} skipped)"
        )
    vocab = vocab or Vocab.build(config.vocab, "".join(docs), documents=True)
    if vocab.end is None:
        raise CharloomError("this run was not trained in documents mode; leave out --documents")
    ids = vocab.encode_documents(docs, what="training text")
    data = _split(config, vocab, ids, source, given)
    data.notes = counts.notes(config.documents)
    note = long_note(ids, vocab.end, config.seq_len)
    if note:
        data.notes.append(note)
    return data


def _split(
    config: TrainConfig, vocab: Vocab, ids: np.ndarray, source: TextSource | None, given: int
) -> TrainData:
    """``ids (n,)`` split into training and validation (held out at the end). In documents
    mode the held-out part starts at an end symbol (a document's start marker), which both
    parts share, so that no document is cut in two."""
    n_val = validation_size(len(ids), config.val_fraction)
    cut = len(ids) - n_val
    shared = 0
    if vocab.end is not None and n_val:
        cut = document_cut(ids, cut, vocab.end)
        shared = int(ids[cut] == vocab.end)  # the end symbol ends one part and starts the other
    train = torch.from_numpy(ids[: cut + shared].copy())
    val = torch.from_numpy(ids[cut:].copy()) if n_val else torch.from_numpy(ids[:0].copy())
    digest = hashlib.sha256(ids.tobytes()).hexdigest()
    return TrainData(vocab, train, val, source, digest, text_chars=given or len(ids))


def document_cut(ids: np.ndarray, cut: int, end: int, window: int = MAX_EVAL_CHARS) -> int:
    """Where to split ``ids (n,)`` near ``cut`` so that the held-out part starts with an end
    symbol (the start marker of a document) and holds at least two ids: the first end symbol
    at or after ``cut``, else the last before it (within ``window`` ids); ``cut`` if none."""
    n = len(ids)
    after = np.flatnonzero(ids[cut : min(n - 1, cut + window)] == end)
    if len(after):
        return cut + int(after[0])
    lo = max(1, cut - window)
    before = np.flatnonzero(ids[lo:cut] == end)
    return lo + int(before[-1]) if len(before) else cut


def read_documents(config: TrainConfig, source: TextSource) -> tuple[list[str], SplitCounts, int]:
    """The documents of ``source``'s files, each file read on its own (in ``files`` mode a
    file is one document), normalised as ``config`` says; and the characters read."""
    read = 0

    def pieces(path: str) -> Iterator[str]:
        nonlocal read
        normaliser = AsciiNormaliser() if config.ascii else None
        for piece in iter_text([path], source.encoding, source.errors):
            read += len(piece)
            yield normaliser.feed(piece) if normaliser else piece

    chunks, counts = split_pieces((pieces(p) for p in expand_paths(source.paths)), config.documents)
    docs = [doc for chunk in chunks for doc in chunk]
    if read == 0:
        raise CharloomError(f"the text from {source.describe()} is empty")
    return docs, counts, read


def map_prepared(
    config: TrainConfig, folder: str | os.PathLike, vocab: Vocab | None = None
) -> tuple[TrainConfig, TrainData]:
    """``(config, data)`` for training on a folder written by ``charloom prepare``: the config
    takes the folder's vocabulary and normalisation, and the ids are memory-mapped, not read.
    ``vocab``: the vocabulary a resumed run was trained with."""
    prepared = PreparedCorpus.open(folder)
    defaults = TrainConfig()
    given = (
        ("vocab", prepared.vocab.kind),
        ("ascii", prepared.ascii),
        ("documents", prepared.documents),
    )
    for name, have in given:
        want = getattr(config, name)
        if want != have and want != getattr(defaults, name):
            had = _flags(prepared.vocab.kind, prepared.ascii, prepared.documents)
            raise CharloomError(
                f"{folder} was prepared with {had}; prepare the text again for "
                f"{_flags(config.vocab, config.ascii, config.documents)}"
            )
    if vocab is not None and vocab != prepared.vocab:
        raise CharloomError(
            f"{folder} has a different vocabulary from the run's; resume with the same data"
        )
    config = config.replace(
        vocab=prepared.vocab.kind, ascii=prepared.ascii, documents=prepared.documents
    )
    ids = prepared.ids()
    n_val = validation_size(len(ids), config.val_fraction)
    cut = len(ids) - n_val
    end = prepared.vocab.end
    shared = 0
    if end is not None and n_val:  # start the held-out part at a document (see _split)
        cut = document_cut(ids.numpy(), cut, end)
        shared = int(ids[cut] == end)
    train = ids[: cut + shared]
    val = ids[cut:][:MAX_EVAL_CHARS]
    source = TextSource(paths=(str(folder),), prepared=True)
    data = TrainData(prepared.vocab, train, val, source, prepared.sha256, prepared.length)
    if end is not None:
        note = long_note(ids.numpy(), end, config.seq_len)
        data.notes = [note] if note else []
    return config, data


def _flags(vocab: str, ascii: bool, documents: str) -> str:
    """Data settings as the flags that give them."""
    docs = f" --documents {documents}" if documents != "off" else ""
    return f"--vocab {vocab}{' --ascii' if ascii else ''}{docs}"


def load_data(
    config: TrainConfig,
    *,
    text: str | None = None,
    paths: tuple[str, ...] | list[str] = (),
    corpus: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    vocab: Vocab | None = None,
) -> tuple[TrainConfig, TrainData]:
    """The training data from ``text`` (a string), a prepared folder among ``paths``, or text
    files/folders/globs ``paths`` or a built-in ``corpus``; ``config`` comes back with the
    settings a prepared folder fixes."""
    folder = find_prepared(paths, corpus) if text is None else None
    if folder is not None:
        return map_prepared(config, folder, vocab)
    source = None
    if text is None and config.documents != "off" and paths and not corpus:
        source = TextSource(paths=tuple(paths), encoding=encoding, errors=errors)
        return config, _documents_from_files(config, source, vocab)
    if text is None:
        text, source = read_text(paths, corpus, encoding=encoding, errors=errors)
    return config, encode_text(config, text, source, vocab)


def _documents_from_files(
    config: TrainConfig, source: TextSource, vocab: Vocab | None
) -> TrainData:
    """The training data of documents read file by file from ``source``."""
    if config.ascii and config.vocab == "bytes":
        raise CharloomError("--ascii goes with --vocab printable or corpus, not bytes")
    docs, counts, read = read_documents(config, source)
    return encode_documents(config, docs, counts, source, vocab, read)


def reload_data(
    config: TrainConfig, source: TextSource | None, vocab: Vocab, text: str | None = None
) -> tuple[TrainConfig, TrainData]:
    """The data a saved run trained on, from its recorded ``source`` (``text``: given again,
    for a run trained on a string)."""
    if text is None and source is not None and source.prepared:
        return map_prepared(config, source.paths[0], vocab)
    if text is None and source is not None and source.paths and config.documents != "off":
        return config, _documents_from_files(config, source, vocab)
    if text is None:
        if source is None:
            raise CharloomError("this run was trained on a text given in Python; pass it again")
        text = source.read()
    return config, encode_text(config, text, source, vocab)
