"""Training pictures: loss curves (nats and bits per character) and the learning rate."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import CharloomError


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a torn last line is skipped)."""
    records = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        return []
    return records


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get(key) is not None:
            xs.append(r["iter"])
            ys.append(r[key])
    return xs, ys


def _figure(show_lr: bool):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if show_lr:
        fig, (ax, ax_lr) = plt.subplots(
            2, 1, figsize=(7, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax_lr = None
    return plt, fig, ax, ax_lr


def _bits_axis(ax) -> None:
    ax.set_ylabel("loss (nats/char)")
    sec = ax.secondary_yaxis(
        "right", functions=(lambda x: x / math.log(2), lambda b: b * math.log(2))
    )
    sec.set_ylabel("bits/char")


def _save(fig, plt, outputs: list[Path]) -> None:
    for out in outputs:
        out = Path(out)
        tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    plt.close(fig)


def plot_run(records: list[dict], outputs: list[Path], title: str = "") -> None:
    """Draw one run's train and validation loss (and its learning rate) to each of ``outputs``."""
    lr_x, lr_y = _series(records, "lr")
    plt, fig, ax, ax_lr = _figure(show_lr=len(set(lr_y)) > 1)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    _bits_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    if ax_lr is not None:
        ax_lr.plot(lr_x, lr_y, color="tab:gray")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("iteration")
        ax_lr.grid(alpha=0.3)
    else:
        ax.set_xlabel("iteration")
    fig.tight_layout()
    _save(fig, plt, outputs)


def plot_runs(runs: dict[str, list[dict]], outputs: list[Path], key: str = "val_loss") -> None:
    """Draw several runs' curves (``key``: ``val_loss`` or ``train_loss``) on one figure."""
    if not runs:
        raise CharloomError("no runs to plot")
    plt, fig, ax, _ = _figure(show_lr=False)
    drawn = 0
    for name, records in runs.items():
        xs, ys = _series(records, key)
        if not xs:
            xs, ys = _series(records, "train_loss")
        if xs:
            ax.plot(xs, ys, label=name)
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise CharloomError("none of the runs has recorded any loss yet")
    _bits_axis(ax)
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, plt, outputs)
