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
at the rate the engine's last calls ran, and never past the step at which the first job can complete
(its answer then goes out at once, and no step is wasted); a long new request's first chunk is
short, so its first characters go out at once. The chunk runs in blocks of about a sixteenth of
that, but never shorter than ``MIN_CALL_S`` (below it, the cost of a call outweighs its steps);
between blocks it ends early if ``interrupted()`` says so (a new request is waiting), so a
request waits for about one block - a millisecond or two, whatever the model's size and the
number of streams - not a whole chunk, to join.

The running batch stays side by side between chunks (``keep=True``): its groups hold the
members' state, logits and ``stopped`` rows as a few tensors, and the ids drawn for them until a
member may have completed or its text is to go out (:meth:`Stepper.flush`). So a chunk costs a
few operations per group however many jobs it holds; only a job joining or leaving costs
anything of its own, once. A torch operation lets go of the interpreter lock, and taking it
back can wait for the event loop's thread, so a few per job per chunk (hundreds a chunk at 128
streams) used to cost that thread and this one more than the model's steps did. Jobs stepped
apart (``keep=False``: short ones, a long one's first chunk) take their state from their jobs
and give it back, with their ids, at once.

Primes run here too (:meth:`Stepper.start`): on the CPU with the numpy engine, as ``charloom
sample`` runs them (torch's fused module costs milliseconds to set up per call on the CPU), on
a GPU with the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
        # Measured seconds per step of one column in the engine's calls (a running average), by
        # the batch's number of columns rounded to a power of two (a call's fixed cost weighs
        # more on few columns); none yet for a size: its first chunk takes MIN_BLOCK steps.
        self._column_step_s: dict[int, float] = {}
        # The running batch, kept side by side between chunks: its groups by settings, and the
        # group each member is in.
        self._groups: dict[tuple, _Group] = {}
        self._group_of: dict[GenerateJob, _Group] = {}

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

    def _plan(self, groups: list[_Group]) -> int:
        """How many steps the next chunk of ``groups`` takes at most (see the module
        docstring)."""
        columns = sum(group.width for group in groups)
        rate = self._column_step_s.get(columns.bit_length())
        least = self._min_steps(columns)
        steps = MAX_STEPS
        if rate is None:
            steps = MIN_BLOCK
        elif rate > 0:
            steps = int(self.chunk_s / (columns * rate))
        if any(group.fresh_long for group in groups):
            steps = least  # a long new request's first characters show at once
        return max(1, min(max(steps, least), MAX_STEPS, *(group.left for group in groups)))

    def step(
        self,
        jobs: list[GenerateJob],
        interrupted: Callable[[], bool] = lambda: False,
        keep: bool = False,
    ) -> int:
        """Step every job in ``jobs`` (primed, not finished) by the same number of steps;
        returns the number of steps.

        ``keep``: ``jobs`` are the running batch, kept side by side for the next chunk (members
        of the last kept batch that are not in ``jobs`` leave it, with their state), and their
        new ids are handed to them (``job.take``) when one of them may have completed, or when
        :meth:`flush` asks; otherwise each job's state is read from it and given back to it,
        with its ids, at once."""
        self._take_compiled_when_ready()
        groups = self._keep(jobs) if keep else self._apart(jobs)
        planned = self._plan(groups)
        columns = sum(group.width for group in groups)
        block = max(self._min_steps(columns), -(-planned // BLOCKS))
        for group in groups:
            group.draw(planned, self._shared)
        done, engine_s = 0, 0.0
        while done < planned:
            n = min(block, planned - done)
            called = time.perf_counter()
            for group in groups:
                self._run(group, done, n)
            engine_s += time.perf_counter() - called
            done += n
            if interrupted() or all(group.all_stopped() for group in groups):
                break
        for group in groups:
            group.took(done)
            if not keep:
                group.flush()
                group.give_back_state()
        # The time per column-step of the engine calls alone. The chunk's fixed cost (drawing
        # the random numbers, handing out the ids) is left out: counted in, it would make a
        # chunk cut short by a newcomer look as if each of its steps were slow, the next chunk
        # would be planned shorter, its fixed cost would weigh more still, and the chunks would
        # shrink to a step or two.
        measured = engine_s / (done * columns)
        last = self._column_step_s.get(columns.bit_length())
        self._column_step_s[columns.bit_length()] = (
            measured if last is None else (last + measured) / 2
        )
        return done

    def flush(self) -> None:
        """Hand every job of the kept batch the ids drawn for it so far (``job.take``), so that
        its text can go out."""
        for group in self._groups.values():
            group.flush()

    def release(self) -> None:
        """Forget the kept batch (its jobs keep their state): when the worker has no job left,
        or after a failure."""
        for group in self._groups.values():
            group.flush()
            group.give_back_state()
        self._groups.clear()
        self._group_of.clear()

    def _apart(self, jobs: list[GenerateJob]) -> list[_Group]:
        """Groups for ``jobs`` stepped on their own, their state taken from the jobs."""
        kept = [job for job in jobs if job in self._group_of]
        if kept:  # not expected (newcomers are stepped apart), but a job has one state
            self._leave(kept)
        groups: dict[tuple, _Group] = {}
        for job in jobs:
            groups.setdefault(job.group_key(), _Group(job.settings, job.end)).members.append(job)
        for group in groups.values():
            group.take_state()
        return list(groups.values())

    def _keep(self, jobs: list[GenerateJob]) -> list[_Group]:
        """The kept batch made into ``jobs``: members not among them leave it (with their state),
        jobs not in it join it; the groups holding ``jobs``."""
        wanted = set(jobs)
        self._leave([job for job in self._group_of if job not in wanted])
        joining: dict[tuple, list[GenerateJob]] = {}
        for job in jobs:
            if job not in self._group_of:
                joining.setdefault(job.group_key(), []).append(job)
        for key, new in joining.items():
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(new[0].settings, new[0].end)
            group.flush()  # its ids so far are as wide as its members so far
            group.join(new)
            for job in new:
                self._group_of[job] = group
        return list(self._groups.values())

    def _leave(self, jobs: list[GenerateJob]) -> None:
        """Take ``jobs`` out of the kept batch, giving each its state back."""
        leaving: dict[int, list[GenerateJob]] = {}
        for job in jobs:
            leaving.setdefault(id(self._group_of.pop(job)), []).append(job)
        for key, group in list(self._groups.items()):
            gone = leaving.get(id(group))
            if gone:
                group.flush()
                group.leave(gone)
                if not group.members:
                    del self._groups[key]

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
    block. ``state`` (tuple of ``(L, B, H)``), ``logits (B, V)``, ``stopped (B,)`` and the
    chunk's ``uniforms (steps, B)`` are the members' side by side, in the order of
    ``members``; ``columns`` is where each member's columns start. The ids drawn since the
    last :meth:`flush`, ``pending`` (blocks of ``(steps, B)``), are the members' too until
    then."""

    settings: SampleSettings
    end: int | None = None  # documents mode: the engine stops rows at this id
    members: list[GenerateJob] = field(default_factory=list)
    columns: list[int] = field(default_factory=list)
    width: int = 0  # columns in all
    seeded: list[tuple[GenerateJob, int]] = field(default_factory=list)  # and their columns
    unseeded: np.ndarray | None = None  # (B,) bool: the columns of unseeded members
    stopped: torch.Tensor | None = None  # (B,) bool, documents mode: rows whose document ended
    state: tuple[torch.Tensor, ...] = ()
    logits: torch.Tensor | None = None
    uniforms: np.ndarray | None = None
    ids: list[torch.Tensor] = field(default_factory=list)  # this chunk's blocks
    pending: list[np.ndarray] = field(default_factory=list)
    pending_steps: int = 0
    #: The fewest steps before a member can complete, as of the last flush (``job.left``).
    least_left: int = 0
    fresh_long: bool = False  # a long member not stepped yet (its first chunk is short)

    @property
    def left(self) -> int:
        """Steps before the first member can complete (see ``GenerateJob.steps_left``)."""
        return max(1, self.least_left - self.pending_steps)

    def _place(self) -> None:
        """Work out the layout of the members' columns (after they changed)."""
        self.columns, column = [], 0
        for job in self.members:
            self.columns.append(column)
            column += job.rows
        self.width = column
        self.seeded = [(j, c) for j, c in zip(self.members, self.columns) if j.seed is not None]
        self.unseeded = None
        if self.seeded:
            self.unseeded = np.ones(column, dtype=bool)
            for job, start in self.seeded:
                self.unseeded[start : start + job.rows] = False
        self.least_left = min((job.left for job in self.members), default=0)
        self.fresh_long = self.fresh_long or any(
            job.fresh_start and job.steps_left > 4 * MIN_BLOCK for job in self.members
        )

    def take_state(self) -> None:
        """Put the members' state side by side (each job's own, as its prime or last chunk
        left it)."""
        members = self.members
        if len(members) == 1:
            self.state, self.logits = members[0].state, members[0].logits
        else:
            self.state = tuple(
                torch.cat(parts, dim=1) for parts in zip(*(j.state for j in members))
            )
            self.logits = torch.cat([cast_tensor(j.logits) for j in members])
        if self.end is not None:
            self.stopped = torch.cat([job.stopped() for job in members])
        self._place()

    def give_back_state(self) -> None:
        """Hand each member its columns of the state and logits (it steps apart from here on)."""
        for job, column in zip(self.members, self.columns):
            cols = slice(column, column + job.rows)
            job.state = tuple(s[:, cols] for s in self.state)
            job.logits = cast_tensor(self.logits)[cols]

    def join(self, jobs: list[GenerateJob]) -> None:
        """Add ``jobs`` as the last columns (after a :meth:`flush`); their state is the
        group's from here on (the jobs' own is dropped until they leave)."""
        self._join(jobs)
        for job in jobs:
            job.state, job.logits = (), None

    def _join(self, jobs: list[GenerateJob]) -> None:
        if not self.members:
            self.members = list(jobs)
            self.take_state()
            return
        new = _Group(self.settings, self.end, list(jobs))
        new.take_state()
        self.members = self.members + jobs
        self.state = tuple(torch.cat([a, b], dim=1) for a, b in zip(self.state, new.state))
        self.logits = torch.cat([cast_tensor(self.logits), cast_tensor(new.logits)])
        if self.stopped is not None and new.stopped is not None:
            self.stopped = torch.cat([self.stopped, new.stopped])
        self._place()

    def leave(self, jobs: list[GenerateJob]) -> None:
        """Take ``jobs`` out (after a :meth:`flush`), each with its columns of the state; the
        others close up."""
        gone = set(jobs)
        kept: list[int] = []
        for job, column in zip(self.members, self.columns):
            cols = slice(column, column + job.rows)
            if job in gone:
                if not (job.finished or job.cancelled):  # it may be stepped again, apart
                    job.state = tuple(s[:, cols] for s in self.state)
                    job.logits = cast_tensor(self.logits)[cols]
            else:
                kept.extend(range(cols.start, cols.stop))
        self.members = [job for job in self.members if job not in gone]
        if not self.members:
            self.state, self.logits, self.stopped = (), None, None
            self._place()
            return
        index = torch.tensor(kept, device=cast_tensor(self.logits).device)
        self.state = tuple(s.index_select(1, index) for s in self.state)
        self.logits = cast_tensor(self.logits).index_select(0, index)
        if self.stopped is not None:
            self.stopped = self.stopped.index_select(0, index)
        self._place()

    def draw(self, steps: int, shared: np.random.Generator) -> None:
        """The uniforms for up to ``steps`` steps: each seeded job's from its own stream, the
        unseeded jobs' from ``shared`` (one draw for all of them)."""
        if not self.seeded:
            self.uniforms = shared.random((steps, self.width), dtype=np.float32)
            return
        uniforms = np.empty((steps, self.width), dtype=np.float32)
        assert self.unseeded is not None  # set by _place() when some members are seeded
        unseeded = int(self.unseeded.sum())
        if unseeded:
            uniforms[:, self.unseeded] = shared.random((steps, unseeded), dtype=np.float32)
        for job, column in self.seeded:
            uniforms[:, column : column + job.rows] = job.draw(steps)
        self.uniforms = uniforms

    def all_stopped(self) -> bool:
        """Documents mode: whether every row's document has ended (no step is worth taking)."""
        return self.stopped is not None and bool(self.stopped.all())

    def run(self, generator, start: int, steps: int) -> None:
        """Steps ``start:start+steps`` of the chunk, in one engine call."""
        assert self.uniforms is not None and self.logits is not None  # set by draw(), join()
        u = self.uniforms[start : start + steps]
        if self.end is None:
            ids, self.state, self.logits = generator.run(self.state, self.logits, u, self.settings)
        else:
            assert self.stopped is not None  # set by take_state()
            ids, self.state, self.logits = generator.run(
                self.state, self.logits, u, self.settings, self.end, self.stopped
            )
            self.stopped = self.stopped | (ids == self.end).any(0)
        self.ids.append(ids)

    def took(self, done: int) -> None:
        """After a chunk of ``done`` steps: keep its ids for the members, give a seeded member
        back the uniforms of steps not taken, and :meth:`flush` if a member may have completed
        (or in documents mode, where a document ends when it draws the end symbol)."""
        assert self.uniforms is not None  # set by draw()
        self.pending.append(
            (self.ids[0] if len(self.ids) == 1 else torch.cat(self.ids)).cpu().numpy()
        )
        self.pending_steps += done
        self.ids = []
        for job, column in self.seeded:
            job.give_back(self.uniforms[done:, column : column + job.rows].copy())
        self.uniforms = None
        self.fresh_long = False
        if self.end is not None or self.least_left - self.pending_steps <= 0:
            self.flush()

    def flush(self) -> None:
        """Hand each member its columns of the ids drawn since the last flush. Numpy slices:
        no tensor operation per member."""
        if not self.pending:
            return
        ids = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending, self.pending_steps = [], 0
        for job, column in zip(self.members, self.columns):
            job.take(ids[:, column : column + job.rows])
        self.least_left = min((job.left for job in self.members), default=0)


def cast_tensor(value: torch.Tensor | None) -> torch.Tensor:
    """``value``, known to be set (a group's logits once it has members)."""
    assert value is not None
    return value
