"""A trained model loaded for use (CharModel): sample from it, evaluate it, stream from it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .corpus import normalise_ascii
from .device import resolve_device
from .errors import CharloomError
from .evaluate import EvalResult, evaluate_ids
from .model import CharRNN
from .modelconfig import ModelConfig
from .nextchar import SampleSettings
from .sample import generate_blocks
from .samplestream import SampleStream, text_pieces, whole_texts
from .vocab import UNKNOWN_CHOICES, Vocab


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
            "vocab": {"kind": self.vocab.kind, "size": self.vocab.size, "ascii": self.ascii},
            "training": self.training,
        }

    def normalise(self, text: str) -> str:
        """``text`` as the model saw its training text (ASCII-normalised if it was)."""
        return normalise_ascii(text) if self.ascii else text

    def pieces(
        self,
        prime: str,
        length: int,
        settings: SampleSettings,
        num_samples: int = 1,
        seed: int | None = None,
        engine: str = "auto",
    ) -> Iterator[list[str]]:
        """Each sample's new text, block by block (``samplestream.text_pieces``); the request
        and the engine are checked before the first block is asked for."""
        if not isinstance(prime, str):
            raise CharloomError("the prime must hold at least one character")
        stream = SampleStream(
            self.vocab, self.normalise(prime), length, settings, num_samples, seed
        )
        return text_pieces(stream, generate_blocks(self.model, stream, engine))

    def sample(
        self,
        prime: str = "Th",
        length: int = 200,
        temperature: float = SampleSettings.temperature,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        num_samples: int = 1,
        seed: int | None = None,
        engine: str = "auto",
    ) -> list[str]:
        """``num_samples`` texts: the prime followed by exactly ``length`` new characters."""
        settings = SampleSettings(temperature, top_k, top_p, greedy)
        pieces = self.pieces(prime, length, settings, num_samples, seed, engine)
        return whole_texts(self.normalise(prime), pieces, num_samples)

    def stream(
        self,
        prime: str = "Th",
        length: int = 200,
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
        text, skipped = self.read_text(text, unknown, advice or 'unknown="skip" scores the rest')
        ids = self.vocab.encode(text, what="text")
        result = evaluate_ids(self.model, torch.from_numpy(ids.copy()), **kwargs)
        result.skipped = skipped
        return result

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
