"""A training run as one object, made for notebook cells: ``charloom.train`` returns a
:class:`Run` and ``charloom.load`` opens one.

A :class:`Run` is a :class:`~charloom.charmodel.CharModel` (``sample``, ``stream``,
``evaluate``) that also knows its run directory: how far training got, its metrics
(``history``), its loss plot (``plot``), the visualiser inline (``viz``), and how to carry on
(``resume``).

Interrupting training from Python (the kernel's stop button, Ctrl-C, or ``KeyboardInterrupt``
raised by a callback) finishes the current step, writes a checkpoint and returns the run with a
``note`` instead of raising: nothing trained is lost, and :meth:`Run.resume` continues exactly
where it stopped. A second interrupt stops at once; the last checkpoint written is returned.
"""

from __future__ import annotations

import inspect
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from . import checkpoint as ckpt
from . import rundir
from .charmodel import CharModel
from .charmodel import load as load_model
from .errors import CharloomError, TrainingInterrupted
from .evaluate import EvalResult
from .plot import plot_run, plot_runs
from .train import Callback, Trainer, TrainResult, load_trainer
from .train import train as run_training
from .viz import InlinePage, inline_page

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with charloom
    from matplotlib.figure import Figure


@dataclass(repr=False, eq=False)
class Run(CharModel):
    """A trained model with its run directory.

    The model is the run's ``best`` checkpoint (the lowest validation loss), else its
    ``latest``, as ``charloom sample`` would load it; the figures (``iterations``,
    ``elapsed``, ``best_val_loss``, ...) are those of the last checkpoint, where training
    stopped. ``note`` says why a run came back early (an interrupt), else it is ``None``."""

    run_dir: Path | None = None  # None: a checkpoint folder outside any run directory
    summary: dict = field(default_factory=dict)  # the last checkpoint's training summary
    note: str | None = None
    _text: str | None = field(default=None, init=False)  # the text given as a string, if any

    # where training got to ------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The run directory's name (or the checkpoint folder's)."""
        return (self.run_dir or self.path).name

    @property
    def interrupted(self) -> bool:
        """Whether training was interrupted before its budget was spent."""
        return self.note is not None

    def _figure(self, key: str) -> float | None:
        value = self.summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return None

    @property
    def iterations(self) -> int:
        return int(self._figure("iterations") or 0)

    @property
    def chars_seen(self) -> int:
        return int(self._figure("chars_seen") or 0)

    @property
    def elapsed(self) -> float:
        """Seconds of training, evaluations and checkpoints included (as the last checkpoint
        recorded them; for the run ``train`` or ``resume`` returns, until training ended)."""
        return self._figure("elapsed_s") or 0.0

    @property
    def train_loss(self) -> float:
        """The training loss over the last logging window, nats/char (NaN: none yet)."""
        loss = self._figure("train_loss")
        return math.nan if loss is None else loss

    @property
    def val_loss(self) -> float | None:
        """The last validation loss, nats/char (``None``: the run has no validation text)."""
        return self._figure("val_loss")

    @property
    def best_val_loss(self) -> float | None:
        """The lowest validation loss, nats/char; the model is the checkpoint that had it."""
        return self._figure("best_val_loss")

    @property
    def best_iteration(self) -> int | None:
        best = self._figure("best_iteration")
        return None if best is None else int(best)

    # looking at it ---------------------------------------------------------------------------
    @property
    def history(self) -> list[dict]:
        """The run's metrics, one dict per line of ``metrics.jsonl``, oldest first: training
        lines (``iter``, ``time``, ``train_loss``, ``lr``, ``chars_per_s``) and evaluation
        lines (``iter``, ``time``, ``val_loss``, ``val_bpc``). Always a list of dicts;
        :meth:`history_frame` gives the same records as a pandas DataFrame."""
        return rundir.run_metrics(self.run_dir) if self.run_dir is not None else []

    def history_frame(self) -> Any:
        """:attr:`history` as a ``pandas.DataFrame`` (a column per key, NaN where a line has
        no such key). Needs pandas, which charloom does not depend on."""
        try:
            import pandas
        except ImportError:
            raise CharloomError(
                "history_frame() needs pandas (pip install pandas); run.history holds the "
                "same records as a list of dicts"
            ) from None
        return pandas.DataFrame.from_records(self.history)

    def plot(self, *others: Run, x: str = "iter", metric: str = "both") -> Figure:
        """The loss curves as a matplotlib ``Figure`` (shown inline by Jupyter, or saved with
        ``fig.savefig``). Alone and against iterations: the run's training and validation
        loss and its learning rate. With ``others`` or ``x="time"`` (wall-clock seconds): the
        runs on one figure, one colour each; ``metric``: ``both``, ``val`` or ``train``."""
        named: dict[str, list[dict]] = {}
        for run in (self, *others):
            records = run.history
            if not records:
                raise CharloomError(f"{run.name} has recorded no metrics to plot")
            key, n = run.name, 2
            while key in named:
                key, n = f"{run.name} ({n})", n + 1
            named[key] = records
        if not others and x == "iter" and metric == "both":
            return plot_run(named[self.name], title=self.name)
        return plot_runs(named, (), metric=metric, x_axis=x)

    def eval(self, text: str, unknown: str = "error") -> EvalResult:
        """Loss, bits per character and perplexity on ``text`` (see :meth:`evaluate`)."""
        return self.evaluate(text, unknown=unknown)

    def viz(self, text: str, **options) -> InlinePage:
        """The visualiser's page for ``text``, shown inline by Jupyter (``.save(path)`` writes
        it). ``options``: ``layer``, ``state``, ``unit``, ``start``, ``max_chars``, ``unknown``
        as for ``charloom viz``."""
        options.setdefault("title", self.name)
        return inline_page(self, text, **options)

    def info(self) -> dict:
        """What ``charloom info --json`` says, with the run directory, the training summary
        of the last checkpoint (where training stopped) and the note."""
        out = super().info()
        out["run_dir"] = None if self.run_dir is None else str(self.run_dir)
        out["training"] = self.summary
        out["note"] = self.note
        return out

    def __repr__(self) -> str:
        cfg = self.config
        best = self.best_val_loss
        val = f", best validation {best:.4f} nats/char" if best is not None else ""
        note = f"; {self.note}" if self.note else ""
        return (
            f"<charloom.Run {str(self.run_dir or self.path)!r}: {cfg.kind} "
            f"{cfg.layers}x{cfg.hidden}, {self.iterations:,} iterations{val}{note}>"
        )

    # carrying on ------------------------------------------------------------------------------
    def resume(
        self,
        text: str | None = None,
        *,
        callbacks: dict[str, list[Callback]] | None = None,
        stop_at: int | None = None,
        console: bool = True,
        progress_bar: bool = True,
        **overrides: Any,
    ) -> Run:
        """Continue training from the last checkpoint, exactly as an uninterrupted run would
        have gone on, and return the run. ``overrides`` may extend the budget (``iters=``,
        ``time=``) or change reporting intervals; ``text``: the training text when it was
        given as a string (by default the one this object was trained on, if it was)."""
        if self.run_dir is None:
            raise CharloomError(f"{self.path} is not inside a run directory; nothing to resume")
        text = text if text is not None else self._text
        trainer = load_trainer(
            self.run_dir, overrides or None, text, console=console, progress_bar=progress_bar
        )
        trainer.stop.second = "raise"  # see signals.StopRequest
        for event, fns in (callbacks or {}).items():
            for fn in fns:
                trainer.add_callback(event, _stop_on_interrupt(fn))
        return _finish(lambda: trainer.run(stop_at=stop_at), lambda: trainer, text, console)


def _stop_on_interrupt(fn: Callback) -> Callback:
    """``fn``, except that a ``KeyboardInterrupt`` it raises asks the run to stop after the
    current step, as Ctrl-C does, instead of tearing through the loop."""

    def guarded(trainer: Trainer) -> object:
        try:
            return fn(trainer)
        except KeyboardInterrupt:
            trainer.stop.signum = signal.SIGINT
            return None

    return guarded


def _finish(
    go: Callable[[], TrainResult],
    trainer: Callable[[], Trainer | None],
    text: str | None,
    console: bool,
) -> Run:
    """Run ``go`` and open the run it trained, interrupted or not."""
    note, result = None, None
    try:
        # Modules imported on first use may add warning filters (torch's optimisers import
        # sympy, which does): the caller's filters come back afterwards.
        with warnings.catch_warnings():
            result = go()
        run_dir = result.run_dir
    except TrainingInterrupted as exc:
        run_dir = Path(exc.run_dir)
        note = f"interrupted at iteration {exc.iteration}; checkpoint saved: run.resume() continues"
    except KeyboardInterrupt:
        # A second interrupt, in the middle of a step: the last checkpoint written stands.
        t = trainer()
        if t is None or not t.is_main or not (t.run_dir / rundir.LATEST).exists():
            raise
        run_dir = t.run_dir
        note = "interrupted twice: the run as of its last checkpoint; run.resume() continues"
    run = load(run_dir)
    run.note, run._text = note, text
    if result is not None:
        # The last checkpoint may be written before the final evaluation's time is counted.
        run.summary = {**run.summary, "elapsed_s": round(result.elapsed, 3)}
    if note and console:
        print(f"charloom: {note}", file=sys.stderr, flush=True)
    return run


_P = ParamSpec("_P")


def _parameters_of(
    base: Callable[_P, object],
) -> Callable[[Callable[..., Run]], Callable[_P, Run]]:
    """Give the decorated function ``base``'s parameters: mypy checks its calls against them,
    and ``help()`` and ``inspect.signature`` show them (the API reference too, through
    ``docs/griffe_parameters.py``). So a parameter and its default are written once, in
    ``base``."""
    signature = inspect.signature(base).replace(return_annotation="Run")

    def stamp(fn: Callable[..., Run]) -> Callable[_P, Run]:
        fn.__signature__ = signature  # type: ignore[attr-defined]
        return fn

    return stamp


# --- the public entry points -----------------------------------------------------------------
@_parameters_of(run_training)
def train(*args: Any, **kwargs: Any) -> Run:
    """Train a new model and return the :class:`Run`.

    The text is ``text`` (a string), or ``paths`` (files, folders, glob patterns) or a built-in
    ``corpus`` (the default when neither is given). ``config``: a
    :class:`~charloom.TrainConfig`, usually from ``charloom.preset_config(name, **overrides)``.
    The run goes into ``out``, or ``runs/NAME`` (``name``: by default the text's name).
    Everything is checked before the run directory is created, so bad input writes nothing.

    ``callbacks``: ``{event: [fn(trainer), ...]}`` for the events ``start``, ``log``, ``eval``,
    ``sample``, ``checkpoint``, ``end``. ``stop_at``: stop at this iteration (the run can be
    resumed). ``console``: progress on stderr, with a progress bar (``progress_bar``; a widget
    in Jupyter when ipywidgets is installed). ``size_for_budget``: under a ``time`` budget,
    size the model, batch and learning rate for the budget and the text. ``given``: the names
    of the settings the caller chose (with ``init_from``, one that disagrees with the parent's
    shape is an error rather than replaced by the parent's).

    Interrupting (Ctrl-C, the notebook's stop button, or ``KeyboardInterrupt`` from a callback)
    finishes the step, writes a checkpoint and returns the run with a ``note``;
    ``run.resume()`` continues it.

    The parameters and their defaults are ``charloom.train.train``'s (the loop's own entry
    point, which returns a ``TrainResult``): this passes them on.
    """
    call = inspect.signature(run_training).bind(*args, **kwargs)
    call.apply_defaults()
    options = call.arguments
    seen: list[Trainer] = []

    def setup(t: Trainer) -> None:
        seen.append(t)
        t.stop.second = "raise"  # a second interrupt must not end the notebook's kernel

    hooks: dict[str, list[Callback]] = {"start": [setup]}
    for event, fns in (options["callbacks"] or {}).items():
        hooks.setdefault(event, []).extend(_stop_on_interrupt(fn) for fn in fns)
    options["callbacks"] = hooks

    def go() -> TrainResult:
        return run_training(**options)

    return _finish(go, lambda: seen[0] if seen else None, options["text"], options["console"])


def load(path: str | os.PathLike, which: str = ckpt.BEST, device: str = "cpu") -> Run:
    """Open a run directory (its ``best`` checkpoint, else ``latest``; ``which="latest"`` for
    the last one) or a checkpoint folder as a :class:`Run`."""
    with warnings.catch_warnings():  # the caller's filters stay: see _finish
        model = load_model(path, which, device)
    folder = model.path
    inside = folder.name.removesuffix(".old") in (rundir.LATEST, rundir.BEST)
    run_dir = folder.parent if inside and rundir.looks_like_run(folder.parent) else None
    summary = model.training
    if run_dir is not None:
        try:
            last = ckpt.resolve_checkpoint(run_dir, rundir.LATEST)
            summary = ckpt.read_meta(last).get("training") or summary
        except CharloomError:
            pass  # no complete latest/: the loaded checkpoint's own summary
    return Run(model.model, model.vocab, model.ascii, model.meta, model.path, run_dir, summary)
