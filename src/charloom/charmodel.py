"""A trained model loaded for use (CharModel): sample from it, evaluate it, stream from it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .corpus import normalise_ascii
from .device import resolve_device
from .documents import HASHES_FILE, fingerprint, read_fingerprints, split_text
from .errors import CharloomError
from .evaluate import EvalResult, evaluate_ids
from .model import CharRNN
from .modelconfig import ModelConfig
from .nextchar import DEFAULT_LENGTH, DEFAULT_PRIME, SampleSettings
from .sample import generate_blocks, sample, sample_documents
from .samplestream import SampleStream, request_pieces
from .vocab import UNKNOWN_CHOICES, Vocab

#: ``novel``: rounds of drawing at most, each drawing twice what is still missing (at least
#: :data:`NOVEL_MIN_DRAW`); fewer samples come back if the model keeps repeating its text.
NOVEL_ROUNDS = 10
NOVEL_MIN_DRAW = 8


@dataclass
class Documents:
    """What :meth:`CharModel.documents` returns: the documents, whether each ended by itself
    (False: it was cut at the length cap), and, with ``novel``, how many samples were drawn
    in all and how many were dropped because the training text holds them."""

    texts: list[str]
    ended: list[bool]
    drawn: int
    dropped: int = 0
    rounds: int = 1


@dataclass
class CharModel:
    """A trained character model with its vocabulary and the text normalisation it expects."""

    model: CharRNN
    vocab: Vocab
    ascii: bool
    meta: dict
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def training(self) -> dict:
        """What config.json records about training: iterations, losses, text source."""
        return self.meta.get("training") or {}

    def info(self) -> dict:
        """What the checkpoint holds, as ``charloom info --json`` prints it: its folder, the
        charloom version that wrote it, the model settings, the parameter count, the
        vocabulary and the training summary."""
        return {
            "checkpoint": str(self.path),
            "charloom_version": self.meta.get("charloom_version"),
            "model": self.config.to_dict(),
            "parameters": self.model.num_parameters(),
            "vocab": {
                "kind": self.vocab.kind,
                "size": self.vocab.size,
                "ascii": self.ascii,
                "documents": self.documents_mode,
            },
            "training": self.training,
        }

    def normalise(self, text: str) -> str:
        """``text`` as the model saw its training text (ASCII-normalised if it was)."""
        return normalise_ascii(text) if self.ascii else text

    @property
    def documents_mode(self) -> str:
        """How the model's training text was split into documents (``off``: one stream)."""
        mode = (self.meta.get("text") or {}).get("documents")
        if self.vocab.end is None:
            return "off"
        return mode if isinstance(mode, str) and mode != "off" else "lines"

    def default_prime(self, prime: str | None) -> str:
        """``prime`` as given, or the default: ``nextchar.DEFAULT_PRIME`` (``"Th"``), or nothing
        for a documents model (its samples start from the start-of-document marker)."""
        if prime is not None:
            return prime
        return "" if self.vocab.end is not None else DEFAULT_PRIME

    def pieces(
        self,
        prime: str,
        length: int,
        settings: SampleSettings,
        num_samples: int = 1,
        seed: int | None = None,
        engine: str = "auto",
    ) -> Iterator[list[str]]:
        """Each sample's new text, block by block (``samplestream.request_pieces``), of a model
        not trained in documents mode (see :meth:`documents`); the request and the engine are
        checked before the first block is asked for."""

        def blocks(stream: SampleStream) -> Iterator[np.ndarray]:
            return generate_blocks(self.model, stream, engine)

        return request_pieces(
            self.vocab, prime, length, settings, num_samples, seed, blocks, self.normalise
        )

    def sample(
        self,
        prime: str | None = None,
        length: int = DEFAULT_LENGTH,
        temperature: float = SampleSettings.temperature,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        num_samples: int = 1,
        seed: int | None = None,
        engine: str = "auto",
        documents: bool | None = None,
        novel: bool = False,
    ) -> list[str]:
        """``num_samples`` texts: the prime (default ``"Th"``, ``nextchar.DEFAULT_PRIME``)
        followed by exactly ``length`` new characters. ``documents`` (default: whether the model
        was trained in documents mode): each text is one whole document beginning with the prime
        (default: none), stopped at its end, ``length`` being a cap (see :meth:`documents`,
        which also says which ended by themselves); ``novel``: only documents the training
        text does not hold."""
        documents = self.vocab.end is not None if documents is None else documents
        if documents or novel:
            return self.documents(
                prime,
                length,
                temperature,
                top_k,
                top_p,
                greedy,
                num_samples,
                seed,
                engine,
                novel=novel,
            ).texts
        settings = SampleSettings(temperature, top_k, top_p, greedy)
        return sample(
            self.model,
            self.vocab,
            self.normalise(self.default_prime(prime)),
            length,
            settings,
            num_samples,
            seed,
            engine,
        )

    def documents(
        self,
        prime: str | None = None,
        length: int = DEFAULT_LENGTH,
        temperature: float = SampleSettings.temperature,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        num_samples: int = 1,
        seed: int | None = None,
        engine: str = "auto",
        novel: bool = False,
    ) -> Documents:
        """``num_samples`` whole documents from a documents-mode model, each the prime (default:
        none) and what the model writes after it up to the end of the document, at most
        ``length`` new characters (the cap).

        ``novel``: drop documents that the training text holds (compared by fingerprint with
        ``documents.sha256`` in the run directory) and draw more in their place, in at most
        :data:`NOVEL_ROUNDS` rounds; the result says how many were dropped, and holds fewer
        than ``num_samples`` if the rounds run out. With a ``seed``, round ``r`` draws with
        seed ``seed + r``: the same seed, the same documents."""
        if self.vocab.end is None:
            raise CharloomError(
                f"{self.path} was not trained in documents mode (train with --documents)"
            )
        settings = SampleSettings(temperature, top_k, top_p, greedy)
        prime = self.normalise(self.default_prime(prime))
        known = self.training_fingerprints() if novel else set()
        out = Documents([], [], 0)
        for r in range(NOVEL_ROUNDS if novel else 1):
            want = num_samples - len(out.texts)
            n = want if not novel or r == 0 else max(2 * want, NOVEL_MIN_DRAW)
            round_seed = None if seed is None else (seed + r) % 2**63
            drawn = sample_documents(
                self.model, self.vocab, prime, length, settings, n, round_seed, engine
            )
            out.drawn += n
            out.rounds = r + 1
            for text, ended, ids in drawn:
                if novel and ended and fingerprint(ids) in known:
                    out.dropped += 1
                elif len(out.texts) < num_samples:
                    out.texts.append(text)
                    out.ended.append(ended)
            if len(out.texts) >= num_samples:
                break
        return out

    def training_fingerprints(self) -> set[str]:
        """The fingerprints of the training documents, from the run directory."""
        for folder in (self.path, self.path.parent):
            if (folder / HASHES_FILE).is_file():
                return read_fingerprints(folder / HASHES_FILE)
        raise CharloomError(
            f"{self.path} has no {HASHES_FILE} (the fingerprints of its training documents), "
            "so novel cannot check samples against them"
        )

    def stream(
        self,
        prime: str = DEFAULT_PRIME,
        length: int = DEFAULT_LENGTH,
        temperature: float = SampleSettings.temperature,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        seed: int | None = None,
        engine: str = "auto",
    ) -> Iterator[str]:
        """The new characters of one sample, yielded as they are generated."""
        settings = SampleSettings(temperature, top_k, top_p, greedy)
        for pieces in self.pieces(prime, length, settings, 1, seed, engine):
            if pieces[0]:
                yield pieces[0]

    def evaluate(self, text: str, unknown: str = "error", advice: str = "", **kwargs) -> EvalResult:
        """Mean loss (nats/char), bits/char and perplexity on ``text``, state carried through.

        ``unknown``: what to do with characters outside the vocabulary. ``"error"`` refuses
        the text, naming them (``advice``: what the message suggests instead; by default
        ``unknown="skip"``). ``"skip"`` leaves them out of the text before reading it: they are
        neither predicted nor read, the state goes from the character before one straight to the
        character after it, and the result is the loss on the text without them, with
        ``skipped`` saying how many there were."""
        advice = advice or 'unknown="skip" scores the rest'
        ends = 0
        if self.vocab.end is not None:
            # As the model was trained: the text split into documents (the line breaks or
            # blank lines between them are not characters of any document), joined by end
            # symbols, which are predicted (and counted) as characters are.
            docs = split_text(self.normalise(text), self.documents_mode)[0] if text else []
            docs, skipped = self._known_documents(docs, unknown, advice)
            ids = self.vocab.encode_documents(docs, what="text")
            ends = len(docs)
        else:
            text, skipped = self.read_text(text, unknown, advice)
            ids = self.vocab.encode(text, what="text")
        result = evaluate_ids(self.model, torch.from_numpy(ids.copy()), **kwargs)
        result.skipped = skipped
        result.end_symbols = ends if result.chars else 0
        return result

    def _known_documents(self, docs: list[str], unknown: str, advice: str) -> tuple[list[str], int]:
        """``docs`` checked against the vocabulary (see :meth:`read_text`), and how many
        characters were dropped; documents left empty are left out."""
        if unknown not in UNKNOWN_CHOICES:
            raise CharloomError(
                f"unknown must be one of {', '.join(UNKNOWN_CHOICES)}, not {unknown!r}"
            )
        if unknown == "error":
            self.vocab.check("".join(docs), what="text", advice=advice)
            return docs, 0
        kept, dropped = [], 0
        for doc in docs:
            doc, n = self.vocab.known_only(doc)
            dropped += n
            if doc:
                kept.append(doc)
        return kept, dropped

    def read_text(self, text: str, unknown: str = "error", advice: str = "") -> tuple[str, int]:
        """``text`` normalised as the model expects, and how many characters outside its
        vocabulary were dropped: none with ``unknown="error"``, which raises a
        :class:`CharloomError` naming them (and giving ``advice``) instead; see
        :meth:`evaluate`."""
        if unknown not in UNKNOWN_CHOICES:
            raise CharloomError(
                f"unknown must be one of {', '.join(UNKNOWN_CHOICES)}, not {unknown!r}"
            )
        text = self.normalise(text)
        if unknown == "skip":
            return self.vocab.known_only(text)
        self.vocab.check(text, what="text", advice=advice)
        return text, 0


def load(path: str | os.PathLike, which: str = ckpt.BEST, device: str = "cpu") -> CharModel:
    """Load a run directory (its ``best`` checkpoint, else ``latest``) or a checkpoint folder."""
    folder = ckpt.resolve_checkpoint(path, which)
    checkpoint = ckpt.load_checkpoint(folder)
    # Building the model draws initial weights (then replaced by the saved ones) from torch's
    # global generator: draw them from a fork, so the caller's random state stays as it was.
    with torch.random.fork_rng(devices=[]):
        model = checkpoint.build_model(resolve_device(device))
    model.eval()
    return CharModel(model, checkpoint.vocab, checkpoint.ascii, checkpoint.meta, folder)
