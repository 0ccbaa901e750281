"""SampleStream: one generation request - its prime, settings, length, samples and seeded
random numbers - and the text its drawn ids make. Free of torch, so any engine can feed it: the
torch reference, the numpy engine or the compiled loop (see ``sample.py``, ``npgen.py``,
``fastgen.py``), and the server steps many of them at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .errors import CharloomError
from .nextchar import SampleSettings, Uniforms, seeded_rng
from .vocab import Vocab


def check_length(length: int) -> None:
    """Refuse a ``length`` (new characters per sample) that is not an integer >= 0."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise CharloomError(f"length must be an integer >= 0, not {length!r}")


def encode_prime(vocab: Vocab, prime: str) -> list[int]:
    """The ids of ``prime``, refusing an empty prime or one with characters ``vocab`` lacks."""
    if not isinstance(prime, str) or not prime:
        raise CharloomError("the prime must hold at least one character")
    return [int(i) for i in vocab.encode(prime, what="prime")]


class SampleStream:
    """One generation request: ``num_samples`` samples of exactly ``length`` new characters
    after ``prime`` (text, or ids already encoded with ``vocab``), drawn with ``settings`` and
    the stream's own seeded random numbers.

    It holds everything about the request except the model's running state, which belongs to
    whoever steps it (one stream alone in :func:`generate_blocks`, many streams in one batch in
    the server), so any engine can feed it: for each block of ids an engine drew with
    ``stream.uniforms``, ``stream.take(ids)`` gives
    each sample's new text, until ``stream.done``. An engine's ``start(stream.prime_ids,
    stream.num_samples)`` runs the prime and gives the state and logits to draw from."""

    def __init__(
        self,
        vocab: Vocab,
        prime: str | Sequence[int],
        length: int,
        settings: SampleSettings | None = None,
        num_samples: int = 1,
        seed: int | None = None,
        end: int | None = None,
    ) -> None:
        settings = settings or SampleSettings()
        settings.validate()
        check_length(length)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise CharloomError(f"num-samples must be an integer >= 1, not {num_samples!r}")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
        ):
            raise CharloomError(f"seed must be an integer in 0..2^63-1, not {seed!r}")
        if isinstance(prime, str):
            prime = encode_prime(vocab, prime) if prime or end is None else []
        if len(prime) == 0 and end is None:
            raise CharloomError("the prime must hold at least one character")
        #: Documents mode: the end-of-document id; each sample is one document, started from
        #: the end symbol (the start marker) and the prime, and stopped when it draws the
        #: symbol again (or at ``length`` characters, the cap).
        self.end = end
        self.prime_ids = ([end] if end is not None else []) + [int(i) for i in prime]
        self.length = length
        self.settings = settings
        self.num_samples = num_samples
        self.seed = seed
        self._uniforms: Uniforms | None = None
        self.decoders = [vocab.decoder() for _ in range(num_samples)]
        self.counts = [0] * num_samples  # new characters made so far, per sample
        #: Documents mode: which samples drew the end symbol (ended by themselves), and the
        #: ids each drew before it (what ``--novel`` fingerprints).
        self.ended = [False] * num_samples
        self.drawn: list[list[int]] = [[] for _ in range(num_samples)]

    @property
    def uniforms(self) -> Uniforms:
        """The stream's random numbers, ``(steps, num_samples)`` per ``take``; engines draw
        with them in order, which is what makes a seed give the same text everywhere. Made on
        first use: a server that draws its unseeded streams' numbers from a generator they
        share never needs theirs (and making one takes a fresh seed from the system)."""
        if self._uniforms is None:
            self._uniforms = Uniforms(self.num_samples, seeded_rng(self.seed))
        return self._uniforms

    @property
    def done(self) -> bool:
        """Whether every sample has its ``length`` characters or, in documents mode, its end
        (at once for ``length`` 0)."""
        return all(self._finished(i) for i in range(self.num_samples))

    def _finished(self, i: int) -> bool:
        return self.ended[i] or self.counts[i] >= self.length

    def stopped(self) -> np.ndarray:
        """``(num_samples,)`` bool: the samples that need no more ids (what an engine skips)."""
        return np.array([self._finished(i) for i in range(self.num_samples)], dtype=bool)

    def stop_args(self) -> tuple:
        """What an engine's ``run`` takes after the settings to stop streams at their end:
        ``(end, stopped)`` in documents mode, else nothing."""
        return (self.end, self.stopped()) if self.end is not None else ()

    def take(self, ids: Any) -> list[str]:
        """The new text of each sample from a block of drawn ``ids (steps, num_samples)``:
        exactly what completes, cut at ``length`` characters (possibly empty while a
        multi-byte character completes in bytes mode, and always empty once a sample is done).
        ``ids``: a numpy array or a tensor (on the CPU)."""
        out = []
        ids = np.asarray(ids)
        # Without an end symbol, each sample's block is decoded as an array (no list of ints).
        rows = ids.T.tolist() if self.end is not None else np.ascontiguousarray(ids.T)
        for i, tokens in enumerate(rows):
            if self._finished(i):
                out.append("")
                continue
            if self.end is not None:
                if self.end in tokens:
                    tokens = tokens[: tokens.index(self.end)]
                    self.ended[i] = True
                self.drawn[i].extend(tokens)
            left = self.length - self.counts[i]
            piece = self.decoders[i].feed(tokens)[:left] if left > 0 else ""
            self.counts[i] += len(piece)
            out.append(piece)
        return out


def text_pieces(stream: SampleStream, blocks: Iterable[Any]) -> Iterator[list[str]]:
    """Each sample's new text for each block of ids an engine draws for ``stream`` (one string
    per sample, possibly empty while a multi-byte character completes in bytes mode), until
    every sample has its ``length`` characters."""
    if stream.done:
        return
    for block in blocks:
        yield stream.take(block)
        if stream.done:
            return


def request_pieces(
    vocab: Vocab,
    prime: str,
    length: int,
    settings: SampleSettings | None,
    num_samples: int,
    seed: int | None,
    blocks: Callable[[SampleStream], Iterable[Any]],
    normalise: Callable[[str], str] | None = None,
    end: int | None = None,
) -> Iterator[list[str]]:
    """One request's :func:`text_pieces`: each sample's new text, block by block, after
    ``prime`` (text; ``normalise``: how the model's training text was normalised), drawn from
    ``blocks(stream)``, an engine's endless ids ``(n, num_samples)`` for the stream.

    The request is checked, and ``blocks`` called (so an engine can refuse at once), before
    this returns: a bad request fails before the first block is asked for."""
    if not isinstance(prime, str):
        raise CharloomError("the prime must hold at least one character")
    if normalise is not None:
        prime = normalise(prime)
    stream = SampleStream(vocab, prime, length, settings, num_samples, seed, end)
    return text_pieces(stream, blocks(stream))


def whole_texts(prime: str, pieces: Iterable[list[str]], rows: int) -> list[str]:
    """``rows`` texts: ``prime`` followed by every piece of :func:`text_pieces`."""
    texts = [[prime] for _ in range(rows)]
    for block in pieces:
        for text, piece in zip(texts, block):
            text.append(piece)
    return ["".join(t) for t in texts]
