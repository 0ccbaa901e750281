"""Training pictures: loss curves (nats and bits per character) and the learning rate.

- :func:`plot_run`: one run - training and validation loss, a bits-per-character axis on the
  right, the best validation point marked, and the learning-rate schedule in a panel below.
  Training redraws it as ``RUN/loss.png`` and ``RUN/loss.pdf``.
- :func:`plot_runs`: several runs on one figure, one colour each (validation solid, training
  dashed), with their learning rates below; :func:`plot_compare` reads the runs from disk for
  ``charloom plot``.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CharloomError
from .rundir import run_metrics

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with charloom
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

METRICS = ("both", "val", "train")
X_AXES = ("iter", "time")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _series(records: list[dict], key: str, x: str = "iter") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of ``key`` against ``x``, sorted by ``x``; a resumed run's repeated points
    count once (the later one)."""
    points: dict[float, float] = {}
    for r in records:
        if _number(r.get(key)) and _number(r.get(x)):
            points[r[x]] = r[key]
    xs = sorted(points)
    return xs, [points[v] for v in xs]


@functools.cache
def _figure_class() -> type[Figure]:
    """``Figure`` with a ``_repr_png_``: Jupyter shows it inline even when pyplot was never
    imported (IPython registers its own figure formatter only with pyplot's inline backend)."""
    from matplotlib.figure import Figure

    class InlineFigure(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=100)
            return buffer.getvalue()

    return InlineFigure


def _figure(show_lr: bool, size: tuple[float, float] = (7, 5)) -> tuple[Figure, Axes, Axes | None]:
    # A Figure of its own, not pyplot's: drawing never touches the caller's backend or
    # pyplot's list of open figures (a notebook's inline plots stay as they were).
    figure = _figure_class()
    if show_lr:
        fig = figure(figsize=size)
        ax, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        fig = figure(figsize=(size[0], size[1] * 0.8))
        ax, ax_lr = fig.subplots(), None
    return fig, ax, ax_lr


def _bits_axis(ax) -> None:
    ax.set_ylabel("loss (nats/char)")
    sec = ax.secondary_yaxis(
        "right", functions=(lambda x: x / math.log(2), lambda b: b * math.log(2))
    )
    sec.set_ylabel("bits/char")


def _lr_panel(ax_lr, xlabel: str) -> None:
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel(xlabel)
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def _save(fig: Figure, outputs: Sequence[Path]) -> None:
    """Write ``fig`` to each of ``outputs`` atomically (a reader never sees half a file)."""
    for out in outputs:
        out = Path(out)
        tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
        try:
            fig.savefig(tmp, dpi=110)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)


def plot_run(records: list[dict], outputs: Sequence[Path] = (), title: str = "") -> Figure:
    """Draw one run's train and validation loss (and its learning rate); write the figure to
    each of ``outputs`` and return it."""
    lr_x, lr_y = _series(records, "lr")
    fig, ax, ax_lr = _figure(show_lr=bool(lr_x))
    for key, label, colour in (
        ("train_loss", "train", "tab:blue"),
        ("val_loss", "validation", "tab:orange"),
    ):
        xs, ys = _series(records, key)
        if xs:
            marker = "o" if len(xs) < 30 else None
            ax.plot(xs, ys, label=label, color=colour, marker=marker, markersize=3)
    vx, vy = _series(records, "val_loss")
    if vx:
        i = min(range(len(vy)), key=vy.__getitem__)
        ax.plot(
            [vx[i]],
            [vy[i]],
            marker="*",
            markersize=12,
            color="tab:red",
            linestyle="none",
            label=f"best validation: {vy[i]:.4f} nats = {vy[i] / math.log(2):.4f} bits/char "
            f"(iteration {vx[i]:g})",
        )
    _bits_axis(ax)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    if ax_lr is not None:
        ax_lr.plot(lr_x, lr_y, color="tab:gray")
        if len(set(lr_y)) == 1:
            ax_lr.set_title(f"constant learning rate {lr_y[0]:g}", fontsize=8, loc="left")
        _lr_panel(ax_lr, "iteration")
    else:
        ax.set_xlabel("iteration")
    fig.tight_layout()
    _save(fig, outputs)
    return fig


def _time_scale(records_list: Sequence[list[dict]]) -> tuple[float, str]:
    longest = max(
        (r.get("time", 0) for rs in records_list for r in rs if _number(r.get("time"))), default=0.0
    )
    if longest > 3 * 3600:
        return 3600.0, "wall-clock time (hours)"
    if longest > 600:
        return 60.0, "wall-clock time (minutes)"
    return 1.0, "wall-clock time (seconds)"


def plot_runs(
    runs: dict[str, list[dict]],
    outputs: Sequence[Path],
    metric: str = "both",
    x_axis: str = "iter",
    title: str = "",
) -> Figure:
    """Draw several runs' loss curves on one figure, one colour per run; write it to each of
    ``outputs`` and return it.

    ``metric``: ``val`` (validation, solid; a run that never evaluated shows its training loss),
    ``train`` (dashed) or ``both``; ``x_axis``: ``iter`` or ``time`` (wall-clock). Each run's
    learning rate is drawn in a panel below when any run recorded one.
    """
    if metric not in METRICS:
        raise CharloomError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if x_axis not in X_AXES:
        raise CharloomError(f"unknown x axis {x_axis!r}; choose one of: {', '.join(X_AXES)}")
    if not runs:
        raise CharloomError("no runs to plot")
    x_key = "iter" if x_axis == "iter" else "time"
    scale, xlabel = (1.0, "iteration") if x_axis == "iter" else _time_scale(list(runs.values()))
    show_lr = any(_series(r, "lr", x_key)[0] for r in runs.values())
    fig, ax, ax_lr = _figure(show_lr=show_lr, size=(8, 5.5))
    from matplotlib import rcParams

    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for n, (name, records) in enumerate(runs.items()):
        colour = colours[n % len(colours)]
        val = _series(records, "val_loss", x_key)
        train = _series(records, "train_loss", x_key)
        curves = []
        if metric in ("both", "val") and val[0]:
            best = min(val[1])
            label = f"{name} (validation, best {best:.4f} nats = {best / math.log(2):.4f} bpc)"
            curves.append((val, "-", 1.0, label))
        # Training loss when asked for, or in place of a validation loss never measured.
        if train[0] and (metric in ("both", "train") or not val[0]):
            faint = metric == "both"
            curves.append(
                (train, "--" if faint else "-", 0.55 if faint else 1.0, f"{name} (train)")
            )
        for (xs, ys), style, alpha, label in curves:
            marker = "o" if len(xs) < 30 and style == "-" else None
            ax.plot(
                [x / scale for x in xs],
                ys,
                style,
                color=colour,
                alpha=alpha,
                label=label,
                marker=marker,
                markersize=3,
            )
            drawn += 1
        if ax_lr is not None:
            lx, ly = _series(records, "lr", x_key)
            if lx:
                ax_lr.plot([x / scale for x in lx], ly, color=colour)
    if not drawn:
        raise CharloomError("none of the runs has recorded any loss yet")
    _bits_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    if ax_lr is not None:
        _lr_panel(ax_lr, xlabel)
    else:
        ax.set_xlabel(xlabel)
    fig.tight_layout()
    _save(fig, outputs)
    return fig


def figure_outputs(out: str | os.PathLike) -> list[Path]:
    """``FILE.png`` and ``FILE.pdf`` for ``out`` given as ``FILE.png``, ``FILE.pdf`` or ``FILE``."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".png", ".pdf"):
        stem = out.with_suffix("")
        other = ".pdf" if suffix == ".png" else ".png"
        paths = [out, stem.with_name(stem.name + other)]
    elif suffix:
        raise CharloomError(f"{str(out)!r}: the figure is written as .png and .pdf; name one")
    else:
        paths = [out.with_name(out.name + ".png"), out.with_name(out.name + ".pdf")]
    folder = paths[0].parent
    if not folder.is_dir():
        raise CharloomError(f"the folder for {str(out)!r} does not exist")
    return paths


def plot_compare(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    metric: str = "both",
    x_axis: str = "iter",
    title: str = "",
) -> list[Path]:
    """Draw the runs in ``runs`` (directories) on one figure; returns the PNG and PDF written."""
    if not runs:
        raise CharloomError("no runs to plot")
    outputs = figure_outputs(out)
    data = [(str(r), Path(r).resolve().name, run_metrics(r)) for r in runs]
    short = [name for _, name, _ in data]
    by_name: dict[str, list[dict]] = {}
    for given, name, records in data:
        # Runs in different folders may share a name (a/run, b/run): then show the path given.
        by_name[name if short.count(name) == 1 else given] = records
    plot_runs(by_name, outputs, metric=metric, x_axis=x_axis, title=title)
    return outputs
