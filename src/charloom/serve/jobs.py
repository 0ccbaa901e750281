"""The two kinds of work the generation worker does: a ``/v1/generate`` request
(:class:`GenerateJob`) and a ``/v1/next`` request (:class:`NextJob`).

A job is shared by two threads: the event loop creates it, may set ``cancelled`` and reads what
the worker delivers through ``queue`` or ``future``; the worker owns everything else about it
(the stream, the model's state between chunks, the text made since the last delivery).

Shapes: a job of ``n`` samples keeps its ``state`` (tuple of ``(L, n, H)``) and ``logits``
(``(n, V)``) between chunks; while a chunk is stepped it is ``n`` columns of one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model import CharRNN
from ..nextchar import SampleSettings, Uniforms
from ..sample import next_token_distribution
from ..samplestream import SampleStream
from ..vocab import Vocab

#: What runs a prime: ``(prime_ids, rows) -> (state, logits)`` (``stepping.Stepper.start``).
Starter = Callable[[list[int], int], tuple[tuple[torch.Tensor, ...], torch.Tensor]]


@dataclass(eq=False)
class GenerateJob:
    """One ``/v1/generate`` request: ``num_samples`` rows of ``length`` new characters each."""

    prime_ids: list[int]
    settings: SampleSettings
    length: int
    num_samples: int = 1
    seed: int | None = None
    #: Documents mode: each row is one document, stopped at the end symbol (``length``: a cap).
    documents: bool = False
    # Run-time fields. The worker thread owns the stream, the tensors and the text made so far;
    # the event loop only sets ``cancelled`` and reads what the worker delivers through ``queue``.
    cancelled: bool = False
    finished: bool = False
    stream: SampleStream | None = None  # the text bookkeeping and random numbers, as the CLI's
    state: tuple[torch.Tensor, ...] = ()
    logits: torch.Tensor | None = None
    fresh: list[list[str]] = field(default_factory=list)  # text made since the last delivery
    pending: list[np.ndarray] = field(default_factory=list)  # drawn ids not decoded yet
    pending_steps: int = 0
    spare: np.ndarray | None = None  # a seeded job's uniforms drawn but not used yet
    delivered_at: float = 0.0  # when the worker last handed this job's text out
    #: Who asked (``clients.Client.id``): the worker takes in the least busy client's first.
    client: str = ""
    quick: bool = False  # short enough to be stepped apart until done (rounds.py)
    key: int = 0  # the parent's name for it, where the worker is a process (process.py)
    queue: asyncio.Queue | None = None  # what the worker delivers, read on the event loop
    loop: asyncio.AbstractEventLoop | None = None
    #: Samples, as columns of the worker's batch (``num_samples``). Plain attributes rather than
    #: properties, this and ``left`` below: the worker reads them for every job, every chunk.
    rows: int = field(init=False, default=1)
    #: ``length`` less the fewest characters a sample has, less the steps drawn and not yet
    #: decoded: see ``steps_left``.
    left: int = field(init=False, default=0)
    stepped: bool = field(init=False, default=False)  # whether a step has been taken

    def __post_init__(self) -> None:
        self.rows = self.num_samples

    @property
    def uniforms(self) -> Uniforms | None:
        """A seeded job's own random numbers (its stream's, drawn the same way as
        ``charloom sample --seed`` draws them); ``None`` for an unseeded job, which shares the
        scheduler's."""
        return self.stream.uniforms if self.stream is not None and self.seed is not None else None

    @property
    def steps_left(self) -> int:
        """Steps before this job can complete: at least one per character still missing (more in
        bytes mode, where a character may take several). Stepping no further than the smallest
        of these over a batch ends the chunk as soon as a job completes, and wastes no step."""
        return max(1, self.left)

    @property
    def fresh_start(self) -> bool:
        """Whether no step has been taken yet (its first chunk is kept short, so that its first
        characters go out at once however long the request)."""
        return self.stream is not None and not self.stepped

    def draw(self, steps: int) -> np.ndarray:
        """A seeded job's next ``steps`` uniforms ``(steps, num_samples)``: those given back
        (:meth:`give_back`) first, then its stream's, so it consumes them in the order
        ``charloom sample --seed`` does however its chunks are cut."""
        uniforms = self.uniforms
        assert uniforms is not None  # only seeded jobs draw their own
        spare, self.spare = self.spare, None
        if spare is None:
            return uniforms.take(steps)
        if len(spare) > steps:
            spare, self.spare = spare[:steps], spare[steps:]
        if len(spare) == steps:
            return spare
        return np.concatenate([spare, uniforms.take(steps - len(spare))])

    def give_back(self, unused: np.ndarray) -> None:
        """Keep ``unused`` uniforms (drawn for a chunk that ended early) for the next draw."""
        if len(unused):
            self.spare = unused if self.spare is None else np.concatenate([unused, self.spare])

    def prime(self, start: Starter, vocab: Vocab) -> None:
        """Run the prime once (one row) with ``start(prime_ids, rows)`` (``Stepper.start``) and
        give every sample a copy of the resulting state."""
        end = vocab.end if self.documents else None
        self.stream = SampleStream(
            vocab, self.prime_ids, self.length, self.settings, self.num_samples, self.seed, end
        )
        self.fresh = [[] for _ in range(self.num_samples)]
        self.left = self.stream.length
        if self.stream.done:  # length 0
            self.finished = True
            return
        self.state, self.logits = start(self.stream.prime_ids, self.stream.num_samples)

    def group_key(self) -> tuple:
        """Jobs with the same key are stepped in one engine call, whose settings are per call.
        The random numbers are per column, so seeded jobs join unseeded ones with the same
        settings: each seeded job still draws from its own stream, and its text is the same as
        ``charloom sample --seed`` gives, whatever else is running."""
        s = self.settings
        key = ("greedy",) if s.greedy else ("sampled", float(s.temperature), s.top_k, s.top_p)
        return (*key, self.end)

    @property
    def end(self) -> int | None:
        """The end-of-document id an engine stops this job's rows at (documents mode)."""
        return self.stream.end if self.stream is not None else None

    def stopped(self) -> torch.Tensor:
        """``(num_samples,)`` bool: rows that need no more steps (documents that ended)."""
        assert self.stream is not None  # set by prime(), which runs before any step
        return torch.from_numpy(self.stream.stopped())

    def ended(self) -> list[bool] | None:
        """Documents mode: whether each row's document ended by itself; None otherwise."""
        if self.stream is None or self.stream.end is None:
            return None
        return list(self.stream.ended)

    def take(self, ids: np.ndarray) -> None:
        """Keep this job's newly drawn ``ids (steps, num_samples)``. They are decoded when the
        text goes out (:meth:`take_fresh`) - once per delivery, not once per chunk - or at once
        when they may complete the job, so that ``finished`` is always up to date."""
        self.pending.append(ids)
        self.pending_steps += ids.shape[0]
        self.left -= ids.shape[0]
        self.stepped = True
        stream = self.stream
        assert stream is not None  # set by prime(), which runs before any step
        # Documents end when they draw their end symbol: decode at once to see it.
        if stream.end is not None or self.left <= 0:
            self._decode()

    def _decode(self) -> None:
        stream = self.stream
        assert stream is not None  # set by prime(), which runs before any step
        if not self.pending:
            return
        ids = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending, self.pending_steps = [], 0
        for pieces, piece in zip(self.fresh, stream.take(ids)):
            if piece:
                pieces.append(piece)
        self.left = stream.length - min(stream.counts)
        if stream.done:
            self.finished = True

    def take_fresh(self) -> list[str]:
        """The text made since the last call, one string per sample."""
        self._decode()
        out = ["".join(pieces) for pieces in self.fresh]
        self.fresh = [[] for _ in range(self.num_samples)]
        return out


@dataclass(eq=False)
class NextJob:
    """One ``/v1/next`` request: the likeliest next characters after ``prime_ids``."""

    prime_ids: list[int]
    settings: SampleSettings
    top: int
    client: str = ""  # who asked (see GenerateJob.client)
    key: int = 0  # the parent's name for it, where the worker is a process (process.py)
    cancelled: bool = False
    result: list[tuple[int, float]] = field(default_factory=list)
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None

    rows: int = field(init=False, default=1)  # a column of the worker's batch, as a job's

    def prime(self, model: CharRNN, vocab: Vocab) -> None:
        device = model.head.weight.device
        x = torch.tensor(self.prime_ids, device=device, dtype=torch.long).unsqueeze(0)
        logits, _ = model(x)
        probs = next_token_distribution(logits[:, -1], self.settings)[0]
        values, ids = torch.topk(probs, min(self.top, probs.shape[0]))
        self.result = [(int(i), float(p)) for i, p in zip(ids.tolist(), values.tolist()) if p > 0]
