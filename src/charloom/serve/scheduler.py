"""One generation worker for all requests: their samples stepped together, a chunk at a time.

Why a single worker: a character model is cheap per step but is stepped thousands of times, and
on a CPU two requests stepped in two threads mostly fight over the cores. So every request's
samples become columns of one batch, stepped by the engine ``charloom sample`` uses (the
compiled loop of ``fastgen.py`` on a CPU with numba), many steps per call: see
``stepping.py``. Each round the worker takes in new requests (running their primes, the least
busy client's first), steps some requests for one chunk (at most ``chunk_ms``, and never past
the first one's completion), hands the new text to the event loop and drops finished or
abandoned requests. Which requests a round steps is ``rounds.py``'s choice: short requests
apart from the running streams until they are done, a long one's first chunk apart, and the
running streams together, at least once per ``chunk_ms`` of the others' time. A chunk ends
early when a request arrives. A long request therefore delays a short one by about one block of
a chunk, never by its length, and a request whose client went away stops costing anything at
the next chunk boundary.

The worker (:class:`Scheduler`) is one thread of its own, so the event loop keeps answering HTTP
between chunks and the model keeps stepping while the loop is busy with HTTP. They share little:
the loop puts new jobs in an inbox and sets ``cancelled`` on abandoned ones; the worker owns
everything else about a job and hands text back with ``call_soon_threadsafe``. The event-loop
side (:class:`Admission`: admitting, refusing, passing text on) is apart from the worker, so the
same worker can run in a process of its own instead (process.py, ``--worker process``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator
from typing import cast

import torch

from .. import fastgen
from ..errors import CharloomError
from ..model import CharRNN
from ..nextchar import SampleSettings
from ..vocab import Vocab
from .jobs import GenerateJob, NextJob
from .rounds import Turns, admission_order
from .stepping import Stepper

log = logging.getLogger("charloom.serve")


def freeze_long_lived() -> None:
    """Freeze what is alive now (torch, the app, the model), and again once numba's compiled
    kernels (a hundred thousand objects) have loaded in the background, so that the garbage
    collector's full passes stop scanning them: each such pass stalls every request in flight
    for a tenth of a second now and then. For a process that serves until it stops."""
    gc.collect()
    gc.freeze()
    if fastgen.status() == "compiling":
        threading.Thread(target=_freeze_when_compiled, name="charloom-freeze", daemon=True).start()


def _freeze_when_compiled() -> None:
    if fastgen.prepare(wait=True):
        gc.collect()
        gc.freeze()


class ServerBusy(CharloomError):
    """Too many samples are being generated already; the client should retry shortly."""


class GenerationFailed(CharloomError):
    """The model failed while generating (a bug or an exhausted device), not the request."""


class Admission(abc.ABC):
    """The event-loop side of a generation worker: admits jobs (or refuses them when full),
    hands them over, and passes what the worker delivers on to the waiting requests. The worker
    itself is a thread of this process (:class:`Scheduler`) or a process of its own
    (``process.ProcessScheduler``)."""

    def __init__(self, max_active: int = 512) -> None:
        self.max_active = max_active
        self._admitted: set = set()  # jobs submitted and not yet over (event-loop side)
        self._admitted_rows = 0  # their samples
        self._stepping = (0, 0)  # (requests, samples) in the worker's batch (worker side)
        self.chars_generated = 0
        self.requests_served = 0

    # --- what a worker provides -----------------------------------------------------------
    @property
    @abc.abstractmethod
    def engine(self) -> str:
        """The engine stepping the requests now: ``numba`` or ``torch`` (``auto`` starts on
        torch while the compiled engine is compiled, and takes it once it is ready)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the worker if it is not running (the first request does it anyway)."""

    @abc.abstractmethod
    def _hand_over(self, job: GenerateJob | NextJob) -> None:
        """Give an admitted job to the worker."""

    def _withdraw(self, job: GenerateJob | NextJob) -> None:  # noqa: B027 - optional
        """Tell the worker that ``job`` was cancelled (a thread sees ``job.cancelled`` itself,
        so by default nothing)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the worker (it finishes its current chunk); requests in progress end with an
        error."""

    # --- the event-loop side ------------------------------------------------------------
    def stats(self) -> dict:
        """What the worker holds now: for /healthz and for tests of cancellation."""
        requests, samples = self._stepping
        return {
            "active_requests": requests,
            "active_samples": samples,
            "admitted_samples": self._admitted_rows,
            "requests_served": self.requests_served,
            "chars_generated": self.chars_generated,
        }

    def _submit(self, job: GenerateJob | NextJob) -> None:
        load = self._admitted_rows
        if load + job.rows > self.max_active:
            raise ServerBusy(
                f"the server is generating {load} samples already (at most {self.max_active}); "
                "try again in a moment"
            )
        self.start()
        job.loop = asyncio.get_running_loop()
        self._admitted.add(job)
        self._admitted_rows += job.rows
        self._hand_over(job)

    def cancel(self, job: GenerateJob | NextJob) -> None:
        """Stop ``job`` (if it still runs, the worker drops it at its next chunk) and free its
        place. Safe to call more than once, and after the job is over."""
        job.cancelled = True
        if job in self._admitted:
            self._admitted.remove(job)
            self._admitted_rows -= job.rows
            self._withdraw(job)

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

    def _fail_all(self, message: str) -> None:
        """End every admitted request with an error ``message`` (the worker is gone)."""
        for job in list(self._admitted):
            job.cancelled = True
            self._deliver(job, [("error", message)])
        self._admitted.clear()
        self._admitted_rows = 0

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


class Scheduler(Admission):
    """Admits jobs, steps them together in one worker thread, delivers their text."""

    def __init__(
        self,
        model: CharRNN,
        vocab: Vocab,
        max_active: int = 512,
        chunk_ms: float = 20.0,
        engine: str = "auto",
    ) -> None:
        super().__init__(max_active)
        self.model = model
        self.vocab = vocab
        self.chunk_s = chunk_ms / 1000
        self.stepper = Stepper(model, self.chunk_s, engine)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: list[GenerateJob] = []  # the worker's batch (worker side)
        self.turns = Turns(self.chunk_s)  # which jobs step, whose text goes out (worker side)
        self._queue: list[GenerateJob | NextJob] = []  # taken from the inbox, not yet in

    @property
    def engine(self) -> str:
        return self.stepper.engine

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._work, name="charloom-generate", daemon=True
            )
            self._thread.start()

    def _hand_over(self, job: GenerateJob | NextJob) -> None:
        self._inbox.put(job)
        self._wake.set()

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        self._wake.set()
        self._fail_all("the server is shutting down")
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)

    # --- the worker thread -------------------------------------------------------------
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

    def _work(self) -> None:
        try:  # the first calls set up kernels (or load compiled code): not on a request's time
            self._warm_up()
        except Exception:  # a model that fails here fails on its first request too, visibly
            log.exception("warm-up failed")
        jobs: list[GenerateJob] = []
        while not self._stop.is_set():
            if not jobs and not self._waiting():
                self._stepping = (0, 0)
                self._idle()
            self._wake.clear()
            try:
                jobs = self._round(jobs)
            except Exception as exc:  # the model (or a bug) failed: fail these jobs, go on
                log.exception("generation failed")
                for job in self._current:
                    self._post(job, [("error", f"generation failed: {exc}")])
                self.stepper.release()
                jobs = []
        self._stepping = (0, 0)

    def _round(self, jobs: list[GenerateJob]) -> list[GenerateJob]:
        """Admit new jobs, step some for one chunk (see rounds.py), deliver; return the jobs
        still running."""
        with torch.inference_mode():
            running = [j for j in jobs if not j.cancelled]
            new = [j for j in self._admit(running) if not j.cancelled]
            jobs = running + new
            self._current = jobs
            self._stepping = (len(jobs), sum(j.rows for j in jobs))
            if not jobs:
                self.stepper.release()
                return jobs
            stepped, batch = self.turns.pick(running, new)
            started = time.perf_counter()
            self.stepper.step(stepped, interrupted=self._waiting, keep=batch)
            self.turns.took(time.perf_counter() - started, batch)
        # Completed jobs' answers go out first, at once, then the others' text as it is due -
        # but not while a request waits to come in (its round comes first, and its answer would
        # otherwise queue on the event loop behind the running streams' text), except a new
        # job's first characters.
        now = time.perf_counter()
        done, due = self.turns.due(jobs, now)
        if due:
            self.stepper.flush()  # the kept batch's ids so far, to the jobs
        for group in (done, due):
            batch_items: list[tuple[GenerateJob | NextJob, list]] = []
            for job in group:
                if job.delivered_at and not job.finished and self._waiting():
                    break
                job.delivered_at = now
                items: list[tuple[str, object]] = []
                texts = job.take_fresh()
                if any(texts):
                    items.append(("text", texts))
                if job.finished:
                    items.append(("done", None))
                batch_items.append((job, items))
            self._post_all(batch_items)
        return [j for j in jobs if not (j.finished or j.cancelled)]

    def _idle(self) -> None:
        """Wait for work (a new job, or the stop), at most a second."""
        self._wake.wait(timeout=1.0)

    def _waiting(self) -> bool:
        """Whether a request waits to be taken in (the running batch's chunk ends early)."""
        return bool(self._queue) or not self._inbox.empty()

    def _warm_up(self) -> None:
        """Step two throw-away jobs, of one and of four samples (the engine runs them on one
        thread and on several: two compiled functions), then forget the measured rate."""
        with torch.inference_mode():
            for samples in (1, 4):
                job = GenerateJob([0], SampleSettings(), 2, samples)
                job.prime(self.stepper.start, self.vocab)
                self.stepper.step([job])
        self.stepper.forget_rate()

    def _admit(self, running: list[GenerateJob]) -> list[GenerateJob]:
        """Run the primes of newly submitted jobs, least busy client first (rounds.py), and
        answer /v1/next jobs; return the new generation jobs. Primes get at most half a chunk
        of time per round (the rest wait for the next round), so a flood of long primes slows
        the running streams but never stops them."""
        while True:
            try:
                self._queue.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        self._queue = admission_order(self._queue, running)
        admitted: list[GenerateJob] = []
        deadline = time.perf_counter() + self.chunk_s / 2
        while self._queue and time.perf_counter() <= deadline:
            job = self._queue.pop(0)
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
        return admitted
