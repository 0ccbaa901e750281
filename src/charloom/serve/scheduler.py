"""One generation worker for all requests: their samples stepped together, a chunk at a time.

Why a single worker: a character model is cheap per step but is stepped thousands of times, and
on a CPU two requests stepped in two threads mostly fight over the cores. So every request's
samples become rows of one batch: each step picks the next character of every row (with that
request's own settings and random numbers, through :func:`charloom.sample.pick`) and runs one
batched forward. The worker steps for up to ``chunk_ms``, hands the new text to the event loop,
takes in new requests (running their primes) and drops finished or abandoned ones, then steps
again; a chunk ends early when a request completes or a new one arrives. A long request
therefore delays a short one by at most one step, never by its length, and a request whose
client went away stops costing anything at the next chunk boundary.

The worker is one thread of its own, so the event loop keeps answering HTTP while the model
computes, and the model keeps stepping while the loop is busy with HTTP. They share little:
the loop puts new jobs in an inbox and sets ``cancelled`` on abandoned ones; the worker owns
everything else about a job and hands text back with ``call_soon_threadsafe``.

Shapes: a job of ``n`` samples owns rows ``a:a+n`` of the batch while it is stepped; between
chunks it keeps its own ``state`` (tuple of ``(L, n, H)``) and ``logits`` (``(n, V)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import cast

import torch

from ..errors import CharloomError
from ..model import CharRNN
from ..nextchar import SampleSettings, Uniforms, next_token_distribution, pick
from ..sample import SampleStream, seeded_generator
from ..vocab import Vocab

log = logging.getLogger("charloom.serve")


class ServerBusy(CharloomError):
    """Too many samples are being generated already; the client should retry shortly."""


class GenerationFailed(CharloomError):
    """The model failed while generating (a bug or an exhausted device), not the request."""


@dataclass(eq=False)
class GenerateJob:
    """One ``/v1/generate`` request: ``num_samples`` rows of ``length`` new characters each."""

    prime_ids: list[int]
    settings: SampleSettings
    length: int
    num_samples: int = 1
    seed: int | None = None
    # Run-time fields. The worker thread owns the stream, the tensors and the text made so far;
    # the event loop only sets ``cancelled`` and reads what the worker delivers through ``queue``.
    cancelled: bool = False
    finished: bool = False
    stream: SampleStream | None = None  # the text bookkeeping and random numbers, as the CLI's
    state: tuple[torch.Tensor, ...] = ()
    logits: torch.Tensor | None = None
    fresh: list[list[str]] = field(default_factory=list)  # text made since the last delivery
    queue: asyncio.Queue | None = None  # what the worker delivers, read on the event loop
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def rows(self) -> int:
        return self.num_samples

    @property
    def uniforms(self) -> Uniforms | None:
        """A seeded job's own random numbers (its stream's, drawn the same way as
        ``charloom sample --seed`` draws them); ``None`` for an unseeded job, which shares the
        scheduler's."""
        return self.stream.uniforms if self.stream is not None and self.seed is not None else None

    def prime(self, model: CharRNN, vocab: Vocab) -> None:
        """Run the prime once (one row) and give every sample a copy of the resulting state."""
        self.stream = SampleStream(
            vocab, self.prime_ids, self.length, self.settings, self.num_samples, self.seed
        )
        self.fresh = [[] for _ in range(self.num_samples)]
        if self.stream.done:  # length 0
            self.finished = True
            return
        self.state, self.logits = self.stream.start(model)

    def group_key(self) -> tuple:
        """Jobs with the same key are sampled in one call: unseeded jobs with the same settings
        share the scheduler's random numbers; a seeded job keeps its own, so its text is the same
        as ``charloom sample --seed`` gives, whatever else is running."""
        if self.settings.greedy:
            return ("greedy",)
        if self.seed is None:
            return ("shared", self.settings.temperature, self.settings.top_k, self.settings.top_p)
        return ("seeded", id(self))

    def take(self, ids: torch.Tensor) -> None:
        """Decode this job's newly drawn ``ids (steps, num_samples)`` into its fresh text."""
        stream = self.stream
        assert stream is not None  # set by prime(), which runs before any step
        for pieces, piece in zip(self.fresh, stream.take(ids)):
            if piece:
                pieces.append(piece)
        if stream.done:
            self.finished = True

    def take_fresh(self) -> list[str]:
        out = ["".join(pieces) for pieces in self.fresh]
        self.fresh = [[] for _ in range(self.num_samples)]
        return out


@dataclass(eq=False)
class NextJob:
    """One ``/v1/next`` request: the likeliest next characters after ``prime_ids``."""

    prime_ids: list[int]
    settings: SampleSettings
    top: int
    cancelled: bool = False
    result: list[tuple[int, float]] = field(default_factory=list)
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def rows(self) -> int:
        return 1

    def prime(self, model: CharRNN, vocab: Vocab) -> None:
        device = model.head.weight.device
        x = torch.tensor(self.prime_ids, device=device, dtype=torch.long).unsqueeze(0)
        logits, _ = model(x)
        probs = next_token_distribution(logits[:, -1], self.settings)[0]
        values, ids = torch.topk(probs, min(self.top, probs.shape[0]))
        self.result = [(int(i), float(p)) for i, p in zip(ids.tolist(), values.tolist()) if p > 0]


class Scheduler:
    """Admits jobs, steps them together in one worker thread, delivers their text."""

    def __init__(
        self, model: CharRNN, vocab: Vocab, max_active: int = 512, chunk_ms: float = 20.0
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.max_active = max_active
        self.chunk_s = chunk_ms / 1000
        # Unseeded requests share one generator, so they can be sampled in one call.
        self._shared = seeded_generator(None)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._admitted: set = set()  # jobs submitted and not yet over (event-loop side)
        self._stepping = (0, 0)  # (requests, samples) in the worker's batch (worker side)
        self._current: list[GenerateJob] = []  # the worker's batch (worker side)
        self.chars_generated = 0
        self.requests_served = 0

    # --- the event-loop side ------------------------------------------------------------
    def stats(self) -> dict:
        """What the worker holds now: for /healthz and for tests of cancellation."""
        requests, samples = self._stepping
        return {
            "active_requests": requests,
            "active_samples": samples,
            "admitted_samples": sum(j.rows for j in self._admitted),
            "requests_served": self.requests_served,
            "chars_generated": self.chars_generated,
        }

    def start(self) -> None:
        """Start the worker thread if it is not running (the first request does it anyway)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._work, name="charloom-generate", daemon=True
            )
            self._thread.start()

    def _submit(self, job: GenerateJob | NextJob) -> None:
        load = sum(j.rows for j in self._admitted)
        if load + job.rows > self.max_active:
            raise ServerBusy(
                f"the server is generating {load} samples already (at most {self.max_active}); "
                "try again in a moment"
            )
        self.start()
        job.loop = asyncio.get_running_loop()
        self._admitted.add(job)
        self._inbox.put(job)
        self._wake.set()

    def cancel(self, job: GenerateJob | NextJob) -> None:
        """Stop ``job`` (if it still runs, the worker drops it at its next chunk) and free its
        place. Safe to call more than once, and after the job is over."""
        job.cancelled = True
        self._admitted.discard(job)

    def generate(self, job: GenerateJob) -> AsyncGenerator[list[str], None]:
        """Submit ``job`` now (raising :class:`ServerBusy` if full) and return an iterator of
        its text as it comes: one string per sample, per delivery. Closing the iterator early -
        the client went away - cancels the job; so does setting ``job.cancelled``."""
        job.queue = asyncio.Queue()
        self._submit(job)
        return self._texts(job)

    async def _texts(self, job: GenerateJob) -> AsyncGenerator[list[str], None]:
        try:
            inbox = job.queue
            assert inbox is not None  # set by generate() before the job is submitted
            while True:
                kind, payload = await inbox.get()
                # Coalesce whatever else is already waiting, so a slow reader gets fewer, larger
                # pieces rather than falling further behind.
                while kind == "text" and not inbox.empty():
                    nxt_kind, nxt = inbox.get_nowait()
                    if nxt_kind != "text":
                        yield payload
                        kind, payload = nxt_kind, nxt
                        break
                    payload = [a + b for a, b in zip(payload, nxt)]
                if kind == "text":
                    yield payload
                elif kind == "error":
                    raise GenerationFailed(payload)
                else:
                    return
        finally:
            self.cancel(job)

    async def next_chars(self, job: NextJob) -> list[tuple[int, float]]:
        """The likeliest next ids after the job's prime, with their probabilities."""
        job.future = asyncio.get_running_loop().create_future()
        self._submit(job)
        try:
            return await job.future
        finally:
            self.cancel(job)

    async def close(self) -> None:
        """Stop the worker (it finishes its current chunk); requests in progress end with an
        error."""
        thread, self._thread = self._thread, None
        self._stop.set()
        self._wake.set()
        for job in list(self._admitted):
            job.cancelled = True
            self._deliver(job, [("error", "the server is shutting down")])
        self._admitted.clear()
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)

    def _deliver(self, job: GenerateJob | NextJob, items: list[tuple[str, object]]) -> None:
        """On the event loop: hand the worker's results to the waiting request."""
        if isinstance(job, NextJob):
            if job.future is None or job.future.done():
                return
            for kind, payload in items:
                if kind == "error":
                    job.future.set_exception(GenerationFailed(payload))
                else:
                    self.requests_served += 1
                    job.future.set_result(payload)
            return
        for kind, payload in items:
            if kind == "text":
                self.chars_generated += sum(map(len, cast("list[str]", payload)))
            elif kind == "done":
                self.requests_served += 1
            assert job.queue is not None  # set by generate() before the job was submitted
            job.queue.put_nowait((kind, payload))

    def _post(self, job: GenerateJob | NextJob, items: list[tuple[str, object]]) -> None:
        """From the worker thread: deliver ``items`` to ``job`` on its event loop."""
        if not items or job.loop is None:
            return
        # RuntimeError: that loop has closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(self._deliver, job, items)

    # --- the worker thread -------------------------------------------------------------
    def _work(self) -> None:
        try:  # the first calls set up torch's kernels (~0.1 s): not on a request's time
            with torch.inference_mode():
                ids = torch.zeros(2, 2, dtype=torch.long, device=self.model.head.weight.device)
                _, state = self.model(ids)
                self.model.step(ids[:, 0], state)
        except Exception:  # a model that fails here fails on its first request too, visibly
            log.exception("warm-up failed")
        jobs: list[GenerateJob] = []
        while not self._stop.is_set():
            if not jobs and self._inbox.empty():
                self._stepping = (0, 0)
                self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                jobs = self._round(jobs)
            except Exception as exc:  # the model (or a bug) failed: fail these jobs, go on
                log.exception("generation failed")
                for job in self._current:
                    self._post(job, [("error", f"generation failed: {exc}")])
                jobs = []
        self._stepping = (0, 0)

    def _round(self, jobs: list[GenerateJob]) -> list[GenerateJob]:
        """Admit new jobs, step all for one chunk, deliver; return the jobs still running."""
        with torch.inference_mode():
            admitted, backlog = self._admit()
            jobs = [j for j in jobs + admitted if not j.cancelled]
            self._current = jobs
            self._stepping = (len(jobs), sum(j.rows for j in jobs))
            if not jobs:
                return jobs
            self._step(jobs, interruptible=not backlog)
        for job in jobs:
            items: list[tuple[str, object]] = []
            texts = job.take_fresh()
            if any(texts):
                items.append(("text", texts))
            if job.finished:
                items.append(("done", None))
            self._post(job, items)
        return [j for j in jobs if not (j.finished or j.cancelled)]

    def _admit(self) -> tuple[list[GenerateJob], bool]:
        """Run the primes of newly submitted jobs and answer /v1/next jobs; return the new
        generation jobs, and whether some are still waiting. Primes get at most half a chunk of
        time per round, so a flood of long primes slows the running streams but never stops
        them."""
        admitted: list[GenerateJob] = []
        deadline = time.perf_counter() + self.chunk_s / 2
        while True:
            if time.perf_counter() > deadline:
                return admitted, not self._inbox.empty()
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return admitted, False
            if job.cancelled:
                continue
            try:
                job.prime(self.model, self.vocab)
            except Exception as exc:  # one bad prime must not fail the others
                log.exception("prime failed")
                self._post(job, [("error", f"generation failed: {exc}")])
                continue
            if isinstance(job, NextJob):
                self._post(job, [("result", job.result)])
            elif job.finished:  # length 0
                self._post(job, [("done", None)])
            else:
                admitted.append(job)

    def _step(self, jobs: list[GenerateJob], interruptible: bool = True) -> None:
        """Step ``jobs`` together until the chunk's time is up, one of them completes, or
        (``interruptible``) a new job arrives."""
        # Order the rows so that each sampling group is one contiguous slice of the batch.
        jobs = sorted(jobs, key=lambda j: repr(j.group_key()))
        groups: list[_Group] = []
        row = 0
        for job in jobs:
            if not groups or groups[-1].key != job.group_key():
                groups.append(_Group(job.group_key(), job.settings, job.uniforms, row, row))
            groups[-1].members.append(
                (job, row - groups[-1].start, row - groups[-1].start + job.rows)
            )
            row += job.rows
            groups[-1].stop = row
        state = tuple(torch.cat(parts, dim=1) for parts in zip(*(j.state for j in jobs)))
        # Every job stepped here was primed (and not finished by it), so it has its logits.
        logits = torch.cat([cast(torch.Tensor, j.logits) for j in jobs])
        ids = torch.zeros(row, dtype=torch.long, device=logits.device)
        deadline = time.perf_counter() + self.chunk_s
        while True:
            completed = False
            for g in groups:
                live = [(j, a, b) for j, a, b in g.members if not (j.finished or j.cancelled)]
                if not live:
                    continue
                if g.uniforms is not None:
                    u = g.uniforms.take(1)[0]
                else:
                    u = torch.rand(g.stop - g.start, generator=self._shared)
                chosen = pick(logits[g.start : g.stop], g.settings, u)
                ids[g.start : g.stop] = chosen
                block = chosen.cpu().unsqueeze(0)  # (1 step, rows of the group)
                for job, a, b in live:
                    job.take(block[:, a:b])
                    completed = completed or job.finished
            if all(job.finished or job.cancelled for job in jobs):
                break
            step_logits, state = self.model.step(ids, state)
            logits = step_logits.float()
            # End the chunk early when a job is complete, so that its answer goes out at once,
            # or when a new one waits, so that it joins at once.
            arrived = interruptible and not self._inbox.empty()
            if completed or arrived or time.perf_counter() >= deadline:
                break
        row = 0
        for job in jobs:
            job.state = tuple(s[:, row : row + job.rows] for s in state)
            job.logits = logits[row : row + job.rows]
            row += job.rows


@dataclass(eq=False)
class _Group:
    """Rows ``start:stop`` of the batch, sampled with one call of :func:`pick`."""

    key: tuple
    settings: SampleSettings
    uniforms: Uniforms | None  # a seeded job's own; None: drawn from the shared generator
    start: int
    stop: int
    members: list[tuple[GenerateJob, int, int]] = field(default_factory=list)  # job, rows in group
