"""What a training run reports, hung off the trainer's events: the console (a progress bar, or
the lecture's printed lines), ``metrics.jsonl``, ``samples.txt``, the loss plots and TensorBoard.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from . import rundir
from .config import TrainConfig
from .data import TrainData
from .errors import CharloomError
from .evaluate import EvalResult
from .model import CharRNN
from .plot import plot_run
from .schedule import EVAL_SHARE, eval_chars


class RunView(Protocol):
    """What reporters read of a training run (``train.Trainer`` is one). Declared here so that
    reporting depends on the trainer's shape, not on its module: the trainer imports this one."""

    config: TrainConfig
    data: TrainData
    run_dir: Path
    device: torch.device
    model: CharRNN
    lr: float
    last_loss: float | torch.Tensor
    window_loss: float
    chars_per_s: float
    sample_text: str
    last_val: EvalResult | None
    best_val: float | None
    best_iter: int | None
    resumed_from: Path | None
    resume_note: str | None
    sizing_note: str | None

    @property
    def iteration(self) -> int: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def interrupted(self) -> int | None: ...
    @property
    def has_validation(self) -> bool: ...
    @property
    def overhead_share(self) -> float: ...
    @property
    def is_main(self) -> bool: ...
    def add_callback(self, event: str, fn: Callable[..., object]) -> None: ...


def require_tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CharloomError(
            "--tensorboard needs the tensorboard package: pip install 'charloom[tensorboard]'"
        ) from None
    return SummaryWriter


class Metrics:
    """Appends one JSON line per log and evaluation to ``metrics.jsonl``; keeps them for plots."""

    def __init__(self, trainer: RunView) -> None:
        self.path = trainer.run_dir / rundir.METRICS_FILE
        self.records = rundir.read_metrics(self.path)  # earlier lines of a resumed run

    def _append(self, rec: dict) -> None:
        self.records.append(rec)
        rundir.append_metric(self.path, rec)

    def on_log(self, t: RunView) -> None:
        self._append(
            {
                "iter": t.iteration,
                "time": round(t.elapsed, 3),
                "train_loss": t.window_loss,
                "lr": t.lr,
                "chars_per_s": round(t.chars_per_s, 1),
            }
        )

    def on_eval(self, t: RunView) -> None:
        v = t.last_val
        assert v is not None  # an eval event follows an evaluation
        self._append(
            {"iter": t.iteration, "time": round(t.elapsed, 3), "val_loss": v.loss, "val_bpc": v.bpc}
        )


class Plots:
    """Redraws ``loss.png`` and ``loss.pdf`` from the metrics (evaluations, samples, end)."""

    def __init__(self, trainer: RunView, metrics: Metrics) -> None:
        self.metrics = metrics
        self.outputs = [trainer.run_dir / f for f in rundir.PLOT_FILES]
        self.title = trainer.run_dir.name

    def draw(self, t: RunView) -> None:
        if self.metrics.records:
            plot_run(self.metrics.records, self.outputs, title=self.title)


class Samples:
    """Appends each training sample to ``samples.txt``."""

    def __init__(self, trainer: RunView) -> None:
        self.path = trainer.run_dir / rundir.SAMPLES_FILE

    def on_sample(self, t: RunView) -> None:
        rundir.append_sample(self.path, t.iteration, t.sample_text)


class Console:
    """A progress bar (iteration, chars/s, loss, ETA) with evaluations and samples printed
    above it; or, for the ``seed`` preset, the lecture's own lines."""

    def __init__(self, trainer: RunView, stream=None, bar: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.lecture = trainer.config.log_style == "lecture"
        self.bar = None
        self.use_bar = bar and not self.lecture
        self.start = time.perf_counter()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def on_start(self, t: RunView) -> None:
        cfg = t.config
        if t.resume_note:
            self.write(f"charloom: {t.resume_note}")
        if t.sizing_note:
            self.write(f"charloom: {t.sizing_note}")
        where = (
            f"resuming {t.run_dir} at iteration {t.iteration}"
            if t.resumed_from
            else f"training into {t.run_dir}"
        )
        budget = (
            f"{cfg.time:g} s (evaluations take about {100 * EVAL_SHARE:.0f}% of it)"
            if cfg.time is not None and t.has_validation
            else f"{cfg.time:g} s" if cfg.time is not None else f"{cfg.iters} iterations"
        )
        n_val = len(t.data.val)
        read = min(n_val, eval_chars(cfg))
        per_eval = f" ({read:,} read per evaluation)" if t.has_validation and read < n_val else ""
        self.write(
            f"charloom: {where}: {cfg.model.kind} {cfg.model.layers}x{cfg.model.hidden}, "
            f"{t.model.num_parameters():,} parameters, vocabulary {t.data.vocab.kind} "
            f"({t.data.vocab.size}), {len(t.data.train):,} training / {n_val:,} "
            f"validation chars{per_eval}, {budget}, device {t.device.type}"
        )
        note = t.data.vocab.size_note()
        if note:
            self.write(f"charloom: {note}")
        for line in t.data.notes:
            self.write(f"charloom: {line}")
        if self.use_bar:
            # tqdm.auto: a widget in Jupyter when ipywidgets is installed, text elsewhere.
            from tqdm.auto import tqdm

            if cfg.time is not None:
                self.bar = tqdm(
                    total=round(cfg.time),
                    initial=round(t.elapsed),
                    unit="s",
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=True,
                )
            else:
                self.bar = tqdm(
                    total=cfg.iters,
                    initial=t.iteration,
                    unit="it",
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=True,
                )
        self._shown = t.iteration

    def on_log(self, t: RunView) -> None:
        if self.lecture:
            minutes = (time.perf_counter() - self.start) / 60
            self.write(f"Time elapsed: {minutes:.2f} min")
            self.write(f"Iteration {t.iteration} | Loss {t.window_loss:.2f}\n")
            return
        if self.bar is not None:
            if t.config.time is not None:
                self.bar.n = min(round(t.elapsed), self.bar.total)
                self.bar.refresh()
            else:
                self.bar.update(t.iteration - self._shown)
            self._shown = t.iteration
            self.bar.set_postfix(loss=f"{t.window_loss:.3f}", chars_s=f"{t.chars_per_s:,.0f}")

    def on_eval(self, t: RunView) -> None:
        if self.lecture:
            return
        v = t.last_val
        assert v is not None  # an eval event follows an evaluation
        best = " (best)" if t.best_iter == t.iteration else ""
        train = t.last_loss if math.isnan(t.window_loss) else t.window_loss
        self.write(
            f"iter {t.iteration}: train {train:.4f}  val {v.loss:.4f} nats/char "
            f"= {v.bpc:.4f} bits/char{best}"
        )

    def on_sample(self, t: RunView) -> None:
        if self.lecture:
            self.write(f"{t.sample_text}\n")
            self.write("=" * 50)
        else:
            self.write(f"--- sample at iteration {t.iteration} ---\n{t.sample_text}\n---")

    def on_end(self, t: RunView) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if t.interrupted is not None:
            return  # the caller says how to resume
        best = f", best validation {t.best_val:.4f} nats/char" if t.best_val is not None else ""
        self.write(
            f"charloom: done: {t.iteration} iterations in {t.elapsed:.1f} s "
            f"({100 * t.overhead_share:.0f}% of it in evaluation, samples and checkpoints)"
            f"{best}; "
            f"run in {t.run_dir} (sample it: charloom sample {t.run_dir})"
        )


class TensorBoard:
    def __init__(self, trainer: RunView) -> None:
        writer_cls = require_tensorboard()
        self.writer = writer_cls(log_dir=str(trainer.run_dir / rundir.TENSORBOARD_DIR))

    def on_log(self, t: RunView) -> None:
        self.writer.add_scalar("loss/train", t.window_loss, t.iteration)
        self.writer.add_scalar("lr", t.lr, t.iteration)
        self.writer.add_scalar("chars_per_s", t.chars_per_s, t.iteration)

    def on_eval(self, t: RunView) -> None:
        v = t.last_val
        assert v is not None  # an eval event follows an evaluation
        self.writer.add_scalar("loss/val", v.loss, t.iteration)
        self.writer.add_scalar("bpc/val", v.bpc, t.iteration)

    def on_sample(self, t: RunView) -> None:
        self.writer.add_text("sample", t.sample_text, t.iteration)

    def on_end(self, t: RunView) -> None:
        self.writer.close()


def attach_reporting(trainer: RunView, console: bool = True, bar: bool = True) -> None:
    """Hang the standard reporters on ``trainer``'s events (done on ``start``, once the run
    directory exists). Under torchrun only rank 0 reports: the others attach nothing."""
    if not trainer.is_main:
        return

    def setup(t: RunView) -> None:
        metrics = Metrics(t)
        plots = Plots(t, metrics)
        samples = Samples(t)
        t.add_callback("log", metrics.on_log)
        t.add_callback("eval", metrics.on_eval)
        t.add_callback("sample", samples.on_sample)
        for event in ("eval", "sample", "end"):
            t.add_callback(event, plots.draw)
        if t.config.log_style == "lecture":
            t.add_callback("log", plots.draw)  # the lecture redrew its PDF at every print
        if console:
            c = Console(t, bar=bar)
            c.on_start(t)
            for event in ("log", "eval", "sample", "end"):
                t.add_callback(event, getattr(c, f"on_{event}"))
        if t.config.tensorboard:
            tb = TensorBoard(t)
            for event in ("log", "eval", "sample", "end"):
                t.add_callback(event, getattr(tb, f"on_{event}"))

    trainer.add_callback("start", setup)
