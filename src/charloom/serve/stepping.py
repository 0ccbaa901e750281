"""One chunk of generation for every running request, with the engine ``charloom sample`` uses.

The engine is chosen by :func:`charloom.sample.engine_name`, the rule of ``charloom sample
--engine auto``: the compiled loop of ``fastgen.py`` on a CPU with numba, the torch reference
elsewhere. Either one draws many characters for B streams in one call (``run(state, logits,
uniforms (steps, B), settings)``), so its cost per call (copies in and out, starting threads) is
paid once per block of steps rather than once per character.

A chunk steps every job the same number of steps, so that no request gets ahead of another. The
settings (temperature, top-k, top-p, greedy) are per call, so jobs are grouped by them and each
group is one call per block; the random numbers are per column, so a seeded job shares a call
with others and still draws from its own stream. How many steps: as many as fit in ``chunk_s``
at the rate the last chunks ran, and never past the step at which the first job can complete
(its answer then goes out at once, and no step is wasted); a long new request's first chunk is
short, so its first characters go out at once. The chunk runs in blocks of about a sixteenth of
that, but never shorter than ``MIN_CALL_S`` (below it, the cost of a call outweighs its steps);
between blocks it ends early if ``interrupted()`` says so (a new request is waiting), so a
request waits for about one block - a millisecond or two, whatever the model's size and the
number of streams - not a whole chunk, to join.

Primes run here too (:meth:`Stepper.start`): on the CPU with the numpy engine, as ``charloom
sample`` runs them (torch's fused module costs milliseconds to set up per call on the CPU), on
a GPU with the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from .. import fastgen
from ..model import CharRNN
from ..nextchar import SampleSettings, seeded_rng
from ..npgen import NumpyGenerator
from ..sample import (
    CompiledGenerator,
    Engine,
    TorchGenerator,
    engine_name,
    gen_weights,
    make_generator,
    start_state,
)
from .jobs import GenerateJob

#: The most steps in one chunk, whatever the rate: bounds the text held back from a stream.
MAX_STEPS = 2048
#: Blocks per chunk: how much sooner than a whole chunk a waiting request joins.
BLOCKS = 16
#: The steps of a batch's first call, before its rate is measured.
MIN_BLOCK = 16
#: The shortest engine call worth making (unless a job completes sooner): below it, the cost of
#: a call (copies in and out, starting threads: tens of microseconds) outweighs its steps.
MIN_CALL_S = 0.0005


class Stepper:
    """Steps a batch of :class:`GenerateJob` for one chunk; owned by the worker thread.

    ``engine`` is ``numba`` or ``torch``: what ``charloom sample`` would use for this model."""

    def __init__(self, model: CharRNN, chunk_s: float, engine: str = "auto") -> None:
        self.model, self.asked = model, engine
        self.engine = engine_name(model, engine)
        self.generator: Engine = make_generator(model, engine)
        on_cpu = model.head.weight.device.type == "cpu"
        self._primer = NumpyGenerator(gen_weights(model)) if on_cpu else None
        self.chunk_s = chunk_s
        # Unseeded requests share one generator: their columns come from one draw per chunk.
        self._shared = seeded_rng(None)
        # Measured seconds per step of one column (a running average), by the batch's number of
        # columns rounded to a power of two (a call's fixed cost weighs more on few columns);
        # none yet for a size: its first chunk takes MIN_BLOCK steps and measures.
        self._column_step_s: dict[int, float] = {}

    def start(
        self, prime_ids: list[int], rows: int
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Run a prime (see ``sample.start_state``): the state ``(L, rows, H)`` and logits
        ``(rows, V)`` to draw the first character from."""
        if self._primer is None:
            return start_state(self.model, prime_ids, rows)
        state, logits = self._primer.start(prime_ids, rows)
        return tuple(torch.from_numpy(s) for s in state), torch.from_numpy(logits)

    def _min_steps(self, columns: int) -> int:
        """The fewest steps of a call on ``columns`` columns: what takes ``MIN_CALL_S``."""
        rate = self._column_step_s.get(columns.bit_length())
        if rate is None:
            return MIN_BLOCK
        return max(1, min(MIN_BLOCK, int(MIN_CALL_S / (columns * rate)) if rate > 0 else MIN_BLOCK))

    def steps_for(self, jobs: list[GenerateJob]) -> int:
        """How many steps the next chunk of ``jobs`` takes at most (see the module docstring)."""
        columns = sum(job.rows for job in jobs)
        rate = self._column_step_s.get(columns.bit_length())
        least = self._min_steps(columns)
        steps = MAX_STEPS
        if rate is None:
            steps = MIN_BLOCK
        elif rate > 0:
            steps = int(self.chunk_s / (columns * rate))
        if any(job.fresh_start and job.steps_left > 4 * MIN_BLOCK for job in jobs):
            steps = least  # a long new request's first characters show at once
        return max(1, min(max(steps, least), MAX_STEPS, *(job.steps_left for job in jobs)))

    def step(self, jobs: list[GenerateJob], interrupted: Callable[[], bool] = lambda: False) -> int:
        """Step every job in ``jobs`` (primed, not finished) by the same number of steps, hand
        each its new ids (``job.take``) and keep its state; returns the number of steps."""
        self._take_compiled_when_ready()
        planned = self.steps_for(jobs)
        block = max(self._min_steps(sum(job.rows for job in jobs)), -(-planned // BLOCKS))
        start = time.perf_counter()
        groups: dict[tuple, _Group] = {}
        for job in jobs:
            group = groups.setdefault(job.group_key(), _Group(job.settings, job.end))
            group.members.append(job)
        for group in groups.values():
            group.gather(planned, self._shared)
        done = 0
        while done < planned:
            n = min(block, planned - done)
            for group in groups.values():
                self._run(group, done, n)
            done += n
            if interrupted() or all(group.all_stopped() for group in groups.values()):
                break
        for group in groups.values():
            group.scatter(done)
        # The time per column-step, everything included: a chunk's length is what a waiting
        # request waits, whatever it was spent on.
        columns = sum(job.rows for job in jobs)
        measured = (time.perf_counter() - start) / (done * columns)
        last = self._column_step_s.get(columns.bit_length())
        self._column_step_s[columns.bit_length()] = (
            measured if last is None else (last + measured) / 2
        )
        return done

    def _take_compiled_when_ready(self) -> None:
        """``auto`` starts on torch while the compiled engine is compiled in the background
        (nobody waits on it); take the compiled one as soon as it is ready, as a stream of
        ``charloom sample`` does. Both draw the same uniforms, so no text changes."""
        waiting = self.engine == "torch" and self.asked == "auto" and fastgen.ready()
        if waiting and engine_name(self.model, "auto") == "numba":
            self.engine, self.generator = "numba", CompiledGenerator(self.model)
            self.forget_rate()

    def _run(self, group: _Group, start: int, steps: int) -> None:
        """One engine call; a compiled engine that fails at run time is given up for torch (one
        line, once), which redoes the same steps: an engine call changes none of its inputs."""
        try:
            group.run(self.generator, start, steps)
        except Exception as exc:
            if self.engine != "numba":
                raise
            fastgen.failed(fastgen.one_line(exc))
            self.engine, self.generator = "torch", TorchGenerator(self.model)
            self.forget_rate()
            group.run(self.generator, start, steps)

    def forget_rate(self) -> None:
        """Drop the measured rates (after a warm-up, whose first calls compile)."""
        self._column_step_s.clear()


@dataclass(eq=False)
class _Group:
    """Jobs with the same settings, stepped as the columns of one batch by one engine call per
    block. ``state`` (tuple of ``(L, B, H)``), ``logits (B, V)`` and ``uniforms (steps, B)`` are
    the members' side by side, in the order of ``members``."""

    settings: SampleSettings
    end: int | None = None  # documents mode: the engine stops rows at this id
    members: list[GenerateJob] = field(default_factory=list)
    stopped: torch.Tensor | None = None  # (B,) bool, documents mode: rows whose document ended
    state: tuple[torch.Tensor, ...] = ()
    logits: torch.Tensor | None = None
    uniforms: torch.Tensor | None = None
    ids: list[torch.Tensor] = field(default_factory=list)

    def gather(self, steps: int, shared: np.random.Generator) -> None:
        """Put the members side by side, with the uniforms for up to ``steps`` steps: each
        seeded job's from its own stream, the unseeded jobs' from ``shared``."""
        members = self.members
        if len(members) == 1:
            self.state, self.logits = members[0].state, members[0].logits
        else:
            self.state = tuple(
                torch.cat(parts, dim=1) for parts in zip(*(j.state for j in members))
            )
            self.logits = torch.cat([cast(torch.Tensor, j.logits) for j in members])
        unseeded = sum(job.rows for job in members if job.uniforms is None)
        common = (
            torch.from_numpy(shared.random((steps, unseeded), dtype=np.float32))
            if unseeded
            else None
        )
        parts, column = [], 0
        for job in members:
            if job.uniforms is not None:
                parts.append(job.draw(steps))
            else:
                assert common is not None  # drawn above for every unseeded column
                parts.append(common[:, column : column + job.rows])
                column += job.rows
        self.uniforms = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if self.end is not None:
            self.stopped = torch.cat([job.stopped() for job in members])

    def all_stopped(self) -> bool:
        """Documents mode: whether every row's document has ended (no step is worth taking)."""
        return self.stopped is not None and bool(self.stopped.all())

    def run(self, generator, start: int, steps: int) -> None:
        """Steps ``start:start+steps`` of the chunk, in one engine call."""
        assert self.uniforms is not None and self.logits is not None  # set by gather()
        u = self.uniforms[start : start + steps]
        if self.end is None:
            ids, self.state, self.logits = generator.run(self.state, self.logits, u, self.settings)
        else:
            assert self.stopped is not None  # set by gather()
            ids, self.state, self.logits = generator.run(
                self.state, self.logits, u, self.settings, self.end, self.stopped
            )
            self.stopped = self.stopped | (ids == self.end).any(0)
        self.ids.append(ids)

    def scatter(self, done: int) -> None:
        """Hand each member its columns of the ``done`` steps' ids, state and logits, and give
        a seeded member back the uniforms of steps not taken."""
        assert self.uniforms is not None and self.logits is not None  # set by gather()
        ids = (self.ids[0] if len(self.ids) == 1 else torch.cat(self.ids)).cpu()
        column = 0
        for job in self.members:
            cols = slice(column, column + job.rows)
            job.state = tuple(s[:, cols] for s in self.state)
            job.logits = self.logits[cols]
            job.take(ids[:, cols])
            if job.uniforms is not None:
                job.give_back(self.uniforms[done:, cols])
            column += job.rows
