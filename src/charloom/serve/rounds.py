"""What the generation worker does next: which new request it takes in first, which requests it
steps this round, and whose text it hands out.

Three kinds of requests share the worker (``scheduler.py``), and each round steps one of them:

- **quick** ones: at most ``QUICK_STEPS`` steps long when they come in (a short completion, a
  `/v1/generate` with a small ``length``). They are stepped apart from everything else until
  they are done, so their answer costs them their own steps, not a batch's;
- **fresh** ones: longer requests that have not been stepped yet. Their first chunk is short
  and apart, so that their first characters go out at once;
- the **batch**: every longer request once it has started, stepped together and kept side by
  side between rounds (``Stepper.step(..., keep=True)``).

Quick and fresh requests go first, until they have had ``chunk_s`` of the worker's time since
the batch's last round; then the batch has a round. So arrivals, however many, hold the running
streams back by about a chunk at most, and a short request waits for at most one block of the
batch's chunk (``stepping.py``) before its own steps.

New requests are taken in (their primes run) in the order of their clients' load: the request
of a client with the fewest samples running comes first. A client that floods the server with
requests - whatever its share lets through - then delays its own requests, not another
client's: theirs are taken in before the flood's backlog.
"""

from __future__ import annotations

from collections.abc import Sequence

from .jobs import GenerateJob, NextJob

#: A request at most this many steps long is quick: stepped apart until done (see above).
QUICK_STEPS = 64
#: Seconds between two deliveries of a running request's text, per running request (at least
#: ``chunk_ms``): 64 streams get their text every 64 ms, 512 every half second.
DELIVERY_S = 0.001
#: Running requests whose text goes out in one round, at most (or an eighth of them, if more):
#: decoding it holds the interpreter lock, which the event loop needs to read a new request,
#: so a hundred streams' text goes out over a few rounds rather than all at once - and stays
#: spread out, since each stream's next delivery is timed from its last.
DELIVERIES = 16

Job = GenerateJob | NextJob


def admission_order(waiting: Sequence[Job], running: Sequence[GenerateJob]) -> list[Job]:
    """``waiting`` in the order to take them in: each time, the first waiting request of the
    client with the fewest samples running (counting those taken in before it)."""
    if len(waiting) < 2:
        return list(waiting)
    load: dict[str, int] = {}
    for stepping in running:
        load[stepping.client] = load.get(stepping.client, 0) + stepping.rows
    queues: dict[str, list[Job]] = {}
    for job in waiting:
        queues.setdefault(job.client, []).append(job)
    order: list[Job] = []
    while queues:
        client = min(queues, key=lambda c: load.get(c, 0))
        taken = queues[client].pop(0)
        if not queues[client]:
            del queues[client]
        load[client] = load.get(client, 0) + taken.rows
        order.append(taken)
    return order


class Turns:
    """The worker's choice each round (worker side only): which jobs to step, and whose text
    goes out; it keeps the time quick and fresh jobs have had since the batch's last round."""

    def __init__(self, chunk_s: float) -> None:
        self.chunk_s = chunk_s
        self.apart_s = 0.0

    def pick(
        self, running: list[GenerateJob], new: list[GenerateJob]
    ) -> tuple[list[GenerateJob], bool]:
        """The jobs to step this round, and whether they are the batch (kept side by side)."""
        for job in new:
            job.quick = job.steps_left <= QUICK_STEPS
        jobs = running + new
        batch = [job for job in jobs if not job.quick]
        owed = bool(batch) and self.apart_s >= self.chunk_s
        if not owed:
            quick = [job for job in jobs if job.quick]
            if quick:
                return quick, False
            fresh = [job for job in new if not job.quick]
            if fresh and len(fresh) < len(batch):
                return fresh, False
        return batch, True

    def took(self, seconds: float, batch: bool) -> None:
        """Count a round's time: the batch's round resets the clock of the others."""
        self.apart_s = 0.0 if batch else self.apart_s + seconds

    def due(
        self, jobs: list[GenerateJob], now: float
    ) -> tuple[list[GenerateJob], list[GenerateJob]]:
        """Whose text goes out now: (the jobs done, all of them; the running jobs due, new ones
        first). A new job's first characters go out at once; a running job's text at most every
        ``chunk_s``, or every ``DELIVERY_S`` per running job, whichever is longer, so that
        handing it to the event loop costs the loop a bounded share of its time (new requests
        are read there too), and for at most ``DELIVERIES`` running jobs a round."""
        every = max(self.chunk_s, DELIVERY_S * len(jobs))
        most = max(DELIVERIES, len(jobs) // 8)
        done: list[GenerateJob] = []
        first: list[GenerateJob] = []
        later: list[GenerateJob] = []
        for job in jobs:
            if job.finished:
                done.append(job)
            elif not job.delivered_at:
                first.append(job)
            elif now - job.delivered_at >= every and len(later) < most:
                later.append(job)
        return done, first + later
