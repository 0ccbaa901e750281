"""Training: the loop, and the two entry points ``train`` (a new run) and ``load_trainer``
(continue one).

The loop reads top to bottom: batch -> step -> log -> evaluate -> sample -> checkpoint, until
the budget is spent. What it calls lives elsewhere: the step in ``step.py``, the schedule and
budget clock in ``schedule.py``, the saved training state in ``trainstate.py``, the run
directory's layout in ``rundir.py``, the data in ``data.py``. Logging, samples, plots and the
progress bar hang off the loop's events as callbacks (``reporting.py``).
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import distributed, finetune, rundir
from .batches import make_batches
from .config import TrainConfig, check_resume_overrides
from .corpus import TextSource
from .data import TrainData, load_data, reload_data
from .device import PrivateRng, check_precision, resolve_device, resolve_precision, torch_threads
from .errors import CharloomError, TrainingInterrupted
from .evaluate import EvalResult, evaluate_ids
from .model import CharRNN
from .presets import size_for_budget as sized_for_budget
from .reporting import attach_reporting, require_tensorboard
from .sample import SampleSettings, sample
from .schedule import BudgetClock, eval_chars
from .signals import StopRequest, stop_on_signals
from .step import TrainStep, rank_seed
from .trainstate import rank_state, restore_training_state, training_state


@dataclass
class TrainResult:
    run_dir: Path
    iterations: int
    train_loss: float
    val_loss: float | None
    best_val_loss: float | None
    elapsed: float


EVENTS = ("start", "log", "eval", "sample", "checkpoint", "end")
Callback = Callable[["Trainer"], object]


class Trainer:
    """Runs one training run into ``run_dir``. Callbacks get the trainer; see ``EVENTS``.

    ``config`` is the caller's and is never changed: the trainer works on a copy that records
    the vocabulary size and the precision actually used."""

    def __init__(self, config: TrainConfig, data: TrainData, run_dir: str | os.PathLike) -> None:
        self.data, self.run_dir = data, Path(run_dir)
        self.device = resolve_device(config.device)
        self.dist = distributed.join(self.device)  # None unless started by torchrun
        if self.dist is not None:
            self.device = self.dist.device
        self.config = cfg = config.replace(
            vocab_size=data.vocab.size, precision=resolve_precision(config.precision, self.device)
        )
        cfg.validate()
        cfg.model.validate()
        check_precision(cfg.precision, self.device, cfg.model.kind)
        self.callbacks: dict[str, list[Callback]] = defaultdict(list)
        self.rng = PrivateRng(self.device, cfg.seed)
        with self.rng.active():
            self.model = CharRNN(cfg.model).to(self.device)
            if cfg.head_bias == "unigram":  # a fine-tune or a resume then loads its own
                self.model.head.bias.data.copy_(data.log_frequencies())
            if self.dist is not None and self.dist.rank:
                # Dropout masks differ between ranks as between rows of one batch.
                torch.manual_seed(rank_seed(cfg.seed, self.dist.rank))
        self.step = TrainStep(cfg, self.model, self.device, self.dist)
        starts = data.portion_starts(cfg.seq_len) if cfg.batching == "portions" else None
        self.batches = make_batches(
            cfg.batching, data.train, cfg.batch_size, cfg.seq_len, cfg.seed + 1, starts
        )
        self.clock = BudgetClock(cfg, data.has_validation)
        self.stop = StopRequest()
        self.chars_seen = 0
        self.best_val: float | None = None
        self.best_iter: int | None = None
        self.last_val: EvalResult | None = None
        self.lr = self.clock.learning_rate()
        # Filled in as training goes, read by callbacks.
        self.last_loss: float | torch.Tensor = float("nan")
        self.window_loss = float("nan")
        self.chars_per_s = 0.0
        self.sample_text = ""
        self.resumed_from: Path | None = None
        self.resume_note: str | None = None
        self.sizing_note: str | None = None  # how the model was sized (--time, --init-from)
        self.parent: dict | None = None  # the run it was fine-tuned from (finetune.py)
        self._prime = training_prime(self.config, self.data)

    # what callbacks read ------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        return self.clock.iteration

    @property
    def elapsed(self) -> float:
        return self.clock.elapsed

    @property
    def interrupted(self) -> int | None:
        """The signal that asked training to stop, if one did."""
        return self.stop.signum

    @property
    def has_validation(self) -> bool:
        return self.data.has_validation

    @property
    def overhead_share(self) -> float:
        return self.clock.overhead_share

    @property
    def is_main(self) -> bool:
        """Whether this process reports and writes: always, unless it is a rank other than 0
        of a distributed run (see ``distributed.py``)."""
        return self.dist is None or self.dist.is_main

    def add_callback(self, event: str, fn: Callback) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str) -> None:
        for fn in self.callbacks.get(event, ()):
            fn(self)

    def _command(self, cmd: int = 0, value: float = 0.0) -> tuple[int, float]:
        """Rank 0: send a command to the other ranks; they: receive it. Either way, a signal
        caught by any rank reaches rank 0 here, which then stops the run for all."""
        assert self.dist is not None
        cmd, value, heard = self.dist.command(cmd, value, self.stop.signum)
        if heard is not None and self.stop.signum is None:
            self.stop.signum = heard
        return cmd, value

    # what the loop does besides stepping ---------------------------------------------------
    def evaluate(self) -> EvalResult:
        """Loss on the validation text; under torchrun each rank takes a contiguous share."""
        self.step.check_diverged()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else None
        val = self.data.val[: eval_chars(self.config)]  # the first N: comparable evaluations
        if self.dist is None:
            return evaluate_ids(self.model, val, autocast_dtype=dtype)
        if self.dist.is_main:
            self._command(distributed.EVAL)
        n, world, rank = len(val) - 1, self.dist.world_size, self.dist.rank
        lo, hi = rank * n // world, (rank + 1) * n // world
        part = evaluate_ids(self.model, val[lo : hi + 1], autocast_dtype=dtype)
        total, chars = self.dist.sum([part.loss * part.chars if part.chars else 0.0, part.chars])
        return EvalResult(total / chars, int(chars))

    def make_sample(self) -> str:
        """A sample primed as the config says, seeded from the iteration so that samples are
        repeatable and draw nothing from the training random streams."""
        cfg = self.config
        settings = SampleSettings(temperature=cfg.sample_temperature)
        return sample(
            self.model,
            self.data.vocab,
            self._prime,
            cfg.sample_length,
            settings,
            seed=cfg.seed + self.iteration,
            engine="torch",  # no compilation pause inside a timed run
            end=self.data.vocab.end,  # documents mode: one document, up to the length
        )[0]

    def summary(self) -> dict:
        return {
            "iterations": self.iteration,
            "chars_seen": self.chars_seen,
            "elapsed_s": round(self.elapsed, 3),
            "train_loss": None if math.isnan(self.window_loss) else self.window_loss,
            "val_loss": self.last_val.loss if self.last_val else None,
            "best_val_loss": self.best_val,
            "best_iteration": self.best_iter,
            "source": self.data.source.to_dict() if self.data.source else None,
        }

    def _config_json(self) -> dict:
        c, vocab = self.config, self.data.vocab
        return ckpt.config_dict(c.model, vocab, c.ascii, self.summary(), c.documents, self.parent)

    def save(self) -> Path | None:
        """Write ``latest/``: weights and everything needed to resume exactly. Under torchrun
        every rank takes part (rank 0 gathers the others' states) and rank 0 writes."""
        self.step.check_finite_weights(self.iteration)
        mine = rank_state(self.device, self.step.carry)
        if self.dist is None:
            return self._write_latest([mine])
        if self.dist.is_main:
            self._command(distributed.SAVE)
        return self.dist.on_main(self._write_latest, self.dist.gather(mine))

    def _write_latest(self, ranks: list[dict[str, torch.Tensor]]) -> Path:
        meta, tensors = training_state(self.step.optimizer, self.batches, ranks)
        state = {
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "chars_seen": self.chars_seen,
            "best_val_loss": self.best_val,
            "best_iteration": self.best_iter,
            "last_val_loss": self.last_val.loss if self.last_val else None,
            "window_loss": None if math.isnan(self.window_loss) else self.window_loss,
            "source": self.data.source.to_dict() if self.data.source else None,
            "data_sha256": self.data.sha256,
            **meta,
        }
        path = ckpt.write_checkpoint(
            self.run_dir, ckpt.LATEST, self._config_json(), self.model.state_dict(), state, tensors
        )
        self._fire("checkpoint")
        return path

    def save_best(self) -> Path:
        self.step.check_finite_weights(self.iteration)
        return ckpt.write_checkpoint(
            self.run_dir, ckpt.BEST, self._config_json(), self.model.state_dict()
        )

    def restore(self, checkpoint: ckpt.Checkpoint) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        if checkpoint.state.get("data_sha256") != self.data.sha256:
            raise CharloomError(
                "the training text differs from the one this run was trained on; "
                "resume with the same text (or start a new run)"
            )
        rank = self.dist.rank if self.dist is not None else 0
        share = self.dist.share if self.dist is not None else None
        with self.rng.active():
            counters, self.step.carry = restore_training_state(
                checkpoint, self.model, self.step.optimizer, self.batches, self.device, rank, share
            )
        self.clock.iteration, self.clock.elapsed = counters.iteration, counters.elapsed
        self.chars_seen = counters.chars_seen
        self.best_val, self.best_iter = counters.best_val_loss, counters.best_iteration
        wl = counters.window_loss
        self.window_loss = float("nan") if wl is None else float(wl)
        if counters.last_val_loss is not None:
            read = min(len(self.data.val), eval_chars(self.config))
            self.last_val = EvalResult(float(counters.last_val_loss), read - 1)
        self.resumed_from, self.parent = checkpoint.path, checkpoint.meta.get("parent")
        self.lr = self.clock.learning_rate()
        if self.is_main:
            rundir.truncate_after(self.run_dir, self.iteration)

    # the loop ----------------------------------------------------------------------------
    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train until the budget is spent (or until iteration ``stop_at``, for tests and
        interrupted runs); write the final checkpoint and return a summary."""
        self.step.module.train()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fire("start")
        with (
            torch_threads(self.config.threads),
            self.rng.active(),
            stop_on_signals(self.stop, announce=self.is_main),
        ):
            if self.dist is None:
                return self._loop(stop_at)
            if self.dist.is_main:
                return distributed.lead(lambda: self._loop(stop_at), self._command)
            return _follow(self)

    def _loop(self, stop_at: int | None) -> TrainResult:
        cfg, clock = self.config, self.clock
        chars_per_step = cfg.batch_size * cfg.seq_len
        window_losses: list[float | torch.Tensor] = []
        window_time, window_iters = 0.0, 0  # time spent in training steps only
        clock.start()
        last_saved, last_saved_at = self.iteration, time.perf_counter()
        while not clock.done() and (stop_at is None or self.iteration < stop_at):
            if self.stop.signum is not None:
                self.save()
                self._fire("end")
                raise TrainingInterrupted(self.stop.signum, self.run_dir, self.iteration)
            t0 = time.perf_counter()
            self.lr = clock.learning_rate()  # rank 0 owns the schedule (and its clock)
            if self.dist is not None:
                self._command(distributed.STEP, self.lr)
            loss = self.step.take(self.batches, self.lr, self.iteration)
            clock.iteration += 1
            self.chars_seen += chars_per_step
            self.last_loss = loss  # a float, or on GPUs a device scalar
            window_losses.append(loss)
            window_iters += 1
            now = time.perf_counter()
            window_time += now - t0
            clock.tick()  # wall-clock, evaluations and checkpoints included: a real deadline
            if self.iteration % cfg.log_every == 0 or clock.done():
                self.window_loss = self.step.mean_loss(window_losses)
                self.chars_per_s = window_iters * chars_per_step / max(window_time, 1e-9)
                window_losses.clear()
                window_time, window_iters = 0.0, 0
                self._fire("log")
            clock.step_seconds += now - t0
            evaluated = clock.eval_due()
            if evaluated:
                t_eval = time.perf_counter()
                self.last_val = self.evaluate()
                self.model.train()
                if self.best_val is None or self.last_val.loss < self.best_val:
                    self.best_val, self.best_iter = self.last_val.loss, self.iteration
                    self.save_best()
                self._fire("eval")
                clock.evaluated(time.perf_counter() - t_eval)
            if self.iteration % cfg.sample_every == 0:
                self.sample_text = self.make_sample()
                self.model.train()
                self._fire("sample")
            due_by_time = (
                cfg.checkpoint_every_s is not None
                and time.perf_counter() - last_saved_at >= cfg.checkpoint_every_s
            )
            if clock.checkpoint_due(evaluated) or due_by_time:
                t_save = time.perf_counter()
                self.save()
                last_saved, last_saved_at = self.iteration, time.perf_counter()
                clock.save_cost = last_saved_at - t_save
            clock.tick()
        if window_losses:
            self.window_loss = self.step.mean_loss(window_losses)
        if self.iteration != last_saved or not (self.run_dir / ckpt.LATEST).exists():
            self.save()
        self._fire("end")
        return TrainResult(
            run_dir=self.run_dir,
            iterations=self.iteration,
            train_loss=self.window_loss,
            val_loss=self.last_val.loss if self.last_val else None,
            best_val_loss=self.best_val,
            elapsed=self.elapsed,
        )


def _follow(trainer: Trainer) -> TrainResult:
    """A rank other than 0: step, evaluate and checkpoint when rank 0 says so."""

    def step(lr: float) -> None:
        trainer.lr = lr
        trainer.step.take(trainer.batches, lr, trainer.iteration)
        trainer.clock.iteration += 1
        trainer.chars_seen += trainer.config.batch_size * trainer.config.seq_len

    def evaluate(_: float) -> None:
        trainer.last_val = trainer.evaluate()
        trainer.model.train()

    handlers: dict[int, Callable[[float], object]] = {
        distributed.STEP: step,
        distributed.EVAL: evaluate,
        distributed.SAVE: lambda _: trainer.save(),
    }
    signum = distributed.follow(trainer._command, handlers)
    trainer._fire("end")
    if signum:
        raise TrainingInterrupted(int(signum), trainer.run_dir, trainer.iteration)
    val = trainer.last_val.loss if trainer.last_val else None
    return TrainResult(trainer.run_dir, trainer.iteration, float("nan"), val, None, trainer.elapsed)


# --- the public entry points -----------------------------------------------------------------
def training_prime(config: TrainConfig, data: TrainData) -> str:
    """What the samples during training start from: the configured prime; a documents-mode
    run's start marker alone; for a corpus that lacks the prime's characters (another script,
    say), its first character."""
    if data.vocab.end is not None:
        return ""  # documents mode: a whole document, from the start marker
    prime = config.sample_prime or ""
    if prime and not data.vocab.unknown(prime):
        return prime
    first = data.vocab.decode(data.train[:1].tolist())
    return first or data.vocab.decode([0])


def train(
    config: TrainConfig | None = None,
    *,
    text: str | None = None,
    paths: tuple[str, ...] | list[str] = (),
    corpus: str | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    name: str | None = None,
    callbacks: dict[str, list[Callback]] | None = None,
    stop_at: int | None = None,
    console: bool = True,
    progress_bar: bool = True,
    size_for_budget: bool = False,
    given: Collection[str] = (),
) -> TrainResult:
    """Train a new model on ``text`` (a string), or on ``paths``/``corpus`` (read from disk).

    Everything is checked before the run directory is created, so a bad input writes nothing.
    ``console`` prints progress to stderr; metrics, samples and plots are written regardless.
    ``size_for_budget``: under a ``time`` budget, pick the model size, batch and learning rate
    for the budget and the text (``presets.budget_overrides``). With ``config.init_from`` the
    run starts from that run's weights (``finetune.py``); ``given``: the settings the caller
    chose explicitly, which must then agree with the parent's shape.
    """
    config = config or TrainConfig()
    config.validate()
    reading: dict[str, Any] = dict(
        text=text, paths=paths, corpus=corpus, encoding=encoding, errors=errors
    )
    parent = finetune.load_parent(config.init_from) if config.init_from else None
    if parent is not None:
        config, data, new = finetune.load_data_for(parent, config, given, reading)
    else:
        config, data = load_data(config, **reading)
    notes = []
    if config.tensorboard:
        require_tensorboard()
    group = distributed.join(resolve_device(config.device))
    if size_for_budget and config.time is not None:
        # Timed on rank 0 only, and handed to the others: every rank trains the same model.
        sizing = (sized_for_budget, config, data.text_chars)
        config, note = group.on_main(*sizing) if group else sizing[0](*sizing[1:])
        notes.append(note)
    # Under torchrun, rank 0 picks (and later writes) the run directory; the others learn it.
    source = data.source
    default = rundir.default_name(source.corpus, source.paths) if source else "run"
    pick = (rundir.new_run_dir, out, name or default, overwrite)
    run_dir = group.on_main(*pick) if group else rundir.new_run_dir(*pick[1:])
    trainer = Trainer(config, data, run_dir)  # builds batches: checks the text is long enough
    if parent is not None:
        finetune.init_from_parent(trainer.model, parent, data.vocab)
        trainer.parent = parent.record
        notes.append(finetune.note(parent, new))
    if run_dir.exists() and overwrite and trainer.is_main:
        rundir.clear_run_dir(run_dir)
    trainer.sizing_note = "\ncharloom: ".join(notes) or None  # reporting prints each line
    if trainer.is_main:
        data.write_fingerprints(run_dir)  # documents mode: for sample --novel
    attach_reporting(trainer, console=console, bar=progress_bar)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            trainer.add_callback(event, fn)
    return trainer.run(stop_at=stop_at)


def load_trainer(
    run_dir: str | os.PathLike,
    overrides: dict | None = None,
    text: str | None = None,
    *,
    console: bool = True,
    progress_bar: bool = True,
) -> Trainer:
    """A trainer restored from ``run_dir``'s latest complete checkpoint, ready to ``run()``,
    reporting as :func:`train` does (metrics, samples, plots; ``console``: progress on stderr).

    ``overrides`` may extend the budget (``iters``, ``time``) or change reporting intervals
    (see ``config.RESUMABLE``); ``text`` replaces re-reading the recorded text source (needed
    when it was given as a string)."""
    path, note = ckpt.find_resumable(Path(run_dir))
    checkpoint = ckpt.load_checkpoint(path, with_state=True)
    st = checkpoint.state
    config = TrainConfig.from_dict(st.get("config"))
    if overrides:
        check_resume_overrides(overrides)
        config = config.replace(**overrides)
        config.validate()
    source = TextSource.from_dict(st["source"]) if st.get("source") else None
    if text is None and source is None:
        raise CharloomError(
            f"{run_dir} was trained on a text given in Python; pass it again to resume"
        )
    config, data = reload_data(config, source, checkpoint.vocab, text)
    trainer = Trainer(config, data, Path(run_dir))
    trainer.restore(checkpoint)
    trainer.resume_note = note
    attach_reporting(trainer, console=console, bar=progress_bar)
    return trainer
