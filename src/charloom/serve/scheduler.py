"""One generation worker for all requests: their samples stepped together, a chunk at a time.

Why a single worker: a character model is cheap per step but is stepped thousands of times, and
on a CPU two requests stepped in two threads mostly fight over the cores. So every request's
samples become columns of one batch, stepped by the engine ``charloom sample`` uses (the
compiled loop of ``fastgen.py`` on a CPU with numba), many steps per call: see
``stepping.py``. The worker steps one chunk (at most ``chunk_ms``, and never past the first
job's completion), hands the new text to the event loop, takes in new requests (running their
primes) and drops finished or abandoned ones, then steps again. A chunk ends early when a
request arrives, and a newcomer's first chunk runs on its own (every other round at most). A
long request therefore delays a short one by about one block of a chunk, never by its length,
and a request whose client went away stops costing anything at the next chunk boundary.

The worker is one thread of its own, so the event loop keeps answering HTTP between chunks and
the model keeps stepping while the loop is busy with HTTP. They share little: the loop puts new
jobs in an inbox and sets ``cancelled`` on abandoned ones; the worker owns everything else about
a job and hands text back with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from typing import cast

import torch

from ..errors import CharloomError
from ..model import CharRNN
from ..nextchar import SampleSettings
from ..vocab import Vocab
from .jobs import GenerateJob, NextJob
from .stepping import Stepper

log = logging.getLogger("charloom.serve")

#: Seconds between two deliveries of a running request's text, per running request (at least
#: ``chunk_ms``): 64 streams get their text every 64 ms, 512 every half second.
DELIVERY_S = 0.001


class ServerBusy(CharloomError):
    """Too many samples are being generated already; the client should retry shortly."""


class GenerationFailed(CharloomError):
    """The model failed while generating (a bug or an exhausted device), not the request."""


class Scheduler:
    """Admits jobs, steps them together in one worker thread, delivers their text."""

    def __init__(
        self,
        model: CharRNN,
        vocab: Vocab,
        max_active: int = 512,
        chunk_ms: float = 20.0,
        engine: str = "auto",
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.max_active = max_active
        self.chunk_s = chunk_ms / 1000
        self.stepper = Stepper(model, self.chunk_s, engine)
        #: The engine that steps the requests: ``numba`` or ``torch``, as ``charloom sample``
        #: chooses for this model.
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._admitted: set = set()  # jobs submitted and not yet over (event-loop side)
        self._stepping = (0, 0)  # (requests, samples) in the worker's batch (worker side)
        self._current: list[GenerateJob] = []  # the worker's batch (worker side)
        self._batch_stepped_at = 0.0  # when the worker last stepped every job at once
        self.chars_generated = 0
        self.requests_served = 0

    # --- the event-loop side ------------------------------------------------------------

    @property
    def engine(self) -> str:
        """The engine stepping the requests now: ``numba`` or ``torch`` (``auto`` starts on
        torch while the compiled engine is compiled, and takes it once it is ready)."""
        return self.stepper.engine

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

    def _deliver_all(self, batch: list[tuple[GenerateJob | NextJob, list]]) -> None:
        """On the event loop: :meth:`_deliver` for each job of one round."""
        for job, items in batch:
            self._deliver(job, items)

    def _post(self, job: GenerateJob | NextJob, items: list[tuple[str, object]]) -> None:
        """From the worker thread: deliver ``items`` to ``job`` on its event loop."""
        self._post_all([(job, items)])

    def _post_all(self, batch: list[tuple[GenerateJob | NextJob, list]]) -> None:
        """From the worker thread: deliver each job's items on its event loop, with one wake-up
        of each loop for the whole batch (one per job would cost the loop more than the text)."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, items in batch:
            if items and job.loop is not None:
                by_loop.setdefault(job.loop, []).append((job, items))
        for loop, jobs in by_loop.items():
            # RuntimeError: that loop has closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver_all, jobs)

    # --- the worker thread -------------------------------------------------------------
    def _work(self) -> None:
        try:  # the first calls set up kernels (or load compiled code): not on a request's time
            self._warm_up()
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
            admitted = self._admit()
            running = [j for j in jobs if not j.cancelled]
            jobs = running + [j for j in admitted if not j.cancelled]
            self._current = jobs
            self._stepping = (len(jobs), sum(j.rows for j in jobs))
            if not jobs:
                return jobs
            # Newcomers take their first chunk on their own, so that a short request is done
            # without waiting for the running batch's steps - as long as the running requests
            # have had a round within the last chunk_s, so that arrivals, however many, cannot
            # hold them back for more than about a chunk.
            now = time.perf_counter()
            alone = len(jobs) > len(running) > 0 and now - self._batch_stepped_at < self.chunk_s
            stepped = jobs[len(running) :] if alone else jobs
            if not alone:
                self._batch_stepped_at = now
            self.stepper.step(stepped, interrupted=lambda: not self._inbox.empty())
        # Completed jobs' answers go out first, at once, and so do a new job's first
        # characters. Other jobs' text goes out once per chunk_ms (however short the chunks:
        # they end early when requests arrive), since each delivery costs decoding here and an
        # event on the event loop - and not while requests wait to come in: their first round
        # comes first, and their answers would otherwise queue on the event loop behind the
        # running streams' text.
        now = time.perf_counter()
        waiting = not self._inbox.empty()
        # With many requests running, their text goes out less often, so that handing it to the
        # event loop costs it a bounded share of its time (a new request's HTTP is handled
        # there too): every chunk_ms, or DELIVERY_S per running request, whichever is longer.
        every = max(self.chunk_s, DELIVERY_S * len(jobs))

        def held_back(job: GenerateJob) -> bool:
            if job.finished or not job.delivered_at:
                return False
            return waiting or now - job.delivered_at < every

        for due in ([j for j in jobs if j.finished], [j for j in jobs if not j.finished]):
            batch: list[tuple[GenerateJob | NextJob, list]] = []
            for job in due:
                if held_back(job):
                    continue
                job.delivered_at = now
                items: list[tuple[str, object]] = []
                texts = job.take_fresh()
                if any(texts):
                    items.append(("text", texts))
                if job.finished:
                    items.append(("done", None))
                batch.append((job, items))
            self._post_all(batch)
        return [j for j in jobs if not (j.finished or j.cancelled)]

    def _warm_up(self) -> None:
        """Step two throw-away jobs, of one and of four samples (the engine runs them on one
        thread and on several: two compiled functions), then forget the measured rate."""
        with torch.inference_mode():
            for samples in (1, 4):
                job = GenerateJob([0], SampleSettings(), 2, samples)
                job.prime(self.stepper.start, self.vocab)
                self.stepper.step([job])
        self.stepper.forget_rate()

    def _admit(self) -> list[GenerateJob]:
        """Run the primes of newly submitted jobs and answer /v1/next jobs; return the new
        generation jobs. Primes get at most half a chunk of time per round (the rest wait for
        the next round), so a flood of long primes slows the running streams but never stops
        them."""
        admitted: list[GenerateJob] = []
        deadline = time.perf_counter() + self.chunk_s / 2
        while True:
            if time.perf_counter() > deadline:
                return admitted
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return admitted
            if job.cancelled:
                continue
            try:
                if isinstance(job, NextJob):
                    job.prime(self.model, self.vocab)
                else:
                    job.prime(self.stepper.start, self.vocab)
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
