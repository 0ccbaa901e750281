"""The generation worker in a process of its own (``charloom serve --worker process``).

Why: in one process, the worker thread of ``scheduler.py`` and the event loop that answers HTTP
share one interpreter lock. Under a flood of streams the worker holds it for about half of every
second (its Python between engine calls), and the event loop's work waits for it. In a process
of its own the worker has an interpreter to itself, and so has the event loop. Measured under a
flood of 128 streams over HTTP (bench/serve_flood.py --worker both, bench/RESULTS.md): the
streams get about 2.5 times the text, but a short request beside them waits longer (its p99
about four times the thread's), so the thread stays the default.

The parent (:class:`ProcessScheduler`) keeps the event-loop side of :class:`Admission`: it admits
or refuses requests, counts each client's share, and passes the text on to the requests. The
child (:func:`child_main`) runs the very same worker as the thread does (:class:`Scheduler`,
rounds, chunks, engines), in its main thread, reading requests and cancellations from a pipe at
every chunk boundary (it never waits on a lock to take one in) and writing each round's text
back, with what it holds now (for /healthz) and the engine it steps with.

Messages, parent to child: ``("generate", key, fields)``, ``("next", key, fields)``,
``("cancel", key)``, ``("stop",)``. Child to parent: ``("round", [(key, items), ...],
stepping, engine)`` (items as :meth:`Admission._deliver` takes them). ``key`` numbers the
parent's jobs, never reused. The parent writes from a thread of its own, so the event loop never
blocks on a full pipe; it reads on the event loop (``add_reader``).

If the child dies, every admitted request ends with an error, and the next request starts a new
child. Seeded requests give the same text as in one process: the child draws each seeded job's
random numbers from the job's own seed, as ``charloom sample --seed`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

import torch

from ..model import CharRNN
from ..modelconfig import ModelConfig
from ..nextchar import SampleSettings
from ..vocab import Vocab
from .jobs import GenerateJob, NextJob
from .scheduler import Admission, Scheduler, freeze_long_lived

log = logging.getLogger("charloom.serve")

#: Seconds the parent waits for the child to stop before it is killed.
STOP_WAIT_S = 10.0


def _job_fields(job: GenerateJob | NextJob) -> tuple[str, dict]:
    """What the child needs to rebuild ``job``: its kind and its request's fields."""
    settings = asdict(job.settings)
    if isinstance(job, NextJob):
        return "next", dict(
            prime_ids=job.prime_ids, settings=settings, top=job.top, client=job.client
        )
    return "generate", dict(
        prime_ids=job.prime_ids,
        settings=settings,
        length=job.length,
        num_samples=job.num_samples,
        seed=job.seed,
        documents=job.documents,
        client=job.client,
    )


def _final(items: list[tuple[str, object]]) -> bool:
    """Whether a job's delivery ends it (its answer, or an error): nobody cancels it after."""
    return any(kind in ("done", "error", "result") for kind, _ in items)


def _rebuild(kind: str, fields: dict) -> GenerateJob | NextJob:
    fields = dict(fields, settings=SampleSettings(**fields["settings"]))
    return NextJob(**fields) if kind == "next" else GenerateJob(**fields)


class ProcessScheduler(Admission):
    """Admits jobs here; a child process steps them (see the module's docstring)."""

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
        self.chunk_ms = chunk_ms
        self.asked = engine
        self._engine = "torch"  # until the child says which it steps with
        self._process: Any = None  # multiprocessing's SpawnProcess while one runs
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._jobs: dict[int, GenerateJob | NextJob] = {}  # handed over, by key
        self._keys = itertools.count(1)

    @property
    def engine(self) -> str:
        return self._engine

    def start(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        if self._conn is not None:  # a child that died before its pipe said so
            self._detach()
            self._fail_all("generation failed: the generation process stopped")
        self._loop = asyncio.get_running_loop()
        spawn = multiprocessing.get_context("spawn")
        ours, theirs = spawn.Pipe(duplex=True)
        weights = {k: v.detach().to("cpu").clone() for k, v in self.model.state_dict().items()}
        device = str(self.model.head.weight.device)
        process = spawn.Process(
            target=child_main,
            args=(
                theirs,
                asdict(self.model.config),
                weights,
                device,
                self.vocab,
                self.max_active,
                self.chunk_ms,
                self.asked,
                torch.get_num_threads(),
            ),
            name="charloom-generate",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        self._loop.add_reader(ours.fileno(), self._receive)
        self._outbox = queue.SimpleQueue()
        self._sender = threading.Thread(
            target=self._send_all, args=(ours, self._outbox), name="charloom-send", daemon=True
        )
        self._sender.start()

    @staticmethod
    def _send_all(conn: Connection, outbox: queue.SimpleQueue) -> None:
        """The sending thread: the outbox's messages into the pipe, until ``None``."""
        while (message := outbox.get()) is not None:
            try:
                conn.send(message)
            except (OSError, ValueError):  # the child is gone: _receive sees it too
                return

    def _hand_over(self, job: GenerateJob | NextJob) -> None:
        job.key = next(self._keys)
        self._jobs[job.key] = job
        kind, fields = _job_fields(job)
        self._outbox.put((kind, job.key, fields))

    def _withdraw(self, job: GenerateJob | NextJob) -> None:
        if self._jobs.pop(job.key, None) is not None:
            self._outbox.put(("cancel", job.key))

    def _receive(self) -> None:
        """On the event loop, when the pipe has data: the child's rounds, delivered."""
        conn = self._conn
        assert conn is not None  # the reader is removed before the pipe is closed
        try:
            while conn.poll():
                _, batch, self._stepping, self._engine = conn.recv()
                for key, items in batch:
                    job = self._jobs.get(key)
                    if job is None:  # cancelled here meanwhile
                        continue
                    if _final(items):
                        del self._jobs[key]  # over: no cancellation needs to go out
                    self._deliver(job, items)
        except (EOFError, OSError):
            log.error("the generation process stopped; the next request starts a new one")
            self._detach()
            self._fail_all("generation failed: the generation process stopped")

    def _detach(self) -> None:
        """Forget the child's pipe (it is closed or the child is gone)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(conn.fileno())
            self._outbox.put(None)
            conn.close()
        self._jobs.clear()
        self._stepping = (0, 0)

    async def close(self) -> None:
        process, self._process = self._process, None
        sender = self._sender
        self._fail_all("the server is shutting down")
        loop = asyncio.get_running_loop()
        if self._conn is not None and self._loop is not None:
            # Not read any more: the child's exit is expected, not a failure to report.
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._conn.fileno())
        if self._conn is not None and sender is not None:
            self._outbox.put(("stop",))  # the child finishes its chunk and exits
            self._outbox.put(None)
            await loop.run_in_executor(None, sender.join, STOP_WAIT_S)
        self._detach()
        if process is not None:
            await loop.run_in_executor(None, process.join, STOP_WAIT_S)
            if process.is_alive():
                process.kill()
                await loop.run_in_executor(None, process.join, STOP_WAIT_S)


# --- the child process ------------------------------------------------------------------------
class _ChildWorker(Scheduler):
    """The thread worker's rounds, run in the child's main thread, with the pipe for an inbox."""

    def __init__(self, conn: Connection, *args: Any) -> None:
        super().__init__(*args)
        self.conn = conn
        self._keys: dict[int, GenerateJob | NextJob] = {}
        self._sent_stepping = (0, 0)

    def _read(self, timeout: float = 0.0) -> None:
        """Take in what the parent sent: new jobs into the inbox, cancellations, the stop."""
        conn = self.conn
        try:
            while conn.poll(timeout):
                timeout = 0.0
                message = conn.recv()
                if message[0] == "cancel":
                    job = self._keys.pop(message[1], None)
                    if job is not None:
                        job.cancelled = True
                elif message[0] == "stop":
                    self._stop.set()
                else:
                    kind, key, fields = message
                    job = _rebuild(kind, dict(fields, key=key))
                    self._keys[key] = job
                    self._inbox.put(job)
        except (EOFError, OSError):  # the parent is gone
            self._stop.set()

    def _idle(self) -> None:
        if self._sent_stepping != (0, 0):
            self._send([])
        self._read(timeout=1.0)

    def _waiting(self) -> bool:
        self._read()
        return super()._waiting()

    def _post_all(self, batch: list[tuple[GenerateJob | NextJob, list]]) -> None:
        out = []
        for job, items in batch:
            if not items:
                continue
            key = job.key
            out.append((key, items))
            if _final(items):
                self._keys.pop(key, None)
        if out or self._stepping != self._sent_stepping:
            self._send(out)

    def _send(self, out: list) -> None:
        self._sent_stepping = self._stepping
        try:
            self.conn.send(("round", out, self._stepping, self.stepper.engine))
        except (OSError, ValueError):  # the parent is gone
            self._stop.set()


def child_main(
    conn: Connection,
    config: dict,
    weights: dict[str, torch.Tensor],
    device: str,
    vocab: Vocab,
    max_active: int,
    chunk_ms: float,
    engine: str,
    threads: int,
) -> None:
    """The child process: rebuild the model and run the worker until the parent says stop (or
    goes away)."""
    torch.set_num_threads(threads)
    model = CharRNN(ModelConfig(**config))
    model.load_state_dict(weights)
    model = model.to(device).eval()
    worker = _ChildWorker(conn, model, vocab, max_active, chunk_ms, engine)
    freeze_long_lived()  # as the server's own process does
    worker._work()
    conn.close()
