"""Training data: a text (or a prepared corpus) as ids, split into training and validation.

The last ``val_fraction`` of the text is held out, so validation measures how well the model
continues text it has not seen. Everything is checked here, before any run directory exists.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from .config import TrainConfig
from .corpus import TextSource, normalise_ascii, read_text
from .errors import CharloomError
from .prepared import MAX_EVAL_CHARS, PreparedCorpus, find_prepared
from .vocab import Vocab

# The smallest validation split worth evaluating (characters).
MIN_VAL_CHARS = 2


@dataclass
class TrainData:
    """The encoded training and validation text and the vocabulary."""

    vocab: Vocab
    train: torch.Tensor  # (N_train,) ids
    val: torch.Tensor  # (N_val,) ids; empty when there is no validation split
    source: TextSource | None
    sha256: str  # of the ids: a resumed run must train on the same ones
    text_chars: int = 0  # characters of the text as given (what budget sizing counts)

    @property
    def has_validation(self) -> bool:
        return len(self.val) >= MIN_VAL_CHARS


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
    vocab = vocab or Vocab.build(config.vocab, text)
    ids = vocab.encode(text, what="training text")
    n_val = validation_size(len(ids), config.val_fraction)
    train = torch.from_numpy(ids[: len(ids) - n_val].copy())
    val = torch.from_numpy(ids[len(ids) - n_val :].copy())
    digest = hashlib.sha256(ids.tobytes()).hexdigest()
    return TrainData(vocab, train, val, source, digest, text_chars=given)


def map_prepared(
    config: TrainConfig, folder: str | os.PathLike, vocab: Vocab | None = None
) -> tuple[TrainConfig, TrainData]:
    """``(config, data)`` for training on a folder written by ``charloom prepare``: the config
    takes the folder's vocabulary and normalisation, and the ids are memory-mapped, not read.
    ``vocab``: the vocabulary a resumed run was trained with."""
    prepared = PreparedCorpus.open(folder)
    defaults = TrainConfig()
    for name, have in (("vocab", prepared.vocab.kind), ("ascii", prepared.ascii)):
        want = getattr(config, name)
        if want != have and want != getattr(defaults, name):
            raise CharloomError(
                f"{folder} was prepared with --vocab {prepared.vocab.kind}"
                f"{' --ascii' if prepared.ascii else ''}; prepare the text again for "
                f"--vocab {config.vocab}{' --ascii' if config.ascii else ''}"
            )
    if vocab is not None and vocab != prepared.vocab:
        raise CharloomError(
            f"{folder} has a different vocabulary from the run's; resume with the same data"
        )
    config = config.replace(vocab=prepared.vocab.kind, ascii=prepared.ascii)
    ids = prepared.ids()
    n_val = validation_size(len(ids), config.val_fraction)
    train = ids[: len(ids) - n_val]
    val = ids[len(ids) - n_val :][:MAX_EVAL_CHARS]
    source = TextSource(paths=(str(folder),), prepared=True)
    data = TrainData(prepared.vocab, train, val, source, prepared.sha256, prepared.length)
    return config, data


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
    if text is None:
        text, source = read_text(paths, corpus, encoding=encoding, errors=errors)
    return config, encode_text(config, text, source, vocab)


def reload_data(
    config: TrainConfig, source: TextSource | None, vocab: Vocab, text: str | None = None
) -> tuple[TrainConfig, TrainData]:
    """The data a saved run trained on, from its recorded ``source`` (``text``: given again,
    for a run trained on a string)."""
    if text is None and source is not None and source.prepared:
        return map_prepared(config, source.paths[0], vocab)
    if text is None:
        if source is None:
            raise CharloomError("this run was trained on a text given in Python; pass it again")
        text = source.read()
    return config, encode_text(config, text, source, vocab)
