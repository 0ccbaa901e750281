"""The learning-rate schedule and the clock of a run's budget.

A run is budgeted in iterations (``--iters``) or in wall-clock seconds (``--time``). Under a time
budget the schedule's decay ends at the deadline, evaluations are spaced by what they cost so that
they take about :data:`EVAL_SHARE` of the time, and training stops early enough for the final
evaluation and checkpoint to end by the deadline.
"""

from __future__ import annotations

import math
import time

from .config import TrainConfig

# The share of a run that evaluations should take (under --time, the clock spaces them so).
EVAL_SHARE = 0.05
#: Bounds of the validation characters one evaluation reads by default (see eval_chars).
MIN_EVAL_CHARS = 2048
MAX_EVAL_CHARS = 1_000_000
#: What a trained character costs against an evaluated one: forward, and backward at about
#: twice the forward.
TRAIN_COST_PER_CHAR = 3.0


def eval_chars(config: TrainConfig) -> int:
    """How many validation characters one evaluation reads: ``config.eval_chars``, or by
    default as many as keep evaluations near :data:`EVAL_SHARE` of the run.

    Why sized from the training and not from the validation split: an evaluation reads the
    same model over each character once, so its cost per character is about a third of a
    training step's (forward only, no backward), whatever the model or vocabulary. Between two
    evaluations the run trains ``k * batch_size * seq_len`` characters (``k``: ``eval_every``,
    or ``iters`` when the run is shorter); evaluating ``share / (1 - share) * 3`` times that
    many keeps evaluations at ``share`` of the time. With the default preset that is ~101,000
    characters every 200 iterations; a 5-iteration run reads ~2,500 (never fewer than 2,048,
    so the figure is not mere noise), where reading a held-out million through the head of a
    large vocabulary would take minutes for seconds of training. The ceiling keeps a long
    ``eval_every`` from asking for more than a stable estimate needs. The characters are always
    the first ones of the held-out part, so that successive evaluations (and "best") compare
    alike."""
    if config.eval_chars is not None:
        return config.eval_chars
    k = config.eval_every if config.time is not None else min(config.eval_every, config.iters)
    trained = k * config.batch_size * config.seq_len
    wanted = EVAL_SHARE / (1 - EVAL_SHARE) * TRAIN_COST_PER_CHAR * trained
    return int(min(max(wanted, MIN_EVAL_CHARS), MAX_EVAL_CHARS))


def learning_rate(config: TrainConfig, iteration: int, progress: float) -> float:
    """Learning rate at ``iteration`` (0-based); ``progress`` in [0, 1] is how far the run is
    through its budget (iterations, or wall-clock time under ``--time``)."""
    if config.warmup and iteration < config.warmup:
        return config.lr * (iteration + 1) / config.warmup
    if config.schedule == "constant":
        return config.lr
    if config.time is None:
        span = max(1, config.iters - config.warmup)
        progress = (iteration - config.warmup) / span
    progress = min(max(progress, 0.0), 1.0)
    low = config.lr * config.min_lr_ratio
    if config.schedule == "linear":
        return low + (config.lr - low) * (1 - progress)
    return low + 0.5 * (config.lr - low) * (1 + math.cos(math.pi * progress))


class BudgetClock:
    """Where a run stands in its budget: iterations done, seconds spent (across resumes), and
    what steps, evaluations and checkpoints cost."""

    def __init__(self, config: TrainConfig, has_validation: bool) -> None:
        self.config = config
        self.has_validation = has_validation
        self.iteration = 0
        self.elapsed = 0.0  # wall-clock seconds of the run so far, evaluations included
        self.step_seconds = 0.0  # of which in training steps
        self.eval_cost = 0.0  # seconds the last evaluation took
        self.save_cost = 0.0  # seconds the last checkpoint took
        self.next_eval_at = 0.1 * config.time if config.time is not None else 0.0
        self._base = 0.0
        self._start = time.perf_counter()

    def start(self) -> None:
        """Start (or restart, after a resume) counting wall-clock time from now."""
        self._base, self._start = self.elapsed, time.perf_counter()

    def now(self) -> float:
        """Seconds of the run up to this moment."""
        return self._base + (time.perf_counter() - self._start)

    def tick(self) -> float:
        """Bring ``elapsed`` up to now; returns it."""
        self.elapsed = self.now()
        return self.elapsed

    @property
    def progress(self) -> float:
        """How far through the budget, in [0, 1]."""
        cfg = self.config
        if cfg.time is not None:
            return min(1.0, self.elapsed / cfg.time)
        return min(1.0, self.iteration / max(1, cfg.iters))

    def learning_rate(self) -> float:
        """The learning rate of the next step."""
        return learning_rate(self.config, self.iteration, self.progress)

    def done(self) -> bool:
        cfg = self.config
        if cfg.time is not None:
            # Stop early enough that the final evaluation and checkpoint end by the deadline.
            # (The first evaluation also pays one-off warm-up costs, so the reserve is capped.)
            reserve = 1.2 * (self.eval_cost + self.save_cost) if self.has_validation else 0.0
            return self.elapsed + min(reserve, 0.1 * cfg.time) >= cfg.time
        return self.iteration >= cfg.iters

    def eval_due(self) -> bool:
        if not self.has_validation:
            return False
        if self.done():
            return True
        if self.config.time is None:
            return self.iteration % self.config.eval_every == 0
        return self.elapsed >= self.next_eval_at

    def evaluated(self, seconds: float) -> None:
        """An evaluation took ``seconds``: space the next one so evaluations keep to
        EVAL_SHARE of the time, whatever the model and validation size."""
        self.eval_cost = seconds
        self.next_eval_at = self.now() + max(
            seconds * (1 - EVAL_SHARE) / EVAL_SHARE, 0.05 * (self.config.time or 0)
        )

    def checkpoint_due(self, evaluated: bool) -> bool:
        """Whether the iteration just done should write ``latest/`` (time-based checkpoints
        aside): with every evaluation by default, or every ``checkpoint_every`` iterations."""
        cfg, it = self.config, self.iteration
        if cfg.checkpoint_every is None and cfg.time is not None:
            return evaluated or (not self.has_validation and it % cfg.eval_every == 0)
        return it % (cfg.checkpoint_every or cfg.eval_every) == 0

    @property
    def overhead_share(self) -> float:
        """Share of the wall-clock time spent outside training steps (evaluation, samples,
        checkpoints, plots)."""
        return 0.0 if self.elapsed <= 0 else max(0.0, 1 - self.step_seconds / self.elapsed)
