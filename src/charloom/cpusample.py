"""Sampling a saved run on the CPU without importing torch: what ``charloom sample`` does.

Importing torch takes seconds, longer than writing a sample. A run's checkpoint is safetensors
and JSON, so its weights load as numpy arrays; the numpy engine (``npgen.py``) runs the prime and
the first characters at once, and the compiled engine (``fastgen.py``) takes over when numba has
loaded it (``fastgen.cpu_blocks``). The same seed gives the same text as
``charloom.load(RUN).sample(...)``: the same checkpoint reading, vocabulary, normalisation,
``SampleStream`` and uniforms.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import fastgen
from .corpus import normalise_ascii
from .errors import CharloomError
from .nextchar import SampleSettings
from .npgen import GenWeights
from .samplestream import SampleStream, request_pieces, whole_texts
from .vocab import Vocab

#: The engines this path runs (``torch`` is the other path: ``charmodel.CharModel``).
ENGINES = ("auto", "numpy", "numba")


@dataclass
class ArrayModel:
    """A saved model's weights as numpy arrays, with its vocabulary and text normalisation."""

    weights: GenWeights
    vocab: Vocab
    ascii: bool
    path: Path

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
        """Each sample's new text, block by block (see ``samplestream.request_pieces``). The
        request is checked before the first block is asked for."""
        if engine not in ENGINES:
            raise CharloomError(f"unknown engine {engine!r} here; choose one of: {ENGINES}")

        def blocks(stream: SampleStream) -> Iterator[np.ndarray]:
            if engine == "numba":
                fastgen.require()
            return fastgen.cpu_blocks(self.weights, stream, engine)

        return request_pieces(
            self.vocab, prime, length, settings, num_samples, seed, blocks, self.normalise
        )

    def sample(
        self,
        prime: str,
        length: int,
        settings: SampleSettings,
        num_samples: int = 1,
        seed: int | None = None,
        engine: str = "auto",
    ) -> list[str]:
        """``num_samples`` texts: the (normalised) prime and exactly ``length`` new characters."""
        pieces = self.pieces(prime, length, settings, num_samples, seed, engine)
        return whole_texts(self.normalise(prime), pieces, num_samples)


def load(path: str | os.PathLike, which: str = ckpt.BEST) -> ArrayModel | None:
    """Run directory or checkpoint folder ``path`` loaded as arrays, or ``None`` where its
    weights are in a dtype numpy cannot read (bfloat16): the caller then loads it with torch.
    A missing, incomplete or damaged checkpoint raises the :class:`CharloomError` that
    ``charloom.load`` would."""
    folder = ckpt.resolve_checkpoint(path, which)
    model_config, vocab, meta = ckpt.read_settings(folder)
    try:
        arrays = ckpt.load_arrays(folder)
    except ckpt.UnreadableDtype:
        return None
    try:
        weights = GenWeights.from_arrays(model_config, arrays)
    except CharloomError as exc:
        raise CharloomError(
            f"{folder}: the weights do not match the model settings ({exc})"
        ) from None
    ascii = bool(meta.get("text", {}).get("ascii", False))
    return ArrayModel(weights, vocab, ascii, folder)
